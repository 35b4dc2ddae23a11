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

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.Arrays;

/**
 * {@code fluxrec_join}: everything that happens to one (request_id, item_id), in one keyed
 * operator (CONTRACTS.md section 4): impression dedup and too-late check, the match of each
 * label's action (labelled, late or orphan), the sample (strategy {@code window}: when the
 * watermark passes the label windows; {@code fake_negative}: at once, with positive
 * corrections), dead letters, and one count row per fact for the metrics.
 *
 * <p>Input {@code events}, partitioned by (request_id, item_id): every event once, {@code
 * is_action} telling its stream. An impression as parsed ({@code reason} null when valid,
 * {@code body} its sample fields); an action with {@code reason} null for a unique, timely,
 * non-bot action of label {@code label}, else its validation reason, {@code duplicate},
 * {@code too_late} or {@code bot} (decided upstream: {@link DedupActions} and {@link
 * BotCount}).
 *
 * <p>Output rows {@code (kind, k, v, mq, mc)}: {@code kind} 1 = a sample (Kafka key {@code k},
 * JSON {@code v}), 2 = a dead letter ({@code v}), 0 = a count only; every row counts one fact,
 * metric code {@code mc} ({@link Reasons}) in metric window {@code mq}.
 *
 * <p>State: one entry per key, one {@code byte[]} ({@link Pair}; the layout is in {@link
 * #store}), decoded at the start of each call into this object's fields and encoded again at
 * its end only if something changed; without TTL: released once the watermark passes {@code
 * t_imp + max(max window + late horizon, dedup_ttl_ms)} (no action can match any more, and the
 * dedup horizon has passed), by an event-time timer; timers also decide the samples (window
 * strategy) and the actions that came before their impression (orphans). Timers are unnamed:
 * each firing re-derives what is due from the state.
 *
 * <p>Every timer is registered in {@code eval}, when its deadline is known, never in {@code
 * onTimer}: Flink 2.2 silently drops a timer at or behind the watermark, and while a watermark
 * advance fires timers, {@code onTimer} cannot see how far it goes (its {@code
 * currentWatermark()} is the previous one), so a timer set there for the next deadline (one
 * timer per key, re-armed at each firing) may never fire.
 *
 * <p>No {@code on_time} argument: with one, Flink 2.2 drops rows at or behind the watermark
 * before {@code eval} sees them, and this function must see them to dead-letter them.
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

    // flags, the first byte of an entry
    private static final int SEEN = 1;
    private static final int HELD = 2;
    private static final int EMITTED = 4;
    private static final int PENDING = 8;

    private static final VarHandle LONG =
            MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.BIG_ENDIAN);
    private static final VarHandle INT =
            MethodHandles.byteArrayViewVarHandle(int[].class, ByteOrder.BIG_ENDIAN);

    /**
     * Everything about one (request_id, item_id), encoded by {@link #store} (null: no entry).
     * One binary field instead of a POJO of boxed fields and arrays: the framework converts
     * the state entry from and to its internal row at every call, compares the two and the
     * changelog backend serializes every update, so a single {@code byte[]} costs least.
     */
    public static class Pair {
        public byte[] bytes;
    }

    private transient JoinSpec spec;
    private transient ByteSink sink;

    // ---- the current key's entry, decoded by load() ----
    /** The impression arrived (the dedup marker). */
    private transient boolean seen;
    /** A unique timely impression is held (t, id, body, labelTimes, emitted are set). */
    private transient boolean held;
    /** Its sample is out. */
    private transient boolean emitted;
    /** Something changed since load(): store() at the end of the call. */
    private transient boolean dirty;
    /** The impression's time. */
    private transient long t;
    /** The event time after which the entry is released, or NONE. */
    private transient long keepUntil;
    /** The sample id, {@code request_id|item_id|0}: {@code id[idOff, idOff + idLen)}. */
    private transient byte[] id;

    private transient int idOff;
    private transient int idLen;
    /** The sample's other fields: {@code body[bodyOff, bodyOff + bodyLen)}. */
    private transient byte[] body;

    private transient int bodyOff;
    private transient int bodyLen;
    /** Per label, the time of its labelled action or NONE (strategy window; reused). */
    private transient long[] labelTimes;
    /** Actions that came before the impression, per label (time or NONE); null when none. */
    private transient long[] pendingTimes;

    private transient byte[][] pendingPayloads;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
        sink = new ByteSink(1024);
        labelTimes = new long[spec.names.length];
    }

    public void eval(
            Context ctx,
            @StateHint(name = "pair", ttl = "0") Pair pair,
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
        Long watermark = time.currentWatermark();
        load(pair.bytes);
        if (row.getBoolean(IS_ACTION)) {
            action(time, row);
        } else {
            impression(time, watermark, row);
        }
        if (dirty) {
            pair.bytes = store();
        }
    }

    private void impression(TimeContext<Long> time, Long watermark, RowData row) {
        Long t = row.isNullAt(T) ? null : row.getLong(T);
        count(Reasons.IMPRESSION, Reasons.IN, t);
        if (!row.isNullAt(REASON)) {
            dead(Reasons.IMPRESSION, row.getString(REASON).toString(), row.getString(PAYLOAD), t);
            return;
        }
        if (seen) {
            count(Reasons.IMPRESSION, Reasons.DUPLICATE_KIND, t);
            return;
        }
        seen = true;
        dirty = true;
        if (watermark != null && t <= watermark) {
            keepUntil(time, t + spec.dedupTtlMs);
            dead(Reasons.IMPRESSION, Reasons.TOO_LATE, row.getString(PAYLOAD), t);
            return;
        }
        keepUntil(time, t + Math.max(spec.dedupTtlMs, spec.maxWindow + spec.lateHorizonMs));
        held = true;
        this.t = t;
        body = row.getBinary(BODY);
        bodyOff = 0;
        bodyLen = body.length;
        emitted = false;
        id = sampleId(row.getString(REQUEST_ID).toBytes(), row.getString(ITEM_ID).toBytes());
        idOff = 0;
        idLen = id.length;
        if (spec.fakeNegative) {
            emitSample();
        } else {
            Arrays.fill(labelTimes, NONE);
        }
        if (pendingTimes != null) {
            for (int l = 0; l < pendingTimes.length; l++) {
                if (pendingTimes[l] != NONE) {
                    decide(l, pendingTimes[l], pendingPayloads[l]);
                }
            }
            pendingTimes = null;
            pendingPayloads = null;
        }
        if (!emitted) {
            scheduleOrEmit(time);
        }
    }

    private void action(TimeContext<Long> time, RowData row) {
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
        if (held) {
            decide(label, t, payload);
            if (!emitted) {
                scheduleOrEmit(time);
            }
            return;
        }
        if (pendingTimes == null) {
            pendingTimes = new long[spec.names.length];
            Arrays.fill(pendingTimes, NONE);
            pendingPayloads = new byte[spec.names.length][];
        }
        pendingTimes[label] = t;
        pendingPayloads[label] = payload;
        dirty = true;
        time.registerOnTime(t); // no impression by then: an orphan
    }

    /** An action of {@code label} at {@code t} meets the impression (CONTRACTS.md 4.3, 4.7). */
    private void decide(int label, long t, byte[] payload) {
        long tImp = this.t;
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
            emitCorrection(label, t);
        } else {
            labelTimes[label] = t;
            dirty = true;
        }
    }

    /** Strategy window: emit now if every label is set, else wait for the open windows. */
    private void scheduleOrEmit(TimeContext<Long> time) {
        long due = due();
        if (due == NONE) {
            emitSample();
        } else {
            time.registerOnTime(due);
        }
    }

    /**
     * When the sample is due: the end of the latest window of a label not set yet; {@link
     * #NONE} when every label is set.
     */
    private long due() {
        long due = NONE;
        for (int l = 0; l < spec.names.length; l++) {
            if (labelTimes[l] == NONE) {
                due = Math.max(due, t + spec.windows[l]);
            }
        }
        return due;
    }

    /** Hold the entry at least until event time {@code until}. */
    private void keepUntil(TimeContext<Long> time, long until) {
        if (until > keepUntil) { // NONE is below every time
            keepUntil = until;
            dirty = true;
            time.registerOnTime(until);
        }
    }

    public void onTimer(OnTimerContext ctx, Pair pair) {
        long now = ctx.timeContext(Long.class).time();
        load(pair.bytes);
        if (pendingTimes != null) { // no impression came: orphans
            boolean left = false;
            for (int l = 0; l < pendingTimes.length; l++) {
                long t = pendingTimes[l];
                if (t != NONE && t <= now) {
                    dead(Reasons.ACTION, Reasons.ORPHAN_ACTION, pendingPayloads[l], t);
                    pendingTimes[l] = NONE;
                    pendingPayloads[l] = null;
                    dirty = true;
                } else if (t != NONE) {
                    left = true;
                }
            }
            if (!left) {
                pendingTimes = null;
                pendingPayloads = null;
            }
        }
        if (held && !emitted && due() <= now) {
            emitSample();
        }
        // state only: Flink 2.2's clearAll()/clearAllTimers() walks the timers of every key and
        // deletes this key's timestamps under another key's context; a timer left here fires
        // on an empty entry, which is a no-op
        if (keepUntil != NONE && now >= keepUntil) {
            ctx.clearAllState();
        } else if (!seen && pendingTimes == null) {
            ctx.clearAllState(); // only orphans were held, and they are out
        } else if (dirty) {
            pair.bytes = store();
        }
    }

    // ------------------------------------------------------------------ the entry

    /**
     * Decode an entry (null: none) into the fields above; {@code id} and {@code body} point into
     * {@code b}, which is never written (the framework keeps it as the state's value).
     */
    private void load(byte[] b) {
        dirty = false;
        pendingTimes = null;
        pendingPayloads = null;
        if (b == null) {
            seen = held = emitted = false;
            t = keepUntil = NONE;
            id = body = null;
            return;
        }
        int flags = b[0];
        seen = (flags & SEEN) != 0;
        held = (flags & HELD) != 0;
        emitted = (flags & EMITTED) != 0;
        keepUntil = (long) LONG.get(b, 1);
        int p = 9;
        int n = spec.names.length;
        if (held) {
            t = (long) LONG.get(b, p);
            idLen = (int) INT.get(b, p + 8);
            id = b;
            idOff = p + 12;
            p = idOff + idLen;
            bodyLen = (int) INT.get(b, p);
            body = b;
            bodyOff = p + 4;
            p = bodyOff + bodyLen;
            if (!spec.fakeNegative) {
                for (int l = 0; l < n; l++, p += 8) {
                    labelTimes[l] = (long) LONG.get(b, p);
                }
            }
        } else {
            t = NONE;
            id = body = null;
        }
        if ((flags & PENDING) != 0) {
            pendingTimes = new long[n];
            pendingPayloads = new byte[n][];
            for (int l = 0; l < n; l++) {
                pendingTimes[l] = (long) LONG.get(b, p);
                int len = (int) INT.get(b, p + 8);
                p += 12;
                if (len >= 0) {
                    pendingPayloads[l] = Arrays.copyOfRange(b, p, p + len);
                    p += len;
                }
            }
        }
    }

    /**
     * The entry as bytes (big-endian): a flags byte ({@code SEEN}, {@code HELD}, {@code
     * EMITTED}, {@code PENDING}), keepUntil (8 bytes, Long.MIN_VALUE: none);
     * when HELD: t (8), the sample id (4-byte length, bytes), the body (4-byte length, bytes)
     * and, strategy window, each label's time (8 each); when PENDING, per label: the time (8)
     * and the payload (4-byte length, -1 for none, bytes).
     */
    private byte[] store() {
        int n = spec.names.length;
        int size = 9;
        if (held) {
            size += 8 + 4 + idLen + 4 + bodyLen + (spec.fakeNegative ? 0 : 8 * n);
        }
        if (pendingTimes != null) {
            size += 12 * n;
            for (byte[] p : pendingPayloads) {
                size += p == null ? 0 : p.length;
            }
        }
        byte[] b = new byte[size];
        b[0] =
                (byte)
                        ((seen ? SEEN : 0)
                                | (held ? HELD : 0)
                                | (emitted ? EMITTED : 0)
                                | (pendingTimes != null ? PENDING : 0));
        LONG.set(b, 1, keepUntil);
        int p = 9;
        if (held) {
            LONG.set(b, p, t);
            INT.set(b, p + 8, idLen);
            System.arraycopy(id, idOff, b, p + 12, idLen);
            p += 12 + idLen;
            INT.set(b, p, bodyLen);
            System.arraycopy(body, bodyOff, b, p + 4, bodyLen);
            p += 4 + bodyLen;
            if (!spec.fakeNegative) {
                for (int l = 0; l < n; l++, p += 8) {
                    LONG.set(b, p, labelTimes[l]);
                }
            }
        }
        if (pendingTimes != null) {
            for (int l = 0; l < n; l++) {
                LONG.set(b, p, pendingTimes[l]);
                byte[] payload = pendingPayloads[l];
                INT.set(b, p + 8, payload == null ? -1 : payload.length);
                p += 12;
                if (payload != null) {
                    System.arraycopy(payload, 0, b, p, payload.length);
                    p += payload.length;
                }
            }
        }
        return b;
    }

    // ------------------------------------------------------------------ records

    private void emitSample() {
        emitted = true;
        dirty = true;
        writeSample(id, idOff, idLen, spec.fakeNegative ? null : labelTimes, false);
        emit(
                SAMPLE,
                StringData.fromBytes(id, idOff, idLen),
                sink.toArray(),
                t,
                Reasons.code(Reasons.IMPRESSION, Reasons.SAMPLE));
    }

    private void emitCorrection(int label, long t) {
        byte[] name = spec.nameBytes[label];
        byte[] k = new byte[idLen + 1 + name.length];
        System.arraycopy(id, idOff, k, 0, idLen);
        k[idLen] = '|';
        System.arraycopy(name, 0, k, idLen + 1, name.length);
        long[] times = new long[spec.names.length];
        Arrays.fill(times, NONE);
        times[label] = t;
        writeSample(k, 0, k.length, times, true);
        emit(
                SAMPLE,
                StringData.fromBytes(k),
                sink.toArray(),
                t,
                Reasons.code(Reasons.ACTION, Reasons.CORRECTION));
    }

    /**
     * A sample record into {@link #sink}: label {@code l} is 1 at {@code times[l]}, 0 where
     * that is {@link #NONE} (or {@code times} is null); the held body holds its other fields.
     */
    private void writeSample(byte[] k, int off, int len, long[] times, boolean correction) {
        int n = spec.names.length;
        sink.reset();
        sink.ascii("{\"v\":1,\"sample_id\":");
        JsonOut.string(sink, k, off, len);
        sink.ascii(",\"labels\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            sink.ascii(times != null && times[l] != NONE ? ":1" : ":0");
        }
        sink.ascii("},\"label_time_ms\":{");
        for (int l = 0; l < n; l++) {
            if (l > 0) {
                sink.write((byte) ',');
            }
            JsonOut.string(sink, spec.nameBytes[l]);
            sink.write((byte) ':');
            if (times != null && times[l] != NONE) {
                sink.decimal(times[l]);
            } else {
                sink.ascii("null");
            }
        }
        sink.ascii("},\"strategy\":");
        sink.write((byte) '"').ascii(spec.strategy);
        sink.ascii(correction ? "\",\"correction\":true," : "\",\"correction\":false,");
        sink.write(body, bodyOff, bodyLen).write((byte) '}');
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

    private void emit(int kind, StringData k, byte[] v, Long t, int code) {
        collect(
                GenericRowData.of(
                        kind,
                        k,
                        v == null ? null : StringData.fromBytes(v),
                        spec.window(t),
                        code));
    }
}
