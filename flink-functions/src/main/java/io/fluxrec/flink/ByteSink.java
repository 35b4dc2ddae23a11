package io.fluxrec.flink;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/** A growable byte buffer for building records; {@link #reset} makes it reusable. */
public final class ByteSink {

    private byte[] buf;
    private int size;

    public ByteSink(int capacity) {
        buf = new byte[Math.max(capacity, 16)];
    }

    public void reset() {
        size = 0;
    }

    public int size() {
        return size;
    }

    /** The sink's own buffer: its first {@link #size} bytes are what was written (valid until
     * the next write or {@link #reset}). */
    public byte[] buffer() {
        return buf;
    }

    public byte[] toArray() {
        return Arrays.copyOf(buf, size);
    }

    private void ensure(int extra) {
        if (size + extra > buf.length) {
            buf = Arrays.copyOf(buf, Math.max(buf.length * 2, size + extra));
        }
    }

    public ByteSink write(byte b) {
        ensure(1);
        buf[size++] = b;
        return this;
    }

    public ByteSink write(byte[] b) {
        return write(b, 0, b.length);
    }

    public ByteSink write(byte[] b, int off, int len) {
        ensure(len);
        System.arraycopy(b, off, buf, size, len);
        size += len;
        return this;
    }

    /**
     * ASCII text (the constant parts of records), copied in one piece: {@code String}'s own
     * copy of the low byte of each char, an array copy for a Latin-1 string, where a loop of
     * {@code charAt} checks each index (profiled: ~8% of the join's task time in sample writes).
     */
    @SuppressWarnings("deprecation") // the low byte of each char is what ASCII text needs
    public ByteSink ascii(String s) {
        int n = s.length();
        ensure(n);
        s.getBytes(0, n, buf, size);
        size += n;
        return this;
    }

    public ByteSink utf8(String s) {
        return write(s.getBytes(StandardCharsets.UTF_8));
    }

    /** Big-endian, 4 bytes. */
    public ByteSink int32(int v) {
        ensure(4);
        int32To(buf, size, v);
        size += 4;
        return this;
    }

    /** Big-endian, 8 bytes. */
    public ByteSink int64(long v) {
        ensure(8);
        int64To(buf, size, v);
        size += 8;
        return this;
    }

    /** A byte string with its length: {@code len:i32} (big-endian), then the bytes. */
    public ByteSink sized(byte[] b) {
        return int32(b.length).write(b);
    }

    /** {@link #sized(byte[])} of {@code b[off, off + len)}. */
    public ByteSink sized(byte[] b, int off, int len) {
        return int32(len).write(b, off, len);
    }

    /** {@code v} big-endian into {@code b[at, at + 4)}. */
    public static void int32To(byte[] b, int at, int v) {
        b[at] = (byte) (v >>> 24);
        b[at + 1] = (byte) (v >>> 16);
        b[at + 2] = (byte) (v >>> 8);
        b[at + 3] = (byte) v;
    }

    /** {@code v} big-endian into {@code b[at, at + 8)}. */
    public static void int64To(byte[] b, int at, long v) {
        int32To(b, at, (int) (v >>> 32));
        int32To(b, at + 4, (int) v);
    }

    /** Big-endian, 4 bytes at {@code b[at]}. */
    public static int int32At(byte[] b, int at) {
        return (b[at] << 24)
                | ((b[at + 1] & 0xff) << 16)
                | ((b[at + 2] & 0xff) << 8)
                | (b[at + 3] & 0xff);
    }

    /** Big-endian, 8 bytes at {@code b[at]}. */
    public static long int64At(byte[] b, int at) {
        return ((long) int32At(b, at) << 32) | (int32At(b, at + 4) & 0xffffffffL);
    }

    /**
     * Reads, in place, what a sink wrote: no copies, no wrapper objects; one reader serves every
     * call of a function ({@link #of}). A byte string ({@link #sized}) is read as its length and
     * offset in the array, so that a caller can keep it as a slice of the array.
     */
    public static final class Reader {
        private byte[] b;
        private int pos;
        private int length;

        /** Read {@code bytes} from their start. */
        public Reader of(byte[] bytes) {
            b = bytes;
            pos = 0;
            return this;
        }

        public boolean hasMore() {
            return pos < b.length;
        }

        public int u8() {
            return b[pos++] & 0xff;
        }

        public int int32() {
            int v = int32At(b, pos);
            pos += 4;
            return v;
        }

        public long int64() {
            long v = int64At(b, pos);
            pos += 8;
            return v;
        }

        /**
         * A byte string that {@link ByteSink#sized} wrote: where its bytes start in the array
         * ({@link #length} of them); the position moves past them.
         */
        public int sized() {
            length = int32();
            int start = pos;
            pos += length;
            return start;
        }

        /** The length of the last {@link #sized} string. */
        public int length() {
            return length;
        }

        /** A copy of the last {@link #sized} string. */
        public byte[] copy() {
            return Arrays.copyOfRange(b, pos - length, pos);
        }
    }

    /** {@code v} in decimal, without a String. */
    public ByteSink decimal(long v) {
        if (v == Long.MIN_VALUE) {
            return ascii("-9223372036854775808");
        }
        ensure(20);
        if (v < 0) {
            buf[size++] = '-';
            v = -v;
        }
        int end = size + digits(v);
        for (int i = end - 1; i >= size; i--) {
            buf[i] = (byte) ('0' + v % 10);
            v /= 10;
        }
        size = end;
        return this;
    }

    private static int digits(long v) {
        int n = 1;
        while (v >= 10) {
            v /= 10;
            n++;
        }
        return n;
    }

    /** One code point as UTF-8; a surrogate code point as its 3-byte (WTF-8) form. */
    public ByteSink codePoint(int cp) {
        ensure(4);
        if (cp < 0x80) {
            buf[size++] = (byte) cp;
        } else if (cp < 0x800) {
            buf[size++] = (byte) (0xc0 | (cp >> 6));
            buf[size++] = (byte) (0x80 | (cp & 0x3f));
        } else if (cp < 0x10000) {
            buf[size++] = (byte) (0xe0 | (cp >> 12));
            buf[size++] = (byte) (0x80 | ((cp >> 6) & 0x3f));
            buf[size++] = (byte) (0x80 | (cp & 0x3f));
        } else {
            buf[size++] = (byte) (0xf0 | (cp >> 18));
            buf[size++] = (byte) (0x80 | ((cp >> 12) & 0x3f));
            buf[size++] = (byte) (0x80 | ((cp >> 6) & 0x3f));
            buf[size++] = (byte) (0x80 | (cp & 0x3f));
        }
        return this;
    }
}
