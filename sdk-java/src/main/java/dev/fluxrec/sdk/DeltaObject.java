package dev.fluxrec.sdk;

import dev.fluxrec.sdk.DeltaException.BadBody;
import dev.fluxrec.sdk.DeltaException.BadHeader;
import dev.fluxrec.sdk.DeltaException.BadMagic;
import dev.fluxrec.sdk.DeltaException.ChecksumMismatch;
import dev.fluxrec.sdk.DeltaException.OversizedHeader;
import dev.fluxrec.sdk.DeltaException.OversizedPayload;
import dev.fluxrec.sdk.DeltaException.Truncated;
import dev.fluxrec.sdk.DeltaException.UnsupportedVersion;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Pattern;
import org.apache.arrow.flatbuf.Message;
import org.apache.arrow.flatbuf.MessageHeader;
import org.apache.arrow.flatbuf.RecordBatch;
import org.apache.arrow.memory.ArrowBuf;
import org.apache.arrow.memory.BufferAllocator;
import org.apache.arrow.memory.RootAllocator;
import org.apache.arrow.vector.BaseFixedWidthVector;
import org.apache.arrow.vector.BigIntVector;
import org.apache.arrow.vector.FieldVector;
import org.apache.arrow.vector.Float2Vector;
import org.apache.arrow.vector.Float4Vector;
import org.apache.arrow.vector.TinyIntVector;
import org.apache.arrow.vector.VarCharVector;
import org.apache.arrow.vector.VectorLoader;
import org.apache.arrow.vector.VectorSchemaRoot;
import org.apache.arrow.vector.complex.FixedSizeListVector;
import org.apache.arrow.vector.complex.LargeListVector;
import org.apache.arrow.vector.complex.ListVector;
import org.apache.arrow.vector.ipc.ReadChannel;
import org.apache.arrow.vector.ipc.message.ArrowRecordBatch;
import org.apache.arrow.vector.ipc.message.MessageChannelReader;
import org.apache.arrow.vector.ipc.message.MessageResult;
import org.apache.arrow.vector.ipc.message.MessageSerializer;
import org.apache.arrow.vector.types.FloatingPointPrecision;
import org.apache.arrow.vector.types.pojo.ArrowType;
import org.apache.arrow.vector.types.pojo.Field;
import org.apache.arrow.vector.types.pojo.FieldType;
import org.apache.arrow.vector.types.pojo.Schema;
import org.apache.arrow.vector.util.ByteArrayReadableSeekableByteChannel;

/**
 * One payload object ({@code .fxd}, FORMAT.md section 2): framing, sha256, header, the LZ4
 * frame, the Arrow IPC stream. {@link #decode} checks in the order of FORMAT.md section 7 and
 * throws the {@link DeltaException} subclass it names.
 */
public final class DeltaObject {
  static final byte[] MAGIC = "FLUXRDLT".getBytes(StandardCharsets.US_ASCII);
  static final int MAX_HEADER_BYTES = 65536;
  static final int MAX_BATCHES = 4096;
  static final int MAX_TENSORS = 1 << 20;
  static final int MAX_RANK = 32;
  static final float MAX_SCALE = 0x1p100f;
  static final Pattern NAME = Pattern.compile("[A-Za-z0-9][A-Za-z0-9._-]{0,127}");
  private static final byte[] EOS = {-1, -1, -1, -1, 0, 0, 0, 0};

  private DeltaObject() {}

  static String sha256Hex(byte[] b, int off, int len) {
    return HexFormat.of().formatHex(sha256(b, off, len));
  }

  static byte[] sha256(byte[] b, int off, int len) {
    try {
      MessageDigest md = MessageDigest.getInstance("SHA-256");
      md.update(b, off, len);
      return md.digest();
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException(e);
    }
  }

  private static int u16(byte[] b, int at) {
    return (b[at] & 0xFF) | (b[at + 1] & 0xFF) << 8;
  }

