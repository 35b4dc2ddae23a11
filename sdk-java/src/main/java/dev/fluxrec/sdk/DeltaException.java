package dev.fluxrec.sdk;

/**
 * Every rejection of the delta format, one subclass per kind, named exactly like the Python
 * reader's error classes ({@code exporter/errors.py}), so that {@link #kind()} of both readers
 * can be compared on every golden vector.
 *
 * <pre>
 * DeltaException
 * ├── StoreError, UnsafeObject          reading the store failed, or a symlink / FIFO
 * ├── BadMagic, UnsupportedVersion, OversizedHeader, OversizedPayload, Truncated,
 * │   ChecksumMismatch, BadHeader, BadBody, BadManifest, BadSignature   (format)
 * └── BadSequence, MissingPayload, VersionNotFound                      (chain)
 * </pre>
 */
public class DeltaException extends Exception {
  private static final long serialVersionUID = 1L;

  public DeltaException(String message) {
    super(message);
  }

  /** The error class name, as the Python reader spells it ("BadBody", ...). */
  public String kind() {
    return getClass().getSimpleName();
  }

  @Override
  public String toString() {
    return kind() + ": " + getMessage();
  }

  public static final class StoreError extends DeltaException {
    private static final long serialVersionUID = 1L;

    public StoreError(String m) {
      super(m);
    }
  }

  public static final class UnsafeObject extends DeltaException {
    private static final long serialVersionUID = 1L;

    public UnsafeObject(String m) {
      super(m);
    }
  }

  public static final class BadMagic extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadMagic(String m) {
      super(m);
    }
  }

  public static final class UnsupportedVersion extends DeltaException {
    private static final long serialVersionUID = 1L;

    public UnsupportedVersion(String m) {
      super(m);
    }
  }

  public static final class OversizedHeader extends DeltaException {
    private static final long serialVersionUID = 1L;

    public OversizedHeader(String m) {
      super(m);
    }
  }

  public static final class OversizedPayload extends DeltaException {
    private static final long serialVersionUID = 1L;

    public OversizedPayload(String m) {
      super(m);
    }
  }

  public static final class Truncated extends DeltaException {
    private static final long serialVersionUID = 1L;

    public Truncated(String m) {
      super(m);
    }
  }

  public static final class ChecksumMismatch extends DeltaException {
    private static final long serialVersionUID = 1L;

    public ChecksumMismatch(String m) {
      super(m);
    }
  }

  public static final class BadHeader extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadHeader(String m) {
      super(m);
    }
  }

  public static final class BadBody extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadBody(String m) {
      super(m);
    }
  }

  public static final class BadManifest extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadManifest(String m) {
      super(m);
    }
  }

  public static final class BadSignature extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadSignature(String m) {
      super(m);
    }
  }

  public static final class BadSequence extends DeltaException {
    private static final long serialVersionUID = 1L;

    public BadSequence(String m) {
      super(m);
    }
  }

  public static final class MissingPayload extends DeltaException {
    private static final long serialVersionUID = 1L;

    public MissingPayload(String m) {
      super(m);
    }
  }

  public static final class VersionNotFound extends DeltaException {
    private static final long serialVersionUID = 1L;

    public VersionNotFound(String m) {
      super(m);
    }
  }
}
