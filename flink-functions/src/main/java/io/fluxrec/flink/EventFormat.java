package io.fluxrec.flink;

import org.apache.flink.api.common.serialization.DeserializationSchema;
import org.apache.flink.api.common.typeinfo.TypeInformation;
import org.apache.flink.configuration.ConfigOption;
import org.apache.flink.configuration.ConfigOptions;
import org.apache.flink.configuration.ReadableConfig;
import org.apache.flink.table.api.ValidationException;
import org.apache.flink.table.connector.ChangelogMode;
import org.apache.flink.table.connector.format.DecodingFormat;
import org.apache.flink.table.connector.source.DynamicTableSource;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.binary.BinaryStringData;
import org.apache.flink.table.factories.DeserializationFormatFactory;
import org.apache.flink.table.factories.DynamicTableFactory;
import org.apache.flink.table.factories.FactoryUtil;
import org.apache.flink.table.types.DataType;
import org.apache.flink.table.types.logical.LogicalTypeRoot;

import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.Set;
import java.util.stream.Collectors;

/**
 * The {@code fluxrec-event} format: a Kafka value parsed once, in the source, into the row the
 * join's next operator takes, so that no operator between the source and the shuffle copies
 * the payload (Flink's generated code copies every string it reads: the watermark generator,
 * a Calc calling a parse function, a projection).
 *
 * <pre>
 * CREATE TABLE fj_imp (
 *   is_action BOOLEAN, payload STRING, reason STRING, t BIGINT,
 *   request_id STRING, item_id STRING, spans BYTES, label INT,
 *   et AS TO_TIMESTAMP_LTZ(fluxrec_event_time(t, 60000), 3),
 *   WATERMARK FOR et AS et - INTERVAL '2' SECOND
 * ) WITH ('connector' = 'kafka', ..., 'format' = 'fluxrec-event',
 *         'fluxrec-event.stream' = 'impression', 'fluxrec-event.spec' = 'eyJsYWJlbHMi...')
 * </pre>
 *
 * Options: {@code stream}, {@code impression} or {@code action}; {@code spec}, the join
 * settings as the job parameter {@code fluxrec.join.spec} carries them (base64 of {@link
 * JoinSpec}'s JSON). The table's physical columns are any of, by name:
 *
 * <ul>
 *   <li>{@code payload STRING}: the Kafka value, every byte as sent (a tombstone: empty);
 *   <li>{@code reason STRING}: null for a valid event, else its dead-letter reason (CONTRACTS.md
 *       section 3, {@code future_event} against the clock at decoding);
 *   <li>{@code t BIGINT}: {@code event_time_ms} when the payload is an object with a 64-bit
 *       integer there, else null;
 *   <li>{@code request_id}, {@code item_id}, {@code user_id STRING}: of a valid event, else null;
 *   <li>{@code spans BYTES}: of a valid impression, where its sample fields stand in the
 *       payload ({@link EventParser#bodySpans}, 48 bytes), else null;
 *   <li>{@code label INT}: of a valid action, the index of its type among the labels, else null;
 *   <li>{@code is_action BOOLEAN}: whether the stream is {@code action}.
 * </ul>
 *
 * The same values as {@code fluxrec_impression}/{@code fluxrec_action} give for the payload
 * (the functions serve sources that are not Kafka, and {@link ParseCli} prints this format's
 * rows for the property test against the reference). A payload never fails the decoding: a bad
 * one is a row with its reason, which the job sends to the dead letters.
 */
public final class EventFormat implements DeserializationFormatFactory {

    public static final String IDENTIFIER = "fluxrec-event";

    public static final ConfigOption<String> STREAM =
            ConfigOptions.key("stream")
                    .stringType()
                    .noDefaultValue()
                    .withDescription("impression or action: which contract the values follow");

    public static final ConfigOption<String> SPEC =
            ConfigOptions.key("spec")
                    .stringType()
                    .noDefaultValue()
                    .withDescription("the join settings, base64 of their JSON (JoinSql.spec)");

    /** The columns a table of this format may declare (by name), with their types. */
    enum Column {
        IS_ACTION(LogicalTypeRoot.BOOLEAN, "BOOLEAN"),
        PAYLOAD(LogicalTypeRoot.VARCHAR, "STRING"),
        REASON(LogicalTypeRoot.VARCHAR, "STRING"),
        T(LogicalTypeRoot.BIGINT, "BIGINT"),
        REQUEST_ID(LogicalTypeRoot.VARCHAR, "STRING"),
        ITEM_ID(LogicalTypeRoot.VARCHAR, "STRING"),
        USER_ID(LogicalTypeRoot.VARCHAR, "STRING"),
        LABEL(LogicalTypeRoot.INTEGER, "INT"),
        SPANS(LogicalTypeRoot.VARBINARY, "BYTES");

        final String sqlName = name().toLowerCase(Locale.ROOT);
        final LogicalTypeRoot type;
        final String sqlType;

        Column(LogicalTypeRoot type, String sqlType) {
            this.type = type;
            this.sqlType = sqlType;
        }

        /** The column of that SQL name, or null. */
        static Column named(String name) {
            for (Column c : values()) {
                if (c.sqlName.equals(name)) {
                    return c;
                }
            }
            return null;
        }

        /** All of them as SQL, for messages: {@code is_action BOOLEAN, payload STRING, ...}. */
        static String sql() {
            return Arrays.stream(values())
                    .map(c -> c.sqlName + " " + c.sqlType)
                    .collect(Collectors.joining(", "));
        }
    }

    @Override
    public String factoryIdentifier() {
        return IDENTIFIER;
    }