  /** Verify and decode one object ({@code expectedSha256} may be null). */
  public static Object decode(byte[] data, String expectedSha256, Limits limits)
      throws DeltaException {
    int n = data.length;
    if (n > limits.maxObjectBytes()) {
      throw new OversizedPayload("object of " + n + " bytes > limit " + limits.maxObjectBytes());
    }
    if (n < 16) {
      throw new Truncated("object of " + n + " bytes is shorter than the 16-byte prefix");
    }
    if (!Arrays.equals(data, 0, 8, MAGIC, 0, 8)) {
      throw new BadMagic("not a fluxrec delta object");
    }
    if (u16(data, 8) != 1) {
      throw new UnsupportedVersion("format version " + u16(data, 8) + "; this reader supports 1");
    }
    if (u16(data, 10) != 0) {
      throw new UnsupportedVersion("flags " + u16(data, 10) + ": this reader supports 0");
    }
    long hlen = Lz4Frame.u32(data, 12) & 0xFFFFFFFFL;
    if (hlen > MAX_HEADER_BYTES || hlen < 2) {
      throw new OversizedHeader("header length " + hlen + " outside [2, " + MAX_HEADER_BYTES + "]");
    }
    int bodyAt = 16 + (int) hlen;
    if (n < bodyAt + 40) {
      throw new Truncated("object of " + n + " bytes cannot hold a " + hlen + "-byte header");
    }
    long blen = Lz4Frame.u64(data, n - 40);
    if (blen < 0 || blen > n || bodyAt + blen + 40 != n) {
      throw new Truncated("framing declares another size than the object's " + n + " bytes");
    }
    byte[] digest = sha256(data, 0, n - 32);
    if (!Arrays.equals(digest, 0, 32, data, n - 32, n)) {
      throw new ChecksumMismatch("sha256 of the object does not match its trailer");
    }
    if (expectedSha256 != null && !HexFormat.of().formatHex(digest).equals(expectedSha256)) {
      throw new ChecksumMismatch("object sha256 differs from the manifest's");
    }
    Object parsed =
        StrictJson.parse(Arrays.copyOfRange(data, 16, bodyAt), BadHeader::new, "header");
    if (!(parsed instanceof Map<?, ?> header)) {
      throw new BadHeader("header must be a JSON object");
    }
    long raw = integer(header, "raw_bytes", 0, Long.MAX_VALUE);
    if (raw > limits.maxRawBytes()) {
      throw new OversizedPayload("raw_bytes " + raw + " > limit " + limits.maxRawBytes());
    }
    if (raw > 255 * blen + 1024) {
      throw new OversizedPayload("raw_bytes " + raw + " impossible for an LZ4 body of " + blen);
    }
    Object kind = header.get("kind");
    if ("table".equals(kind)) {
      return table(header, data, bodyAt, (int) blen, raw, limits);
    }
    if ("dense".equals(kind)) {
      return dense(header, data, bodyAt, (int) blen, raw);
    }
    throw new BadHeader("header kind " + kind + ": expected 'table' or 'dense'");
  }

  static long integer(Map<?, ?> m, String key, long lo, long hi) throws BadHeader {
    Object v = m.get(key);
    if (!(v instanceof Long x) || x < lo || x > hi) {
      throw new BadHeader("header field '" + key + "' = " + v + ": expected an integer in [" + lo + ", " + hi + "]");
    }
    return x;
  }

  static void checkName(Object name, java.util.function.Function<String, DeltaException> error)
      throws DeltaException {
    if (!(name instanceof String s) || !NAME.matcher(s).matches()) {
      throw error.apply("table name " + name + " must match " + NAME.pattern());
    }
  }

  // ------------------------------------------------------------------ Arrow

