package dev.fluxrec.sdk;

import java.util.Arrays;

/** A growable float[] (no boxing). */
final class FloatList {
  private float[] a = new float[16];
  private int n;

  void add(float v) {
    if (n == a.length) {
      a = Arrays.copyOf(a, n * 2);
    }
    a[n++] = v;
  }

  int size() {
    return n;
  }

  float[] toArray() {
    return Arrays.copyOf(a, n);
  }
}
