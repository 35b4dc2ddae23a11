package dev.fluxrec.sdk;

/**
 * One decoded table object: {@code values} is row-major float32 ({@code ids.length * dim};
 * f16 and i8 rows widened as FORMAT.md 2.3 says), {@code tombstones} the deleted ids.
 */
public record DecodedTable(
    String name, int dim, String encoding, long[] ids, float[] values, long[] tombstones) {}
