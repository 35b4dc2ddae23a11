package io.fluxrec.flink;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The join settings the functions need, from the {@code spec} argument of every call: a JSON
 * object that {@code sample_join/sql.py} writes from {@code JoinConfig}, for example
 *
 * <pre>
 * {"labels": [["click", "click", 300000], ["conversion", "conversion", 3600000]],
 *  "strategy": "window", "late_action_policy": "dead_letter", "late_horizon_ms": 3600000,
 *  "max_future_skew_ms": 60000, "metrics_window_ms": 60000, "bot_max_actions": 100,
 *  "bot_window_ms": 60000, "dedup_ttl_ms": 7200000}
 * </pre>
 *
 * Label {@code i} is the i-th entry: its name in the sample, the action type that sets it, and
 * its window. At most 64 labels (a bit per label in the dedup state).
 */
public final class JoinSpec {

    public final String[] names;
    public final byte[][] nameBytes;
    public final byte[][] actions;
    public final long[] windows;
    public final long maxWindow;
    public final boolean fakeNegative;
    public final boolean lateCorrection;
    public final long lateHorizonMs;
    public final long maxFutureSkewMs;
    public final long metricsWindowMs;
    public final long botMaxActions;
    public final long botWindowMs;
    public final long dedupTtlMs;
    public final String strategy;

    private JoinSpec(Map<String, Object> m) {
        List<?> labels = (List<?>) m.get("labels");
        int n = labels.size();
        if (n == 0 || n > 64) {
            throw new IllegalArgumentException("1 to 64 labels, got " + n);
        }
        names = new String[n];
        nameBytes = new byte[n][];
        actions = new byte[n][];
        windows = new long[n];
        long max = 0;
        for (int i = 0; i < n; i++) {
            List<?> l = (List<?>) labels.get(i);
            names[i] = (String) l.get(0);
            nameBytes[i] = names[i].getBytes(StandardCharsets.UTF_8);
            actions[i] = ((String) l.get(1)).getBytes(StandardCharsets.UTF_8);
            windows[i] = (Long) l.get(2);
            max = Math.max(max, windows[i]);
        }
        maxWindow = max;
        strategy = (String) m.get("strategy");
        fakeNegative = "fake_negative".equals(strategy);
        lateCorrection = "correction".equals(m.get("late_action_policy"));
        lateHorizonMs = (Long) m.get("late_horizon_ms");
        maxFutureSkewMs = (Long) m.get("max_future_skew_ms");
        metricsWindowMs = (Long) m.get("metrics_window_ms");
        botMaxActions = (Long) m.getOrDefault("bot_max_actions", 0L);
        botWindowMs = (Long) m.getOrDefault("bot_window_ms", 0L);
        dedupTtlMs = (Long) m.getOrDefault("dedup_ttl_ms", 0L);
    }

    private static String cachedText;
    private static JoinSpec cached;

    /** The spec of a JSON text; the last one is cached (calls pass the same constant). */
    public static synchronized JoinSpec of(String json) {
        if (!json.equals(cachedText)) {
            @SuppressWarnings("unchecked")
            Map<String, Object> m = (Map<String, Object>) new Reader(json).value();
            cached = new JoinSpec(m);
            cachedText = json;
        }
        return cached;
    }

    /**
     * The rows of valid, parsed actions that the action functions ({@link DedupActions},
     * {@link BotCount}) take as their table argument; {@code label} indexes the labels.
     */
    public static final String ACTION_ROW =
            "ROW<payload STRING, request_id STRING, item_id STRING, user_id STRING,"
                    + " label INT, t BIGINT>";

    /** The job parameter that carries the spec (base64 of its JSON), set by the job. */
    public static final String JOB_PARAMETER = "fluxrec.join.spec";

    /** The spec of the running job, from the value of its {@link #JOB_PARAMETER}. */
    public static JoinSpec fromJob(String encoded) {
        if (encoded == null) {
            throw new IllegalStateException(
                    "job parameter " + JOB_PARAMETER + " is not set: the fluxrec functions run"
                            + " inside the job that pipelines/join_job.py declares");
        }
        return of(new String(java.util.Base64.getDecoder().decode(encoded), StandardCharsets.UTF_8));
    }

    /** The metric window (index) of an event time; unparsed times count in window 0. */
    public long window(Long t) {
        return t == null ? 0 : Math.floorDiv(t, metricsWindowMs);
    }

    /** A small reader of the spec's JSON (objects, arrays, strings, integers). */
    private static final class Reader {
        private final String s;
        private int i;

        Reader(String s) {
            this.s = s;
        }

        Object value() {
            skip();
            char c = s.charAt(i);
            if (c == '{') {
                Map<String, Object> m = new LinkedHashMap<>();
                i++;
                skip();
                while (s.charAt(i) != '}') {
                    String k = (String) value();
                    skip();
                    i++; // ':'
                    m.put(k, value());
                    skip();
                    if (s.charAt(i) == ',') {
                        i++;
                        skip();
                    }
                }
                i++;
                return m;
            }
            if (c == '[') {
                List<Object> l = new ArrayList<>();
                i++;
                skip();
                while (s.charAt(i) != ']') {
                    l.add(value());
                    skip();
                    if (s.charAt(i) == ',') {
                        i++;
                    }
                    skip();
                }
                i++;
                return l;
            }
            if (c == '"') {
                int e = i + 1;
                while (s.charAt(e) != '"') {
                    e += s.charAt(e) == '\\' ? 2 : 1;
                }
                byte[] body = s.substring(i + 1, e).getBytes(StandardCharsets.UTF_8);
                i = e + 1;
                return new String(
                        EventParser.unescape(body, 0, body.length), StandardCharsets.UTF_8);
            }
            int e = i;
            while (e < s.length() && (s.charAt(e) == '-' || Character.isDigit(s.charAt(e)))) {
                e++;
            }
            long v = Long.parseLong(s.substring(i, e));
            i = e;
            return v;
        }

        private void skip() {
            while (i < s.length() && Character.isWhitespace(s.charAt(i))) {
                i++;
            }
        }
    }
}