    @Override
    public Set<ConfigOption<?>> requiredOptions() {
        return Set.of(STREAM, SPEC);
    }

    @Override
    public Set<ConfigOption<?>> optionalOptions() {
        return Set.of();
    }

    @Override
    public DecodingFormat<DeserializationSchema<RowData>> createDecodingFormat(
            DynamicTableFactory.Context context, ReadableConfig options) {
        FactoryUtil.validateFactoryOptions(this, options);
        String stream = options.get(STREAM);
        if (!"impression".equals(stream) && !"action".equals(stream)) {
            throw new ValidationException(
                    "format " + IDENTIFIER + ": option 'stream' is '" + stream
                            + "'; it must be 'impression' or 'action'");
        }
        String spec = options.get(SPEC);
        try {
            JoinSpec.fromJob(spec);
        } catch (RuntimeException e) {
            throw new ValidationException(
                    "format " + IDENTIFIER + ": option 'spec' is not the base64 of a join spec"
                            + " (sample_join/sql.py JoinSql.spec_parameter writes it)", e);
        }
        boolean impression = "impression".equals(stream);
        return new DecodingFormat<>() {
            @Override
            public DeserializationSchema<RowData> createRuntimeDecoder(
                    DynamicTableSource.Context ctx, DataType physical) {
                List<String> names = DataType.getFieldNames(physical);
                List<DataType> types = DataType.getFieldDataTypes(physical);
                Column[] columns = new Column[names.size()];
                for (int i = 0; i < columns.length; i++) {
                    columns[i] = column(names.get(i), types.get(i));
                }
                TypeInformation<RowData> info = ctx.createTypeInformation(physical);
                return new Decoder(impression, spec, columns, info);
            }

            @Override
            public ChangelogMode getChangelogMode() {
                return ChangelogMode.insertOnly();
            }
        };
    }

    private static Column column(String name, DataType type) {
        Column c = Column.named(name);
        if (c == null || type.getLogicalType().getTypeRoot() != c.type) {
            throw new ValidationException(
                    "format " + IDENTIFIER + ": column " + name + " " + type
                            + " is not one it fills; the columns are (any of, by name) "
                            + Column.sql());
        }
        return c;
    }

    /**
     * The runtime decoder: one parse per value, one row of the declared columns. The row's
     * {@code payload} is the Kafka value's array itself, not a copy.
     */
    public static final class Decoder implements DeserializationSchema<RowData> {

        private static final long serialVersionUID = 1L;
        private static final byte[] EMPTY = new byte[0];

        private final boolean impression;
        private final String spec;
        private final Column[] columns;
        private final TypeInformation<RowData> type;
        private transient EventParser parser;
        private transient JoinSpec joinSpec;

        /** {@code columns}: per output field, its column; {@code spec}: a base64 JoinSpec. */
        Decoder(boolean impression, String spec, Column[] columns, TypeInformation<RowData> type) {
            this.impression = impression;
            this.spec = spec;
            this.columns = columns.clone();
            this.type = type;
        }

        /** A decoder of the given columns (SQL names of {@link Column}), for tools and tests. */
        public static Decoder of(boolean impression, String spec, String... names) {
            Column[] columns = new Column[names.length];
            for (int i = 0; i < columns.length; i++) {
                columns[i] = Column.named(names[i]);
                if (columns[i] == null) {
                    throw new IllegalArgumentException(
                            "no column " + names[i] + "; the columns are " + Column.sql());
                }
            }
            return new Decoder(impression, spec, columns, null);
        }

        @Override
        public void open(InitializationContext context) {
            init();
        }

        private void init() {
            parser = new EventParser();
            joinSpec = JoinSpec.fromJob(spec);
        }

        @Override
        public RowData deserialize(byte[] message) {
            return decode(message, System.currentTimeMillis());
        }

        /** The row of one Kafka value ({@code null}, a tombstone, as no bytes), at {@code nowMs}. */
        public RowData decode(byte[] message, long nowMs) {
            if (parser == null) {
                init();
            }
            byte[] b = message == null ? EMPTY : message;
            parser.parse(b, 0, b.length);
            String reason = parser.reason(impression, joinSpec.actions);
            if (reason == null && parser.time() > nowMs + joinSpec.maxFutureSkewMs) {
                reason = Reasons.FUTURE_EVENT;
            }
            boolean valid = reason == null;
            GenericRowData row = new GenericRowData(columns.length);
            for (int i = 0; i < columns.length; i++) {
                row.setField(i, field(columns[i], b, reason, valid));
            }
            return row;
        }

        private Object field(Column column, byte[] b, String reason, boolean valid) {
            switch (column) {
                case IS_ACTION:
                    return !impression;
                case PAYLOAD:
                    return BinaryStringData.fromBytes(b);
                case REASON:
                    return valid ? null : StringData.fromString(reason);
                case T:
                    return parser.hasTime() ? parser.time() : null;
                case REQUEST_ID:
                    return valid ? StringData.fromBytes(parser.decoded(EventParser.REQUEST_ID)) : null;
                case ITEM_ID:
                    return valid ? StringData.fromBytes(parser.decoded(EventParser.ITEM_ID)) : null;
                case USER_ID:
                    return valid ? StringData.fromBytes(parser.decoded(EventParser.USER_ID)) : null;
                case LABEL:
                    return valid && !impression ? parser.label() : null;
                case SPANS:
                    return valid && impression ? parser.bodySpans() : null;
                default:
                    throw new IllegalStateException("column " + column);
            }
        }

        @Override
        public boolean isEndOfStream(RowData next) {
            return false;
        }

        @Override
        public TypeInformation<RowData> getProducedType() {
            return type;
        }
    }
}
