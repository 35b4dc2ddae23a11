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

/**
 * {@code fluxrec_dedup_actions}: the first arrival of each (request_id, item_id, action) and
 * the too-late check (CONTRACTS.md 4.2), before the bot count, which needs unique timely actions.
 *
 * <p>Input {@code acts}, partitioned by (request_id, item_id): the valid actions, in a union
 * with the impressions filtered to no rows, which still carries the impressions' watermark, so
 * that this operator's watermark is the job's (the minimum over both topics). Output: each
 * action with {@code verdict} null (unique and timely), {@code duplicate} or {@code
 * too_late}.
 *
 * <p>State: a bit per label that has arrived, held until the watermark passes the latest
 * arrival's time + {@code join.dedup_ttl_ms} (an event-time timer; no TTL).
 *
 * <p>No {@code on_time} argument: with one, Flink 2.2 drops rows at or behind the watermark
 * before {@code eval} sees them, and this function must see them to dead-letter them.
 */
@FunctionHint(
        output =
                @DataTypeHint(
                        value =
                                "ROW<verdict STRING, payload STRING, user_id STRING, label INT,"
                                        + " t BIGINT>",
                        bridgedTo = RowData.class))
public class DedupActions extends ProcessTableFunction<RowData> {

    private static final long serialVersionUID = 1L;

    private static final StringData DUPLICATE = StringData.fromString(Reasons.DUPLICATE);
    private static final StringData TOO_LATE = StringData.fromString(Reasons.TOO_LATE);

    /** Bit {@code l} set: an action of label {@code l} arrived; held until {@code until}. */
    public static class Seen {
        public Long labels;
        public Long until;
    }

    private transient JoinSpec spec;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
    }

    public void eval(
            Context ctx,
            @StateHint(name = "seen", ttl = "0") Seen seen,
            @ArgumentHint(
                            name = "acts",
                            value = SET_SEMANTIC_TABLE,
                            type =
                                    @DataTypeHint(
                                            value = JoinSpec.ACTION_ROW,
                                            bridgedTo = RowData.class))
                    RowData acts) {
        int label = acts.getInt(4);
        long t = acts.getLong(5);
        long bit = 1L << label;
        long labels = seen.labels == null ? 0 : seen.labels;
        StringData verdict = null;
        if ((labels & bit) != 0) {
            verdict = DUPLICATE;
        } else {
            seen.labels = labels | bit;
            TimeContext<Long> time = ctx.timeContext(Long.class);
            long until = t + spec.dedupTtlMs;
            if (seen.until == null || until > seen.until) {
                seen.until = until;
                time.registerOnTime(until);
            }
            Long watermark = time.currentWatermark();
            if (watermark != null && t <= watermark) {
                verdict = TOO_LATE;
            }
        }
        collect(GenericRowData.of(verdict, acts.getString(0), acts.getString(3), label, t));
    }

    public void onTimer(OnTimerContext ctx, Seen seen) {
        if (seen.until != null && ctx.timeContext(Long.class).time() >= seen.until) {
            ctx.clearAllState(); // not clearAll(): see SampleJoin.onTimer
        }
    }
}
