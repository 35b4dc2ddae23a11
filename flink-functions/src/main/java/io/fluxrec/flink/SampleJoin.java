package io.fluxrec.flink;

import static org.apache.flink.table.annotation.ArgumentTrait.SET_SEMANTIC_TABLE;

import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ProcessTableFunction;

import java.util.Arrays;

/**
 * {@code fluxrec_join}: everything that happens to one (request_id, item_id), in one keyed
 * operator (CONTRACTS.md section 4): impression dedup and too-late check, the match of each
 * label's action (labelled, late or orphan), the sample (strategy {@code window}: when the
 * watermark passes the label windows; {@code fake_negative}: at once, with positive
 * corrections), dead letters, and one count row per fact for the metrics.
 *
 * <p>Input {@code events}, partitioned by (request_id, item_id), rowtime {@code et}: every
 * event once, {@code is_action} telling its stream. An impression as parsed ({@code reason}
 * null when valid, {@code body} its sample fields); an action with {@code reason} null for a
 * unique, timely, non-bot action of label {@code label}, else its validation reason, {@code
 * duplicate}, {@code too_late} or {@code bot} (decided upstream: {@link DedupActions} and the
 * bot count).
 *
 * <p>Output rows {@code (kind, k, v, mq, mc)}: {@code kind} 1 = a sample (Kafka key {@code k},
 * JSON {@code v}), 2 = a dead letter ({@code v}), 0 = a count only; every row counts one fact,
 * metric code {@code mc} ({@link Reasons}) in metric window {@code mq}.
 *
 * <p>State per key: {@code seen} (the impression arrived: dedup, kept {@code
 * table.exec.state.ttl}, i.e. {@code join.dedup_ttl_ms}); {@code imp} (the sample's fields as
 * JSON text, the impression time and the label times; no TTL, cleared by an event-time timer
 * once no action can match any more, at {@code t_imp + max window + late horizon}); {@code
 * pending} (actions that came before their impression, decided as orphans when the watermark
 * passes them). Timers are unnamed: each firing re-derives what is due from the state.
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        value = "ROW<kind INT, k STRING, v STRING, mq BIGINT, mc INT>",
                        bridgedTo = RowData.class))
public class SampleJoin extends ProcessTableFunction<RowData> {

    private static final long serialVersionUID = 1L;

    public static final int COUNT = 0;
    public static final int SAMPLE = 1;
    public static final int DEAD_LETTER = 2;

    private static final long NONE = Long.MIN_VALUE;

    // columns of the input
    private static final int IS_ACTION = 0;
    private static final int PAYLOAD = 1;
    private static final int REASON = 2;
    private static final int T = 3;
    private static final int REQUEST_ID = 4;
    private static final int ITEM_ID = 5;
    private static final int BODY = 6;
    private static final int LABEL = 7;

    /** Dedup state of the impression. */
    public static class Seen {
        public Boolean impression;
    }

    /** The unique impression while actions can still match it. */
    public static class Imp {
        /** JSON fields of the sample from the payload ({@link ParseEvent.Impression}). */
        public byte[] body;

        /** The sample id, decoded: {@code request_id|item_id|0}. */
        public byte[] id;

        public Long t;
        /** Per label: the time of its labelled action, or Long.MIN_VALUE. */
        public long[] labelTimes;

        public Boolean emitted;
    }

    /** Actions that came before their impression: per label, time and payload. */
    public static class Pending {
        public long[] times;
        public byte[][] payloads;
    }

    private transient JoinSpec spec;
    private transient ByteSink sink;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
        sink = new ByteSink(1024);
    }

    public void eval(
            Context ctx,
            @StateHint(name = "seen") Seen seen,
            @StateHint(name = "imp", ttl = "0") Imp imp,
            @StateHint(name = "pending", ttl = "0") Pending pending,
            @ArgumentHint(
                            name = "events",
                            value = SET_SEMANTIC_TABLE,
                            type =
                                    @DataTypeHint(
                                            value =
                                                    "ROW<is_action BOOLEAN, payload STRING,"
                                                            + " reason STRING, t BIGINT,"
                                                            + " request_id STRING, item_id STRING,"
                                                            + " body BYTES, label INT>",
                                            bridgedTo = RowData.class))
                    RowData row) {
        TimeContext<Long> time = ctx.timeContext(Long.class);
        if (row.getBoolean(IS_ACTION)) {
            action(time, imp, pending, row);
        } else {
            impression(time, seen, imp, pending, row);
        }
    }

    private void impression(TimeContext<Long> time, Seen seen, Imp imp, Pending pending, RowData row) {
        Long t = row.isNullAt(T) ? null : row.getLong(T);
        count(Reasons.IMPRESSION, Reasons.IN, t);
        if (!row.isNullAt(REASON)) {
            dead(Reasons.IMPRESSION, row.getString(REASON).toString(), row.getString(PAYLOAD), t);
            return;
        }
        if (seen.impression != null) {
            count(Reasons.IMPRESSION, Reasons.DUPLICATE_KIND, t);
            return;
        }
        seen.impression = true;
        Long watermark = time.currentWatermark();
        if (watermark != null && t <= watermark) {
            dead(Reasons.IMPRESSION, Reasons.TOO_LATE, row.getString(PAYLOAD), t);
            return;
        }
        imp.body = row.getBinary(BODY);
        imp.t = t;
        imp.emitted = false;
        imp.id = sampleId(row.getString(REQUEST_ID).toBytes(), row.getString(ITEM_ID).toBytes());
        if (spec.fakeNegative) {
            emitSample(imp);
        } else {
            imp.labelTimes = new long[spec.names.length];
            Arrays.fill(imp.labelTimes, NONE);
        }
        if (pending.times != null) {
            for (int l = 0; l < pending.times.length; l++) {
                if (pending.times[l] != NONE) {
                    decide(imp, l, pending.times[l], pending.payloads[l]);
                }
            }
            pending.times = null;
            pending.payloads = null;
        }
        if (!spec.fakeNegative && !imp.emitted) {
            scheduleOrEmit(time, imp);
        }
        time.registerOnTime(t + spec.maxWindow + spec.lateHorizonMs);
    }

    private void action(TimeContext<Long> time, Imp imp, Pending pending, RowData row) {
        Long t = row.isNullAt(T) ? null : row.getLong(T);
        count(Reasons.ACTION, Reasons.IN, t);
        if (!row.isNullAt(REASON)) {
            String verdict = row.getString(REASON).toString();
            if (Reasons.DUPLICATE.equals(verdict)) {
                count(Reasons.ACTION, Reasons.DUPLICATE_KIND, t);
            } else {
                dead(Reasons.ACTION, verdict, row.getString(PAYLOAD), t);
            }
            return;
        }
        int label = row.getInt(LABEL);
        byte[] payload = row.getString(PAYLOAD).toBytes();
        if (imp.t != null) {
            decide(imp, label, t, payload);
            if (!spec.fakeNegative && !imp.emitted) {
                scheduleOrEmit(time, imp);
            }
            return;
        }
        if (pending.times == null) {
            pending.times = new long[spec.names.length];
            Arrays.fill(pending.times, NONE);
            pending.payloads = new byte[spec.names.length][];
        }
        pending.times[label] = t;
        pending.payloads[label] = payload;
        time.registerOnTime(t); // no impression by then: an orphan
    }

    /** An action of {@code label} at {@code t} meets the impression (CONTRACTS.md 4.3, 4.7). */
    private void decide(Imp imp, int label, long t, byte[] payload) {
        long tImp = imp.t;
        long window = spec.windows[label];
        if (t < tImp || t > tImp + window + spec.lateHorizonMs) {
            dead(Reasons.ACTION, Reasons.ORPHAN_ACTION, payload, t);
            return;
        }
        boolean late = t > tImp + window;
        if (late) {
            count(Reasons.ACTION, Reasons.LATE, t);
            if (!spec.lateCorrection) {
                dead(Reasons.ACTION, Reasons.LATE_ACTION, payload, t);
                return;
            }
        }
        count(Reasons.ACTION, Reasons.LABELLED, t);
        if (late || spec.fakeNegative) {
            emitCorrection(imp, label, t);
        } else {
            imp.labelTimes[label] = t;
        }
    }

    /** Strategy window: emit now if every label is set, else wait for the open windows. */
    private void scheduleOrEmit(TimeContext<Long> time, Imp imp) {
        long due = due(imp);
        if (due == NONE) {
            emitSample(imp);
        } else {
            time.registerOnTime(due);
        }
    }

    public void onTimer(OnTimerContext ctx, Seen seen, Imp imp, Pending pending) {
        long now = ctx.timeContext(Long.class).time();
        if (imp.t == null) {
            if (pending.times != null) {
                for (int l = 0; l < pending.times.length; l++) {
                    if (pending.times[l] != NONE && pending.times[l] <= now) {
                        dead(Reasons.ACTION, Reasons.ORPHAN_ACTION, pending.payloads[l], pending.times[l]);
                        pending.times[l] = NONE;
                        pending.payloads[l] = null;
                    }
                }
                if (Arrays.stream(pending.times).allMatch(x -> x == NONE)) {
                    ctx.clearState("pending");
                }
            }
            return;
        }
        if (!imp.emitted) {
            if (due(imp) <= now) {
                emitSample(imp);
            }
        }
        if (now >= imp.t + spec.maxWindow + spec.lateHorizonMs) {
            ctx.clearState("imp");
        }
    }

    // ------------------------------------------------------------------ records

    /** When the sample is due: the end of the latest window of a label not set yet. */
    private long due(Imp imp) {
        long due = NONE;
        for (int l = 0; l < spec.names.length; l++) {
            if (imp.labelTimes[l] == NONE) {
                due = Math.max(due, imp.t + spec.windows[l]);
            }
        }
        return due;
    }

    private void emitSample(Imp imp) {
        imp.emitted = true;
        int n = spec.names.length;
        sink.reset();
        sink.ascii("{\"v\":1,\"sample_id\":");
        JsonOut.string(sink, imp.id);
        sink.ascii(",\"labels\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            boolean on = imp.labelTimes != null && imp.labelTimes[l] != NONE;
            sink.ascii(on ? ":1" : ":0");
        }
        sink.ascii("},\"label_time_ms\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            sink.write((byte) ':');
            if (imp.labelTimes != null && imp.labelTimes[l] != NONE) {
                sink.decimal(imp.labelTimes[l]);
            } else {
                sink.ascii("null");
            }
        }
        sink.ascii("},\"strategy\":");
        sink.write((byte) '"').ascii(spec.strategy).ascii("\",\"correction\":false,");
        sink.write(imp.body).write((byte) '}');
        emit(SAMPLE, imp.id, sink.toArray(), imp.t, Reasons.code(Reasons.IMPRESSION, Reasons.SAMPLE));
    }

    private void emitCorrection(Imp imp, int label, long t) {
        int n = spec.names.length;
        byte[] name = spec.nameBytes[label];
        byte[] id = Arrays.copyOf(imp.id, imp.id.length + 1 + name.length);
        id[imp.id.length] = '|';
        System.arraycopy(name, 0, id, imp.id.length + 1, name.length);
        sink.reset();
        sink.ascii("{\"v\":1,\"sample_id\":");
        JsonOut.string(sink, id);
        sink.ascii(",\"labels\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            sink.ascii(l == label ? ":1" : ":0");
        }
        sink.ascii("},\"label_time_ms\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            sink.write((byte) ':');
            if (l == label) {
                sink.decimal(t);
            } else {
                sink.ascii("null");
            }
        }
        sink.ascii("},\"strategy\":");
        sink.write((byte) '"').ascii(spec.strategy).ascii("\",\"correction\":true,");
        sink.write(imp.body).write((byte) '}');
        emit(SAMPLE, id, sink.toArray(), t, Reasons.code(Reasons.ACTION, Reasons.CORRECTION));
    }

    /** {@code request_id|item_id|0} (CONTRACTS.md section 2), decoded. */
    private static byte[] sampleId(byte[] rid, byte[] iid) {
        byte[] k = new byte[rid.length + iid.length + 3];
        System.arraycopy(rid, 0, k, 0, rid.length);
        k[rid.length] = '|';
        System.arraycopy(iid, 0, k, rid.length + 1, iid.length);
        k[k.length - 2] = '|';
        k[k.length - 1] = '0';
        return k;
    }

    private void dead(int stream, String reason, StringData payload, Long t) {
        dead(stream, reason, payload.toBytes(), t);
    }

    private void dead(int stream, String reason, byte[] payload, Long t) {
        sink.reset();
        sink.ascii("{\"v\":1,\"stream\":\"")
                .ascii(stream == Reasons.IMPRESSION ? "impression" : "action")
                .ascii("\",\"reason\":\"")
                .ascii(reason)
                .ascii("\",\"stage\":\"")
                .ascii(Reasons.stage(reason))
                .ascii("\",\"payload\":");
        JsonOut.payload(sink, payload, 0, payload.length);
        sink.write((byte) '}');
        emit(DEAD_LETTER, null, sink.toArray(), t, Reasons.deadCode(stream, reason));
    }

    private void count(int stream, int kind, Long t) {
        emit(COUNT, null, null, t, Reasons.code(stream, kind));
    }

    private void emit(int kind, byte[] k, byte[] v, Long t, int code) {
        collect(
                GenericRowData.of(
                        kind,
                        k == null ? null : StringData.fromBytes(k),
                        v == null ? null : StringData.fromBytes(v),
                        spec.window(t),
                        code));
    }
}
