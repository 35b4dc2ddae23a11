package dev.fluxrec.sdk;

/**
 * What a reader accepts (FORMAT.md section 6); the defaults are the Python reader's. The
 * Java reader holds a decompressed body in one array, so it also refuses bodies of 2 GiB or
 * more ({@code OversizedPayload}).
 */
public record Limits(long maxObjectBytes, long maxRawBytes, int maxDim) {
  public static final Limits DEFAULT = new Limits(8L << 30, 8L << 30, 65536);
}
