package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;

/** The join's state entry: {@code SampleJoin.Pair} encoded and decoded. */
class SampleJoinPairTest {

    private static final long NONE = Long.MIN_VALUE;

    private static SampleJoin.Pair roundTrip(SampleJoin.Pair pair) {
        return SampleJoin.Pair.decode(pair.encode(new ByteSink(16)));
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    void anEmptyPairIsNoEntry() {
        assertNull(new SampleJoin.Pair().encode(new ByteSink(16)));
        SampleJoin.Pair fresh = SampleJoin.Pair.decode(null);
        assertNull(fresh.seen);
        assertNull(fresh.t);
        assertNull(fresh.emitted);
        assertNull(fresh.pendingTimes);
    }

    @Test
    void aHeldImpressionKeepsEveryField() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.seen = true;
        pair.t = 1_700_000_000_123L;
        pair.keepUntil = 1_700_007_200_123L;
        pair.emitted = false;
        pair.id = utf8("r1|i1|0");
        pair.body = utf8("\"user_id\":\"u1\",\"features\":{\"é\":[1]}");
        pair.labelTimes = new long[] {NONE, 1_700_000_002_000L, -5L};
        SampleJoin.Pair back = roundTrip(pair);
        assertEquals(Boolean.TRUE, back.seen);
        assertEquals(pair.t, back.t);
        assertEquals(pair.keepUntil, back.keepUntil);
        assertEquals(Boolean.FALSE, back.emitted);
        assertArrayEquals(pair.id, back.id);
        assertArrayEquals(pair.body, back.body);
        assertArrayEquals(pair.labelTimes, back.labelTimes);
        assertNull(back.pendingTimes);
        assertNull(back.pendingPayloads);
    }

    @Test
    void anEmittedSampleKeepsOnlyTheDedupMarker() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.seen = true;
        pair.t = 42L;
        pair.keepUntil = 7_200_042L;
        pair.emitted = true;
        SampleJoin.Pair back = roundTrip(pair);
        assertEquals(Boolean.TRUE, back.emitted);
        assertNull(back.id);
        assertNull(back.body);
        assertNull(back.labelTimes);
        assertEquals(1 + 8 + 8, pair.encode(new ByteSink(16)).length);
    }

    @Test
    void pendingActionsKeepTheirPayloads() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.pendingTimes = new long[] {NONE, 99L, 0L};
        pair.pendingPayloads = new byte[][] {null, utf8("{\"action\":\"click\"}"), new byte[0]};
        SampleJoin.Pair back = roundTrip(pair);
        assertNull(back.seen);
        assertNull(back.t);
        assertArrayEquals(pair.pendingTimes, back.pendingTimes);
        assertNull(back.pendingPayloads[0]);
        assertArrayEquals(pair.pendingPayloads[1], back.pendingPayloads[1]);
        assertArrayEquals(new byte[0], back.pendingPayloads[2]);
    }
}
