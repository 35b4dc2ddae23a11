package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** The join's state entry: {@code SampleJoin.Pair} encoded and decoded. */
class SampleJoinPairTest {

    private static final long NONE = Long.MIN_VALUE;

    private static SampleJoin.Pair roundTrip(SampleJoin.Pair pair) {
        return new SampleJoin.Pair().read(pair.encode(new ByteSink(16)));
    }

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static byte[] id(SampleJoin.Pair pair) {
        return Arrays.copyOfRange(pair.idBytes, pair.idOff, pair.idOff + pair.idLen);
    }

    private static byte[] body(SampleJoin.Pair pair) {
        return Arrays.copyOfRange(pair.bodyBytes, pair.bodyOff, pair.bodyOff + pair.bodyLen);
    }

    @Test
    void anEmptyPairIsNoEntry() {
        assertNull(new SampleJoin.Pair().encode(new ByteSink(16)));
        SampleJoin.Pair fresh = new SampleJoin.Pair().read(null);
        assertFalse(fresh.seen);
        assertFalse(fresh.hasT);
        assertFalse(fresh.emittedSet);
        assertNull(fresh.pendingTimes);
    }

    @Test
    void aHeldImpressionKeepsEveryField() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.seen = true;
        pair.hasT = true;
        pair.t = 1_700_000_000_123L;
        pair.hasKeepUntil = true;
        pair.keepUntil = 1_700_007_200_123L;
        pair.emittedSet = true;
        pair.emitted = false;
        byte[] fields = utf8("xxr1|i1|0\"user_id\":\"u1\",\"features\":{\"é\":[1]}yy");
        pair.id(fields, 2, 7);
        pair.body(fields, 9, fields.length - 11);
        long[] labels = {NONE, 1_700_000_002_000L, -5L};
        System.arraycopy(labels, 0, pair.labelTimes(3), 0, 3);
        SampleJoin.Pair back = roundTrip(pair);
        assertTrue(back.seen);
        assertEquals(pair.t, back.t);
        assertEquals(pair.keepUntil, back.keepUntil);
        assertTrue(back.emittedSet);
        assertFalse(back.emitted);
        assertArrayEquals(utf8("r1|i1|0"), id(back));
        assertArrayEquals(utf8("\"user_id\":\"u1\",\"features\":{\"é\":[1]}"), body(back));
        assertArrayEquals(labels, back.labelTimes);
        assertNull(back.pendingTimes);
        assertNull(back.pendingPayloads);
    }

    @Test
    void anEmittedSampleKeepsOnlyTheDedupMarker() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.seen = true;
        pair.hasT = true;
        pair.t = 42L;
        pair.hasKeepUntil = true;
        pair.keepUntil = 7_200_042L;
        pair.emittedSet = true;
        pair.emitted = true;
        SampleJoin.Pair back = roundTrip(pair);
        assertTrue(back.emitted);
        assertNull(back.idBytes);
        assertNull(back.bodyBytes);
        assertNull(back.labelTimes);
        assertEquals(1 + 8 + 8, pair.encode(new ByteSink(16)).length);
    }

    @Test
    void pendingActionsKeepTheirPayloads() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.pendingTimes = new long[] {NONE, 99L, 0L};
        pair.pendingPayloads = new byte[][] {null, utf8("{\"action\":\"click\"}"), new byte[0]};
        SampleJoin.Pair back = roundTrip(pair);
        assertFalse(back.seen);
        assertFalse(back.hasT);
        assertArrayEquals(pair.pendingTimes, back.pendingTimes);
        assertNull(back.pendingPayloads[0]);
        assertArrayEquals(pair.pendingPayloads[1], back.pendingPayloads[1]);
        assertArrayEquals(new byte[0], back.pendingPayloads[2]);
    }

    @Test
    void aReusedPairForgetsThePreviousEntry() {
        SampleJoin.Pair pair = new SampleJoin.Pair();
        pair.seen = true;
        pair.hasT = true;
        pair.t = 5L;
        pair.labelTimes(2)[0] = 1L;
        pair.labelTimes[1] = NONE;
        byte[] held = pair.encode(new ByteSink(16));
        SampleJoin.Pair orphan = new SampleJoin.Pair();
        orphan.pendingTimes = new long[] {NONE, 9L};
        orphan.pendingPayloads = new byte[][] {null, utf8("{}")};
        byte[] orphans = orphan.encode(new ByteSink(16));

        SampleJoin.Pair reused = new SampleJoin.Pair().read(held);
        assertArrayEquals(new long[] {1L, NONE}, reused.labelTimes);
        reused.read(orphans);
        assertFalse(reused.seen);
        assertFalse(reused.hasT);
        assertNull(reused.labelTimes);
        assertArrayEquals(new long[] {NONE, 9L}, reused.pendingTimes);
        reused.read(null);
        assertNull(reused.encode(new ByteSink(16)));
    }
}
