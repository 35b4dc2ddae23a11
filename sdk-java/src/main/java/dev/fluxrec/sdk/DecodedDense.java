package dev.fluxrec.sdk;

import java.util.Map;

/** The dense tensors of one object, by name, in the order the stream lists them. */
public record DecodedDense(Map<String, Tensor> tensors) {
  /** A row-major float32 tensor. */
  public record Tensor(long[] shape, float[] values) {}
}
