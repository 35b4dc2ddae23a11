package dev.fluxrec.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

class UnitsTest {
  @Test
  void xxh32KnownValues() {
    assertEquals(0x02CC5D05, XxHash32.hash(new byte[0], 0, 0, 0));
    byte[] abc = "abc".getBytes(StandardCharsets.US_ASCII);
    assertEquals(0x32D153FF, XxHash32.hash(abc, 0, 3, 0));
  }

  @Test
  void jsonDepthSixteenIsAllowedSeventeenIsNot() throws Exception {
    String ok = "[".repeat(16) + "]".repeat(16);
    StrictJson.parse(ok.getBytes(StandardCharsets.UTF_8), DeltaException.BadManifest::new, "x");
    String deep = "[".repeat(17) + "]".repeat(17);
    assertThrows(DeltaException.BadManifest.class,
        () -> StrictJson.parse(deep.getBytes(StandardCharsets.UTF_8), DeltaException.BadManifest::new, "x"));
  }

  @Test
  void halfFloatsWidenExactly() {
    assertEquals(1.0f, DeltaObject.halfToFloat((short) 0x3C00));
    assertEquals(-2.0f, DeltaObject.halfToFloat((short) 0xC000));
    assertEquals(0x1p-24f, DeltaObject.halfToFloat((short) 0x0001));
    assertEquals(65504f, DeltaObject.halfToFloat((short) 0x7BFF));
    assertEquals(Float.POSITIVE_INFINITY, DeltaObject.halfToFloat((short) 0x7C00));
  }
}
