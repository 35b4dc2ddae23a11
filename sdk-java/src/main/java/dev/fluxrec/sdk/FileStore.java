package dev.fluxrec.sdk;

import dev.fluxrec.sdk.DeltaException.OversizedPayload;
import dev.fluxrec.sdk.DeltaException.StoreError;
import dev.fluxrec.sdk.DeltaException.UnsafeObject;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.SeekableByteChannel;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.Set;

/**
 * A {@code file://} store read-only, as the Python {@code FileStore}: no component of a key
 * may be a symbolic link, the object must be a regular file, and no more than {@code max}
 * bytes (+1) are read.
 */
public final class FileStore {
  private final Path root;

  public FileStore(Path root) {
    this.root = root;
  }

  /** The object at {@code key}, or null when it does not exist. */
  public byte[] get(String key, long max) throws DeltaException {
    if (key.isEmpty() || key.startsWith("/") || key.contains("\\")) {
      throw new StoreError("invalid object key " + key);
    }
    Path p = root;
    String[] parts = key.split("/", -1);
    try {
      for (int i = 0; i < parts.length; i++) {
        if (parts[i].isEmpty() || parts[i].equals(".") || parts[i].equals("..")) {
          throw new StoreError("invalid object key " + key);
        }
        p = p.resolve(parts[i]);
        BasicFileAttributes a = Files.readAttributes(p, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
        if (a.isSymbolicLink()) {
          throw new UnsafeObject(p + ": a symbolic link in the path; refused");
        }
        if (i < parts.length - 1 ? !a.isDirectory() : !a.isRegularFile()) {
          if (i == parts.length - 1 && a.isDirectory()) {
            return null;
          }
          if (i < parts.length - 1) {
            return null;
          }
          throw new UnsafeObject(p + " is not a regular file");
        }
        if (i == parts.length - 1 && a.size() > max) {
          throw new OversizedPayload(p + ": " + a.size() + " bytes > the limit of " + max);
        }
      }
      try (SeekableByteChannel ch = Files.newByteChannel(p, Set.of(StandardOpenOption.READ, LinkOption.NOFOLLOW_LINKS))) {
        long cap = Math.min(max + 1, Integer.MAX_VALUE - 16);
        ByteBuffer buf = ByteBuffer.allocate((int) Math.min(cap, Math.max(ch.size() + 1, 1)));
        while (buf.hasRemaining() && ch.read(buf) > 0) {
          // read until EOF or one byte past what stat said
        }
        if (buf.position() > max) {
          throw new OversizedPayload(p + ": more than the limit of " + max + " bytes");
        }
        byte[] out = new byte[buf.position()];
        buf.flip().get(out);
        return out;
      }
    } catch (NoSuchFileException e) {
      return null;
    } catch (IOException e) {
      throw new StoreError(p + ": " + e);
    }
  }
}
