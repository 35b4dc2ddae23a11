package dev.fluxrec.sdk;

import dev.fluxrec.sdk.DeltaException.BadBody;
import dev.fluxrec.sdk.DeltaException.BadHeader;

/**
 * The LZ4 frame of an object body (FORMAT.md section 2.2), written against the LZ4 Frame
 * Format 1.6 and LZ4 Block Format specifications: exactly one frame, version 01, no
 * dictionary, a content size equal to {@code raw_bytes}, block sizes within the block maximum,
 * at most {@code max(1, ceil(raw / blockMax))} blocks, linked or independent blocks, stored
 * blocks, optional block and content checksums (XXH32, verified), nothing after the frame.
 *
 * <p>The structure is checked before the output ({@code raw} bytes, already bounded by the
 * reader's limit) is allocated. A block decodes as {@code LZ4_decompress_safe} does into a
 * buffer of the block maximum: a match may not reach into that buffer's last 5 bytes, and a
 * literal run that ends within its last 12 bytes (or leaves fewer than 8 input bytes) must
 * end the block.
 */
final class Lz4Frame {
  private static final int MAGIC = 0x184D2204;

  private Lz4Frame() {}

  static int u32(byte[] b, int at) {
    return (b[at] & 0xFF) | (b[at + 1] & 0xFF) << 8 | (b[at + 2] & 0xFF) << 16 | (b[at + 3] & 0xFF) << 24;
  }

  static long u64(byte[] b, int at) {
    return (u32(b, at) & 0xFFFFFFFFL) | ((long) u32(b, at + 4)) << 32;
  }

  private static int blockMax(int id) {
    return switch (id) {
      case 4 -> 64 << 10;
      case 5 -> 256 << 10;
      case 6 -> 1 << 20;
      case 7 -> 4 << 20;
      default -> -1;
    };
  }

  /** Decode the frame {@code b[off, off+len)} into exactly {@code raw} bytes. */
  static byte[] decode(byte[] b, int off, int len, long raw) throws DeltaException {
    int end = off + len;
    if (len < 15) {
      throw new BadBody("LZ4 frame of " + len + " bytes is shorter than a frame header with content size");
    }
    if (u32(b, off) != MAGIC) {
      throw new BadBody(String.format("LZ4 frame magic %#010x is not 0x184d2204", u32(b, off)));
    }
    int flg = b[off + 4] & 0xFF;
    int bd = b[off + 5] & 0xFF;
    if (flg >> 6 != 1 || (flg & 0x02) != 0 || (bd & 0x8F) != 0) {
      throw new BadBody("LZ4 frame descriptor: bad version/reserved bits");
    }
    if ((flg & 0x01) != 0) {
      throw new BadBody("LZ4 frame uses a dictionary (DictID): not allowed");
    }
    if ((flg & 0x08) == 0) {
      throw new BadBody("LZ4 frame has no content size: FORMAT.md requires it");
    }
    int max = blockMax((bd >> 4) & 7);
    if (max < 0) {
      throw new BadBody("LZ4 frame block maximum size id " + ((bd >> 4) & 7) + " not in 4..7");
    }
    long size = u64(b, off + 6);
    if (size != raw) {
      throw new BadHeader("LZ4 content size " + Long.toUnsignedString(size) + " != raw_bytes " + raw);
    }
    boolean blockSum = (flg & 0x10) != 0;
    boolean contentSum = (flg & 0x04) != 0;
    boolean linked = (flg & 0x20) == 0;
    long maxBlocks = Math.max(1, (raw + max - 1) / max);
    // 1. structure, before any allocation
    long pos = off + 15;
    long blocks = 0;
    while (true) {
      if (pos + 4 > end) {
        throw new BadBody("LZ4 frame ends inside a block header (no end mark)");
      }
      int word = u32(b, (int) pos);
      pos += 4;
      if (word == 0) {
        break;
      }
      int length = word & 0x7FFFFFFF;
      if (length > max) {
        throw new BadBody("LZ4 block of " + length + " bytes > the frame's block maximum " + max);
      }
      if (++blocks > maxBlocks) {
        throw new BadBody("LZ4 frame has more than " + maxBlocks + " blocks for " + raw + " bytes");
      }
      pos += length + (blockSum ? 4 : 0);
    }
    pos += contentSum ? 4 : 0;
    if (pos != end) {
      throw new BadBody((pos < end ? "trailing bytes after" : "a truncated") + " the LZ4 frame");
    }
    // 2. checksums and blocks
    if ((XxHash32.hash(b, off + 4, 2 + 8, 0) >>> 8 & 0xFF) != (b[off + 14] & 0xFF)) {
      throw new BadBody("LZ4 frame header checksum does not match");
    }
    if (raw > Integer.MAX_VALUE - 16) {
      throw new DeltaException.OversizedPayload("raw_bytes " + raw + " > what one Java array holds");
    }
    byte[] out = new byte[(int) raw];
    int sp = off + 15;
    int dp = 0;
    while (true) {
      int word = u32(b, sp);
      sp += 4;
      if (word == 0) {
        break;
      }
      int length = word & 0x7FFFFFFF;
      if (blockSum && XxHash32.hash(b, sp, length, 0) != u32(b, sp + length)) {
        throw new BadBody("LZ4 block checksum does not match");
      }
      if ((word & 0x80000000) != 0) {
        if (length > out.length - dp) {
          throw new BadBody("LZ4 stored block goes past the content size");
        }
        System.arraycopy(b, sp, out, dp, length);
        dp += length;
      } else {
        dp = block(b, sp, sp + length, out, dp, max, linked ? 0 : dp);
      }
      sp += length + (blockSum ? 4 : 0);
    }
    if (dp != out.length) {
      throw new BadBody("LZ4 frame decodes to " + dp + " bytes, content size " + raw);
    }
    if (contentSum && XxHash32.hash(out, 0, out.length, 0) != u32(b, sp)) {
      throw new BadBody("LZ4 content checksum does not match");
    }
    return out;
  }

