package io.fluxrec.flink;

import org.apache.flink.api.common.serialization.SerializationSchema;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.EncodingFormat;
import org.apache.flink.table.connector.sink.DynamicTableSink;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.factories.SerializationFormatFactory;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;
import org.apache.flink.table.types.logical.RowType;

import java.util.List;
import java.util.Set;

/**
 * The {@code fluxrec-record} format: a Kafka value that is one {@code STRING} column of the
 * table's value columns, as its UTF-8 bytes (what {@code raw} writes for a table of that one
 * column), the other value columns ignored. It lets the sink of the join's records take the
 * rows of {@code fluxrec_join} as they are, so that the operator before it is a filter that
 * passes each row on, not a projection, which Flink's generated code makes by copying every
 * string of the row.
 *
 * <pre>
 * CREATE TABLE fj_records (
 *   request_id STRING, item_id STRING, k STRING, v STRING, mq BIGINT, mc INT,
 *   `topic` STRING METADATA
 * ) WITH ('connector' = 'kafka', 'topic' = 'samples;dead-letters',
 *         'key.format' = 'raw', 'key.fields' = 'k',
 *         'value.format' = 'fluxrec-record', 'value.fields-include' = 'EXCEPT_KEY')
 * </pre>
 *
 * Option {@code field}: the value column written (default {@code v}). A null value is a
 * tombstone (no bytes).
 */
public final class RecordFormat implements SerializationFormatFactory {

    public static final String IDENTIFIER = "fluxrec-record";

    public static final ConfigOption<String> FIELD =
            ConfigOptions.key("field")
                    .stringType()
                    .defaultValue("v")
                    .withDescription("the STRING value column whose bytes are the Kafka value");

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Set.of();
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Set.of(FIELD);
    }

    @Override
    public EncodingFormat<SerializationSchema<RowData>> createEncodingFormat(
            DynamicTableFactory.Context context, ReadableConfig formatOptions) {
        FactoryUtil.validateFactoryOptions(this, formatOptions);
        String field = formatOptions.get(FIELD);
        return new EncodingFormat<>() {
            @Override
            public SerializationSchema<RowData> createRuntimeEncoder(
                    DynamicTableSink.Context ctx, DataType physicalDataType) {
                return new Encoder(index((RowType) physicalDataType.getLogicalType(), field));
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    /** The position of the STRING column {@code field} among the value columns of {@code row}. */
    static int index(RowType row, String field) {
        List<String> names = row.getFieldNames();
        int i = names.indexOf(field);
        if (i < 0) {
            throw new ValidationException(
                    "format " + IDENTIFIER + ": no value column '" + field + "' among " + names
                            + "; name the column to write with '" + IDENTIFIER + ".field'");
        }
        LogicalType type = row.getTypeAt(i);
        if (type.getTypeRoot() != LogicalTypeRoot.VARCHAR
                && type.getTypeRoot() != LogicalTypeRoot.CHAR) {
            throw new ValidationException(
                    "format " + IDENTIFIER + ": value column '" + field + "' is " + type
                            + ", not STRING");
        }
        return i;
    }

    /** The bytes of one column of each row. */
    static final class Encoder implements SerializationSchema<RowData> {
        private static final long serialVersionUID = 1L;

        private final int index;

        Encoder(int index) {
            this.index = index;
        }

        @Override
        public byte[] serialize(RowData row) {
            return row.isNullAt(index) ? null : row.getString(index).toBytes();
        }
    }
}
