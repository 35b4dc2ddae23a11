package io.fluxrec.flink;

import java.nio.ByteBuffer;
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

    /** ASCII text (the constant parts of records). */
    public ByteSink ascii(String s) {
        int n = s.length();
        ensure(n);
        for (int i = 0; i < n; i++) {
            buf[size++] = (byte) s.charAt(i);
        }
        return this;
    }

    public ByteSink utf8(String s) {
        return write(s.getBytes(StandardCharsets.UTF_8));
    }

    /** Big-endian, 4 bytes. */
    public ByteSink int32(int v) {
        ensure(4);
        for (int shift = 24; shift >= 0; shift -= 8) {
            buf[size++] = (byte) (v >>> shift);
        }
        return this;
    }

    /** Big-endian, 8 bytes. */
    public ByteSink int64(long v) {
        ensure(8);
        for (int shift = 56; shift >= 0; shift -= 8) {
            buf[size++] = (byte) (v >>> shift);
        }
        return this;
    }

    /** A byte string with its length: {@code len:i32} (big-endian), then the bytes. */
    public ByteSink sized(byte[] b) {
        return int32(b.length).write(b);
    }

    /** The byte string that {@link #sized} wrote at {@code b}'s position, which moves past it. */
    public static byte[] readSized(ByteBuffer b) {
        byte[] out = new byte[b.getInt()];
        b.get(out);
        return out;
    }

    public ByteSink decimal(long v) {
        return ascii(Long.toString(v));
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