  static Schema tableSchema(int dim, String encoding) {
    ArrowType item =
        switch (encoding) {
          case "f32" -> new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE);
          case "f16" -> new ArrowType.FloatingPoint(FloatingPointPrecision.HALF);
          default -> new ArrowType.Int(8, true);
        };
    Field id = new Field("id", FieldType.notNullable(new ArrowType.Int(64, true)), null);
    Field value =
        new Field(
            "value",
            FieldType.nullable(new ArrowType.FixedSizeList(dim)),
            List.of(new Field("item", FieldType.nullable(item), null)));
    if (!encoding.equals("i8")) {
      return new Schema(List.of(id, value));
    }
    Field scale =
        new Field("scale", FieldType.nullable(new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE)), null);
    return new Schema(List.of(id, value, scale));
  }

  static final Schema DENSE_SCHEMA =
      new Schema(
          List.of(
              new Field("name", FieldType.notNullable(ArrowType.Utf8.INSTANCE), null),
              new Field(
                  "shape",
                  FieldType.notNullable(ArrowType.List.INSTANCE),
                  List.of(new Field("item", FieldType.nullable(new ArrowType.Int(64, true)), null))),
              new Field(
                  "value",
                  FieldType.notNullable(ArrowType.LargeList.INSTANCE),
                  List.of(
                      new Field(
                          "item",
                          FieldType.nullable(new ArrowType.FloatingPoint(FloatingPointPrecision.SINGLE)),
                          null)))));

  private static boolean sameField(Field got, Field want) {
    if (!got.getName().equals(want.getName())
        || got.isNullable() != want.isNullable()
        || got.getDictionary() != null
        || (got.getMetadata() != null && !got.getMetadata().isEmpty())
        || !got.getType().equals(want.getType())
        || got.getChildren().size() != want.getChildren().size()) {
      return false;
    }
    for (int i = 0; i < want.getChildren().size(); i++) {
      if (!sameField(got.getChildren().get(i), want.getChildren().get(i))) {
        return false;
      }
    }
    return true;
  }

  private static void checkSchema(Schema got, Schema want) throws BadBody {
    boolean same =
        (got.getCustomMetadata() == null || got.getCustomMetadata().isEmpty())
            && got.getFields().size() == want.getFields().size();
    for (int i = 0; same && i < want.getFields().size(); i++) {
      same = sameField(got.getFields().get(i), want.getFields().get(i));
    }
    if (!same) {
      throw new BadBody("Arrow schema " + got + " is not " + want);
    }
  }

  /** Something that consumes each validated record batch of the stream. */
  private interface BatchSink {
    void accept(VectorSchemaRoot root) throws DeltaException;
  }

  /** Decompress, then read the IPC stream message by message (FORMAT.md 2.3). */
  private static void batches(byte[] data, int bodyAt, int blen, long raw, Schema want, BatchSink sink)
      throws DeltaException {
    byte[] plain = Lz4Frame.decode(data, bodyAt, blen, raw);
    try (BufferAllocator alloc = new RootAllocator(plain.length + (1L << 20))) {
      ReadChannel in = new ReadChannel(new ByteArrayReadableSeekableByteChannel(plain));
      MessageChannelReader reader = new MessageChannelReader(in, alloc);
      MessageResult first = reader.readNext();
      if (first == null) {
        throw new BadBody("Arrow stream has no schema message");
      }
      if (first.getMessage().headerType() != MessageHeader.Schema) {
        throw new BadBody("Arrow stream does not start with a schema message");
      }
      if (first.getBodyBuffer() != null) {
        first.getBodyBuffer().close();
      }
      checkSchema(MessageSerializer.deserializeSchema(first.getMessage()), want);
      int count = 0;
      long at;
      while (true) {
        at = in.bytesRead();
        MessageResult r = reader.readNext();
        if (r == null) {
          break;
        }
        ArrowBuf body = r.getBodyBuffer() != null ? r.getBodyBuffer() : alloc.getEmpty();
        boolean owned = true; // until deserializeRecordBatch takes the body over
        try {
          Message m = r.getMessage();
          if (m.headerType() != MessageHeader.RecordBatch) {
            throw new BadBody("Arrow message type " + m.headerType() + ": only record batches may follow");
          }
          RecordBatch rb = (RecordBatch) m.header(new RecordBatch());
          if (rb == null) {
            throw new BadBody("record batch message without a header");
          }
          if (rb.compression() != null) {
            throw new BadBody("Arrow record batch uses body compression: not allowed");
          }
          if (++count > MAX_BATCHES) {
            throw new BadBody("more than " + MAX_BATCHES + " record batches");
          }
          ArrowRecordBatch batch = MessageSerializer.deserializeRecordBatch(m, body);
          owned = false;
          try (batch;
              VectorSchemaRoot root = VectorSchemaRoot.create(want, alloc)) {
            new VectorLoader(root).load(batch);
            for (FieldVector v : root.getFieldVectors()) {
              validate(v);
            }
            sink.accept(root);
          }
        } finally {
          if (owned) {
            body.close();
          }
        }
      }
      if (at != plain.length - 8 || !Arrays.equals(plain, plain.length - 8, plain.length, EOS, 0, 8)) {
        throw new BadBody("Arrow stream does not end with exactly one end-of-stream marker");
      }
    } catch (IOException | RuntimeException e) {
      BadBody b = new BadBody("Arrow stream does not decode: " + e);
      b.initCause(e);
      throw b;
    }
  }

  /**
   * Full validation of the vectors our schemas use (Arrow Java's {@code validate} and {@code
   * validateFull} do not handle float16 and fixed-size lists): every buffer long enough for
   * its values, offsets that start at 0 or more, never decrease and end within their data,
   * a fixed-size list's child long enough for its rows. ArrowBuf bounds checks stay on too.
   */
  private static void validate(FieldVector v) throws BadBody {
    long n = v.getValueCount();
    if (v.getValidityBuffer().capacity() < (n + 7) / 8 && v.getNullCount() > 0) {
      throw new BadBody(v.getName() + ": validity buffer shorter than " + n + " values");
    }
    if (v instanceof BaseFixedWidthVector f) {
      if (f.getDataBuffer().capacity() < (long) f.getTypeWidth() * n) {
        throw new BadBody(v.getName() + ": data buffer shorter than " + n + " values");
      }
    } else if (v instanceof FixedSizeListVector l) {
      if (l.getDataVector().getValueCount() < n * l.getListSize()) {
        throw new BadBody(v.getName() + ": fixed-size list child shorter than its rows");
      }
    } else if (v instanceof ListVector l) {
      need(l.getOffsetBuffer().capacity() >= 4 * (n + 1), v);
      checkOffsets((int) n, i -> l.getOffsetBuffer().getInt(4L * i), l.getDataVector().getValueCount());
    } else if (v instanceof LargeListVector l) {
      need(l.getOffsetBuffer().capacity() >= 8 * (n + 1), v);
      checkOffsets((int) n, i -> l.getOffsetBuffer().getLong(8L * i), l.getDataVector().getValueCount());
    } else if (v instanceof VarCharVector s) {
      need(s.getOffsetBuffer().capacity() >= 4 * (n + 1), v);
      checkOffsets((int) n, i -> s.getOffsetBuffer().getInt(4L * i), s.getDataBuffer().capacity());
    } else {
      throw new BadBody(v.getName() + ": unexpected vector " + v.getClass().getSimpleName());
    }
    for (FieldVector c : v.getChildrenFromFields()) {
      validate(c);
    }
  }

  private static void need(boolean ok, FieldVector v) throws BadBody {
    if (!ok) {
      throw new BadBody(v.getName() + ": offsets buffer shorter than its values");
    }
  }

  private static void checkOffsets(int n, java.util.function.IntToLongFunction at, long end) throws BadBody {
    long prev = at.applyAsLong(0);
    if (prev < 0) {
      throw new BadBody("Arrow offsets start below 0");
    }
    for (int i = 1; i <= n; i++) {
      long o = at.applyAsLong(i);
      if (o < prev) {
        throw new BadBody("Arrow offsets decrease");
      }
      prev = o;
    }
    if (prev > end) {
      throw new BadBody("Arrow offsets end past their data (" + prev + " > " + end + ")");
    }
  }

  // ------------------------------------------------------------------ tables

  private static final class Rows {
    final LongList ids = new LongList();
    final LongList tombs = new LongList();
    final FloatList values = new FloatList(); // f32/f16 widened; i8 as the raw q values
    final FloatList scales = new FloatList();
    boolean minus128;
    boolean nonFinite;
  }

  private static DecodedTable table(Map<?, ?> h, byte[] data, int bodyAt, int blen, long raw, Limits limits)
      throws DeltaException {
    Object name = h.get("name");
    if (!(name instanceof String)) {
      throw new BadHeader("table header needs a string 'name'");
    }
    checkName(name, BadHeader::new);
    int dim = (int) integer(h, "dim", 1, limits.maxDim());
    Object enc = h.get("encoding");
    if (!List.of("f32", "f16", "i8").contains(enc)) {
      throw new BadHeader("encoding " + enc + " not one of f32, f16, i8");
    }
    String encoding = (String) enc;
    long rows = integer(h, "rows", 0, raw);
    long ntomb = integer(h, "tombstones", 0, raw);
    Rows out = new Rows();
    batches(data, bodyAt, blen, raw, tableSchema(dim, encoding), root -> split(root, dim, encoding, out));
    if (out.ids.size() != rows || out.tombs.size() != ntomb) {
      throw new BadHeader("body has " + out.ids.size() + " rows / " + out.tombs.size()
          + " tombstones, header says " + rows + " / " + ntomb);
    }
    float[] values = out.values.toArray();
    if (!encoding.equals("i8")) {
      if (out.nonFinite) {
        throw new BadBody("table " + name + ": NaN or Inf values are not allowed");
      }
    } else {
      float[] scale = out.scales.toArray();
      for (float s : scale) {
        if (!(Float.isFinite(s) && s >= 0 && s <= MAX_SCALE)) {
          throw new BadBody("table " + name + ": int8 scales must be finite and in [0, 2^100]");
        }
      }
      if (out.minus128) {
        throw new BadBody("table " + name + ": int8 value -128 is not allowed");
      }
      for (int r = 0; r < scale.length; r++) {
        for (int j = 0; j < dim; j++) {
          values[r * dim + j] = values[r * dim + j] * scale[r]; // float32 x float32, once
        }
      }
    }
    return new DecodedTable((String) name, dim, encoding, out.ids.toArray(), values, out.tombs.toArray());
  }

  private static void split(VectorSchemaRoot root, int dim, String enc, Rows out) throws DeltaException {
    BigIntVector id = (BigIntVector) root.getVector(0);
    FixedSizeListVector value = (FixedSizeListVector) root.getVector(1);
    int n = root.getRowCount();
    if (id.getNullCount() > 0) {
      throw new BadBody("column 'id': " + id.getNullCount() + " nulls are not allowed");
    }
    Float4Vector scale = enc.equals("i8") ? (Float4Vector) root.getVector(2) : null;
    for (int i = 0; i < n; i++) {
      if (value.isNull(i)) {
        out.tombs.add(id.get(i));
        if (scale != null && !scale.isNull(i)) {
          throw new BadBody("int8 tombstone rows must have a null 'scale'");
        }
      }
    }
    FieldVector child = value.getDataVector();
    for (int i = 0; i < n; i++) {
      if (value.isNull(i)) {
        continue;
      }
      for (int j = i * dim; j < (i + 1) * dim; j++) {
        if (child.isNull(j)) {
          throw new BadBody("items of non-null 'value' rows: nulls are not allowed");
        }
      }
    }
    for (int i = 0; i < n; i++) {
      if (value.isNull(i)) {
        continue;
      }
      out.ids.add(id.get(i));
      for (int j = i * dim; j < (i + 1) * dim; j++) {
        float f;
        if (child instanceof Float4Vector c) {
          f = c.get(j);
        } else if (child instanceof Float2Vector c) {
          f = halfToFloat(c.get(j));
        } else {
          byte q = ((TinyIntVector) child).get(j);
          out.minus128 |= q == -128;
          f = q;
        }
        out.nonFinite |= !Float.isFinite(f);
        out.values.add(f);
      }
      if (scale != null) {
        if (scale.isNull(i)) {
          throw new BadBody("'scale' of int8 rows: nulls are not allowed");
        }
        out.scales.add(scale.get(i));
      }
    }
  }

  /** IEEE 754 binary16 to binary32, exactly (subnormals, infinities and NaN included). */
  static float halfToFloat(short h) {
    int bits = h & 0xFFFF;
    int sign = (bits & 0x8000) << 16;
    int exp = (bits >> 10) & 0x1F;
    int mant = bits & 0x3FF;
    if (exp == 0x1F) {
      return Float.intBitsToFloat(sign | 0x7F800000 | (mant << 13));
    }
    if (exp == 0) {
      if (mant == 0) {
        return Float.intBitsToFloat(sign);
      }
      float f = mant * 0x1p-24f; // exact
      return sign != 0 ? -f : f;
    }
    return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
  }

  // ------------------------------------------------------------------ dense

  private static DecodedDense dense(Map<?, ?> h, byte[] data, int bodyAt, int blen, long raw)
      throws DeltaException {
    long count = integer(h, "tensors", 0, MAX_TENSORS);
    Map<String, DecodedDense.Tensor> out = new LinkedHashMap<>();
    batches(data, bodyAt, blen, raw, DENSE_SCHEMA, root -> denseBatch(root, out));
    if (out.size() != count) {
      throw new BadHeader("body has " + out.size() + " tensors, header says " + count);
    }
    return new DecodedDense(out);
  }

  private static void denseBatch(VectorSchemaRoot root, Map<String, DecodedDense.Tensor> out)
      throws DeltaException {
    VarCharVector names = (VarCharVector) root.getVector(0);
    ListVector shapes = (ListVector) root.getVector(1);
    LargeListVector values = (LargeListVector) root.getVector(2);
    BigIntVector dims = (BigIntVector) shapes.getDataVector();
    Float4Vector items = (Float4Vector) values.getDataVector();
    for (FieldVector v : List.of(names, shapes, values, dims, items)) {
      if (v.getNullCount() > 0) {
        throw new BadBody("dense column " + v.getName() + ": nulls are not allowed");
      }
    }
    for (int i = 0; i < root.getRowCount(); i++) {
      String name;
      try {
        name = StandardCharsets.UTF_8.newDecoder()
            .onMalformedInput(CodingErrorAction.REPORT)
            .decode(ByteBuffer.wrap(names.get(i))).toString();
      } catch (CharacterCodingException e) {
        throw new BadBody("dense tensor name is not UTF-8");
      }
      int s0 = shapes.getElementStartIndex(i);
      int s1 = shapes.getElementEndIndex(i);
      long v0 = values.getElementStartIndex(i);
      long v1 = values.getElementEndIndex(i);
      long[] shape = new long[s1 - s0];
      boolean negative = false;
      for (int k = s0; k < s1; k++) {
        shape[k - s0] = dims.get(k);
        negative |= shape[k - s0] < 0;
      }
      if (shape.length > MAX_RANK || negative) {
        throw new BadBody("dense tensor " + name + ": shape " + Arrays.toString(shape));
      }
      java.math.BigInteger product = java.math.BigInteger.ONE;
      for (long d : shape) {
        product = product.multiply(java.math.BigInteger.valueOf(d));
      }
      if (!product.equals(java.math.BigInteger.valueOf(v1 - v0))) {
        throw new BadBody("dense tensor " + name + ": shape " + Arrays.toString(shape) + " != " + (v1 - v0) + " values");
      }
      if (out.containsKey(name)) {
        throw new BadBody("dense tensor " + name + " appears twice");
      }
      float[] flat = new float[(int) (v1 - v0)];
      for (long k = v0; k < v1; k++) {
        flat[(int) (k - v0)] = items.get((int) k);
        if (!Float.isFinite(flat[(int) (k - v0)])) {
          throw new BadBody("dense tensor " + name + ": NaN or Inf values are not allowed");
        }
      }
      out.put(name, new DecodedDense.Tensor(shape, flat));
    }
  }
}
