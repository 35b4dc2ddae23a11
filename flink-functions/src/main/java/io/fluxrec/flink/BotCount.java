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
 * {@code fluxrec_bot_count}: the bot check of CONTRACTS.md 4.4, per user. Each unique timely
 * action waits until the watermark passes its time (then every action of the user at or
 * before it has arrived), is counted against the user's actions in {@code [t - bot_window_ms,
 * t]} (itself included) and leaves with {@code verdict} {@code bot} when the count exceeds
 * {@code bot_max_actions}, else null.
 *
 * <p>Input {@code acts}, partitioned by user_id: the unique timely actions ({@link
 * DedupActions}). State: the user's recent action times (those a later window can still
 * reach) and the actions waiting for the watermark; one timer per distinct action time.
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

    /** Times of the user's actions that were decided and may fall in a later window. */
    public static class Recent {
        public long[] times;
    }

    /** Actions waiting for the watermark: their columns, position by position. */
    public static class Waiting {
        public long[] times;
        public byte[][] payloads;
        public byte[][] requestIds;
        public byte[][] itemIds;
        public int[] labels;
    }

    private transient JoinSpec spec;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
    }

    public void eval(
            Context ctx,
            @StateHint(name = "recent", ttl = "0") Recent recent,
            @StateHint(name = "waiting", ttl = "0") Waiting waiting,
            @ArgumentHint(
                            name = "acts",
                            value = SET_SEMANTIC_TABLE,
                            type =
                                    @DataTypeHint(
                                            value = JoinSpec.ACTION_ROW,
                                            bridgedTo = RowData.class))
                    RowData row) {
        long t = row.getLong(5);
        int n = waiting.times == null ? 0 : waiting.times.length;
        waiting.times = append(waiting.times, t);
        waiting.payloads = append(waiting.payloads, row.getString(0).toBytes());
        waiting.requestIds = append(waiting.requestIds, row.getString(1).toBytes());
        waiting.itemIds = append(waiting.itemIds, row.getString(2).toBytes());
        waiting.labels = Arrays.copyOf(waiting.labels == null ? new int[0] : waiting.labels, n + 1);
        waiting.labels[n] = row.getInt(4);
        ctx.timeContext(Long.class).registerOnTime(t);
    }

    public void onTimer(OnTimerContext ctx, Recent recent, Waiting waiting) {
        long now = ctx.timeContext(Long.class).time();
        if (waiting.times == null) {
            return;
        }
        long[] history = recent.times == null ? new long[0] : recent.times;
        int n = waiting.times.length;
        // every action of the user seen so far: decided ones and waiting ones
        long[] all = Arrays.copyOf(history, history.length + n);
        System.arraycopy(waiting.times, 0, all, history.length, n);
        Arrays.sort(all);
        boolean[] due = new boolean[n];
        int left = 0;
        for (int i = 0; i < n; i++) {
            long t = waiting.times[i];
            if (t > now) {
                left++;
                continue;
            }
            due[i] = true;
            int count = countBetween(all, t - spec.botWindowMs, t);
            collect(
                    GenericRowData.of(
                            count > spec.botMaxActions ? BOT : null,
                            StringData.fromBytes(waiting.payloads[i]),
                            t,
                            StringData.fromBytes(waiting.requestIds[i]),
                            StringData.fromBytes(waiting.itemIds[i]),
                            waiting.labels[i]));
        }
        // keep what a later action's window [t' - window, t'] can reach: t' > now
        long[] kept =
                Arrays.stream(history).filter(x -> x > now - spec.botWindowMs).toArray();
        long[] decided = new long[n - left];
        Waiting rest = new Waiting();
        rest.times = new long[left];
        rest.payloads = new byte[left][];
        rest.requestIds = new byte[left][];
        rest.itemIds = new byte[left][];
        rest.labels = new int[left];
        for (int i = 0, d = 0, w = 0; i < n; i++) {
            if (due[i]) {
                decided[d++] = waiting.times[i];
            } else {
                rest.times[w] = waiting.times[i];
                rest.payloads[w] = waiting.payloads[i];
                rest.requestIds[w] = waiting.requestIds[i];
                rest.itemIds[w] = waiting.itemIds[i];
                rest.labels[w++] = waiting.labels[i];
            }
        }
        long[] recentTimes = new long[kept.length + decided.length];
        System.arraycopy(kept, 0, recentTimes, 0, kept.length);
        int r = kept.length;
        for (long x : decided) {
            if (x > now - spec.botWindowMs) {
                recentTimes[r++] = x;
            }
        }
        recent.times = r == 0 ? null : Arrays.copyOf(recentTimes, r);
        if (left == 0) {
            ctx.clearState("waiting");
        } else {
            waiting.times = rest.times;
            waiting.payloads = rest.payloads;
            waiting.requestIds = rest.requestIds;
            waiting.itemIds = rest.itemIds;
            waiting.labels = rest.labels;
        }
        if (recent.times == null) {
            ctx.clearState("recent");
        }
    }

    /** How many of the sorted {@code times} lie in {@code [from, to]}. */
    static int countBetween(long[] times, long from, long to) {
        return upperBound(times, to) - lowerBound(times, from);
    }

    private static int lowerBound(long[] a, long x) {
        int lo = 0;
        int hi = a.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (a[mid] < x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    private static int upperBound(long[] a, long x) {
        int lo = 0;
        int hi = a.length;
        while (lo < hi) {
            int mid = (lo + hi) >>> 1;
            if (a[mid] <= x) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        return lo;
    }

    private static long[] append(long[] a, long x) {
        long[] out = a == null ? new long[1] : Arrays.copyOf(a, a.length + 1);
        out[out.length - 1] = x;
        return out;
    }

    private static byte[][] append(byte[][] a, byte[] x) {
        byte[][] out = a == null ? new byte[1][] : Arrays.copyOf(a, a.length + 1);
        out[out.length - 1] = x;
        return out;
    }
}
