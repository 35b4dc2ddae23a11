package io.fluxrec.flink;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * One event payload parsed once: the fields of {@code sample_join/CONTRACTS.md} section 1 and
 * the first validation reason of section 3 that applies, decided as {@code
 * sample_join/reference.py} decides it (the reference decodes with Python's {@code json} module).
 *
 * <p>The grammar is Python's {@code json.loads}: strict JSON plus the number literals {@code NaN},
 * {@code Infinity} and {@code -Infinity}; an integer of more than 4300 digits is an error (Python
 * refuses to convert it); a repeated key keeps its last value. Two limits bound the work: a value
 * nested deeper than {@link #MAX_DEPTH} containers is {@code malformed_json}, and so is a payload
 * that is not valid UTF-8. Parsing is one pass over the bytes, without allocation unless a string
 * field has escapes; recursion is at most {@link #MAX_DEPTH} deep.
 *
 * <p>After {@link #parse}, the top-level fields of interest are described by {@link #kind},
 * {@link #start} and {@link #stop} (the value's bytes in the payload, quotes included for
 * strings), and {@link #number} for integers that fit in 64 bits. Example: for {@code
 * {"v":1,"request_id":"r1"}}, {@code kind[V] == INT, number[V] == 1}, {@code kind[REQUEST_ID] ==
 * STRING} with bytes 20..24 ({@code "r1"}), and every other field {@code ABSENT}.
 *
 * <p>Not thread-safe: each decoder holds its own.
 */
public final class EventParser {

    /** Containers (objects, arrays) nested deeper than this make a payload malformed. */
    public static final int MAX_DEPTH = 128;

    /** Python's default limit on the digits of an integer it converts from text. */
    public static final int MAX_INT_DIGITS = 4300;

    // kinds of value
    public static final byte ABSENT = 0;
    public static final byte NULL = 1;
    public static final byte STRING = 2;
    /** An integer that fits in a signed 64-bit long ({@link #number} holds it). */
    public static final byte INT = 3;
    /** An integer outside the 64-bit range (valid JSON, but not a BIGINT). */
    public static final byte BIG_INT = 4;
    /** A number with a fraction or exponent, or NaN / Infinity / -Infinity. */
    public static final byte FLOAT = 5;
    public static final byte BOOL = 6;
    public static final byte OBJECT = 7;
    public static final byte ARRAY = 8;

    // top-level fields of interest
    public static final int V = 0;
    public static final int REQUEST_ID = 1;
    public static final int ITEM_ID = 2;
    public static final int USER_ID = 3;
    public static final int ACTION = 4;
    public static final int EVENT_TIME_MS = 5;
    public static final int FEATURES = 6;
    public static final int P_CLICK = 7;
    public static final int FIELDS = 8;

    static final String[] NAMES = {
        "v", "request_id", "item_id", "user_id", "action", "event_time_ms", "features", "p_click"
    };
    private static final byte[][] NAME_BYTES = new byte[FIELDS][];

    static {
        for (int i = 0; i < FIELDS; i++) {
            NAME_BYTES[i] = NAMES[i].getBytes(StandardCharsets.UTF_8);
        }
    }

    /** Thrown (without a stack trace) on the first byte that makes the payload malformed. */
    private static final class Malformed extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Malformed() {
            super("malformed JSON", null, false, false);
        }
    }

    private static final Malformed MALFORMED = new Malformed();

    public final byte[] kind = new byte[FIELDS];
    public final int[] start = new int[FIELDS];
    public final int[] stop = new int[FIELDS];
    public final long[] number = new long[FIELDS];
    private final boolean[] escaped = new boolean[FIELDS];

    private byte[] buf = new byte[0];
    /** Where the payload parsed last starts in its array: the origin of {@link #bodySpans}. */
    private int pos0;
    private int pos;
    private int end;
    private boolean object;

    // set by the last value parsed
    private boolean lastEscaped;
    private long lastNumber;

    /**
     * Parses {@code b[off, off + len)}. Returns whether it is a JSON object within the limits;
     * only then are the fields set.
     */
    public boolean parse(byte[] b, int off, int len) {
        pos0 = off;
        buf = b;
        pos = off;
        end = off + len;
        Arrays.fill(kind, ABSENT);
        object = false;
        try {
            skipWhitespace();
            if (pos >= end || buf[pos] != '{') {
                return false; // valid JSON or not, it is not an object
            }
            parseTopObject();
            skipWhitespace();
            object = pos == end;
        } catch (Malformed e) {
            object = false;
        }
        if (!object) {
            Arrays.fill(kind, ABSENT);
        }
        return object;
    }

    /** The payload parsed last. */
    public byte[] bytes() {
        return buf;
    }

    /** Whether the last payload was a JSON object. */
    public boolean isObject() {
        return object;
    }

    /** {@code event_time_ms} when the payload is an object with a 64-bit integer there. */
    public boolean hasTime() {
        return kind[EVENT_TIME_MS] == INT;
    }

    public long time() {
        return number[EVENT_TIME_MS];
    }

    /**
     * The first content reason of CONTRACTS.md section 3 ({@code malformed_json} ..
     * {@code unknown_action}), or null. For actions, {@code actions} are the configured action
     * types (UTF-8); {@link #label()} then tells which one matched.
     */
    public String reason(boolean impression, byte[][] actions) {
        if (!object) {
            return Reasons.MALFORMED_JSON;
        }
        int last = impression ? FEATURES : ACTION;
        for (int f : new int[] {V, REQUEST_ID, ITEM_ID, USER_ID, EVENT_TIME_MS, last}) {
            if (kind[f] == ABSENT || kind[f] == NULL) {
                return Reasons.MISSING_FIELD;
            }
        }
        if (kind[REQUEST_ID] != STRING
                || kind[ITEM_ID] != STRING
                || kind[USER_ID] != STRING
                || kind[EVENT_TIME_MS] != INT
                || (impression ? kind[FEATURES] != OBJECT : kind[ACTION] != STRING)
                || kind[V] != INT) {
            return Reasons.BAD_TYPE;
        }
        if (number[V] != 1) {
            return Reasons.UNSUPPORTED_VERSION;
        }
        if (!impression && labelOf(actions) < 0) {
            return Reasons.UNKNOWN_ACTION;
        }
        return null;
    }

    private int label = -1;

    /** The index in {@code actions} of this action's type, after {@link #reason}. */
    public int label() {
        return label;
    }

    private int labelOf(byte[][] actions) {
        byte[] value = decoded(ACTION);
        label = -1;
        for (int i = 0; i < actions.length; i++) {
            if (Arrays.equals(value, actions[i])) {
                label = i;
                break;
            }
        }
        return label;
    }

    /**
     * The decoded value of string field {@code f}: its UTF-8 bytes, where a lone surrogate
     * (possible through a {@code \\uD800} escape) takes the 3-byte form that UTF-8 forbids
     * ("WTF-8"), so that distinct JSON strings stay distinct. {@link JsonOut#string} writes it
     * back as JSON.
     */
    public byte[] decoded(int f) {
        int s = start[f] + 1;
        int e = stop[f] - 1;
        if (!escaped[f]) {
            return Arrays.copyOfRange(buf, s, e);
        }
        return unescape(buf, s, e);
    }

    /** The fields of a sample's body, in the order it writes them. */
    private static final int[] BODY_FIELDS = {
        REQUEST_ID, ITEM_ID, USER_ID, EVENT_TIME_MS, FEATURES, P_CLICK
    };

    /** Bytes of {@link #bodySpans()}: a (start, stop) pair of big-endian int32 per body field. */
    public static final int BODY_SPANS_BYTES = BODY_FIELDS.length * 8;

    /**
     * Where the sample's fields of a valid impression stand in the payload, for {@code
     * SampleJoin} to write the sample's body from the payload ({@link #writeBody}) without
     * carrying a copy of it through the job: for each of {@code request_id, item_id, user_id,
     * event_time_ms, features, p_click}, the [start, stop) offsets of its value from the
     * payload's first byte (quotes included), as two big-endian int32; 48 bytes. {@code p_click}
     * has start -1 when it is not a number (the reference passes a number through as written
     * and drops anything else).
     */
    public byte[] bodySpans() {
        byte[] spans = new byte[BODY_SPANS_BYTES];
        for (int i = 0; i < BODY_FIELDS.length; i++) {
            int f = BODY_FIELDS[i];
            byte k = kind[f];
            boolean kept = f != P_CLICK || k == INT || k == BIG_INT || k == FLOAT;
            ByteSink.int32To(spans, 8 * i, kept ? start[f] - pos0 : -1);
            ByteSink.int32To(spans, 8 * i + 4, kept ? stop[f] - pos0 : -1);
        }
        return spans;
    }

    /**
     * The sample's fields as they stand in a valid impression's payload {@code b[base, ...)},
     * at the {@link #bodySpans() spans} its parse gave: {@code "request_id":..,"item_id":..,
     * "user_id":..,"event_time_ms":..,"features":{..}} and {@code ,"p_click":..} when it is a
     * number.
     */
    public static void writeBody(ByteSink out, byte[] b, int base, byte[] spans) {
        for (int i = 0; i < BODY_FIELDS.length; i++) {
            int from = ByteSink.int32At(spans, 8 * i);
            if (from < 0) {
                continue;
            }
            if (i > 0) {
                out.write((byte) ',');
            }
            out.write((byte) '"').write(NAME_BYTES[BODY_FIELDS[i]]);
            out.write((byte) '"').write((byte) ':');
            out.write(b, base + from, ByteSink.int32At(spans, 8 * i + 4) - from);
        }
    }

    // ------------------------------------------------------------------ grammar

    private void parseTopObject() {
        pos++; // '{'
        skipWhitespace();
        if (peek() == '}') {
            pos++;
            return;
        }
        while (true) {
            if (peek() != '"') {
                throw MALFORMED;
            }
            int keyStart = pos;
            boolean keyEscaped = scanString();
            int field = fieldOf(keyStart + 1, pos - 1, keyEscaped);
            skipWhitespace();
            expect(':');
            skipWhitespace();
            int valueStart = pos;
            byte k = parseValue(1);
            if (field >= 0) {
                kind[field] = k;
                start[field] = valueStart;
                stop[field] = pos;
                escaped[field] = k == STRING && lastEscaped;
                number[field] = lastNumber;
            }
            skipWhitespace();
            byte c = next();
            if (c == '}') {
                return;
            }
            if (c != ',') {
                throw MALFORMED;
            }
            skipWhitespace();
        }
    }

    /** One value at {@code pos}, inside containers {@code depth} deep; returns its kind. */
    private byte parseValue(int depth) {
        byte c = peek();
        switch (c) {
            case '"':
                lastEscaped = scanString();
                return STRING;
            case '{':
                skipObject(depth + 1);
                return OBJECT;
            case '[':
                skipArray(depth + 1);
                return ARRAY;
            case 't':
                literal("true");
                return BOOL;
            case 'f':
                literal("false");
                return BOOL;
            case 'n':
                literal("null");
                return NULL;
            case 'N':
                literal("NaN");
                return FLOAT;
            case 'I':
                literal("Infinity");
                return FLOAT;
            case '-':
                if (pos + 1 < end && buf[pos + 1] == 'I') {
                    literal("-Infinity");
                    return FLOAT;
                }
                return number();
            default:
                if (c >= '0' && c <= '9') {
                    return number();
                }
                throw MALFORMED;
        }
    }

    private void skipObject(int depth) {
        if (depth > MAX_DEPTH) {
            throw MALFORMED;
        }
        pos++; // '{'
        skipWhitespace();
        if (peek() == '}') {
            pos++;
            return;
        }
        while (true) {
            if (peek() != '"') {
                throw MALFORMED;
            }
            scanString();
            skipWhitespace();
            expect(':');
            skipWhitespace();
            parseValue(depth);
            skipWhitespace();
            byte c = next();
            if (c == '}') {
                return;
            }
            if (c != ',') {
                throw MALFORMED;
            }
            skipWhitespace();
        }
    }

    private void skipArray(int depth) {
        if (depth > MAX_DEPTH) {
            throw MALFORMED;
        }
        pos++; // '['
        skipWhitespace();
        if (peek() == ']') {
            pos++;
            return;
        }
        while (true) {
            parseValue(depth);
            skipWhitespace();
            byte c = next();
            if (c == ']') {
                return;
            }
            if (c != ',') {
                throw MALFORMED;
            }
            skipWhitespace();
        }
    }

    /** A number as Python's scanner reads it: {@code -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?}. */
    private byte number() {
        boolean negative = false;
        if (buf[pos] == '-') {
            negative = true;
            pos++;
        }
        int digitsStart = pos;
        byte c = peek();
        if (c == '0') {
            pos++;
        } else if (c >= '1' && c <= '9') {
            pos++;
            while (pos < end && isDigit(buf[pos])) {
                pos++;
            }
        } else {
            throw MALFORMED;
        }
        int digitsEnd = pos;
        boolean isFloat = false;
        if (pos + 1 < end && buf[pos] == '.' && isDigit(buf[pos + 1])) {
            isFloat = true;
            pos += 2;
            while (pos < end && isDigit(buf[pos])) {
                pos++;
            }
        }
        if (pos < end && (buf[pos] == 'e' || buf[pos] == 'E')) {
            int expStart = pos;
            pos++;
            if (pos < end && (buf[pos] == '-' || buf[pos] == '+')) {
                pos++;
            }
            int expDigits = pos;
            while (pos < end && isDigit(buf[pos])) {
                pos++;
            }
            if (pos > expDigits) {
                isFloat = true;
            } else {
                pos = expStart; // not an exponent: what follows the number is then an error
            }
        }
        if (isFloat) {
            return FLOAT;
        }
        int digits = digitsEnd - digitsStart;
        if (digits > MAX_INT_DIGITS) {
            throw MALFORMED;
        }
        if (digits > 19) {
            return BIG_INT;
        }
        // accumulate negatively: Long.MIN_VALUE has no positive counterpart
        long value = 0;
        for (int i = digitsStart; i < digitsEnd; i++) {
            int d = buf[i] - '0';
            if (value < (Long.MIN_VALUE + d) / 10) {
                return BIG_INT;
            }
            value = value * 10 - d;
        }
        if (!negative) {
            if (value == Long.MIN_VALUE) {
                return BIG_INT;
            }
            value = -value;
        }
        lastNumber = value;
        return INT;
    }

    /** A string at {@code pos} (the opening quote); returns whether it has escapes. */
    private boolean scanString() {
        pos++;
        boolean hasEscape = false;
        while (true) {
            if (pos >= end) {
                throw MALFORMED;
            }
            byte b = buf[pos];
            if (b == '"') {
                pos++;
                return hasEscape;
            }
            if (b == '\\') {
                hasEscape = true;
                if (pos + 1 >= end) {
                    throw MALFORMED;
                }
                byte e = buf[pos + 1];
                if (e == 'u') {
                    if (pos + 6 > end) {
                        throw MALFORMED;
                    }
                    for (int i = pos + 2; i < pos + 6; i++) {
                        if (hex(buf[i]) < 0) {
                            throw MALFORMED;
                        }
                    }
                    pos += 6;
                } else if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n'
                        || e == 'r' || e == 't') {
                    pos += 2;
                } else {
                    throw MALFORMED;
                }
            } else if (b >= 0x20) {
                pos++;
            } else if (b >= 0) {
                throw MALFORMED; // a control character: Python's strict mode refuses it
            } else {
                pos += utf8Length(buf, pos, end);
            }
        }
    }

    /**
     * Length of the well-formed UTF-8 sequence at {@code i} (a byte >= 0x80); throws if it is
     * not one (overlong forms, surrogates and code points above U+10FFFF included).
     */
    static int utf8Length(byte[] b, int i, int end) {
        int n = validUtf8(b, i, end);
        if (n == 0) {
            throw MALFORMED;
        }
        return n;
    }

    /** Length of the well-formed multi-byte UTF-8 sequence at {@code i}, or 0. */
    static int validUtf8(byte[] b, int i, int end) {
        int b0 = b[i] & 0xff;
        if (b0 >= 0xc2 && b0 <= 0xdf) {
            return i + 1 < end && cont(b[i + 1]) ? 2 : 0;
        }
        if (b0 >= 0xe0 && b0 <= 0xef) {
            if (i + 2 >= end) {
                return 0;
            }
            int b1 = b[i + 1] & 0xff;
            int lo = b0 == 0xe0 ? 0xa0 : 0x80;
            int hi = b0 == 0xed ? 0x9f : 0xbf;
            return b1 >= lo && b1 <= hi && cont(b[i + 2]) ? 3 : 0;
        }
        if (b0 >= 0xf0 && b0 <= 0xf4) {
            if (i + 3 >= end) {
                return 0;
            }
            int b1 = b[i + 1] & 0xff;
            int lo = b0 == 0xf0 ? 0x90 : 0x80;
            int hi = b0 == 0xf4 ? 0x8f : 0xbf;
            return b1 >= lo && b1 <= hi && cont(b[i + 2]) && cont(b[i + 3]) ? 4 : 0;
        }
        return 0;
    }

    private static boolean cont(byte b) {
        return (b & 0xc0) == 0x80;
    }

    private int fieldOf(int s, int e, boolean keyEscaped) {
        if (keyEscaped) {
            byte[] key = unescape(buf, s, e);
            for (int f = 0; f < FIELDS; f++) {
                if (Arrays.equals(key, NAME_BYTES[f])) {
                    return f;
                }
            }
            return -1;
        }
        int len = e - s;
        for (int f = 0; f < FIELDS; f++) {
            byte[] name = NAME_BYTES[f];
            if (name.length == len && Arrays.equals(buf, s, e, name, 0, len)) {
                return f;
            }
        }
        return -1;
    }

    private void literal(String word) {
        int n = word.length();
        if (pos + n > end) {
            throw MALFORMED;
        }
        for (int i = 0; i < n; i++) {
            if (buf[pos + i] != word.charAt(i)) {
                throw MALFORMED;
            }
        }
        pos += n;
    }

    private void skipWhitespace() {
        while (pos < end) {
            byte b = buf[pos];
            if (b != ' ' && b != '\n' && b != '\r' && b != '\t') {
                return;
            }
            pos++;
        }
    }

    private byte peek() {
        if (pos >= end) {
            throw MALFORMED;
        }
        return buf[pos];
    }

    private byte next() {
        byte b = peek();
        pos++;
        return b;
    }

    private void expect(char c) {
        if (next() != c) {
            throw MALFORMED;
        }
    }

    private static boolean isDigit(byte b) {
        return b >= '0' && b <= '9';
    }

    static int hex(byte b) {
        if (b >= '0' && b <= '9') {
            return b - '0';
        }
        if (b >= 'a' && b <= 'f') {
            return b - 'a' + 10;
        }
        if (b >= 'A' && b <= 'F') {
            return b - 'A' + 10;
        }
        return -1;
    }

    /**
     * The decoded content of a well-formed JSON string body {@code b[s, e)} as WTF-8. A high
     * surrogate escape followed by a low surrogate escape is one code point (as in Python).
     */
    static byte[] unescape(byte[] b, int s, int e) {
        ByteSink out = new ByteSink(e - s);
        int i = s;
        while (i < e) {
            byte c = b[i];
            if (c != '\\') {
                out.write(c);
                i++;
                continue;
            }
            byte k = b[i + 1];
            i += 2;
            switch (k) {
                case 'b' -> out.write((byte) '\b');
                case 'f' -> out.write((byte) '\f');
                case 'n' -> out.write((byte) '\n');
                case 'r' -> out.write((byte) '\r');
                case 't' -> out.write((byte) '\t');
                case 'u' -> {
                    int cp = hex4(b, i);
                    i += 4;
                    if (cp >= 0xd800 && cp <= 0xdbff && i + 6 <= e && b[i] == '\\' && b[i + 1] == 'u') {
                        int low = hex4(b, i + 2);
                        if (low >= 0xdc00 && low <= 0xdfff) {
                            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                            i += 6;
                        }
                    }
                    out.codePoint(cp);
                }
                default -> out.write(k); // '"', '\\', '/'
            }
        }
        return out.toArray();
    }

    private static int hex4(byte[] b, int i) {
        return (hex(b[i]) << 12) | (hex(b[i + 1]) << 8) | (hex(b[i + 2]) << 4) | hex(b[i + 3]);
    }
}
