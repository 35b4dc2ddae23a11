package io.fluxrec.flink;

import static org.apache.flink.table.annotation.ArgumentTrait.SET_SEMANTIC_TABLE;

import org.apache.flink.table.annotation.ArgumentHint;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.annotation.StateHint;
import org.apache.flink.table.api.dataview.MapView;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ProcessTableFunction;

import java.util.Arrays;

/**
 * {@code fluxrec_bot_count}: the bot check of CONTRACTS.md 4.4, per user. Each unique timely
 * action waits until the watermark passes its time (then every action of the user at or
 * before it has arrived), is counted against the user's actions in {@code [t - bot_window_ms,
 * t]} (itself included) and leaves with {@code verdict} {@code bot} when the count exceeds
 * {@code bot_max_actions}, else null.
 *
 * <p>Input {@code acts}, partitioned by user_id: the unique timely actions ({@link
 * DedupActions}), none at or behind the watermark. State: {@code recent}, the sorted times of
 * the user's waiting actions and of the decided ones a later window can still reach (a value
 * the framework reads, hashes and writes at every call: small); {@code waiting}, the actions
 * waiting for the watermark by their time (a map view: a call reads and writes only the
 * entry of its time, so a user with many waiting actions, as when the actions' topic is read
 * ahead of the impressions' in a backlog, costs no more per action than one with few); one
 * timer per distinct action time, which decides the actions of that time.
 *
 * <p>A {@code waiting} entry: the actions at its time, each {@code len:i32, payload,
 * len:i32, request_id, len:i32, item_id, label:i32} (big-endian, UTF-8).
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        value =
                                "ROW<verdict STRING, payload STRING, t BIGINT,"
                                        + " request_id STRING, item_id STRING, label INT>",
                        bridgedTo = RowData.class))
public class BotCount extends ProcessTableFunction<RowData> {

    private static final long serialVersionUID = 1L;

    private static final StringData BOT = StringData.fromString(Reasons.BOT);

    /**
     * The sorted times of the user's waiting actions and of the decided ones still in reach,
     * each {@code i64} (big-endian): bytes, which the framework and the changelog copy in one
     * piece, where an array of longs is converted element by element, each boxed.
     */
    public static class Recent {
        public byte[] times;
    }

    private transient JoinSpec spec;
    private transient ByteSink sink;
    private transient ByteSink.Reader reader;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
        sink = new ByteSink(256);
        reader = new ByteSink.Reader();
    }

    public void eval(
            Context ctx,
            @StateHint(name = "recent", ttl = "0") Recent recent,
            @StateHint(name = "waiting", ttl = "0") MapView<Long, byte[]> waiting,
            @ArgumentHint(
                            name = "acts",
                            value = SET_SEMANTIC_TABLE,
                            type =
                                    @DataTypeHint(
                                            value = JoinSpec.ACTION_ROW,
                                            bridgedTo = RowData.class))
                    RowData row)
            throws Exception {
        long t = row.getLong(5);
        recent.times = insert(recent.times, t);
        byte[] before = waiting.get(t);
        sink.reset();
        if (before != null) {
            sink.write(before);
        }
        sink.sized(row.getString(0).toBytes())
                .sized(row.getString(1).toBytes())
                .sized(row.getString(2).toBytes())
                .int32(row.getInt(4));
        waiting.put(t, sink.toArray());
        ctx.timeContext(Long.class).registerOnTime(t);
    }

    public void onTimer(OnTimerContext ctx, Recent recent, MapView<Long, byte[]> waiting)
            throws Exception {
        long now = ctx.timeContext(Long.class).time();
        byte[] due = waiting.get(now);
        if (due == null || recent.times == null) {
            return;
        }
        waiting.remove(now);
        byte[] times = recent.times;
        StringData verdict =
                countBetween(times, now - spec.botWindowMs, now) > spec.botMaxActions ? BOT : null;
        // the strings are slices of the entry, which nothing writes to once it is out of the map
        ByteSink.Reader b = reader.of(due);
        while (b.hasMore()) {
            StringData payload = StringData.fromBytes(due, b.sized(), b.length());
            StringData requestId = StringData.fromBytes(due, b.sized(), b.length());
            StringData itemId = StringData.fromBytes(due, b.sized(), b.length());
            collect(GenericRowData.of(verdict, payload, now, requestId, itemId, b.int32()));
        }
        // keep what a later action's window [t' - window, t'] (t' > now) can reach
        int from = upperBound(times, now - spec.botWindowMs);
        if (from == times.length / 8) {
            ctx.clearState("recent");
        } else if (from > 0) {
            recent.times = Arrays.copyOfRange(times, 8 * from, times.length);
        }
    }

    /** {@code times} (sorted {@code i64}s, or null) with {@code t} inserted in order. */
    static byte[] insert(byte[] times, long t) {
        int n = times == null ? 0 : times.length;
        int at = n == 0 ? 0 : 8 * upperBound(times, t);
        byte[] out = new byte[n + 8];
        if (n > 0) {
            System.arraycopy(times, 0, out, 0, at);
            System.arraycopy(times, at, out, at + 8, n - at);
        }
        ByteSink.int64To(out, at, t);
        return out;
    }

    /** How many of the sorted {@code times} lie in {@code [from, to]}. */
    static int countBetween(byte[] times, long from, long to) {
        return upperBound(times, to) - lowerBound(times, from);
    }

    /** The index of the first time at or after {@code x}. */
    private static int lowerBound(byte[] a, long x) {
        int lo = 0;
        int hi = a.length / 8;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (ByteSink.int64At(a, 8 * mid) < x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    /** The index of the first time after {@code x}. */
    private static int upperBound(byte[] a, long x) {
        int lo = 0;
        int hi = a.length / 8;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (ByteSink.int64At(a, 8 * mid) <= x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }
}
