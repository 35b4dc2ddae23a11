package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

import org.junit.jupiter.api.Test;

/** The parser on its own (the Python tests compare it with the reference on many payloads). */
class EventParserTest {

    private static final byte[][] ACTIONS = {utf8("click"), utf8("conversion")};

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    private static final String IMPRESSION =
            "{\"v\":1,\"request_id\":\"r1\",\"item_id\":\"i9\",\"user_id\":\"u3\","
                    + "\"event_time_ms\":1700000000000,\"features\":{\"sparse\":{\"a\":[\"x\"]}},"
                    + "\"p_click\":0.25}";

    private static String reason(String payload, boolean impression) {
        EventParser p = new EventParser();
        byte[] b = utf8(payload);
        p.parse(b, 0, b.length);
        return p.reason(impression, ACTIONS);
    }

    @Test
    void aValidImpressionHasItsFieldsAndBody() {
        EventParser p = new EventParser();
        byte[] b = utf8(IMPRESSION);
        assertTrue(p.parse(b, 0, b.length));
        assertNull(p.reason(true, ACTIONS));
        assertEquals(1700000000000L, p.time());
        assertArrayEquals(utf8("r1"), p.decoded(EventParser.REQUEST_ID));
        byte[] spans = p.bodySpans();
        assertEquals(EventParser.BODY_SPANS_BYTES, spans.length);
        String want =
                "\"request_id\":\"r1\",\"item_id\":\"i9\",\"user_id\":\"u3\","
                        + "\"event_time_ms\":1700000000000,\"features\":{\"sparse\":{\"a\":[\"x\"]}},"
                        + "\"p_click\":0.25";
        ByteSink body = new ByteSink(16);
        EventParser.writeBody(body, b, 0, spans);
        assertEquals(want, new String(body.toArray(), StandardCharsets.UTF_8));
        // the spans are offsets from the payload's first byte: the payload may lie anywhere
        byte[] inside = new byte[b.length + 7];
        System.arraycopy(b, 0, inside, 5, b.length);
        assertTrue(p.parse(inside, 5, b.length));
        assertArrayEquals(spans, p.bodySpans());
        body.reset();
        EventParser.writeBody(body, inside, 5, spans);
        assertEquals(want, new String(body.toArray(), StandardCharsets.UTF_8));
    }

    @Test
    void aBodyLeavesOutAPClickThatIsNotANumber() {
        EventParser p = new EventParser();
        byte[] b =
                utf8(
                        "{\"v\":1,\"request_id\":\"r\",\"item_id\":\"i\",\"user_id\":\"u\","
                                + "\"p_click\":\"high\",\"event_time_ms\":5,\"features\":{}}");
        assertTrue(p.parse(b, 0, b.length));
        assertNull(p.reason(true, ACTIONS));
        ByteSink body = new ByteSink(16);
        EventParser.writeBody(body, b, 0, p.bodySpans());
        assertEquals(
                "\"request_id\":\"r\",\"item_id\":\"i\",\"user_id\":\"u\","
                        + "\"event_time_ms\":5,\"features\":{}",
                new String(body.toArray(), StandardCharsets.UTF_8));
    }

    @Test
    void actionsGetTheirLabelOrUnknownAction() {
        EventParser p = new EventParser();
        byte[] b =
                utf8(
                        "{\"v\":1,\"request_id\":\"r\",\"item_id\":\"i\",\"user_id\":\"u\","
                                + "\"action\":\"conversion\",\"event_time_ms\":5}");
        p.parse(b, 0, b.length);
        assertNull(p.reason(false, ACTIONS));
        assertEquals(1, p.label());
        assertEquals(
                Reasons.UNKNOWN_ACTION,
                reason(
                        "{\"v\":1,\"request_id\":\"r\",\"item_id\":\"i\",\"user_id\":\"u\","
                                + "\"action\":\"like\",\"event_time_ms\":5}",
                        false));
    }

    @Test
    void reasonsFollowTheContractOrder() {
        assertEquals(Reasons.MALFORMED_JSON, reason("[1,2]", true));
        assertEquals(Reasons.MISSING_FIELD, reason("{\"v\":\"x\"}", true));
        assertEquals(
                Reasons.BAD_TYPE,
                reason(IMPRESSION.replace("\"r1\"", "1").replace("\"v\":1", "\"v\":2"), true));
        assertEquals(Reasons.UNSUPPORTED_VERSION, reason(IMPRESSION.replace("\"v\":1", "\"v\":2"), true));
        assertEquals(Reasons.BAD_TYPE, reason(IMPRESSION.replace("\"v\":1", "\"v\":1.0"), true));
        assertEquals(
                Reasons.BAD_TYPE,
                reason(IMPRESSION.replace("1700000000000", "9223372036854775808"), true));
        assertNull(reason(IMPRESSION.replace("1700000000000", "-9223372036854775808"), true));
    }

    @Test
    void deepNestingIsMalformedWithoutDeepRecursion() {
        String deep = "[".repeat(100_000);
        assertEquals(Reasons.MALFORMED_JSON, reason(deep, true));
        String inObject = "{\"a\":" + "[".repeat(100_000) + "]".repeat(100_000) + "}";
        assertEquals(Reasons.MALFORMED_JSON, reason(inObject, true));
        String limit = "{\"a\":" + "[".repeat(127) + "]".repeat(127) + "}";
        assertEquals(Reasons.MISSING_FIELD, reason(limit, true)); // parsed: 128 deep is fine
        String over = "{\"a\":" + "[".repeat(128) + "]".repeat(128) + "}";
        assertEquals(Reasons.MALFORMED_JSON, reason(over, true));
    }

