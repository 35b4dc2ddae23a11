package dev.fluxrec.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;

/** The example of exporter/README.md ("The Java reader"), run on the golden store. */
class ReadmeExampleTest {
  static long served;

  static void follow(Path store, String hmacKey, int rounds) throws InterruptedException {
    byte[] key = hmacKey == null ? null : hmacKey.getBytes(StandardCharsets.UTF_8);
    DeltaReader deltas = new DeltaReader(store, key, Limits.DEFAULT);
    for (int i = 0; i < rounds; i++) {
      try {
        deltas.sync(); // verify, then apply each new version (a rebuild is swapped in whole)
      } catch (DeltaException e) { // e.kind(): "BadBody", "BadSignature", ... as in Python
        System.err.println("kept version " + deltas.state().version() + ": " + e);
      }
      DeltaReader.State v = deltas.state(); // one consistent version
      float[] rows = v.lookup("item_f32", new long[] {17, 42}); // 2 x dim; unknown ids -> 0
      float[] bias = v.dense().get("mlp.bias").values();
      served = v.version();
      Thread.sleep(10);
    }
  }

  @Test
  void theReadmeExampleFollowsTheGoldenStore() throws Exception {
    follow(GoldenVectorsTest.GOLDEN.resolve("store"), "golden-key", 2);
    assertEquals(7, served);
  }
}
