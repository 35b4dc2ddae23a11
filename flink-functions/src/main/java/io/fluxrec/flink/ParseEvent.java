package io.fluxrec.flink;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The parse of a raw payload as a scalar function, for tables of payloads that are not Kafka
 * (the benchmark's datagen): the rows of the Kafka sources' format ({@link EventFormat}), by
 * the same decoder, one call per payload.
 *
 * <p>Declared non-deterministic: otherwise the planner may inline one call per field access
 * of the returned row (and the future-event check reads the clock anyway).
 */
public abstract class ParseEvent extends ScalarFunction {

    private static final long serialVersionUID = 1L;

    private transient EventFormat.Decoder decoder;

    @Override
    public void open(FunctionContext context) throws Exception {
        String spec = context.getJobParameter(JoinSpec.JOB_PARAMETER, null);
        JoinSpec.fromJob(spec); // a clear error when the job did not set it
        decoder = EventFormat.Decoder.of(impression(), spec, columns());
    }

    /** Whether the payloads are impressions (else actions). */
    abstract boolean impression();

    /** The columns of the result (SQL names of {@link EventFormat.Column}). */
    abstract String[] columns();

    @Override
    public boolean isDeterministic() {
        return false;
    }

    /** The row of one payload, as the Kafka source's format decodes it. */
    protected final RowData decode(StringData payload) {
        return decoder.decode(payload.toBytes(), System.currentTimeMillis());
    }

    /**
     * The time an event moves the watermark with: its event time {@code t} (null: none parsed)
     * when not in the future, else 0, so that such events cannot move the watermark
     * (CONTRACTS.md 4.1).
     */
    public static long watermarkTime(Long t, long maxFutureSkewMs, long nowMs) {
        return t == null || t > nowMs + maxFutureSkewMs ? 0L : t;
    }

    /**
     * {@code fluxrec_impression(payload)}: {@code reason} (null when valid), {@code t} (the
     * event time if the payload is an object with an integer {@code event_time_ms}, else null),
     * the join keys, and for a valid impression {@code spans}: where the sample's fields stand
     * in the payload ({@link EventParser#bodySpans}, 48 bytes), from which {@code SampleJoin}
     * writes the sample's body.
     */
    public static final class Impression extends ParseEvent {
        private static final long serialVersionUID = 1L;

        @Override
        boolean impression() {
            return true;
        }

        @Override
        String[] columns() {
            return new String[] {"reason", "t", "request_id", "item_id", "spans"};
        }

        public @DataTypeHint(
                value = "ROW<reason STRING, t BIGINT, request_id STRING, item_id STRING, spans BYTES>",
                bridgedTo = RowData.class) RowData eval(
                @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData payload) {
            return decode(payload);
        }
    }

    /**
     * {@code fluxrec_action(payload)}: {@code reason}, {@code t} and the keys as for
     * impressions, {@code user_id}, and {@code label}: the index of the action's type among
     * the configured labels.
     */
    public static final class Action extends ParseEvent {
        private static final long serialVersionUID = 1L;

        @Override
        boolean impression() {
            return false;
        }

        @Override
        String[] columns() {
            return new String[] {"reason", "t", "request_id", "item_id", "user_id", "label"};
        }

        public @DataTypeHint(
                value =
                        "ROW<reason STRING, t BIGINT, request_id STRING, item_id STRING,"
                                + " user_id STRING, label INT>",
                bridgedTo = RowData.class) RowData eval(
                @DataTypeHint(value = "STRING", bridgedTo = StringData.class) StringData payload) {
            return decode(payload);
        }
    }

    /**
     * {@code fluxrec_event_time(t, max_future_skew_ms)} for the rowtime column of a source:
     * {@link #watermarkTime} of the event time {@code t} the source parsed. It runs in the
     * source's watermark generator, where job parameters cannot be read: the skew is an
     * argument.
     */
    public static final class EventTime extends ScalarFunction {
        private static final long serialVersionUID = 1L;

        @Override
        public boolean isDeterministic() {
            return false;
        }

        public long eval(Long t, long maxFutureSkewMs) {
            return watermarkTime(t, maxFutureSkewMs, System.currentTimeMillis());
        }
    }
}
