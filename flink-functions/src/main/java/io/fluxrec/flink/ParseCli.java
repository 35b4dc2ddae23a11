package io.fluxrec.flink;

import java.io.BufferedReader;
import java.io.BufferedOutputStream;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.Base64;

/**
 * The parse of the join's functions on the command line, so that tests compare it with the
 * Python reference on many payloads in one process (no Flink needed):
 *
 * <pre>
 *   java -cp fluxrec-flink-functions.jar io.fluxrec.flink.ParseCli SPEC_JSON NOW_MS &lt; in &gt; out
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
        JoinSpec spec = JoinSpec.of(args[0]);
        long now = Long.parseLong(args[1]);
        EventParser parser = new EventParser();
        ByteSink out = new ByteSink(1 << 16);
        BufferedReader in =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        OutputStream stdout = new BufferedOutputStream(System.out, 1 << 16);
        String line;
        while ((line = in.readLine()) != null) {
            boolean impression = line.charAt(0) == 'i';
            byte[] b = Base64.getDecoder().decode(line.substring(2));
            parser.parse(b, 0, b.length);
            String reason = parser.reason(impression, spec.actions);
            if (reason == null && parser.time() > now + spec.maxFutureSkewMs) {
                reason = Reasons.FUTURE_EVENT;
            }
            out.reset();
            out.ascii("{\"reason\":").ascii(reason == null ? "null" : "\"" + reason + "\"");
            out.ascii(",\"t\":").ascii(parser.hasTime() ? Long.toString(parser.time()) : "null");
            if (reason == null) {
                for (int f : new int[] {EventParser.REQUEST_ID, EventParser.ITEM_ID, EventParser.USER_ID}) {
                    out.ascii(",\"").ascii(EventParser.NAMES[f]).ascii("\":");
                    JsonOut.string(out, parser.decoded(f));
                }
                if (impression) {
                    ByteSink body = new ByteSink(b.length);
                    EventParser.writeBody(body, b, 0, parser.bodySpans()); // as SampleJoin does
                    out.ascii(",\"body\":");
                    JsonOut.payload(out, body.toArray(), 0, body.size());
                } else {
                    out.ascii(",\"label\":").decimal(parser.label());
                }
            }
            out.ascii(",\"payload\":");
            JsonOut.payload(out, b, 0, b.length);
            out.ascii("}\n");
            stdout.write(out.toArray());
        }
        stdout.flush();
    }
}
