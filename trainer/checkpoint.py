"""Atomic checkpoints of a :class:`~trainer.core.Trainer` (npz tensors + JSON, no pickle).

Layout under ``root`` (one directory per checkpoint, renamed into place when complete)::

    root/ckpt-000000001200/meta.json     step, samples, watermark_ms, offsets, id_xor, ...
    root/ckpt-000000001200/tensors.npz   "model/<name>", "opt/<i>/sum", "opt/<i>/step",
                                         "table/<name>/{ids,weight,accum,last_update,freq}",
                                         "cand/<name>/{ids,counts}"

``save`` writes ``.tmp-*`` then ``os.rename`` (atomic on one filesystem) and prunes all but
the newest ``keep``. ``load_latest`` restores the newest complete one; the restored tables
are marked so the next cut is a full snapshot.
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


class CheckpointError(TrainerError):
    """A checkpoint directory cannot be read or written."""


def save(t: Trainer, root: Path, keep: int = 3) -> Path:
    """Write a checkpoint of ``t`` (under its lock) and prune old ones."""
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
            live = np.flatnonzero(tab.row_id[: tab.n_rows] != np.iinfo(np.int64).min)
            r = torch.from_numpy(live)
            arrays[f"table/{name}/ids"] = tab.row_id[live].copy()
            arrays[f"table/{name}/weight"] = tab.weight[r].numpy().copy()
            arrays[f"table/{name}/accum"] = tab.accum[r].numpy().copy()
            arrays[f"table/{name}/last_update"] = tab.last_update[live].copy()
            arrays[f"table/{name}/freq"] = tab.freq[live].copy()
            arrays[f"rng/{name}/torch"] = tab._gen.get_state().numpy().copy()
            ck, cv = tab.candidates.items()
            arrays[f"cand/{name}/ids"], arrays[f"cand/{name}/counts"] = ck, cv
        meta = {
            "version": 1,
            "step": t.step,
            "samples": t.samples,
            "watermark_ms": t.watermark_ms,
            "offsets": {k: {str(p): o for p, o in v.items()} for k, v in t.offsets.items()},
            "id_xor": t.id_xor,
            "tables": sorted(t.tables),
            "np_rng": {n: tab._rng.bit_generator.state for n, tab in t.tables.items()},
        }
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    with (tmp / "tensors.npz").open("wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    (tmp / "meta.json").write_text(json.dumps(meta))
    final = root / f"ckpt-{meta['step']:012d}"
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
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
    tab.row_id[:] = np.iinfo(np.int64).min
    rows = tab._alloc(n)
    tab.ids.put(ids, rows)
    r = torch.from_numpy(rows)
    tab.weight[r] = torch.from_numpy(z[f"table/{name}/weight"])
    tab.accum[r] = torch.from_numpy(z[f"table/{name}/accum"])
    tab.row_id[rows] = ids
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
        raise CheckpointError(f"checkpoint {path}: {e}; delete it to fall back") from e
    if sorted(t.tables) != meta["tables"]:
        raise CheckpointError(
            f"checkpoint {path} has tables {meta['tables']}, config has {sorted(t.tables)}"
        )
    with t.lock:
        t.model.load_state_dict(
            {k[6:]: torch.from_numpy(z[k]) for k in z.files if k.startswith("model/")}
        )
        for i, p in enumerate(t.model.parameters()):
            st = t.opt.state[p]
            for k in ("sum", "step"):
                if f"opt/{i}/{k}" in z.files:
                    st[k] = torch.from_numpy(z[f"opt/{i}/{k}"].copy())
        for name, tab in t.tables.items():
            _restore_table(tab, z, name)
            tab._rng.bit_generator.state = meta["np_rng"][name]
        t.step, t.samples = int(meta["step"]), int(meta["samples"])
        t.watermark_ms, t.id_xor = int(meta["watermark_ms"]), int(meta["id_xor"])
        t.offsets = {k: {int(p): int(o) for p, o in v.items()} for k, v in meta["offsets"].items()}
    return path
