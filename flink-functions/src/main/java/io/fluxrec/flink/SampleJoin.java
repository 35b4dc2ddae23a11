package io.fluxrec.flink;

import static org.apache.flink.table.annotation.ArgumentTrait.SET_SEMANTIC_TABLE;

import org.apache.flink.core.memory.MemorySegment;
import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.data.binary.BinaryStringData;
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
 * <p>Input {@code events}, partitioned by (request_id, item_id): every event once, {@code
 * is_action} telling its stream. An impression as parsed ({@code reason} null when valid,
 * {@code spans} where its sample fields stand in its payload, {@link
 * EventParser#bodySpans}); an action with {@code reason} null for a unique, timely,
 * non-bot action of label {@code label}, else its validation reason, {@code duplicate},
 * {@code too_late} or {@code bot} (decided upstream: {@link DedupActions} and {@link
 * BotCount}).
 *
 * <p>Output rows {@code (kind, k, v, mq, mc)}: {@code kind} 1 = a sample (Kafka key {@code k},
 * JSON {@code v}), 2 = a dead letter ({@code v}), 0 = a count only; every row counts one fact,
 * metric code {@code mc} ({@link Reasons}) in metric window {@code mq}.
 *
 * <p>State: one entry per key ({@link Entry}: a {@link Pair}, encoded), read and written once
 * per call, without TTL (once its sample is out and no correction can follow, without the
 * sample's fields): event-time timers release it once the watermark passes {@code t_imp +
 * max(max window + late horizon, dedup_ttl_ms)} (no action can match any more, and the dedup
 * horizon has passed), and decide the samples (window strategy) and the actions that came
 * before their impression (orphans). Timers are unnamed: each firing re-derives what is due
 * from the state.
 *
 * <p>One timer per key, at its first deadline after the watermark (the earliest of its
 * orphans' times, its sample's due time and its release): {@code eval} arms it when a row
 * brings a deadline earlier than the armed one; {@code onTimer} decides everything due by the
 * watermark that fires it (its {@code currentWatermark()} is that watermark, not the timer's
 * time) and arms the next deadline, which lies after it (Flink 2.2 silently drops a timer at
 * or behind the watermark). A timer armed for a deadline that a later row moved finds nothing
 * due and arms the next one. So a waiting key holds one timer, not one per deadline, and a
 * drain (the end of a bounded input, a source back from idleness) decides and releases each
 * entry at its first timer.
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
    private static final int SPANS = 6;
    private static final int LABEL = 7;

    /**
     * The state entry of one key: its {@link Pair}, encoded ({@link Pair#encode}; null: none).
     * One binary field rather than the {@code Pair} itself: the framework converts the entry
     * from and to its internal row, hashes and compares the two at every call, the changelog
     * serializes every update and the heap holds every entry for {@code join.dedup_ttl_ms}, and
     * a single {@code byte[]} costs least in each (3 objects per entry on the heap, not 6).
     */
    public static class Entry {
        public byte[] bytes;
    }

    /**
     * Everything about one (request_id, item_id). {@code seen}: the impression arrived (the
     * dedup marker); {@code t}, {@code id}, {@code body}: the unique impression while actions
     * can still match it; {@code labelTimes}: per label, the time of its labelled action or
     * Long.MIN_VALUE, until the sample is out (then null); {@code pendingTimes}/{@code
     * pendingPayloads}: actions that came before the impression, per label; {@code
     * keepUntil}: the event time after which it is released.
     *
     * <p>Encoded ({@link #encode}, big-endian) as {@code flags:u8}, then each field that is
     * set, in this order: {@code t:i64}, {@code keepUntil:i64}, {@code labelTimes:(n:u8,
     * n x i64)}, {@code id:(len:i32, len bytes)}, {@code body:(len:i32, len bytes)}, {@code
     * pending:(n:u8, n x (time:i64, and unless time is Long.MIN_VALUE: len:i32, len bytes))};
     * flags: 1 seen, 2 t, 4 emitted is set, 8 emitted is true, 16 keepUntil, 32 labelTimes,
     * 64 id and body, 128 pending. No field set: null (no entry).
     *
     * <p>One pair serves every call of the function ({@link #read} resets it): the id and the
     * body are slices of the entry's bytes as decoded (never written to: each encoding is a new
     * array) or of a buffer of the function's, not copies; the label times reuse one array.
     */
    static final class Pair {
        private static final int SEEN = 1;
        private static final int T = 2;
        private static final int EMITTED_SET = 4;
        private static final int EMITTED = 8;
        private static final int KEEP_UNTIL = 16;
        private static final int LABEL_TIMES = 32;
        private static final int SAMPLE = 64;
        private static final int PENDING = 128;

        private final ByteSink.Reader in = new ByteSink.Reader();
        private long[] labelTimesBuffer = new long[0];

        boolean seen;
        boolean hasT;
        long t;
        boolean emittedSet;
        boolean emitted;
        boolean hasKeepUntil;
        long keepUntil;
        long[] labelTimes;
        /** the sample id {@code idBytes[idOff, idOff + idLen)}; null: none (set with the body) */
        byte[] idBytes;
        int idOff;
        int idLen;
        byte[] bodyBytes;
        int bodyOff;
        int bodyLen;
        long[] pendingTimes;
        byte[][] pendingPayloads;

        /** This pair, reset to the entry's bytes (null: a new key). */
        Pair read(byte[] bytes) {
            seen = hasT = emittedSet = emitted = hasKeepUntil = false;
            labelTimes = null;
            idBytes = bodyBytes = null;
            pendingTimes = null;
            pendingPayloads = null;
            if (bytes == null) {
                return this;
            }
            ByteSink.Reader b = in.of(bytes);
            int flags = b.u8();
            seen = (flags & SEEN) != 0;
            emittedSet = (flags & EMITTED_SET) != 0;
            emitted = (flags & EMITTED) != 0;
            if ((flags & T) != 0) {
                hasT = true;
                t = b.int64();
            }
            if ((flags & KEEP_UNTIL) != 0) {
                hasKeepUntil = true;
                keepUntil = b.int64();
            }
            if ((flags & LABEL_TIMES) != 0) {
                long[] times = labelTimes(b.u8());
                for (int l = 0; l < times.length; l++) {
                    times[l] = b.int64();
                }
            }
            if ((flags & SAMPLE) != 0) {
                idOff = b.sized();
                idLen = b.length();
                bodyOff = b.sized();
                bodyLen = b.length();
                idBytes = bodyBytes = bytes;
            }
            if ((flags & PENDING) != 0) {
                int n = b.u8();
                pendingTimes = new long[n];
                pendingPayloads = new byte[n][];
                for (int l = 0; l < n; l++) {
                    pendingTimes[l] = b.int64();
                    if (pendingTimes[l] != NONE) {
                        b.sized();
                        pendingPayloads[l] = b.copy();
                    }
                }
            }
            return this;
        }

        /** {@code labelTimes}, {@code n} of them (this pair's one array; values not set). */
        long[] labelTimes(int n) {
            if (labelTimesBuffer.length != n) {
                labelTimesBuffer = new long[n];
            }
            labelTimes = labelTimesBuffer;
            return labelTimes;
        }

        void id(byte[] bytes, int off, int len) {
            idBytes = bytes;
            idOff = off;
            idLen = len;
        }

        void body(byte[] bytes, int off, int len) {
            bodyBytes = bytes;
            bodyOff = off;
            bodyLen = len;
        }

        /** The entry's bytes (layout above), built in {@code out}, or null when no field is set. */
        byte[] encode(ByteSink out) {
            int flags = (seen ? SEEN : 0)
                    | (hasT ? T : 0)
                    | (emittedSet ? EMITTED_SET | (emitted ? EMITTED : 0) : 0)
                    | (hasKeepUntil ? KEEP_UNTIL : 0)
                    | (labelTimes != null ? LABEL_TIMES : 0)
                    | (idBytes != null ? SAMPLE : 0) // id and body are set and cleared together
                    | (pendingTimes != null ? PENDING : 0);
            if (flags == 0) {
                return null;
            }
            out.reset();
            out.write((byte) flags);
            if (hasT) {
                out.int64(t);
            }
            if (hasKeepUntil) {
                out.int64(keepUntil);
            }
            if (labelTimes != null) {
                out.write((byte) labelTimes.length);
                for (long time : labelTimes) {
                    out.int64(time);
                }
            }
            if (idBytes != null) {
                out.sized(idBytes, idOff, idLen).sized(bodyBytes, bodyOff, bodyLen);
            }
            if (pendingTimes != null) {
                out.write((byte) pendingTimes.length);
                for (int l = 0; l < pendingTimes.length; l++) {
                    out.int64(pendingTimes[l]);
                    if (pendingTimes[l] != NONE) {
                        out.sized(pendingPayloads[l]);
                    }
                }
            }
            return out.toArray();
        }
    }

    private transient JoinSpec spec;
    /** records and entries are built here */
    private transient ByteSink sink;
    /** a new impression's sample id and body, until its entry is encoded */
    private transient ByteSink fields;
    /** the pair of the key of the current call */
    private transient Pair pair;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
        sink = new ByteSink(1024);
        fields = new ByteSink(1024);
        pair = new Pair();
    }

    public void eval(
            Context ctx,
            @StateHint(name = "pair", ttl = "0") Entry entry,
            @ArgumentHint(
                            name = "events",
                            value = SET_SEMANTIC_TABLE,
                            type =
                                    @DataTypeHint(
                                            value =
                                                    "ROW<is_action BOOLEAN, payload STRING,"
                                                            + " reason STRING, t BIGINT,"
                                                            + " request_id STRING, item_id STRING,"
                                                            + " spans BYTES, label INT>",
                                            bridgedTo = RowData.class))
                    RowData row) {
        TimeContext<Long> time = ctx.timeContext(Long.class);
        Pair pair = this.pair.read(entry.bytes);
        Long watermark = time.currentWatermark();
        long after = watermark == null ? NONE : watermark; // every timer up to it has fired
        long armed = next(pair, after); // a timer fires by then (class doc)
        if (row.getBoolean(IS_ACTION)) {
            action(pair, row);
        } else {
            impression(pair, row, watermark);
        }
        long next = next(pair, after);
        if (next != NONE && (armed == NONE || next < armed)) {
            time.registerOnTime(next);
        }
        entry.bytes = pair.encode(sink); // the framework writes it only if it changed
    }

    private void impression(Pair pair, RowData row, Long watermark) {
        if (!row.isNullAt(REASON)) {
            Long t = row.isNullAt(T) ? null : row.getLong(T);
            count(Reasons.IMPRESSION, Reasons.IN, t);
            dead(Reasons.IMPRESSION, row.getString(REASON).toString(), row.getString(PAYLOAD), t);
            return;
        }
        long t = row.getLong(T); // set in every valid impression
        count(Reasons.IMPRESSION, Reasons.IN, t);
        if (pair.seen) {
            count(Reasons.IMPRESSION, Reasons.DUPLICATE_KIND, t);
            return;
        }
        pair.seen = true;
        if (watermark != null && t <= watermark) {
            keepUntil(pair, t + spec.dedupTtlMs);
            dead(Reasons.IMPRESSION, Reasons.TOO_LATE, row.getString(PAYLOAD), t);
            return;
        }
        keepUntil(pair, t + Math.max(spec.dedupTtlMs, spec.maxWindow + spec.lateHorizonMs));
        pair.hasT = true;
        pair.t = t;
        pair.emittedSet = true;
        pair.emitted = false;
        sampleFields(pair, row);
        if (spec.fakeNegative) {
            emitSample(pair);
        } else {
            Arrays.fill(pair.labelTimes(spec.names.length), NONE);
        }
        if (pair.pendingTimes != null) {
            for (int l = 0; l < pair.pendingTimes.length; l++) {
                if (pair.pendingTimes[l] != NONE) {
                    decide(pair, l, pair.pendingTimes[l], pair.pendingPayloads[l]);
                }
            }
            pair.pendingTimes = null;
            pair.pendingPayloads = null;
        }
        emitIfComplete(pair);
    }

    private void action(Pair pair, RowData row) {
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
        if (pair.hasT) {
            decide(pair, label, t, payload);
            emitIfComplete(pair);
            return;
        }
        if (pair.pendingTimes == null) {
            pair.pendingTimes = new long[spec.names.length];
            Arrays.fill(pair.pendingTimes, NONE);
            pair.pendingPayloads = new byte[spec.names.length][];
        }
        pair.pendingTimes[label] = t;
        pair.pendingPayloads[label] = payload; // no impression by t: an orphan
    }

    /** An action of {@code label} at {@code t} meets the impression (CONTRACTS.md 4.3, 4.7). */
    private void decide(Pair pair, int label, long t, byte[] payload) {
        long tImp = pair.t;
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
            emitCorrection(pair, label, t);
        } else if (pair.labelTimes != null) { // null once the sample is out: nothing reads it
            pair.labelTimes[label] = t;
        }
    }

    /** Strategy window: the sample goes out now if every label is set (else when due). */
    private void emitIfComplete(Pair pair) {
        if (!pair.emitted && due(pair) == NONE) {
            emitSample(pair);
        }
    }

    /** When the sample is due: the end of the latest window of a label not set yet. */
    private long due(Pair pair) {
        long due = NONE;
        for (int l = 0; l < spec.names.length; l++) {
            if (pair.labelTimes[l] == NONE) {
                due = Math.max(due, pair.t + spec.windows[l]);
            }
        }
        return due;
    }

    /** Hold the entry at least until event time {@code until}. */
    private static void keepUntil(Pair pair, long until) {
        if (!pair.hasKeepUntil || until > pair.keepUntil) {
            pair.hasKeepUntil = true;
            pair.keepUntil = until;
        }
    }

    /**
     * The key's first deadline after event time {@code after} (NONE: none): the earliest of its
     * orphans' times, its sample's due time (strategy window, not emitted yet) and its release
     * ({@code keepUntil}) that is later than {@code after}. A deadline at or behind the
     * watermark gets no timer (Flink would drop it), as when each had its own.
     */
    private long next(Pair pair, long after) {
        long next = NONE;
        if (pair.hasKeepUntil && pair.keepUntil > after) {
            next = pair.keepUntil;
        }
        if (pair.pendingTimes != null) {
            for (long t : pair.pendingTimes) {
                if (t != NONE && t > after && (next == NONE || t < next)) {
                    next = t;
                }
            }
        }
        if (pair.hasT && !pair.emitted && pair.labelTimes != null) {
            long due = due(pair);
            if (due != NONE && due > after && (next == NONE || due < next)) {
                next = due;
            }
        }
        return next;
    }

    public void onTimer(OnTimerContext ctx, Entry entry) {
        if (entry.bytes == null) {
            return; // released by an earlier timer: nothing is held, nothing to clear
        }
        TimeContext<Long> time = ctx.timeContext(Long.class);
        // all that is due by the watermark being advanced to, at once (class doc)
        Long watermark = time.currentWatermark();
        long now = watermark == null ? time.time() : Math.max(time.time(), watermark);
        Pair pair = this.pair.read(entry.bytes);
        if (pair.pendingTimes != null) { // no impression came: orphans
            boolean left = false;
            for (int l = 0; l < pair.pendingTimes.length; l++) {
                long t = pair.pendingTimes[l];
                if (t != NONE && t <= now) {
                    dead(Reasons.ACTION, Reasons.ORPHAN_ACTION, pair.pendingPayloads[l], t);
                    pair.pendingTimes[l] = NONE;
                    pair.pendingPayloads[l] = null;
                } else if (t != NONE) {
                    left = true;
                }
            }
            if (!left) {
                pair.pendingTimes = null;
                pair.pendingPayloads = null;
            }
        }
        if (pair.hasT && !pair.emitted && due(pair) <= now) {
            emitSample(pair);
        }
        // state only: Flink 2.2's clearAll()/clearAllTimers() walks the timers of every key and
        // deletes this key's timestamps under another key's context; a timer left here fires
        // on an empty entry, which is a no-op
        if (pair.hasKeepUntil && now >= pair.keepUntil) {
            ctx.clearAllState();
        } else if (!pair.seen && pair.pendingTimes == null) {
            ctx.clearAllState(); // only orphans were held, and they are out
        } else {
            long next = next(pair, now); // all up to the watermark is decided
            if (next != NONE) {
                time.registerOnTime(next);
            }
            entry.bytes = pair.encode(sink);
        }
    }

    // ------------------------------------------------------------------ records

    private void emitSample(Pair pair) {
        pair.emitted = true;
        writeSample(pair.idBytes, pair.idOff, pair.idLen, pair.labelTimes, false, pair);
        // the key: a slice of the entry's bytes, which nothing writes to; a copy where the id
        // is still in the function's buffer (a new impression's), which the next one reuses
        byte[] id = pair.idBytes;
        int from = pair.idOff;
        int to = from + pair.idLen;
        StringData k =
                id == fields.buffer()
                        ? StringData.fromBytes(Arrays.copyOfRange(id, from, to))
                        : StringData.fromBytes(id, from, pair.idLen);
        emit(SAMPLE, k, sink.toArray(), pair.t, Reasons.code(Reasons.IMPRESSION, Reasons.SAMPLE));
        // the label times only decide the sample and its due time: the entry is held until
        // keepUntil (join.dedup_ttl_ms) without them (two objects and ~56 bytes per key less)
        pair.labelTimes = null;
        if (!spec.fakeNegative && !spec.lateCorrection) {
            // no correction can follow: the entry only dedups from here on (until keepUntil,
            // join.dedup_ttl_ms), so it keeps neither the sample's fields nor its id
            pair.idBytes = pair.bodyBytes = null;
        }
    }

    private void emitCorrection(Pair pair, int label, long t) {
        byte[] name = spec.nameBytes[label];
        byte[] id = new byte[pair.idLen + 1 + name.length];
        System.arraycopy(pair.idBytes, pair.idOff, id, 0, pair.idLen);
        id[pair.idLen] = '|';
        System.arraycopy(name, 0, id, pair.idLen + 1, name.length);
        long[] times = new long[spec.names.length];
        Arrays.fill(times, NONE);
        times[label] = t;
        writeSample(id, 0, id.length, times, true, pair);
        emit(SAMPLE, StringData.fromBytes(id), sink.toArray(), t,
                Reasons.code(Reasons.ACTION, Reasons.CORRECTION));
    }

    /**
     * A sample record into {@link #sink}: its id {@code id[off, off + len)}; label {@code l} is
     * 1 at {@code times[l]}, 0 where that is {@link #NONE} (or {@code times} is null); the
     * pair's body holds its other fields.
     */
    private void writeSample(
            byte[] id, int off, int len, long[] times, boolean correction, Pair pair) {
        int n = spec.names.length;
        sink.reset();
        sink.ascii("{\"v\":1,\"sample_id\":");
        JsonOut.string(sink, id, off, len);
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
        sink.write(pair.bodyBytes, pair.bodyOff, pair.bodyLen).write((byte) '}');
    }

    /**
     * A new impression's sample id, {@code request_id|item_id|0} (CONTRACTS.md section 2), and
     * its sample's fields, copied once from the payload at the spans its parse gave, into
     * {@link #fields}: the pair's id and body until its entry is encoded.
     */
    private void sampleFields(Pair pair, RowData row) {
        ByteSink f = fields;
        f.reset();
        writeUtf8(f, row.getString(REQUEST_ID));
        f.write((byte) '|');
        writeUtf8(f, row.getString(ITEM_ID));
        f.write((byte) '|').write((byte) '0');
        int idLen = f.size();
        BinaryStringData s = (BinaryStringData) row.getString(PAYLOAD); // Flink's only StringData
        byte[] spans = row.getBinary(SPANS);
        if (inHeap(s)) { // in place, no copy
            EventParser.writeBody(f, s.getSegments()[0].getArray(), s.getOffset(), spans);
        } else {
            EventParser.writeBody(f, s.toBytes(), 0, spans);
        }
        pair.id(f.buffer(), 0, idLen);
        pair.body(f.buffer(), idLen, f.size() - idLen);
    }

    /** The UTF-8 bytes of {@code s}, without a copy where they lie in one heap segment. */
    private static void writeUtf8(ByteSink out, StringData s) {
        BinaryStringData b = (BinaryStringData) s;
        if (inHeap(b)) {
            out.write(b.getSegments()[0].getArray(), b.getOffset(), b.getSizeInBytes());
        } else {
            out.write(b.toBytes());
        }
    }

    /**
     * Whether the bytes of {@code s} lie in one heap segment (readable in place, at {@code
     * s.getOffset()} of its array); materializes a string made from a java.lang.String, which
     * has no bytes until then.
     */
    private static boolean inHeap(BinaryStringData s) {
        s.ensureMaterialized();
        MemorySegment[] segments = s.getSegments();
        return segments.length == 1 && !segments[0].isOffHeap();
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
        StringData value = v == null ? null : StringData.fromBytes(v);
        collect(GenericRowData.of(kind, k, value, spec.window(t), code));
    }
}
