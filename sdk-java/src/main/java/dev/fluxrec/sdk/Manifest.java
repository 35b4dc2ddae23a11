package dev.fluxrec.sdk;

import dev.fluxrec.sdk.DeltaException.BadManifest;
import dev.fluxrec.sdk.DeltaException.BadSequence;
import dev.fluxrec.sdk.DeltaException.BadSignature;
import dev.fluxrec.sdk.DeltaException.OversizedPayload;
import dev.fluxrec.sdk.DeltaException.Truncated;
import dev.fluxrec.sdk.DeltaException.UnsupportedVersion;
import java.nio.charset.StandardCharsets;
import java.security.InvalidKeyException;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.regex.Pattern;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * Manifests and {@code LATEST.json} (FORMAT.md section 4): the raw-bytes HMAC signature,
 * strict JSON, and every rule, checked in the order the Python reader checks them. A
 * manifest is format 1 ({@code objects}) or format 2 (a version of several parts,
 * {@code parts}: FORMAT.md 4.5); {@link #objects} lists the object entries of either.
 */
public final class Manifest {
  public static final int MAX_MANIFEST_BYTES = 1 << 20;
  public static final int MAX_LATEST_BYTES = 4096;
  public static final String SIGNATURE_ALG = "hmac-sha256-raw";
  public static final long PARTS_FORMAT = 2;
  public static final int MAX_PARTS = 4096;
  static final long MAX_SEQ = 999_999_999_999L;
  private static final byte[] SIG_HEAD =
      (",\"signature\":{\"alg\":\"" + SIGNATURE_ALG + "\",\"value\":\"").getBytes(StandardCharsets.US_ASCII);
  private static final int SIG_LEN = SIG_HEAD.length + 64 + 3;
  private static final Pattern HEX64 = Pattern.compile("[0-9a-f]{64}");
  private static final Pattern PARTITION = Pattern.compile("0|[1-9][0-9]{0,9}");

  private Manifest() {}

  public static String versionPrefix(long seq) {
    return String.format("versions/%012d/", seq);
  }

  public static String manifestKey(long seq) {
    return versionPrefix(seq) + "manifest.json";
  }

  private static String partPrefix(long seq, Integer part) {
    return versionPrefix(seq) + (part == null ? "" : "part-" + part + "/");
  }

  /** The object entries of a parsed manifest: format 1's, or every part's in part order. */
  public static List<Map<?, ?>> objects(Map<String, Object> doc) {
    List<Map<?, ?>> out = new ArrayList<>();
    if (Objects.equals(doc.get("format"), PARTS_FORMAT)) {
      for (Object part : (List<?>) doc.get("parts")) {
        for (Object o : (List<?>) ((Map<?, ?>) part).get("objects")) {
          out.add((Map<?, ?>) o);
        }
      }
    } else {
      for (Object o : (List<?>) doc.get("objects")) {
        out.add((Map<?, ?>) o);
      }
    }
    return out;
  }

  static String hmacHex(byte[] key, byte[] data, int len) {
    try {
      Mac mac = Mac.getInstance("HmacSHA256");
      mac.init(new SecretKeySpec(key.length == 0 ? new byte[1] : key, "HmacSHA256"));
      mac.update(data, 0, len);
      return java.util.HexFormat.of().formatHex(mac.doFinal());
    } catch (NoSuchAlgorithmException | InvalidKeyException e) {
      throw new IllegalStateException(e);
    }
  }

  /** The signature suffix of {@code data} verifies under {@code key} (FORMAT.md 4.3). */
  static void verify(byte[] data, byte[] key, String what) throws BadSignature {
    int n = data.length;
    if (n <= SIG_LEN
        || !Arrays.equals(data, n - SIG_LEN, n - SIG_LEN + SIG_HEAD.length, SIG_HEAD, 0, SIG_HEAD.length)
        || data[n - 3] != '"' || data[n - 2] != '}' || data[n - 1] != '}') {
      throw new BadSignature(what + ": not signed with " + SIGNATURE_ALG + " as its last member, but a key is configured");
    }
    byte[] unsigned = Arrays.copyOf(data, n - SIG_LEN + 1);
    unsigned[unsigned.length - 1] = '}';
    byte[] want = hmacHex(key, unsigned, unsigned.length).getBytes(StandardCharsets.US_ASCII);
    if (!MessageDigest.isEqual(Arrays.copyOfRange(data, n - SIG_LEN + SIG_HEAD.length, n - 3), want)) {
      throw new BadSignature(what + ": HMAC-SHA256 signature does not verify");
    }
  }

  @SuppressWarnings("unchecked")
  private static Map<String, Object> load(byte[] data, int limit, String what, byte[] key, long maxFormat)
      throws DeltaException {
    if (data.length > limit) {
      throw new BadManifest(what + " of " + data.length + " bytes > " + limit);
    }
    if (key != null) {
      verify(data, key, what);
    }
    Object doc = StrictJson.parse(data, BadManifest::new, what);
    if (!(doc instanceof Map)) {
      throw new BadManifest(what + " must be a JSON object");
    }
    Map<String, Object> m = (Map<String, Object>) doc;
    if (!(m.get("format") instanceof Long f) || f < 1 || f > maxFormat) {
      throw new UnsupportedVersion(what + ": format " + m.get("format") + "; this reader supports 1"
          + (maxFormat > 1 ? " and " + maxFormat : ""));
    }
    if (m.containsKey("signature")) {
      Object sig = m.get("signature");
      if (!(sig instanceof Map<?, ?> s)
          || !s.keySet().equals(Set.of("alg", "value"))
          || !SIGNATURE_ALG.equals(s.get("alg"))
          || !(s.get("value") instanceof String v)
          || !HEX64.matcher(v).matches()) {
        throw new BadSignature(what + ": signature must be {alg: " + SIGNATURE_ALG + ", value: 64 hex digits}");
      }
    }
    return m;
  }

  private static long seq(Map<String, Object> d, String key, String where) throws BadManifest {
    Object v = d.get(key);
    if (!(v instanceof Long x) || x < 0 || x > MAX_SEQ) {
      throw new BadManifest(where + ": '" + key + "' = " + v + " is not a sequence number");
    }
    return x;
  }

  private static Long nullableSeq(Map<String, Object> d, String key, String where) throws BadManifest {
    if (d.containsKey(key) && d.get(key) == null) {
      return null;
    }
    return seq(d, key, where);
  }

  private static Object need(Map<?, ?> d, String key, Class<?> type, String where, Long lo)
      throws BadManifest {
    Object v = d.get(key);
    if (!type.isInstance(v)) {
      throw new BadManifest(where + ": field '" + key + "' = " + v + " is not " + type.getSimpleName());
    }
    if (lo != null && (Long) v < lo) {
      throw new BadManifest(where + ": field '" + key + "' = " + v + " is below " + lo);
    }
    return v;
  }

  /** Parse and check a manifest read from {@code manifestKey(expectedSeq)} (null: anywhere). */
  public static Map<String, Object> parse(byte[] data, byte[] key, Long expectedSeq) throws DeltaException {
    Map<String, Object> doc = load(data, MAX_MANIFEST_BYTES, "manifest", key, PARTS_FORMAT);
    long seq = seq(doc, "sequence", "manifest");
    String where = "manifest " + seq;
    if (expectedSeq != null && seq != expectedSeq) {
      throw new BadSequence(where + ": stored under sequence " + expectedSeq);
    }
    boolean multi = Objects.equals(doc.get("format"), PARTS_FORMAT);
    if (!multi && doc.containsKey("parts")) {
      throw new UnsupportedVersion(where + ": 'parts' needs manifest format 2");
    }
    if (multi && doc.containsKey("objects")) {
      throw new BadManifest(where + ": a format-2 manifest lists its objects in 'parts' only");
    }
    Long parent = doc.containsKey("parent") ? nullableSeq(doc, "parent", where) : Long.valueOf(-1);
    if (!Objects.equals(parent, seq > 0 ? Long.valueOf(seq - 1) : null)) {
      throw new BadManifest(where + ": parent " + parent + " must be " + (seq > 0 ? seq - 1 : null));
    }
    long base = seq(doc, "base_snapshot", where);
    Object kind = doc.get("kind");
    if ("snapshot".equals(kind)) {
      if (base != seq) {
        throw new BadManifest(where + ": a snapshot's base_snapshot must be itself");
      }
    } else if ("delta".equals(kind)) {
      if (base >= seq) {
        throw new BadManifest(where + ": a delta needs base_snapshot < sequence");
      }
    } else {
      throw new BadManifest(where + ": kind " + kind + " is not 'delta' or 'snapshot'");
    }
    for (String k : List.of("watermark_ms", "created_ms", "published_ms")) {
      need(doc, k, Long.class, where, null);
    }
    for (String k : List.of("trainer_step", "samples")) {
      need(doc, k, Long.class, where, 0L);
    }
    Map<?, ?> offsets = (Map<?, ?>) need(doc, "kafka_offsets", Map.class, where, null);
    for (Map.Entry<?, ?> topic : offsets.entrySet()) {
      boolean ok = topic.getValue() instanceof Map;
      if (ok) {
        for (Map.Entry<?, ?> p : ((Map<?, ?>) topic.getValue()).entrySet()) {
          ok &= PARTITION.matcher((String) p.getKey()).matches()
              && p.getValue() instanceof Long o && o >= 0;
        }
      }
      if (!ok) {
        throw new BadManifest(where + ": kafka_offsets[" + topic.getKey() + "] must map partition (decimal) -> offset >= 0");
      }
    }
    ObjectRules rules = new ObjectRules(seq, "snapshot".equals(kind));
    if (multi) {
      List<?> parts = (List<?>) need(doc, "parts", List.class, where, null);
      if (parts.isEmpty() || parts.size() > MAX_PARTS) {
        throw new BadManifest(where + ": " + parts.size() + " parts; need 1.." + MAX_PARTS);
      }
      for (int k = 0; k < parts.size(); k++) {
        if (!(parts.get(k) instanceof Map<?, ?> part)) {
          throw new BadManifest(where + ": parts[" + k + "] is not an object");
        }
        long index = (Long) need(part, "index", Long.class, where, null);
        if (index != k) {
          throw new BadManifest(where + ": parts[" + k + "] has index " + index + "; parts are listed in order");
        }
        rules.check(part.get("objects"), where + " part " + k, k);
      }
    } else {
      rules.check(doc.get("objects"), where, null);
    }
    if (doc.containsKey("rollback_of")) {
      Long r = nullableSeq(doc, "rollback_of", where);
      if (r != null && r >= seq) {
        throw new BadManifest(where + ": rollback_of " + r + " must be an older version");
      }
    }
    return doc;
  }

  /**
   * The rules on the object entries of one version, checked list by list (format 1: one list;
   * format 2: one per part): names unique within a list, one dim per table name in the whole
   * version, at most one dense object in the whole version.
   */
  private static final class ObjectRules {
    private final long seq;
    private final boolean snapshot;
    private final Map<String, Long> dims = new HashMap<>();
    private int dense;

    ObjectRules(long seq, boolean snapshot) {
      this.seq = seq;
      this.snapshot = snapshot;
    }

    void check(Object objects, String where, Integer part) throws DeltaException {
      if (!(objects instanceof List<?> list)) {
        throw new BadManifest(where + ": field 'objects' = " + objects + " is not list");
      }
      Set<String> names = new HashSet<>();
      for (Object o : list) {
        if (!(o instanceof Map<?, ?> obj)) {
          throw new BadManifest(where + ": objects[] entries must be objects");
        }
        String okey = (String) need(obj, "key", String.class, where, null);
        need(obj, "bytes", Long.class, where, 0L);
        String sha = (String) need(obj, "sha256", String.class, where, null);
        if (!HEX64.matcher(sha).matches()) {
          throw new BadManifest(where + ": sha256 " + sha + " is not 64 lowercase hex digits");
        }
        Object okind = obj.get("kind");
        String want;
        if ("table".equals(okind)) {
          String name = (String) need(obj, "name", String.class, where, null);
          DeltaObject.checkName(name, m -> new BadManifest(where + ": " + m));
          want = partPrefix(seq, part) + "table-" + name + ".fxd";
          if (!names.add(name)) {
            throw new BadManifest(where + ": table " + name + " listed twice");
          }
          if (!List.of("f32", "f16", "i8").contains(obj.get("encoding"))) {
            throw new BadManifest(where + ": encoding " + obj.get("encoding"));
          }
          long dim = (Long) need(obj, "dim", Long.class, where, 1L);
          if (dim > Limits.DEFAULT.maxDim()) {
            throw new BadManifest(where + ": dim " + dim + " > " + Limits.DEFAULT.maxDim());
          }
          Long before = dims.putIfAbsent(name, dim);
          if (before != null && before != dim) {
            throw new BadManifest(where + ": table " + name + " has dim " + dim + ", " + before + " in another part");
          }
          need(obj, "rows", Long.class, where, 0L);
          if ((Long) need(obj, "tombstones", Long.class, where, 0L) != 0 && snapshot) {
            throw new BadManifest(where + ": a snapshot MUST NOT carry tombstones");
          }
        } else if ("dense".equals(okind)) {
          if (++dense > 1) {
            throw new BadManifest(where + ": more than one dense object in the version");
          }
          want = partPrefix(seq, part) + "dense.fxd";
        } else {
          throw new BadManifest(where + ": object kind " + okind);
        }
        if (!okey.equals(want)) {
          throw new BadManifest(where + ": object key " + okey + " must be " + want);
        }
      }
    }
  }

  /** {@code (sequence, base_snapshot)} of {@code LATEST.json}. */
  public static long[] parseLatest(byte[] data, byte[] key) throws DeltaException {
    Map<String, Object> doc = load(data, MAX_LATEST_BYTES, "LATEST.json", key, 1);
    long seq = seq(doc, "sequence", "LATEST.json");
    long base = seq(doc, "base_snapshot", "LATEST.json");
    if (base > seq) {
      throw new BadManifest("LATEST.json: base_snapshot " + base + " > sequence " + seq);
    }
    return new long[] {seq, base};
  }

  /** Before fetching: the entry's {@code bytes} within the limit. */
  public static void checkEntrySize(long seq, Map<?, ?> obj, Limits limits) throws OversizedPayload {
    if ((Long) obj.get("bytes") > limits.maxObjectBytes()) {
      throw new OversizedPayload("version " + seq + ": " + obj.get("key") + " has " + obj.get("bytes")
          + " bytes > limit " + limits.maxObjectBytes());
    }
  }

  /** Verify an object fetched for a manifest entry: size, sha256, the object, its fields. */
  public static Object decodeEntry(long seq, Map<?, ?> obj, byte[] data, Limits limits) throws DeltaException {
    checkEntrySize(seq, obj, limits);
    if (data.length != (Long) obj.get("bytes")) {
      throw new Truncated("version " + seq + ": " + obj.get("key") + " has " + data.length
          + " bytes, manifest says " + obj.get("bytes"));
    }
    Object dec = DeltaObject.decode(data, (String) obj.get("sha256"), limits);
    boolean same;
    if (dec instanceof DecodedTable t) {
      same = "table".equals(obj.get("kind")) && t.name().equals(obj.get("name"))
          && Objects.equals((long) t.dim(), obj.get("dim")) && t.encoding().equals(obj.get("encoding"))
          && Objects.equals((long) t.ids().length, obj.get("rows"))
          && Objects.equals((long) t.tombstones().length, obj.get("tombstones"));
    } else {
      same = "dense".equals(obj.get("kind"));
    }
    if (!same) {
      throw new BadManifest("version " + seq + ": " + obj.get("key") + " is not what its manifest entry says");
    }
    return dec;
  }
}
