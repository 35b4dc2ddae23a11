"""Benchmark of the exporter and the delta consumer SDK (``make bench-export``).

1. export: 1M changed rows x 16 fp32 (+ ids), one ``Exporter.publish`` to file:// (encode,
   LZ4, sha256, fsync'd writes, manifest, LATEST); compared with raw ``lz4.frame.compress``
   of the same Arrow bytes in the same run (``vs_raw_lz4`` = raw_lz4_s / export_s).
2. delta size: a 1%-changed-rows delta vs the full snapshot of a 1M-row table.
3. apply: verify + decode + apply a 1M-row delta (half updates, half inserts) onto an
   8M-row x 16 fp32 table. ``apply_*``: the in-place backend (``InPlaceTables``);
   ``1pct_apply_*``: the same with a 1% (80k-row) delta; ``cow_apply_*``: the
   copy-on-write backend (``InMemoryTables``), whose old version stays alive for readers
   during the apply, so it needs ~2x. ``apply_mem_ratio`` =
   (backend bytes before + peak extra allocation during the apply, from tracemalloc,
   which numpy reports to + the fetched delta object) / (ids + fp32 rows after the apply).

The last line of output is one JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import lz4.frame
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.exporter import Exporter
from exporter.format import DecodedTable, decode_object, encode_table, table_schema
from exporter.sdk import InMemoryTables, InPlaceTables
from exporter.settings import ExporterConfig
from exporter.store import open_store
from exporter.types import Cut, TableDelta

DIM = 16


def cut(ids: np.ndarray, vals: np.ndarray, full: bool, step: int) -> Cut:
    return Cut(
        step,
        step,
        full,
        1_700_000_000_000,
        {"s": {0: step}},
        {"emb": TableDelta("emb", DIM, ids, vals)},
        {},
        1_700_000_000_000,
    )


def best(fn, n: int = 3) -> float:  # type: ignore[no-untyped-def]
    t = []
    for _ in range(n):
        os.sync()  # start each run without the previous run's dirty pages being flushed
        s = time.perf_counter()
        fn()
        t.append(time.perf_counter() - s)
    return min(t)


def _held(be: InMemoryTables | InPlaceTables) -> int:
    if isinstance(be, InPlaceTables):
        return be.nbytes()
    return be.state.tables["emb"].nbytes if be.state is not None else 0


def _apply_once(
    make: type[InMemoryTables] | type[InPlaceTables],
    snap: DecodedTable,
    delta: tuple[bytes, str],
    traced: bool,
) -> tuple[float, int, int]:
    """(seconds, backend bytes before, peak extra bytes) for verify + decode + apply."""
    be = make()
    be.apply({"kind": "snapshot", "sequence": 0, "watermark_ms": 0}, [snap], None)
    before = _held(be)
    if traced:
        tracemalloc.start()
    base_mem = tracemalloc.get_traced_memory()[0] if traced else 0
    s = time.perf_counter()
    dec = decode_object(delta[0], delta[1])
    assert isinstance(dec, DecodedTable)
    be.apply({"kind": "delta", "sequence": 1, "watermark_ms": 0}, [dec], None)
    took = time.perf_counter() - s
    peak = tracemalloc.get_traced_memory()[1] - base_mem if traced else 0
    if traced:
        tracemalloc.stop()
    return took, before, peak


def bench_apply(rng: np.random.Generator, n: int) -> dict[str, float]:
    """Verify + decode + apply one delta onto an 8M-row table. Time: best of 2 untraced
    runs. Memory: (backend bytes before + peak extra allocation during the apply, from
    tracemalloc, which numpy reports to + the fetched object) / (ids + fp32 rows after)."""
    m = 8 * n
    base_ids = rng.choice(1 << 40, m, replace=False).astype(np.int64)
    base_vals = rng.standard_normal((m, DIM), dtype=np.float32)
    deltas = {}
    for label, k in (("", n), ("1pct_", m // 100)):
        up_ids = np.concatenate(
            [
                base_ids[rng.choice(m, k // 2, replace=False)],
                rng.choice(1 << 40, k - k // 2, replace=False) + (1 << 41),
            ]
        )
        up_vals = rng.standard_normal((k, DIM), dtype=np.float32)
        data, digest, _ = encode_table("emb", DIM, up_ids, up_vals)
        deltas[label] = (data, digest, k)
    snap = decode_object(encode_table("emb", DIM, base_ids, base_vals)[0])
    assert isinstance(snap, DecodedTable)
    del base_ids, base_vals
    res: dict[str, float] = {}
    runs: list[tuple[str, type[InMemoryTables] | type[InPlaceTables], str]] = [
        ("", InPlaceTables, ""),
        ("1pct_", InPlaceTables, "1pct_"),
        ("cow_", InMemoryTables, ""),
    ]
    for label, make, which in runs:
        data, digest, k = deltas[which]
        took = min(_apply_once(make, snap, (data, digest), False)[0] for _ in range(2))
        _, before, peak = _apply_once(make, snap, (data, digest), True)
        table = (m + k - k // 2) * (8 + 4 * DIM)  # ids + fp32 rows after the apply
        res[f"{label}apply_s"] = took
        res[f"{label}apply_rows_per_s"] = k / took
        res[f"{label}apply_mem_ratio"] = (before + peak + len(data)) / table
    res["apply_table_mb"] = (m + n - n // 2) * (8 + 4 * DIM) / 1e6
    return res


def main() -> None:
    rng = np.random.default_rng(0)
    n = 1_000_000
    ids = rng.choice(1 << 40, n, replace=False).astype(np.int64)
    vals = rng.standard_normal((n, DIM), dtype=np.float32) * 0.05
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"file://{d}")
        ex = Exporter(store, ExporterConfig(snapshot_every=10**6, max_norm_jump=1e9))
        ex.publish(cut(ids[:10], vals[:10], True, 0))
        step = [0]

        def export() -> None:
            step[0] += 1
            ex.publish(cut(ids, vals, False, step[0]))

        out["export_s"] = best(export)
        import pyarrow as pa

        batch = pa.record_batch(
            [pa.array(ids), pa.FixedSizeListArray.from_arrays(pa.array(vals.reshape(-1)), DIM)],
            schema=table_schema(DIM, "f32"),
        )
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as w:
            w.write_batch(batch)
        raw = sink.getvalue()  # the same Arrow IPC bytes the exporter compresses
        out["raw_lz4_s"] = best(lambda: lz4.frame.compress(raw, compression_level=0))
        out["vs_raw_lz4"] = out["raw_lz4_s"] / out["export_s"]
        out["export_rows_per_s"] = n / out["export_s"]
        out["payload_mb"] = raw.size / 1e6

        # 2. delta bytes for 1% changed rows vs the snapshot
        snap = ex.publish(cut(ids, vals, True, 100))
        k = n // 100
        changed = rng.choice(n, k, replace=False)
        delta = ex.publish(cut(ids[changed], vals[changed] + 0.01, False, 101))
        sb = sum(o["bytes"] for o in snap["objects"])
        db = sum(o["bytes"] for o in delta["objects"])
        out["delta_pct_of_snapshot"] = 100.0 * db / sb

        # 3. consumer apply: a 1M-row delta (50% updates, 50% inserts) onto an 8M-row table
        out.update(bench_apply(rng, n))
    for k2, v in out.items():
        print(f"{k2:24} {v:,.4f}")
    print(json.dumps({k2: round(v, 4) for k2, v in out.items()}))


if __name__ == "__main__":
    main()
