"""Atomic checkpoints of a :class:`~trainer.core.Trainer` (npz tensors + JSON, no pickle).

Layout under ``root`` (one directory per checkpoint, renamed into place when complete)::

    root/ckpt-000000001200/meta.json     step, samples, skipped, watermark_ms, offsets,
                                         id_xor, tables {name: [fields]}, rng states
    root/ckpt-000000001200/tensors.npz   "model/<name>", "opt/<i>/{sum,step}",
                                         "table/<name>/{ids,field,weight,accum,
                                                        last_update,freq}",
                                         "cand/<name>/{ids,counts}", "rng/<name>/torch"

``save`` writes a ``.tmp-*`` directory, fsyncs both files, renames it into place (atomic
on one filesystem), fsyncs ``root`` and prunes all but the newest ``keep``. A crash at
any point leaves the previous checkpoint intact. ``load_latest`` restores the newest
complete one (``np.load(allow_pickle=False)``: nothing in it can run code) and marks
the tables so the next cut is a full snapshot: change tracking is not checkpointed, and
the exporter may have published state newer than the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.core import Trainer
from trainer.errors import TrainerError
from trainer.tables import DynamicTable, IdMap

__all__ = ["CheckpointError", "load_latest", "save"]

FORMAT = 2
_EMPTY = np.iinfo(np.int64).min


class CheckpointError(TrainerError):
    """A checkpoint directory cannot be read or written, or does not fit the config."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _table_arrays(name: str, tab: DynamicTable) -> dict[str, np.ndarray[Any, Any]]:
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


def save(t: Trainer, root: Path, keep: int = 3) -> Path:
    """Write a checkpoint of ``t`` (copied under its lock) and prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    with t.lock:
        for k, v in t.model.state_dict().items():
            arrays[f"model/{k}"] = v.detach().numpy().copy()
        for i, p in enumerate(t.model.parameters()):
            st = t.opt.state.get(p, {})
            for k in ("sum", "step"):
                if k in st:
                    arrays[f"opt/{i}/{k}"] = st[k].detach().numpy().copy()
        for name, tab in t.tables.items():
            arrays.update(_table_arrays(name, tab))
        meta = {
            "format": FORMAT,
            "step": t.step,
            "samples": t.samples,
            "skipped": t.skipped,
            "watermark_ms": t.watermark_ms,
            "offsets": {k: {str(p): o for p, o in v.items()} for k, v in t.offsets.items()},
            "id_xor": t.id_xor,
            "tables": {n: tab.fields for n, tab in t.tables.items()},
            "dims": {n: tab.p.dim for n, tab in t.tables.items()},
            "np_rng": {n: tab._rng.bit_generator.state for n, tab in t.tables.items()},
            "norm_seen": t.model.norm.seen,
        }
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    with (tmp / "tensors.npz").open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    with (tmp / "meta.json").open("w") as f:
        f.write(json.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    final = root / f"ckpt-{meta['step']:012d}"
    if final.exists():  # same step (nothing trained since): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(root)
    for old in sorted(root.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def _restore_table(tab: DynamicTable, z: Any, name: str) -> None:
    ids = z[f"table/{name}/ids"]
    n = int(ids.size)
    tab.ids = IdMap(max(1024, 2 * n))
    tab.candidates = IdMap()
    tab.n_rows, tab.free = 0, []
    tab.row_id[:] = _EMPTY
    tab.dirty[:] = False
    tab.n_dirty = 0
    rows = tab._alloc(n)
    tab.ids.put(ids, rows)
    r = torch.from_numpy(rows)
    tab.weight[r] = torch.from_numpy(z[f"table/{name}/weight"])
    tab.accum[r] = torch.from_numpy(z[f"table/{name}/accum"])
    tab.row_id[rows] = ids
    tab.row_field[rows] = z[f"table/{name}/field"]
    tab.last_update[rows] = z[f"table/{name}/last_update"]
    tab.freq[rows] = z[f"table/{name}/freq"]
    tab.candidates.put(z[f"cand/{name}/ids"], z[f"cand/{name}/counts"])
    tab._gen.set_state(torch.from_numpy(z[f"rng/{name}/torch"].copy()))
    tab.mark_full()


def load_latest(t: Trainer, root: Path) -> Path | None:
    """Restore ``t`` from the newest checkpoint under ``root``; None when there is none."""
    found = sorted(root.glob("ckpt-*")) if root.is_dir() else []
    if not found:
        return None
    path = found[-1]
    try:
        meta = json.loads((path / "meta.json").read_text())
        z = np.load(path / "tensors.npz", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {e}; move it away to use the one before") from e
    want = {n: tab.fields for n, tab in t.tables.items()}
    dims = {n: tab.p.dim for n, tab in t.tables.items()}
    if meta.get("format") != FORMAT or meta["tables"] != want or meta["dims"] != dims:
        raise CheckpointError(
            f"checkpoint {path} (format {meta.get('format')}) holds tables "
            f"{meta.get('tables')} of dims {meta.get('dims')}; the config gives {want} of "
            f"dims {dims}: use another trainer.checkpoint_dir for a changed model"
        )
    with t.lock:
        try:
            t.model.load_state_dict(
                {k[6:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("model/")}
            )
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path}: the dense model differs: {e}") from e
        for i, p in enumerate(t.model.parameters()):
            st = t.opt.state[p]
            for k in ("sum", "step"):
                if f"opt/{i}/{k}" in z.files:
                    st[k] = torch.from_numpy(z[f"opt/{i}/{k}"].copy())
        for name, tab in t.tables.items():
            _restore_table(tab, z, name)
            tab._rng.bit_generator.state = meta["np_rng"][name]
        t.model.norm.seen = int(meta["norm_seen"])
        t.step, t.samples = int(meta["step"]), int(meta["samples"])
        t.skipped = int(meta["skipped"])
        t.watermark_ms, t.id_xor = int(meta["watermark_ms"]), int(meta["id_xor"])
        t.offsets = {k: {int(p): int(o) for p, o in v.items()} for k, v in meta["offsets"].items()}
        t._cut_step = -1
    return path
