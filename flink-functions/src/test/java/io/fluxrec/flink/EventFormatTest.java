package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.Base64;

import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.binary.BinaryStringData;
import org.junit.jupiter.api.Test;

/** The sources' format: the rows it decodes (the job's tests run it inside Flink). */
class EventFormatTest {

    private static final String SPEC =
            Base64.getEncoder()
                    .encodeToString(
                            ("{\"labels\": [[\"click\", \"click\", 300000], [\"conv\", \"conversion\","
                                            + " 3600000]], \"strategy\": \"window\","
                                            + " \"late_action_policy\": \"dead_letter\","
                                            + " \"late_horizon_ms\": 0, \"max_future_skew_ms\": 1000,"
                                            + " \"metrics_window_ms\": 60000}")
                                    .getBytes(StandardCharsets.UTF_8));

    private static final long T = 1700000000000L;

    private static final String IMPRESSION =
            "{\"v\":1,\"request_id\":\"r1\",\"item_id\":\"i9\",\"user_id\":\"u3\","
                    + "\"event_time_ms\":" + T + ",\"features\":{\"a\":1}}";

    private static final String[] EVENTS_ROW = {
        "is_action", "payload", "reason", "t", "request_id", "item_id", "spans", "label"
    };

    private static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    @Test
    void aValidImpressionIsTheJoinsRowAndKeepsTheKafkaArray() {
        byte[] b = utf8(IMPRESSION);
        RowData row = EventFormat.Decoder.of(true, SPEC, EVENTS_ROW).decode(b, T);
        assertEquals(8, row.getArity());
        assertFalse(row.getBoolean(0));
        BinaryStringData payload = (BinaryStringData) row.getString(1);
        assertSame(b, payload.getSegments()[0].getArray()); // no copy
        assertTrue(row.isNullAt(2));
        assertEquals(T, row.getLong(3));
        assertEquals("r1", row.getString(4).toString());
        assertEquals("i9", row.getString(5).toString());
        EventParser p = new EventParser();
        p.parse(b, 0, b.length);
        assertArrayEquals(p.bodySpans(), row.getBinary(6));
        assertTrue(row.isNullAt(7));
    }

    @Test
    void anActionHasItsLabelAndUser() {
        String click = IMPRESSION.replace("\"features\":{\"a\":1}", "\"action\":\"conversion\"");
        RowData row =
                EventFormat.Decoder.of(false, SPEC, "user_id", "label", "is_action", "spans")
                        .decode(utf8(click), T);
        assertEquals("u3", row.getString(0).toString());
        assertEquals(1, row.getInt(1));
        assertTrue(row.getBoolean(2));
        assertTrue(row.isNullAt(3));
        RowData unknown =
                EventFormat.Decoder.of(false, SPEC, "reason", "label", "t")
                        .decode(utf8(click.replace("conversion", "like")), T);
        assertEquals(Reasons.UNKNOWN_ACTION, unknown.getString(0).toString());
        assertTrue(unknown.isNullAt(1));
        assertEquals(T, unknown.getLong(2));
    }

    @Test
    void aBadPayloadIsARowWithItsReasonNotAFailure() {
        EventFormat.Decoder d = EventFormat.Decoder.of(true, SPEC, EVENTS_ROW);
        RowData future = d.decode(utf8(IMPRESSION), T - 1001);
        assertEquals(Reasons.FUTURE_EVENT, future.getString(2).toString());
        assertEquals(T, future.getLong(3));
        assertTrue(future.isNullAt(4) && future.isNullAt(6));
        byte[] deep = utf8("[".repeat(100_000));
        RowData malformed = d.decode(deep, T);
        assertEquals(Reasons.MALFORMED_JSON, malformed.getString(2).toString());
        assertTrue(malformed.isNullAt(3));
        assertArrayEquals(deep, malformed.getString(1).toBytes());
        RowData tombstone = d.decode(null, T);
        assertEquals(Reasons.MALFORMED_JSON, tombstone.getString(2).toString());
        assertEquals(0, tombstone.getString(1).toBytes().length);
    }

    @Test
    void aDecoderOfAnUnknownColumnIsRefused() {
        IllegalArgumentException e =
                assertThrows(
                        IllegalArgumentException.class,
                        () -> EventFormat.Decoder.of(true, SPEC, "payload", "body"));
        assertTrue(e.getMessage().contains("no column body"), e.getMessage());
        assertTrue(e.getMessage().contains(EventFormat.Column.sql()), e.getMessage());
    }

    @Test
    void theColumnsReadAsTheSqlOfATable() {
        assertEquals(
                "is_action BOOLEAN, payload STRING, reason STRING, t BIGINT, request_id STRING,"
                        + " item_id STRING, user_id STRING, label INT, spans BYTES",
                EventFormat.Column.sql());
    }

    @Test
    void theWatermarkTimeIgnoresMissingAndFutureTimes() {
        assertEquals(T, ParseEvent.watermarkTime(T, 1000, T - 1000));
        assertEquals(0, ParseEvent.watermarkTime(T, 1000, T - 1001));
        assertEquals(0, ParseEvent.watermarkTime(null, 1000, T));
    }
}
