package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class BotCountTest {

    /** {@code Recent.times} of these times (each an i64, big-endian). */
    private static byte[] times(long... times) {
        ByteSink out = new ByteSink(8);
        for (long t : times) {
            out.int64(t);
        }
        return out.toArray();
    }

    @Test
    void countsTheTimesInAClosedRange() {
        byte[] times = times(1, 5, 5, 9, 12);
        assertEquals(3, BotCount.countBetween(times, 5, 9));
        assertEquals(5, BotCount.countBetween(times, 0, 12));
        assertEquals(0, BotCount.countBetween(times, 6, 8));
        assertEquals(1, BotCount.countBetween(times, 12, 20));
        assertEquals(0, BotCount.countBetween(new byte[0], 0, 1));
        byte[] extremes = times(Long.MIN_VALUE, -3, Long.MAX_VALUE);
        assertEquals(2, BotCount.countBetween(extremes, -5, Long.MAX_VALUE));
    }

    @Test
    void insertKeepsTheTimesSortedWithRepeats() {
        byte[] times = BotCount.insert(null, 7);
        assertArrayEquals(times(7), times);
        times = BotCount.insert(times, 3);
        times = BotCount.insert(times, 9);
        times = BotCount.insert(times, 7);
        times = BotCount.insert(times, -1);
        assertArrayEquals(times(-1, 3, 7, 7, 9), times);
        assertEquals(2, BotCount.countBetween(times, 7, 8));
    }
}
