"""Benchmark of the exporter and the delta consumer SDK (``make bench-export``).

1. export: 1M changed rows x 16 fp32 (+ ids), one ``Exporter.publish`` to file:// (Arrow
   IPC, LZ4 frame, sha256, fsync'd writes, manifest, LATEST), best of 3; compared with
   ``lz4.frame.compress`` (defaults, level 0) of the same Arrow IPC bytes in the same run:
   ``vs_raw_lz4`` = raw_lz4_s / export_s (>= 1: the export is faster than compressing).
2. delta size: a delta of 1% changed rows vs the full snapshot of a 1M-row table.
3. apply: a server process holding an 8M-row x 16 fp32 table applies a stream of three
   deltas, each with 50% updates and 50% new ids: ``apply_*`` 1% of the table (80k rows)
   per delta, ``apply_1m_*`` 1M rows per delta. Each case runs in its own fresh process
   (``--apply-worker``) that builds the table from numpy arrays, then reads each delta
   object from file:// (``fetch_s``) and verifies, decodes and applies it (``apply_s``,
   median of the three). ``apply_mem_ratio`` = (peak RSS of that process during the
   three versions - its RSS after the imports) / (ids + fp32 rows of the table after):
   everything the process holds, the table, the fetched object and all temporaries.
   ``apply_*anchor_s``: plain libraries on the same objects in the same process (hashlib
   sha256, ``lz4.frame.decompress``, pyarrow reading the IPC stream: verify + decode, no
   apply); ``apply_*vs_anchor`` = apply_s / anchor_s.
   ``apply_*``: ``InPlaceTables`` (the memory-bounded backend); ``cow_*``:
   ``InMemoryTables`` (copy-on-write, readers never wait, ~2x memory by design).

The last line of output is one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lz4.frame
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.exporter import Exporter
from exporter.format import DecodedTable, decode_object, encode_table, table_schema
from exporter.sdk import InMemoryTables, InPlaceTables
from exporter.settings import ExporterConfig
from exporter.store import open_store
from exporter.types import Cut, TableDelta

DIM = 16
TABLE_ROWS = 8_000_000
SEED = 0


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


# ----------------------------------------------------------------------------- apply


def _table_ids() -> np.ndarray:
    return np.random.default_rng(SEED).choice(1 << 40, TABLE_ROWS, replace=False).astype(np.int64)


def _rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _anchor(data: bytes) -> float:
    """Plain libraries on the same object: hashlib's sha256 of it, ``lz4.frame.decompress``
    of its body and pyarrow reading the IPC stream to a table (verify + decode, no apply)."""
    s = time.perf_counter()
    hashlib.sha256(data[:-32]).digest()
    hlen = int.from_bytes(data[12:16], "little")
    raw = lz4.frame.decompress(data[16 + hlen : -40])
    pa.ipc.open_stream(raw).read_all()
    return time.perf_counter() - s


def apply_worker(directory: str, backend_name: str) -> None:
    """Runs in a fresh process: build the table, apply ``delta-*.fxd``, print one JSON."""
    baseline = _rss()
    be = InPlaceTables() if backend_name == "inplace" else InMemoryTables()
    ids = _table_ids()
    vals = np.random.default_rng(SEED + 1).standard_normal((TABLE_ROWS, DIM), dtype=np.float32)
    snap = DecodedTable("emb", DIM, "f32", ids, vals)
    s = time.perf_counter()
    be.apply({"kind": "snapshot", "sequence": 0, "watermark_ms": 0}, [snap], None)
    load_s = time.perf_counter() - s
    del ids, vals, snap
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    fetch, apply, rows = [], [], 0
    for seq, path in enumerate(sorted(Path(directory).glob("delta-*.fxd")), 1):
        s = time.perf_counter()
        data = path.read_bytes()
        fetched = time.perf_counter()
        dec = decode_object(data, None)
        assert isinstance(dec, DecodedTable)
        be.apply({"kind": "delta", "sequence": seq, "watermark_ms": 0}, [dec], None)
        done = time.perf_counter()
        fetch.append(fetched - s)
        apply.append(done - fetched)
        rows = len(dec.ids)
        del data, dec
    peak = _rss("VmHWM")
    anchor = [_anchor(path.read_bytes()) for path in sorted(Path(directory).glob("delta-*.fxd"))]
    if isinstance(be, InPlaceTables):
        n = len(be.rows("emb")[0])
    else:
        n = len(be.state.tables["emb"].ids) if be.state else 0
    print(
        json.dumps(
            {
                "rows": rows,
                "table_rows": n,
                "load_s": load_s,
                "fetch_s": statistics.median(fetch),
                "apply_s": statistics.median(apply),
                "anchor_s": statistics.median(anchor),
                "peak_extra_bytes": peak - baseline,
            }
        )
    )


def bench_apply(rng: np.random.Generator) -> dict[str, float]:
    base = _table_ids()
    res: dict[str, float] = {}
    for label, k in (("", TABLE_ROWS // 100), ("1m_", 1_000_000)):
        with tempfile.TemporaryDirectory() as d:
            for v in range(3):
                ids = np.concatenate(
                    [
                        base[rng.choice(TABLE_ROWS, k // 2, replace=False)],
                        rng.choice(1 << 40, k - k // 2, replace=False) + ((v + 2) << 40),
                    ]
                )
                vals = rng.standard_normal((k, DIM), dtype=np.float32)
                Path(d, f"delta-{v}.fxd").write_bytes(encode_table("emb", DIM, ids, vals)[0])
            for prefix, name in (("", "inplace"), ("cow_", "cow")):
                out = subprocess.run(
                    [sys.executable, __file__, "--apply-worker", d, name],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                r = json.loads(out.splitlines()[-1])
                table_bytes = r["table_rows"] * (8 + 4 * DIM)
                key = f"{prefix}apply_{label}"
                res[f"{key}rows"] = r["rows"]
                res[f"{key}s"] = r["apply_s"]
                res[f"{key}rows_per_s"] = r["rows"] / r["apply_s"]
                res[f"{key}fetch_s"] = r["fetch_s"]
                res[f"{key}mem_ratio"] = r["peak_extra_bytes"] / table_bytes
                res[f"{key}anchor_s"] = r["anchor_s"]
                res[f"{key}vs_anchor"] = r["apply_s"] / r["anchor_s"]
                res[f"{prefix}snapshot_load_s"] = r["load_s"]
    res["apply_table_mb"] = TABLE_ROWS * (8 + 4 * DIM) / 1e6
    return res


# ----------------------------------------------------------------------------- main


def main() -> None:
    rng = np.random.default_rng(SEED + 2)
    n = 1_000_000
    ids = rng.choice(1 << 40, n, replace=False).astype(np.int64)
    vals = rng.standard_normal((n, DIM), dtype=np.float32) * 0.05
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"file://{d}")
        ex = Exporter(store, ExporterConfig(snapshot_every=10**6))
        ex.publish(cut(ids[:10], vals[:10], True, 0))
        step = [0]

        def export() -> None:
            step[0] += 1
            ex.publish(cut(ids, vals, False, step[0]))

        out["export_s"] = best(export)
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

    # 3. consumer apply, each case in a fresh process
    out.update(bench_apply(rng))
    for k2, v in out.items():
        print(f"{k2:28} {v:,.4f}")
    print(json.dumps({k2: round(v, 4) for k2, v in out.items()}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--apply-worker":
        apply_worker(sys.argv[2], sys.argv[3])
    else:
        main()
