package io.fluxrec.flink;

import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Base of the two parse functions: one parse of a raw Kafka value per event.
 *
 * <p>Declared non-deterministic: otherwise the planner may inline one call per field access
 * of the returned row (and the future-event check reads the clock anyway).
 */
public abstract class ParseEvent extends ScalarFunction {

    private static final long serialVersionUID = 1L;

    /** This thread's parser ({@link EventParser#forThread}), set by every call. */
    protected transient EventParser parser;
    protected transient JoinSpec spec;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }

    /** Parses the payload; returns its reason (null: valid so far) after the future check. */
    protected final String parse(StringData payload, boolean impression) {
        parser = EventParser.forThread();
        byte[] b = payload.toBytes();
        parser.parse(b, 0, b.length);
        String reason = parser.reason(impression, spec.actions);
        if (reason == null && parser.time() > System.currentTimeMillis() + spec.maxFutureSkewMs) {
            reason = Reasons.FUTURE_EVENT;
        }
        return reason;
    }

    protected final Long time() {
        return parser.hasTime() ? parser.time() : null;
    }

    protected final StringData string(int field) {
        return StringData.fromBytes(parser.decoded(field));
    }

    /**
     * {@code fluxrec_impression(payload)}: {@code reason} (null when valid), {@code t} (the
     * event time if the payload is an object with an integer {@code event_time_ms}, else null),
     * the join keys, and for a valid impression {@code spans}: where the sample's fields stand
     * in the payload ({@link EventParser#bodySpans}, 48 bytes), from which {@code SampleJoin}
     * writes the sample's body, {@code "request_id":..,"item_id":..,"user_id":..,
     * "event_time_ms":..,"features":{..}[,"p_click":..]}, as written in the payload. The
     * spans, not the body, travel with the payload: one copy of the fields fewer per operator.
     */
    public static final class Impression extends ParseEvent {
        private static final long serialVersionUID = 1L;

        public @org.apache.flink.table.annotation.DataTypeHint(
                value = "ROW<reason STRING, t BIGINT, request_id STRING, item_id STRING, spans BYTES>",
                bridgedTo = RowData.class) RowData eval(
                @org.apache.flink.table.annotation.DataTypeHint(
                                value = "STRING",
                                bridgedTo = StringData.class)
                        StringData payload) {
            String reason = parse(payload, true);
            if (reason != null) {
                return GenericRowData.of(StringData.fromString(reason), time(), null, null, null);
            }
            return GenericRowData.of(
                    null,
                    time(),
                    string(EventParser.REQUEST_ID),
                    string(EventParser.ITEM_ID),
                    parser.bodySpans());
        }
    }

    /**
     * {@code fluxrec_action(payload)}: {@code reason}, {@code t} and the keys as for
     * impressions, {@code user_id}, and {@code label}: the index of the action's type among
     * the configured labels.
     */
    public static final class Action extends ParseEvent {
        private static final long serialVersionUID = 1L;

        public @org.apache.flink.table.annotation.DataTypeHint(
                value =
                        "ROW<reason STRING, t BIGINT, request_id STRING, item_id STRING,"
                                + " user_id STRING, label INT>",
                bridgedTo = RowData.class) RowData eval(
                @org.apache.flink.table.annotation.DataTypeHint(
                                value = "STRING",
                                bridgedTo = StringData.class)
                        StringData payload) {
            String reason = parse(payload, false);
            if (reason != null) {
                return GenericRowData.of(
                        StringData.fromString(reason), time(), null, null, null, null);
            }
            return GenericRowData.of(
                    null,
                    time(),
                    string(EventParser.REQUEST_ID),
                    string(EventParser.ITEM_ID),
                    string(EventParser.USER_ID),
                    parser.label());
        }
    }

    /**
     * {@code fluxrec_event_time(payload, max_future_skew_ms)} for the rowtime column of a
     * source: the event time when it parses and is not in the future, else 0, so that such
     * events cannot move the watermark (CONTRACTS.md 4.1). It also runs in the source's
     * watermark generator, where job parameters cannot be read: the skew is an argument.
     */
    public static final class EventTime extends ScalarFunction {
        private static final long serialVersionUID = 1L;

        @Override
        public boolean isDeterministic() {
            return false;
        }

        public long eval(
                @org.apache.flink.table.annotation.DataTypeHint(
                                value = "STRING",
                                bridgedTo = StringData.class)
                        StringData payload,
                long maxFutureSkewMs) {
            EventParser parser = EventParser.forThread();
            byte[] b = payload.toBytes();
            parser.parse(b, 0, b.length);
            if (!parser.hasTime() || parser.time() > System.currentTimeMillis() + maxFutureSkewMs) {
                return 0L;
            }
            return parser.time();
        }
    }
}
