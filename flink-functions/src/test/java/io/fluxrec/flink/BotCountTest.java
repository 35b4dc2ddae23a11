package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class BotCountTest {

    @Test
    void countsTheTimesInAClosedRange() {
        long[] times = {1, 5, 5, 9, 12};
        assertEquals(3, BotCount.countBetween(times, 5, 9));
        assertEquals(5, BotCount.countBetween(times, 0, 12));
        assertEquals(0, BotCount.countBetween(times, 6, 8));
        assertEquals(1, BotCount.countBetween(times, 12, 20));
        assertEquals(0, BotCount.countBetween(new long[0], 0, 1));
    }
}
