"""The pipelined step (backward and updates on a worker thread) against the sequential one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporter.types import Cut
from trainer.core import SparseField, Trainer, featurize
from trainer.errors import TrainerError
from trainer.synthetic import synthetic_samples
from trainer.tables import TableParams

# two tables (hashed fields of dim 8, and a raw-id field of dim 4 with projection),
# a multi-valued field, admission by count and probability, eviction every 3 steps
FIELDS = [
    SparseField("user_id", 8),
    SparseField("item_id", 8),
    SparseField("category", 8),
    SparseField("day", 4, raw=True),
]
PARAMS = TableParams(admit_count=2, admit_prob=0.9, max_rows=60, max_idle=40_000)
Arrays = dict[str, tuple[np.ndarray, ...]]


def _samples(n: int, seed: int) -> list[dict[str, Any]]:
    out = synthetic_samples(n, seed=seed, users=300, items=150)
    for k, s in enumerate(out):
        s["features"]["sparse"]["day"] = [str(k % 7)]
    return out


def _trainer(pipeline: bool, **kw: Any) -> Trainer:
    return Trainer(
        FIELDS, ["price"], mlp=[16], table=PARAMS, evict_every=3, pipeline=pipeline, **kw
    )


def _cut_arrays(cut: Cut | None) -> Arrays:
    assert cut is not None
    out: Arrays = {}
    for name, d in cut.tables.items():
        order = np.argsort(d.ids)
        out[name] = (d.ids[order], d.values[order], np.sort(d.tombstones))
    for name, v in cut.dense.items():
        out["dense/" + name] = (v,)
    return out


def _assert_same(a: Arrays, b: Arrays) -> None:
    assert a.keys() == b.keys()
    for k, xs in a.items():
        for x, y in zip(xs, b[k], strict=True):
            assert x.shape == y.shape and np.allclose(x, y, atol=1e-6), k


def test_pipelined_steps_equal_sequential_steps() -> None:
    samples = _samples(1400, seed=5)
    names = [f.name for f in FIELDS]
    seq, pipe = _trainer(False), _trainer(True)
    for k in range(0, 1200, 100):
        batch = featurize(samples[k : k + 100], names, ["price"])
        assert seq.train_batch(batch) == pytest.approx(pipe.train_batch(batch), abs=1e-6)
        if k % 400 == 300:  # cuts between steps: change tracking and tombstones agree
            _assert_same(_cut_arrays(seq.take_cut()), _cut_arrays(pipe.take_cut()))
    assert pipe.step == seq.step == 12
    assert sum(t.evicted for t in pipe.tables.values()) > 0  # eviction steps were run
    assert pipe.memory() == seq.memory()
    held = featurize(samples[1300:1400], names, ["price"])
    assert np.allclose(seq.score(held), pipe.score(held), atol=1e-6)
    _assert_same(_cut_arrays(seq.take_cut(full=True)), _cut_arrays(pipe.take_cut(full=True)))
    for (ka, va), (kb, vb) in zip(
        seq.dense_state().items(), pipe.dense_state().items(), strict=True
    ):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6)


def test_a_failed_update_surfaces_at_the_next_call() -> None:
    samples = _samples(300, seed=6)
    t = _trainer(True)
    t.train_samples(samples[:100])
    t.sync()

    def broken(*_: Any, **__: Any) -> None:
        raise RuntimeError("boom")

    t.opt.step = broken  # type: ignore[method-assign]
    t.train_samples(samples[100:200])  # returns: its update fails on the worker
    with pytest.raises(TrainerError, match="boom"):
        t.train_samples(samples[200:300])
    with pytest.raises(TrainerError, match="boom"):  # and stays failed
        t.take_cut()
    # the rows admitted by the failing call were still given their values
    for tab in t.tables.values():
        live = tab.row_id[: tab.n_rows] != np.iinfo(np.int64).min
        assert int(live.sum()) == len(tab)


def test_checkpoint_restores_tables_beyond_the_initial_capacity(tmp_path: Path) -> None:
    from trainer.checkpoint import load_latest, save

    samples = synthetic_samples(3000, seed=7)
    for k, rec in enumerate(samples):  # a new user every sample: 3000 rows and more
        rec["features"]["sparse"]["user_id"] = [f"u-{k}"]
    a = Trainer([("user_id", 4), ("item_id", 4)], ["price"], mlp=[8], pipeline=True)
    for k in range(0, 3000, 500):
        a.train_samples(samples[k : k + 500])
    assert len(a.tables["shared_d4"]) > 2048  # more rows than a fresh table holds
    save(a, tmp_path)
    b = Trainer([("user_id", 4), ("item_id", 4)], ["price"], mlp=[8], pipeline=True)
    load_latest(b, tmp_path)
    _assert_same(_cut_arrays(a.take_cut(full=True)), _cut_arrays(b.take_cut(full=True)))
