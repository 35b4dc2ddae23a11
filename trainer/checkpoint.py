"""Atomic checkpoints of a job's trainers (npz tensors + JSON, no pickle), a part per worker.

Layout under ``root``, one directory per checkpoint, complete once its ``meta.json``
exists (the step, then rank 0's clock in microseconds, so names sort by age)::

    root/ckpt-000000001200-1764650000123456/
        meta.json               written last, by rank 0: format 3, world, buckets, step,
                                samples, skipped, id_xor, offsets (every worker's),
                                watermark_ms, tables {name: [fields]}, dims, norm_seen, parts
        part-0000/meta.json     one worker's: rank, step, id_xor, skipped, offsets (its
                                partitions), watermark_ms (its own), np_rng states
        part-0000/tensors.npz   "table/<name>/{ids,field,weight,accum,last_update,freq}",
                                "cand/<name>/{ids,counts}", "rng/<name>/torch": the rows
                                it owns; part-0000 also "model/<name>", "opt/<i>/{sum,step}"
        part-0001/...

:func:`save` is collective. Every worker writes its part into ``.tmp-part-R``, fsyncs
and renames it into place; rank 0 gathers the parts' metadata (so it has waited for
every part), writes ``meta.json`` through a temporary file and a rename, fsyncs and
prunes: older checkpoints of the same step (replaced), all but the newest ``keep``,
incomplete ones older than the newest complete one. A crash at any point leaves the
previous complete checkpoint the newest one. The directory must be one that every
worker reads and writes (a shared filesystem when workers run on several machines).

:func:`load_latest` is collective too: every worker restores the newest complete
checkpoint, and they check that it is the same one. With as many workers as wrote it,
each reads its own part. With another number, each reads every part and keeps the rows
it owns now (``trainer.sharded.owner_of``: whole virtual buckets move) with their
admission counts, the offsets of the partitions it reads now (``p % world == rank``),
fresh random generators, and rank 0 takes the job's counters. A checkpoint of format 2
(one process, before workers) reads as a checkpoint of one part. ``np.load`` runs with
``allow_pickle=False``: nothing in a checkpoint can run code. After a restore the
tables are marked so the next cut is a full snapshot: change tracking is not
checkpointed, and the exporter may have published state newer than the checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core import Trainer
from trainer.errors import TrainerError
from trainer.sharded import N_BUCKETS, owner_of
from trainer.tables import DynamicTable, IdMap

__all__ = ["CheckpointError", "load_latest", "save"]

FORMAT = 3
_EMPTY = np.iinfo(np.int64).min
_ROWS = ("ids", "field", "weight", "accum", "last_update", "freq")

Arrays = dict[str, np.ndarray[Any, Any]]


class CheckpointError(TrainerError):
    """A checkpoint directory cannot be read or written, or does not fit the config."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes | Arrays) -> None:
    """Write ``path`` (JSON bytes, or arrays as npz) and fsync it."""
    with path.open("wb") as f:
        if isinstance(data, bytes):
            f.write(data)
        else:
            np.savez(f, **data)
        f.flush()
        os.fsync(f.fileno())


def _table_arrays(name: str, tab: DynamicTable) -> Arrays:
    live = np.flatnonzero(tab.row_id[: tab.n_rows] != _EMPTY)
    r = torch.from_numpy(live)
    ck, cv = tab.candidates.items()
    return {
        f"table/{name}/ids": tab.row_id[live],
        f"table/{name}/field": tab.row_field[live],
        f"table/{name}/weight": tab.weight[r].numpy(),
        f"table/{name}/accum": tab.accum[r].numpy(),
        f"table/{name}/last_update": tab.last_update[live],
        f"table/{name}/freq": tab.freq[live],
        f"cand/{name}/ids": ck,
        f"cand/{name}/counts": cv,
        f"rng/{name}/torch": tab._gen.get_state().numpy().copy(),
    }


def _step_of(d: Path) -> int:
    return int(d.name.split("-")[1])


