package dev.fluxrec.sdk;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * {@code java -cp ... dev.fluxrec.sdk.Cli dump STORE_DIR [HMAC_KEY_ENV]}: follow the store to
 * its newest version and print one JSON line: the version, and per table its row count and
 * the sha256 of its rows sorted by id (each id as int64 LE, then its dim float32 LE), per
 * dense tensor the sha256 of its float32 LE values. Exit 1 with the error on a rejection.
 */
public final class Cli {
  private Cli() {}

  static String digest(DeltaReader.Table t) {
    List<Long> ids = new ArrayList<>(t.rows().keySet());
    ids.sort(null);
    ByteBuffer b = ByteBuffer.allocate(ids.size() * (8 + 4 * t.dim())).order(ByteOrder.LITTLE_ENDIAN);
    for (long id : ids) {
      b.putLong(id);
      for (float f : t.rows().get(id)) {
        b.putFloat(f);
      }
    }
    return sha(b.array());
  }

  static String sha(byte[] b) {
    try {
      return HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(b));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  static String floats(float[] v) {
    return sha(f32le(v));
  }

  /** The float32 values, little-endian, 4 bytes each (the golden vectors' layout). */
  static byte[] f32le(float[] v) {
    ByteBuffer b = ByteBuffer.allocate(4 * v.length).order(ByteOrder.LITTLE_ENDIAN);
    for (float f : v) {
      b.putFloat(f);
    }
    return b.array();
  }

  public static void main(String[] args) throws Exception {
    if (args.length < 2 || !args[0].equals("dump")) {
      System.err.println("usage: Cli dump STORE_DIR [HMAC_KEY_ENV]");
      System.exit(2);
    }
    byte[] key = null;
    if (args.length > 2 && System.getenv(args[2]) != null && !System.getenv(args[2]).isEmpty()) {
      key = System.getenv(args[2]).getBytes(StandardCharsets.UTF_8);
    }
    DeltaReader r = new DeltaReader(Path.of(args[1]), key, Limits.DEFAULT);
    try {
      r.sync();
    } catch (DeltaException e) {
      System.out.println("{\"error\":\"" + e.kind() + "\"}");
      System.exit(1);
    }
    DeltaReader.State s = r.state();
    StringBuilder out = new StringBuilder("{\"version\":" + s.version() + ",\"tables\":{");
    String sep = "";
    for (Map.Entry<String, DeltaReader.Table> t : new TreeMap<>(s.tables()).entrySet()) {
      out.append(sep).append('"').append(t.getKey()).append("\":{\"rows\":").append(t.getValue().rows().size())
          .append(",\"sha256\":\"").append(digest(t.getValue())).append("\"}");
      sep = ",";
    }
    out.append("},\"dense\":{");
    sep = "";
    for (Map.Entry<String, DecodedDense.Tensor> d : new TreeMap<>(s.dense()).entrySet()) {
      out.append(sep).append('"').append(d.getKey()).append("\":\"").append(floats(d.getValue().values())).append('"');
      sep = ",";
    }
    System.out.println(out.append("}}"));
    Files.size(Path.of(args[1])); // the store folder still exists
  }
}
