package dev.fluxrec.sdk;

import java.util.Arrays;

/** A growable long[] (no boxing). */
final class LongList {
  private long[] a = new long[16];
  private int n;

  void add(long v) {
    if (n == a.length) {
      a = Arrays.copyOf(a, n * 2);
    }
    a[n++] = v;
  }

  int size() {
    return n;
  }

  long[] toArray() {
    return Arrays.copyOf(a, n);
  }
}