def _complete(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    return sorted(d for d in root.glob("ckpt-*") if (d / "meta.json").is_file())


def _prune(root: Path, newest: Path, keep: int) -> None:
    for d in _complete(root):
        if d != newest and _step_of(d) == _step_of(newest):
            shutil.rmtree(d, ignore_errors=True)  # the same step again: replaced
    for d in _complete(root)[:-keep]:
        shutil.rmtree(d, ignore_errors=True)
    for d in root.glob("ckpt-*"):
        if d.name < newest.name and not (d / "meta.json").is_file():
            shutil.rmtree(d, ignore_errors=True)  # a save that a crash interrupted
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save(t: Trainer, root: Path, keep: int = 3) -> Path:
    """Write a checkpoint of the job (collective; ``t`` copied under its lock), prune
    old ones; returns its directory."""
    comm = t.comm
    root.mkdir(parents=True, exist_ok=True)
    token = comm.broadcast_int(time.time_ns() // 1000)
    arrays: Arrays = {}
    with t.lock:
        if comm.rank == 0:  # the dense model is replicated: one copy
            for k, v in t.model.state_dict().items():
                arrays[f"model/{k}"] = v.detach().cpu().numpy().copy()
            for i, p in enumerate(t.model.parameters()):
                st = t.opt.state.get(p, {})
                for k in ("sum", "step"):
                    if k in st:
                        arrays[f"opt/{i}/{k}"] = st[k].detach().cpu().numpy().copy()
        for name, tab in t.tables.items():
            arrays.update(_table_arrays(name, tab))
        part_meta = {
            "format": FORMAT,
            "rank": comm.rank,
            "step": t.step,
            "id_xor": t.id_xor,
            "skipped": t.skipped,
            "offsets": {k: {str(p): o for p, o in v.items()} for k, v in t.offsets.items()},
            "watermark_ms": t.local_watermark_ms,
            "np_rng": {n: tab._rng.bit_generator.state for n, tab in t.tables.items()},
        }
        job: dict[str, Any] = {
            "format": FORMAT,
            "world": comm.world,
            "buckets": N_BUCKETS,
            "step": t.step,
            "samples": t.samples,
            "watermark_ms": t.watermark_ms,
            "tables": {n: tab.fields for n, tab in t.tables.items()},
            "dims": {n: tab.p.dim for n, tab in t.tables.items()},
            "norm_seen": t.model.norm.seen,
        }
    final = root / f"ckpt-{job['step']:012d}-{token:016d}"
    final.mkdir(exist_ok=True)
    tmp, part = final / f".tmp-part-{comm.rank:04d}", final / f"part-{comm.rank:04d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    _write(tmp / "tensors.npz", arrays)
    _write(tmp / "meta.json", json.dumps(part_meta).encode())
    os.rename(tmp, part)
    _fsync(final)
    parts = comm.gather_json(part_meta)  # on rank 0, once every part is in place
    if parts is None:
        return final
    offsets: dict[str, dict[str, int]] = {}
    id_xor = 0
    for pm in parts:
        id_xor ^= int(pm["id_xor"])
        for topic, po in pm["offsets"].items():
            offsets.setdefault(topic, {}).update(po)
    job |= {
        "skipped": sum(int(pm["skipped"]) for pm in parts),
        "id_xor": id_xor,
        "offsets": offsets,
        "parts": [f"part-{r:04d}" for r in range(comm.world)],
    }
    _write(final / ".meta.json.tmp", json.dumps(job).encode())
    os.rename(final / ".meta.json.tmp", final / "meta.json")
    _fsync(final)
    _fsync(root)
    _prune(root, final, keep)
    return final


def _restore_table(tab: DynamicTable, rows: Arrays, cand: tuple[Any, Any]) -> None:
    ids = rows["ids"]
    n = int(ids.size)
    tab.ids = IdMap(max(1024, 2 * n))
    tab.candidates = IdMap()
    tab.n_rows, tab.free = 0, []
    tab.row_id[:] = _EMPTY
    tab.dirty[:] = False
    tab.n_dirty = 0
    r_np = tab._alloc(n)
    tab.ids.put(ids, r_np)
    r = torch.from_numpy(r_np)
    tab.weight[r] = torch.from_numpy(rows["weight"])
    tab.accum[r] = torch.from_numpy(rows["accum"])
    tab.row_id[r_np] = ids
    tab.row_field[r_np] = rows["field"]
    tab.last_update[r_np] = rows["last_update"]
    tab.freq[r_np] = rows["freq"]
    tab.candidates.put(*cand)
    tab.mark_full()


def _name_key(path: Path | None) -> int:
    """A number that names a checkpoint (exact in float64), for workers to compare."""
    text = path.name if path is not None else ""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=6).digest(), "little")


def _read(path: Path) -> tuple[dict[str, Any], Any]:
    try:
        return json.loads((path / "meta.json").read_text()), np.load(
            path / "tensors.npz", allow_pickle=False
        )
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}; move it away to use the one before") from e