  /**
   * One LZ4 block {@code src[sp, send)} into {@code dst} from {@code dp}; the block's buffer
   * is {@code capacity} bytes from {@code dp} (clipped to {@code dst}); matches may reach back
   * to {@code lowest}. Returns the new output position.
   */
  private static int block(byte[] src, int sp, int send, byte[] dst, int dp, int capacity, int lowest)
      throws BadBody {
    long oendLong = Math.min((long) dp + capacity, dst.length);
    int oendLimit = (int) ((long) dp + capacity); // LZ4_decompress_safe's oend (block buffer)
    int oend = (int) oendLong; // what dst can hold
    while (true) {
      if (sp >= send) {
        throw new BadBody("LZ4 block ends inside a sequence");
      }
      int token = src[sp++] & 0xFF;
      long lit = token >>> 4;
      if (lit == 15) {
        int x;
        do {
          if (sp >= send) {
            throw new BadBody("LZ4 block ends inside a literal length");
          }
          x = src[sp++] & 0xFF;
          lit += x;
        } while (x == 255 && lit < Integer.MAX_VALUE);
      }
      long cpy = dp + lit;
      if (cpy > oendLimit - 12 || sp + lit > send - 8) {
        // the last sequence: its literals end the input exactly and fit the buffer
        if (sp + lit != send || cpy > oend) {
          throw new BadBody("LZ4 block: malformed last literals");
        }
        System.arraycopy(src, sp, dst, dp, (int) lit);
        return (int) cpy;
      }
      if (cpy > oend) {
        throw new BadBody("LZ4 block writes past the content size");
      }
      System.arraycopy(src, sp, dst, dp, (int) lit);
      sp += (int) lit;
      dp = (int) cpy;
      int offset = (src[sp] & 0xFF) | (src[sp + 1] & 0xFF) << 8;
      sp += 2;
      long ml = token & 15;
      if (ml == 15) {
        int x;
        do {
          if (sp > send - 5) { // as liblz4: after this byte, at least 4 must remain
            throw new BadBody("LZ4 block ends inside a match length");
          }
          x = src[sp++] & 0xFF;
          ml += x;
        } while (x == 255 && ml < Integer.MAX_VALUE);
      }
      ml += 4;
      if (offset == 0 || offset > dp - lowest) {
        throw new BadBody("LZ4 block: match offset " + offset + " before the output");
      }
      long mend = dp + ml;
      if (mend > oendLimit - 5 || mend > oend) {
        throw new BadBody("LZ4 block: match reaches the last 5 bytes of the block");
      }
      int m = dp - offset;
      if (offset >= ml) {
        System.arraycopy(dst, m, dst, dp, (int) ml);
      } else {
        for (int i = 0; i < ml; i++) {
          dst[dp + i] = dst[m + i];
        }
      }
      dp = (int) mend;
    }
  }
}
