package io.fluxrec.flink;

/**
 * Dead-letter reasons and stages ({@code sample_join/CONTRACTS.md} section 3), and the metric
 * codes of section 5. A metric code packs (stream, kind, reason) into one small int so that
 * counts aggregate on typed columns; {@link #stream}, {@link #kind} and {@link #reason} unpack it.
 *
 * <pre>
 *   code = stream * 16 + k     stream: 0 impression, 1 action
 *   k: 0 in, 1 sample, 2 labelled, 3 correction, 4 duplicate, 5 late_action,
 *      6 + i  dead_letter with reason REASONS[i]
 * </pre>
 */
public final class Reasons {

    public static final String MALFORMED_JSON = "malformed_json";
    public static final String MISSING_FIELD = "missing_field";
    public static final String BAD_TYPE = "bad_type";
    public static final String UNSUPPORTED_VERSION = "unsupported_version";
    public static final String UNKNOWN_ACTION = "unknown_action";
    public static final String FUTURE_EVENT = "future_event";
    public static final String TOO_LATE = "too_late";
    public static final String BOT = "bot";
    public static final String ORPHAN_ACTION = "orphan_action";
    public static final String LATE_ACTION = "late_action";

    /** Every reason, in check order (the reference's DEAD_LETTER_REASONS). */
    public static final String[] REASONS = {
        MALFORMED_JSON, MISSING_FIELD, BAD_TYPE, UNSUPPORTED_VERSION, UNKNOWN_ACTION,
        FUTURE_EVENT, TOO_LATE, BOT, ORPHAN_ACTION, LATE_ACTION,
    };

    /** Verdict of the action dedup for a repeated action (counted, never dead-lettered). */
    public static final String DUPLICATE = "duplicate";

    public static final String[] KINDS = {
        "in", "sample", "labelled", "correction", "duplicate", "late_action", "dead_letter",
    };

    public static final int IN = 0;
    public static final int SAMPLE = 1;
    public static final int LABELLED = 2;
    public static final int CORRECTION = 3;
    public static final int DUPLICATE_KIND = 4;
    public static final int LATE = 5;
    public static final int DEAD = 6;

    public static final int IMPRESSION = 0;
    public static final int ACTION = 1;

    private Reasons() {}

    /** The stage that rejects an event for {@code reason}. */
    public static String stage(String reason) {
        return switch (reason) {
            case BOT -> "abnormal";
            case ORPHAN_ACTION, LATE_ACTION -> "join";
            default -> "validate";
        };
    }

    public static int code(int stream, int kind) {
        return stream * 16 + kind;
    }

    /** The metric code of a dead letter of {@code stream} for {@code reason}. */
    public static int deadCode(int stream, String reason) {
        for (int i = 0; i < REASONS.length; i++) {
            if (REASONS[i].equals(reason)) {
                return stream * 16 + DEAD + i;
            }
        }
        throw new IllegalArgumentException("unknown dead-letter reason " + reason);
    }

    public static String stream(int code) {
        return code / 16 == IMPRESSION ? "impression" : "action";
    }

    public static String kind(int code) {
        int k = code % 16;
        return KINDS[Math.min(k, DEAD)];
    }

    /** The reason of a dead-letter code, else null. */
    public static String reason(int code) {
        int k = code % 16;
        return k >= DEAD ? REASONS[k - DEAD] : null;
    }
}