def load_latest(t: Trainer, root: Path) -> Path | None:
    """Restore the job from the newest complete checkpoint under ``root`` (collective);
    None when there is none."""
    comm = t.comm
    found = _complete(root)
    path = found[-1] if found else None
    keys = comm.all_gather(torch.tensor([float(_name_key(path))], dtype=torch.float64))
    if bool((keys != keys[0, 0]).any()):
        raise CheckpointError(
            f"{comm.name}: the workers see different newest checkpoints under {root} (this "
            f"one: {path}): trainer.checkpoint_dir must be one directory that every worker "
            "reads and writes (a shared filesystem across machines)"
        )
    if path is None:
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}; move it away to use the one before") from e
    want = {n: tab.fields for n, tab in t.tables.items()}
    dims = {n: tab.p.dim for n, tab in t.tables.items()}
    if meta.get("format") not in (2, FORMAT) or meta["tables"] != want or meta["dims"] != dims:
        raise CheckpointError(
            f"checkpoint {path} (format {meta.get('format')}) holds tables "
            f"{meta.get('tables')} of dims {meta.get('dims')}; the config gives {want} of "
            f"dims {dims}: use another trainer.checkpoint_dir for a changed model"
        )
    parts = [path] if meta["format"] == 2 else [path / p for p in meta["parts"]]
    same = len(parts) == comm.world
    with t.lock:
        _, z0 = _read(parts[0])
        try:
            t.model.load_state_dict(
                {k[6:]: torch.from_numpy(z0[k]) for k in z0.files if k.startswith("model/")}
            )
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path}: the dense model differs: {e}") from e
        for i, p in enumerate(t.model.parameters()):
            st = t.opt.state[p]
            if f"opt/{i}/sum" in z0.files:
                st["sum"] = torch.from_numpy(z0[f"opt/{i}/sum"].copy()).to(p.device)
            if f"opt/{i}/step" in z0.files:
                st["step"] = torch.from_numpy(z0[f"opt/{i}/step"].copy())
        if same:
            _restore_own(t, *_read(parts[comm.rank]))
        else:
            _rebucket(t, [_read(p) for p in parts], meta)
        offsets = t.offsets  # only the partitions this worker reads in a job of this size
        t.offsets = {
            k: {p: o for p, o in v.items() if p % comm.world == comm.rank}
            for k, v in offsets.items()
        }
        t.model.norm.seen = int(meta["norm_seen"])
        t.step, t.samples = int(meta["step"]), int(meta["samples"])
        t.watermark_ms = int(meta["watermark_ms"])
        t._cut_step = -1
    return path


def _offsets(pm: dict[str, Any]) -> dict[str, dict[int, int]]:
    return {k: {int(p): int(o) for p, o in v.items()} for k, v in pm["offsets"].items()}


def _restore_own(t: Trainer, pm: dict[str, Any], z: Any) -> None:
    """This worker's own part (a job of the same size)."""
    for name, tab in t.tables.items():
        rows = {k: z[f"table/{name}/{k}"] for k in _ROWS}
        _restore_table(tab, rows, (z[f"cand/{name}/ids"], z[f"cand/{name}/counts"]))
        tab._gen.set_state(torch.from_numpy(z[f"rng/{name}/torch"].copy()))
        tab._rng.bit_generator.state = pm["np_rng"][name]
    t.id_xor, t.skipped = int(pm["id_xor"]), int(pm["skipped"])
    t.offsets = _offsets(pm)
    t.local_watermark_ms = int(pm["watermark_ms"])


def _rebucket(t: Trainer, parts: list[tuple[dict[str, Any], Any]], meta: dict[str, Any]) -> None:
    """The rows this worker owns in a job of another size, from every part."""
    comm = t.comm
    for i, (name, tab) in enumerate(t.tables.items()):
        rows: dict[str, list[np.ndarray[Any, Any]]] = {k: [] for k in _ROWS}
        cand: tuple[list[Any], list[Any]] = ([], [])
        for _, z in parts:
            mine = owner_of(z[f"table/{name}/ids"], comm.world) == comm.rank
            for k in _ROWS:
                rows[k].append(z[f"table/{name}/{k}"][mine])
            cids = z[f"cand/{name}/ids"]
            cmine = owner_of(cids, comm.world) == comm.rank
            cand[0].append(cids[cmine])
            cand[1].append(z[f"cand/{name}/counts"][cmine])
        _restore_table(
            tab,
            {k: np.concatenate(v) for k, v in rows.items()},
            (np.concatenate(cand[0]), np.concatenate(cand[1])),
        )
        seed = [int(meta["step"]), comm.world, comm.rank, i]  # fresh, and not another worker's
        tab._rng = np.random.default_rng(seed)
        tab._gen.manual_seed(int(np.random.default_rng(seed).integers(2**62)))
    offsets: dict[str, dict[int, int]] = {}
    for pm, _ in parts:
        for topic, po in _offsets(pm).items():
            offsets.setdefault(topic, {}).update(po)
    t.offsets = offsets
    first = comm.rank == 0  # the job's counters, once
    t.id_xor = int(meta["id_xor"]) if first else 0
    t.skipped = int(meta["skipped"]) if first else 0
    t.local_watermark_ms = int(meta["watermark_ms"])
