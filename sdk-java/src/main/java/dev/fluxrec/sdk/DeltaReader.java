package dev.fluxrec.sdk;

import dev.fluxrec.sdk.DeltaException.BadManifest;
import dev.fluxrec.sdk.DeltaException.BadSequence;
import dev.fluxrec.sdk.DeltaException.MissingPayload;
import dev.fluxrec.sdk.DeltaException.OversizedPayload;
import dev.fluxrec.sdk.DeltaException.Truncated;
import dev.fluxrec.sdk.DeltaException.VersionNotFound;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collections;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Follows the versions in a {@code file://} store into an in-memory table (FORMAT.md 8), as
 * the Python {@code DeltaConsumer} does: bootstrap from the newest snapshot chain, then apply
 * N+1, N+2, ...; a gap rebuilds from a snapshot; every version is fetched and verified whole
 * (every object of every part) before it is applied; a rebuild is built aside and swapped in only when complete; the
 * served version never goes below the last one served ({@code LATEST.json} is a hint).
 *
 * <pre>{@code
 * DeltaReader r = new DeltaReader(Path.of("/data/deltas"), key, Limits.DEFAULT);
 * r.sync();                                       // throws DeltaException, keeps the last good version
 * float[] rows = r.state().lookup("item_id", new long[] {17, 42});   // 2 x dim; unknown -> zeros
 * }</pre>
 */
public final class DeltaReader {
  private final FileStore store;
  private final byte[] hmacKey;
  private final Limits limits;
  private volatile State state = State.EMPTY;

  public DeltaReader(Path root, byte[] hmacKey, Limits limits) {
    this.store = new FileStore(root);
    this.hmacKey = hmacKey;
    this.limits = limits;
  }

  /** One table: rows by id ({@code dim} floats each). Immutable once published. */
  public record Table(String name, int dim, Map<Long, float[]> rows) {
    /** The rows of {@code ids}, row-major; unknown ids give zeros. */
    public float[] lookup(long[] ids) {
      float[] out = new float[ids.length * dim];
      for (int i = 0; i < ids.length; i++) {
        float[] r = rows.get(ids[i]);
        if (r != null) {
          System.arraycopy(r, 0, out, i * dim, dim);
        }
      }
      return out;
    }
  }

  /** One consistent version: readers hold a reference and never see a later change. */
  public record State(Long version, long watermarkMs, Map<String, Table> tables, Map<String, DecodedDense.Tensor> dense) {
    static final State EMPTY = new State(null, 0, Map.of(), Map.of());

    public float[] lookup(String table, long[] ids) {
      return tables.get(table).lookup(ids);
    }

    State apply(Map<String, Object> manifest, List<DecodedTable> tabs, DecodedDense d) {
      boolean snapshot = "snapshot".equals(manifest.get("kind"));
      Map<String, Table> next = snapshot ? new HashMap<>() : new HashMap<>(tables);
      for (DecodedTable t : tabs) {
        Table prev = next.get(t.name());
        Map<Long, float[]> rows =
            prev == null || prev.dim() != t.dim() || snapshot ? new HashMap<>() : new HashMap<>(prev.rows());
        for (long id : t.tombstones()) {
          rows.remove(id);
        }
        for (int i = 0; i < t.ids().length; i++) {
          float[] r = new float[t.dim()];
          System.arraycopy(t.values(), i * t.dim(), r, 0, t.dim());
          rows.put(t.ids()[i], r);
        }
        next.put(t.name(), new Table(t.name(), t.dim(), Collections.unmodifiableMap(rows)));
      }
      Map<String, DecodedDense.Tensor> dn = snapshot ? new HashMap<>() : new HashMap<>(dense);
      if (d != null) {
        dn.putAll(d.tensors());
      }
      return new State((Long) manifest.get("sequence"), (Long) manifest.get("watermark_ms"),
          Collections.unmodifiableMap(next), Collections.unmodifiableMap(dn));
    }
  }

  /** The version being served (swapped atomically). */
  public State state() {
    return state;
  }

  private record Version(Map<String, Object> manifest, List<DecodedTable> tables, DecodedDense dense) {}

  private Map<String, Object> manifest(long seq) throws DeltaException {
    byte[] raw;
    try {
      raw = store.get(Manifest.manifestKey(seq), Manifest.MAX_MANIFEST_BYTES);
    } catch (OversizedPayload e) {
      throw new BadManifest("version " + seq + ": manifest larger than " + Manifest.MAX_MANIFEST_BYTES);
    }
    if (raw == null) {
      throw new VersionNotFound("version " + seq + ": no manifest");
    }
    return Manifest.parse(raw, hmacKey, seq);
  }

  /** Fetch and verify one version (manifest and every object) without applying it. */
  private Version load(long seq) throws DeltaException {
    Map<String, Object> doc = manifest(seq);
    List<DecodedTable> tables = new ArrayList<>();
    DecodedDense dense = null;
    for (Map<?, ?> obj : Manifest.objects(doc)) {
      Manifest.checkEntrySize(seq, obj, limits);
      byte[] data;
      try {
        data = store.get((String) obj.get("key"), (Long) obj.get("bytes"));
      } catch (OversizedPayload e) {
        throw new Truncated("version " + seq + ": " + obj.get("key") + " has more bytes than its manifest says");
      }
      if (data == null) {
        if (store.get(Manifest.manifestKey(seq), Manifest.MAX_MANIFEST_BYTES) == null) {
          throw new VersionNotFound("version " + seq + ": pruned while being read");
        }
        throw new MissingPayload("version " + seq + ": " + obj.get("key") + " is missing");
      }
      Object dec = Manifest.decodeEntry(seq, obj, data, limits);
      if (dec instanceof DecodedTable t) {
        tables.add(t);
      } else {
        dense = (DecodedDense) dec;
      }
    }
    return new Version(doc, merge(tables), dense);
  }

  /**
   * One table per name: the objects of a table from several parts (format 2) joined in part
   * order, their upserts and their tombstones (FORMAT.md 4.5), in the order of each name's
   * first object; a table in one object is kept as it is.
   */
  static List<DecodedTable> merge(List<DecodedTable> tables) {
    Map<String, List<DecodedTable>> byName = new LinkedHashMap<>();
    for (DecodedTable t : tables) {
      byName.computeIfAbsent(t.name(), k -> new ArrayList<>()).add(t);
    }
    List<DecodedTable> out = new ArrayList<>();
    for (List<DecodedTable> ts : byName.values()) {
      if (ts.size() == 1) {
        out.add(ts.get(0));
        continue;
      }
      DecodedTable first = ts.get(0);
      long[] ids = new long[ts.stream().mapToInt(t -> t.ids().length).sum()];
      long[] tombstones = new long[ts.stream().mapToInt(t -> t.tombstones().length).sum()];
      float[] values = new float[ids.length * first.dim()];
      int at = 0;
      int tat = 0;
      for (DecodedTable t : ts) {
        System.arraycopy(t.ids(), 0, ids, at, t.ids().length);
        System.arraycopy(t.values(), 0, values, at * first.dim(), t.values().length);
        System.arraycopy(t.tombstones(), 0, tombstones, tat, t.tombstones().length);
        at += t.ids().length;
        tat += t.tombstones().length;
      }
      out.add(new DecodedTable(first.name(), first.dim(), first.encoding(), ids, values, tombstones));
    }
    return out;
  }

  private Long latest() throws DeltaException {
    byte[] raw;
    try {
      raw = store.get("LATEST.json", Manifest.MAX_LATEST_BYTES);
    } catch (OversizedPayload e) {
      throw new BadManifest("LATEST.json larger than " + Manifest.MAX_LATEST_BYTES + " bytes");
    }
    return raw == null ? null : Manifest.parseLatest(raw, hmacKey)[0];
  }

  private State build(long target) throws DeltaException {
    long base = (Long) manifest(target).get("base_snapshot");
    State staging = State.EMPTY;
    for (long seq = base; seq <= target; seq++) {
      Version v = load(seq);
      boolean snapshot = "snapshot".equals(v.manifest().get("kind"));
      if ((seq == base) != snapshot || (Long) v.manifest().get("base_snapshot") != base) {
        throw new BadSequence("version " + seq + " breaks the chain " + base + ".." + target);
      }
      staging = staging.apply(v.manifest(), v.tables(), v.dense());
    }
    return staging;
  }

  private int rebuild() throws DeltaException {
    for (int attempt = 0; ; attempt++) {
      Long goal = latest();
      Long current = state.version();
      if (goal == null || (current != null && goal <= current)) {
        return 0;
      }
      try {
        State built = build(goal);
        state = built;
        return 1;
      } catch (VersionNotFound e) {
        if (attempt == 2) {
          throw e;
        }
      }
    }
  }

  /**
   * Apply every version newer than the served one; returns how many were applied (a rebuild
   * counts as one). On a {@link DeltaException} the last good version stays served.
   */
  public synchronized int sync() throws DeltaException {
    Long current = state.version();
    if (current == null) {
      return rebuild();
    }
    Long goal = latest();
    if (goal == null || goal <= current) {
      return 0; // nothing new, or a LATEST.json below us: never move back
    }
    int applied = 0;
    for (long seq = current + 1; seq <= goal; seq++) {
      Version v;
      try {
        v = load(seq);
      } catch (VersionNotFound e) {
        return applied + rebuild();
      }
      if ("delta".equals(v.manifest().get("kind")) && !v.manifest().get("parent").equals(state.version())) {
        throw new BadSequence("version " + seq + ": parent does not follow " + state.version());
      }
      state = state.apply(v.manifest(), v.tables(), v.dense());
      applied++;
    }
    return applied;
  }
}
