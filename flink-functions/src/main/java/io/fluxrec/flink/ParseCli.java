package io.fluxrec.flink;

import org.apache.flink.table.data.RowData;

import java.io.BufferedReader;
import java.io.BufferedOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * The parse of the join's Kafka sources ({@link EventFormat}'s rows) on the command line, so
 * that tests compare it with the Python reference on many payloads in one process (no job: only
 * Flink's jars on the class path, as in PyFlink's {@code lib}):
 *
 * <pre>
 *   java -cp fluxrec-flink-functions.jar:FLINK_LIB/* io.fluxrec.flink.ParseCli SPEC_JSON NOW_MS &lt; in &gt; out
 * </pre>
 *
 * Each input line is {@code i BASE64} (an impression) or {@code a BASE64} (an action); each
 * output line is a JSON object: {@code reason} (null when valid), {@code t} (the event time
 * when the payload is an object with a 64-bit integer there, else null), for valid events the
 * decoded {@code request_id}, {@code item_id}, {@code user_id}, and {@code label} (actions) or
 * {@code body} (impressions: the sample fields as JSON text), and {@code payload}: the payload
 * as a dead letter carries it.
 */
public final class ParseCli {

    private ParseCli() {}

    public static void main(String[] args) throws Exception {
        String spec = Base64.getEncoder().encodeToString(args[0].getBytes(StandardCharsets.UTF_8));
        long now = Long.parseLong(args[1]);
        String[] columns = {"payload", "reason", "t", "request_id", "item_id", "user_id", "label", "spans"};
        EventFormat.Decoder impressions = EventFormat.Decoder.of(true, spec, columns);
        EventFormat.Decoder actions = EventFormat.Decoder.of(false, spec, columns);
        ByteSink out = new ByteSink(1 << 16);
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        OutputStream stdout = new BufferedOutputStream(System.out, 1 << 16);
        String line;
        while ((line = in.readLine()) != null) {
            boolean impression = line.charAt(0) == 'i';
            byte[] b = Base64.getDecoder().decode(line.substring(2));
            RowData row = (impression ? impressions : actions).decode(b, now);
            out.reset();
            out.ascii("{\"reason\":");
            out.ascii(row.isNullAt(1) ? "null" : "\"" + row.getString(1) + "\"");
            out.ascii(",\"t\":").ascii(row.isNullAt(2) ? "null" : Long.toString(row.getLong(2)));
            if (row.isNullAt(1)) {
                for (int f = 3; f <= 5; f++) {
                    out.ascii(",\"").ascii(columns[f]).ascii("\":");
                    JsonOut.string(out, row.getString(f).toBytes());
                }
                if (impression) {
                    ByteSink body = new ByteSink(b.length);
                    EventParser.writeBody(body, b, 0, row.getBinary(7)); // as SampleJoin does
                    out.ascii(",\"body\":");
                    JsonOut.payload(out, body.toArray(), 0, body.size());
                } else {
                    out.ascii(",\"label\":").decimal(row.getInt(6));
                }
            }
            out.ascii(",\"payload\":");
            byte[] payload = row.getString(0).toBytes();
            JsonOut.payload(out, payload, 0, payload.length);
            out.ascii("}\n");
            stdout.write(out.toArray());
        }
        stdout.flush();
    }
}
