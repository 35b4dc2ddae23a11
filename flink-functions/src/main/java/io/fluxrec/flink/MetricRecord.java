package io.fluxrec.flink;

import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.data.GenericRowData;
import org.apache.flink.table.data.RowData;
import org.apache.flink.table.data.StringData;
import org.apache.flink.table.functions.FunctionContext;
import org.apache.flink.table.functions.ScalarFunction;

import java.math.BigInteger;

/**
 * {@code fluxrec_metric(mq, mc, n)}: the metric record (CONTRACTS.md section 5) of the running
 * total {@code n} of metric code {@code mc} ({@link Reasons}) in metric window {@code mq}:
 * Kafka key {@code window_start_ms|stream|kind|reason} and JSON value. Window bounds are exact
 * also where they leave the 64-bit range (as the reference computes them).
 */
public class MetricRecord extends ScalarFunction {

    private static final long serialVersionUID = 1L;

    private transient JoinSpec spec;
    private transient ByteSink sink;

    @Override
    public void open(FunctionContext context) throws Exception {
        spec = JoinSpec.fromJob(context.getJobParameter(JoinSpec.JOB_PARAMETER, null));
        sink = new ByteSink(256);
    }

    @Override
    public boolean isDeterministic() {
        return false;
    }

    public @DataTypeHint(value = "ROW<k STRING, v STRING>", bridgedTo = RowData.class) RowData eval(
            Long mq, Integer mc, Long n) {
        BigInteger w = BigInteger.valueOf(spec.metricsWindowMs);
        String start = BigInteger.valueOf(mq).multiply(w).toString();
        String end = BigInteger.valueOf(mq).add(BigInteger.ONE).multiply(w).toString();
        String stream = Reasons.stream(mc);
        String kind = Reasons.kind(mc);
        String reason = Reasons.reason(mc);
        String key = start + "|" + stream + "|" + kind + "|" + (reason == null ? "" : reason);
        sink.reset();
        sink.ascii("{\"v\":1,\"window_start_ms\":").ascii(start);
        sink.ascii(",\"window_end_ms\":").ascii(end);
        sink.ascii(",\"stream\":\"").ascii(stream).ascii("\",\"kind\":\"").ascii(kind);
        sink.ascii(reason == null ? "\",\"reason\":null" : "\",\"reason\":\"" + reason + "\"");
        sink.ascii(",\"count\":").decimal(n).write((byte) '}');
        return GenericRowData.of(StringData.fromString(key), StringData.fromBytes(sink.toArray()));
    }
}
