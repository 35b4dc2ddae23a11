package io.fluxrec.flink;

/** Writing JSON string values into a {@link ByteSink}. */
public final class JsonOut {

    private static final byte[] HEX = "0123456789abcdef".getBytes(java.nio.charset.StandardCharsets.US_ASCII);

    private JsonOut() {}

    /**
     * {@code b[off, off + len)}, a decoded value from {@link EventParser#decoded} (UTF-8, lone
     * surrogates in their 3-byte form), as a JSON string with its quotes: quote, backslash and
     * control characters escaped, a lone surrogate as its {@code \\uXXXX} escape, everything
     * else as it is.
     */
    public static void string(ByteSink out, byte[] b, int off, int len) {
        out.write((byte) '"');
        int end = off + len;
        int i = off;
        while (i < end) {
            int c = b[i] & 0xff;
            if (c == 0xed && i + 2 < end && (b[i + 1] & 0xff) >= 0xa0) {
                int cp = ((c & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f);
                escape(out, cp);
                i += 3;
            } else {
                plain(out, c);
                i++;
            }
        }
        out.write((byte) '"');
    }

    public static void string(ByteSink out, byte[] b) {
        string(out, b, 0, b.length);
    }

    /**
     * Raw Kafka value bytes as a JSON string, losslessly: well-formed UTF-8 stays as it is
     * (escaped as JSON needs), and each byte that is not part of well-formed UTF-8 becomes
     * {@code \\udcXX} (U+DC00 + the byte), as Python's {@code surrogateescape} decodes it. A
     * reader gets the original bytes back with {@code value.encode("utf-8", "surrogateescape")}.
     */
    public static void payload(ByteSink out, byte[] b, int off, int len) {
        out.write((byte) '"');
        int end = off + len;
        int i = off;
        while (i < end) {
            int c = b[i] & 0xff;
            if (c < 0x80) {
                plain(out, c);
                i++;
                continue;
            }
            int n = EventParser.validUtf8(b, i, end);
            if (n > 0) {
                out.write(b, i, n);
                i += n;
            } else {
                escape(out, 0xdc00 + c);
                i++;
            }
        }
        out.write((byte) '"');
    }

    private static void plain(ByteSink out, int c) {
        if (c == '"' || c == '\\') {
            out.write((byte) '\\').write((byte) c);
        } else if (c < 0x20) {
            switch (c) {
                case '\n' -> out.ascii("\\n");
                case '\r' -> out.ascii("\\r");
                case '\t' -> out.ascii("\\t");
                case '\b' -> out.ascii("\\b");
                case '\f' -> out.ascii("\\f");
                default -> escape(out, c);
            }
        } else {
            out.write((byte) c);
        }
    }

    private static void escape(ByteSink out, int cp) {
        out.ascii("\\u")
                .write(HEX[(cp >> 12) & 0xf])
                .write(HEX[(cp >> 8) & 0xf])
                .write(HEX[(cp >> 4) & 0xf])
                .write(HEX[cp & 0xf]);
    }
}
