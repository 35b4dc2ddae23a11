package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.apache.flink.table.api.DataTypes;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.types.logical.RowType;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;

/** The records' value format: one column's bytes. */
class RecordFormatTest {

    private static final RowType VALUE =
            (RowType)
                    DataTypes.ROW(
                                    DataTypes.FIELD("request_id", DataTypes.STRING()),
                                    DataTypes.FIELD("v", DataTypes.STRING()),
                                    DataTypes.FIELD("mq", DataTypes.BIGINT()))
                            .getLogicalType();

    @Test
    void writesTheBytesOfItsColumnOnly() {
        RecordFormat.Encoder encoder = new RecordFormat.Encoder(RecordFormat.index(VALUE, "v"));
        String v = "{\"v\":1,\"é\":\"\\u0000\"}";
        GenericRowData row = GenericRowData.of(StringData.fromString("r1"), StringData.fromString(v), 7L);
        assertArrayEquals(v.getBytes(StandardCharsets.UTF_8), encoder.serialize(row));
        assertNull(encoder.serialize(GenericRowData.of(StringData.fromString("r1"), null, 7L)));
    }

    @Test
    void namesAMissingOrNonStringColumn() {
        assertEquals(0, RecordFormat.index(VALUE, "request_id"));
        ValidationException missing =
                assertThrows(ValidationException.class, () -> RecordFormat.index(VALUE, "value"));
        assertTrue(missing.getMessage().contains("'value'"), missing.getMessage());
        assertTrue(missing.getMessage().contains("fluxrec-record.field"), missing.getMessage());
        ValidationException typed =
                assertThrows(ValidationException.class, () -> RecordFormat.index(VALUE, "mq"));
        assertTrue(typed.getMessage().contains("not STRING"), typed.getMessage());
    }
}