    @Test
    void aTenMegabyteStringIsParsed() {
        char[] x = new char[10_000_000];
        Arrays.fill(x, 'x');
        String big = IMPRESSION.replace("\"x\"", "\"" + new String(x) + "\"");
        assertNull(reason(big, true));
        assertEquals(Reasons.MALFORMED_JSON, reason("{\"v\":\"" + new String(x), true));
    }

    @Test
    void invalidUtf8IsMalformed() {
        for (byte[] bad :
                new byte[][] {
                    {(byte) 0xff}, {(byte) 0xc0, (byte) 0x80}, {(byte) 0xed, (byte) 0xa0, (byte) 0x80},
                    {(byte) 0xe2, (byte) 0x82}, {(byte) 0xf4, (byte) 0x90, (byte) 0x80, (byte) 0x80},
                }) {
            ByteSink s = new ByteSink(16).ascii("{\"v\":\"").write(bad).ascii("\"}");
            EventParser p = new EventParser();
            assertFalse(p.parse(s.toArray(), 0, s.size()));
        }
        byte[] euro = {'{', '"', 'v', '"', ':', '"', (byte) 0xe2, (byte) 0x82, (byte) 0xac, '"', '}'};
        assertTrue(new EventParser().parse(euro, 0, euro.length));
    }

    @Test
    void escapesDecodeAsPythonDoes() {
        byte[] b = utf8("\\u0072\\ud83d\\ude00\\ud800x\\n");
        byte[] decoded = EventParser.unescape(b, 0, b.length);
        // r, U+1F600 (one code point), a lone surrogate (3-byte form), x, newline
        byte[] want = {
            'r', (byte) 0xf0, (byte) 0x9f, (byte) 0x98, (byte) 0x80, (byte) 0xed, (byte) 0xa0,
            (byte) 0x80, 'x', '\n'
        };
        assertArrayEquals(want, decoded);
        ByteSink out = new ByteSink(4);
        JsonOut.string(out, decoded);
        assertEquals("\"r\uD83D\uDE00\\ud800x\\n\"", new String(out.toArray(), StandardCharsets.UTF_8));
    }

    @Test
    void aRepeatedKeyKeepsItsLastValue() {
        assertEquals(Reasons.UNSUPPORTED_VERSION, reason(IMPRESSION.replace("{\"v\":1,", "{\"v\":1,\"v\":3,"), true));
        assertNull(reason(IMPRESSION.replace("{\"v\":1,", "{\"v\":3,\"\\u0076\":1,"), true));
    }

    @Test
    void spansCountFromThePayloadsFirstByteWhereverItStands() {
        EventParser p = new EventParser();
        byte[] b = utf8(IMPRESSION);
        assertTrue(p.parse(b, 0, b.length));
        byte[] spans = p.bodySpans();
        byte[] inside = new byte[b.length + 9];
        System.arraycopy(b, 0, inside, 9, b.length);
        assertTrue(p.parse(inside, 9, b.length));
        assertArrayEquals(spans, p.bodySpans());
        assertArrayEquals(utf8("r1"), p.decoded(EventParser.REQUEST_ID));
        b[2] = 'x'; // "x":1, and no "v"
        assertTrue(p.parse(b, 0, b.length));
        assertEquals(Reasons.MISSING_FIELD, p.reason(true, ACTIONS));
    }

    @Test
    void deadLetterPayloadsKeepEveryByte() {
        byte[] raw = {'{', (byte) 0xff, (byte) 0xe2, (byte) 0x82, (byte) 0xac, '"', 0, '}'};
        ByteSink out = new ByteSink(4);
        JsonOut.payload(out, raw, 0, raw.length);
        assertEquals("\"{\\udcff\u20ac\\\"\\u0000}\"", new String(out.toArray(), StandardCharsets.UTF_8));
    }

    @Test
    void metricCodesRoundTrip() {
        int code = Reasons.deadCode(Reasons.ACTION, Reasons.ORPHAN_ACTION);
        assertEquals("action", Reasons.stream(code));
        assertEquals("dead_letter", Reasons.kind(code));
        assertEquals(Reasons.ORPHAN_ACTION, Reasons.reason(code));
        int sample = Reasons.code(Reasons.IMPRESSION, Reasons.SAMPLE);
        assertEquals("impression", Reasons.stream(sample));
        assertEquals("sample", Reasons.kind(sample));
        assertNull(Reasons.reason(sample));
    }

    @Test
    void theSpecIsReadFromItsJson() {
        JoinSpec s =
                JoinSpec.of(
                        "{\"labels\": [[\"click\", \"click\", 300000], [\"conv\", \"a\\\"b\", 3600000]],"
                                + " \"strategy\": \"fake_negative\", \"late_action_policy\": \"correction\","
                                + " \"late_horizon_ms\": 5, \"max_future_skew_ms\": 6,"
                                + " \"metrics_window_ms\": 60000}");
        assertEquals(3600000, s.maxWindow);
        assertArrayEquals(utf8("a\"b"), s.actions[1]);
        assertTrue(s.fakeNegative && s.lateCorrection);
        assertEquals(-1, s.window(-1L));
        assertEquals(0, s.window(null));
    }
}
