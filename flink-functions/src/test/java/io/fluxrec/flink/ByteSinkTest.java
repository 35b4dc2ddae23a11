package io.fluxrec.flink;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;

class ByteSinkTest {

    private static String text(ByteSink sink) {
        return new String(sink.toArray(), StandardCharsets.UTF_8);
    }

    @Test
    void writesDecimalsAsLongToStringDoes() {
        long[] values = {0, 7, 9, 10, 99, 100, -1, -10, 1_700_000_000_123L, Long.MAX_VALUE,
            Long.MIN_VALUE, Long.MIN_VALUE + 1};
        ByteSink sink = new ByteSink(1); // grows
        StringBuilder want = new StringBuilder();
        for (long v : values) {
            sink.decimal(v).write((byte) ',');
            want.append(v).append(',');
        }
        assertEquals(want.toString(), text(sink));
    }

    @Test
    void writesAsciiAfterWhatIsThere() {
        ByteSink sink = new ByteSink(1);
        sink.write((byte) '[').ascii("{\"v\":1,\"sample_id\":").ascii("").ascii("x");
        assertEquals("[{\"v\":1,\"sample_id\":x", text(sink));
    }

    @Test
    void readsWhatItWrote() {
        ByteSink sink = new ByteSink(4);
        byte[] b = {1, 2, 3};
        sink.int64(-2).int32(7).sized(b).sized(new byte[] {9, 1, 2, 3, 9}, 1, 3);
        ByteSink.Reader in = new ByteSink.Reader().of(sink.toArray());
        assertEquals(-2, in.int64());
        assertEquals(7, in.int32());
        int at = in.sized();
        assertEquals(3, in.length());
        assertEquals(12 + 4, at);
        assertArrayEquals(b, in.copy());
        in.sized();
        assertArrayEquals(b, in.copy());
        assertEquals(false, in.hasMore());
    }
}
