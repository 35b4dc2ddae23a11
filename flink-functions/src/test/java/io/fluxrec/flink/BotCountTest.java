package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
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

    @Test
    void insertKeepsTheTimesSortedWithRepeats() {
        long[] times = BotCount.insert(null, 7);
        assertArrayEquals(new long[] {7}, times);
        times = BotCount.insert(times, 3);
        times = BotCount.insert(times, 9);
        times = BotCount.insert(times, 7);
        times = BotCount.insert(times, -1);
        assertArrayEquals(new long[] {-1, 3, 7, 7, 9}, times);
        assertEquals(2, BotCount.countBetween(times, 7, 8));
    }
}
