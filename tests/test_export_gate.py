"""The exporter's safety gate: normal training is never refused; NaN, Inf and scale jumps
are, each with a message that says why; after a refusal the next version is a snapshot."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from exporter.errors import GateRefused
from exporter.exporter import Exporter, list_versions
from exporter.manifest import manifest_key, parse_manifest
from exporter.sdk import DeltaConsumer, InPlaceTables
from exporter.settings import ExporterConfig
from exporter.store import ObjectStore, open_store
from exporter.types import Cut, TableDelta
from fluxrec.config import parse_config
from fluxrec.errors import ConfigError


class Training:
    """Training-like parameter dynamics without torch: row-wise Adagrad on Zipf-distributed
    ids pulling rows towards per-id targets (hot rows grow far beyond the initial scale,
    new ids keep arriving at it), evictions (tombstones), a drifting weight matrix, a bias
    growing from zero and running variance statistics of a heavy-tailed feature."""

    def __init__(self, seed: int, zipf: float = 1.2, vocab: int = 20_000, dim: int = 8) -> None:
        self.rng = np.random.default_rng(seed)
        self.zipf, self.vocab, self.dim = zipf, vocab, dim
        self.weight = np.zeros((vocab, dim), np.float32)
        self.accum = np.zeros(vocab, np.float32)
        self.live = np.zeros(vocab, bool)
        self.dirty = np.zeros(vocab, bool)
        self.evicted: list[int] = []
        self.target = self.rng.standard_normal((vocab, dim)).astype(np.float32)
        self.w = (self.rng.standard_normal((32, 16)) * 0.2).astype(np.float32)
        self.b = np.zeros(16, np.float32)
        self.var = np.ones(4, np.float32)
        self.step = 0

    def train(self, batch: int = 2000) -> None:
        self.step += 1
        r = self.rng
        ids = np.unique(np.minimum(r.zipf(self.zipf, batch) - 1, self.vocab - 1))
        new = ids[~self.live[ids]]
        self.weight[new] = r.standard_normal((len(new), self.dim)) * 0.01  # initial scale
        self.accum[new] = 0
        self.live[new] = True
        noise = r.standard_normal((len(ids), self.dim)).astype(np.float32) * 0.5
        g = self.weight[ids] - self.target[ids] + noise
        self.accum[ids] += (g * g).mean(1)
        self.weight[ids] -= 0.05 * g / np.sqrt(self.accum[ids])[:, None]
        self.dirty[ids] = True
        self.w += r.standard_normal(self.w.shape).astype(np.float32) * 0.002
        self.b += 0.002 + r.standard_normal(16).astype(np.float32) * 0.001
        self.var += (r.lognormal(0, 1, 4).astype(np.float32) - self.var) * max(0.01, 1 / self.step)
        if self.step % 10 == 0:
            cold = np.flatnonzero(self.live & ~self.dirty)[:20]
            self.live[cold] = False
            self.evicted.extend(cold.tolist())

    def rms(self, top: int | None = None) -> float:
        """RMS of the live rows (of the ``top`` hottest ids)."""
        rows = self.weight[: top or self.vocab][self.live[: top or self.vocab]]
        return float(np.sqrt(np.mean(np.square(rows, dtype=np.float64))))

    def cut(self, full: bool) -> Cut:
        sel = np.flatnonzero(self.live if full else self.dirty & self.live)
        tomb = np.array([] if full else sorted(self.evicted), np.int64)
        self.dirty[:] = False
        self.evicted = []
        rows = self.weight[sel].copy()
        return Cut(
            step=self.step,
            samples=self.step * 2000,
            full=full,
            watermark_ms=1_700_000_000_000 + self.step,
            offsets={"fluxrec.samples": {0: self.step}},
            tables={"item_id": TableDelta("item_id", self.dim, sel.astype(np.int64), rows, tomb)},
            dense={"mlp.w": self.w.copy(), "mlp.b": self.b.copy(), "norm.var": self.var.copy()},
            created_ms=1_700_000_000_000 + self.step,
        )


def _with(cut: Cut, table: np.ndarray | None = None, **dense: np.ndarray) -> Cut:
    """``cut`` with other item_id rows and/or dense tensors."""
    tables = cut.tables
    if table is not None:
        t = tables["item_id"]
        tables = {"item_id": TableDelta("item_id", t.dim, t.ids, table, t.tombstones)}
    return dataclasses.replace(cut, tables=tables, dense={**cut.dense, **dense})


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'objects'}")


def _kinds(store: ObjectStore) -> list[str]:
    return [str(parse_manifest(store.get(manifest_key(s)))["kind"]) for s in list_versions(store)]


@pytest.mark.parametrize(("zipf", "every"), [(1.1, 1), (1.2, 5), (1.5, 20)])
def test_training_with_growing_norms_is_never_refused(
    store: ObjectStore, zipf: float, every: int
) -> None:
    t = Training(seed=7, zipf=zipf)
    ex = Exporter(store, ExporterConfig(snapshot_every=6, retain_snapshots=100))
    c = DeltaConsumer(store, InPlaceTables())
    first: tuple[float, float] | None = None
    for _ in range(240):
        t.train()
        if t.step % every == 0:
            ex.publish(t.cut(ex.wants_full))
            first = first or (t.rms(), t.rms(top=100))
    assert ex.stats.refused == 0, ex.stats.refusals
    kinds = _kinds(store)
    assert kinds.count("snapshot") >= 2 and kinds.count("delta") > kinds.count("snapshot")
    assert "delta" in [b for a, b in itertools.pairwise(kinds) if a == "snapshot"]
    # norms grew a lot, one version at a time: the table's, its hot rows' (5.8x and 12x
    # with 5 and 1 steps per version), the bias from zero to past 4 x the floor
    assert first is not None and t.rms() > 1.5 * first[0] and t.rms(top=100) > 2.5 * first[1]
    assert float(np.sqrt(np.mean(t.b**2))) > 4 * 0.1
    c.sync()
    ids, rows = c.backend.rows("item_id")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(ids, np.flatnonzero(t.live))
    np.testing.assert_array_equal(rows, t.weight[t.live])


def test_real_trainer_is_never_refused(store: ObjectStore) -> None:
    """The trainer's own tables, model and running statistics, a cut every batch."""
    from trainer.core import Trainer
    from trainer.synthetic import synthetic_samples

    t = Trainer([("user_id", 8), ("item_id", 8), ("category", 8)], ["price"], mlp=[16])
    ex = Exporter(store, ExporterConfig(snapshot_every=5))
    samples = synthetic_samples(4000, seed=3)
    for k in range(0, len(samples), 100):
        t.train_batch(t.featurize(samples[k : k + 100]))
        cut = t.take_cut(ex.wants_full)
        assert cut is not None
        ex.publish(cut)
    assert ex.stats.refused == 0, ex.stats.refusals
    assert ex.stats.published == 40 and ex.stats.snapshots == 7


def _published(store: ObjectStore, seed: int = 11) -> tuple[Training, Exporter]:
    """A trained model with a snapshot and two deltas published (scales well above the
    floor: item_id rows at RMS ~0.3, the weights at ~0.2)."""
    t = Training(seed=seed)
    ex = Exporter(store, ExporterConfig(snapshot_every=10))
    for _ in range(60):
        t.train()
    for _ in range(3):
        ex.publish(t.cut(ex.wants_full))
        t.train()
    assert _kinds(store) == ["snapshot", "delta", "delta"]
    return t, ex


def test_nan_in_a_row_is_refused_and_next_version_is_a_snapshot(store: ObjectStore) -> None:
    t, ex = _published(store)
    cut = t.cut(False)
    rows = cut.tables["item_id"].values.copy()
    rows[3, 1] = np.nan
    with pytest.raises(GateRefused, match=r"^table item_id: 1 NaN/Inf values in 1 of \d+ rows"):
        ex.publish(_with(cut, rows))
    assert ex.wants_full and list_versions(store) == [0, 1, 2]  # nothing written
    t.train()
    with pytest.raises(GateRefused, match="a full cut is required"):
        ex.publish(t.cut(False))
    doc = ex.publish(t.cut(ex.wants_full))
    assert doc["kind"] == "snapshot" and doc["sequence"] == 3
    assert ex.stats.refused == 2 and ex.stats.refusals[0].startswith("table item_id: 1 NaN")


def test_inf_in_a_dense_tensor_is_refused(store: ObjectStore) -> None:
    t, ex = _published(store)
    b = t.b.copy()
    b[0] = np.inf
    with pytest.raises(GateRefused, match=r"^dense mlp.b: 1 NaN/Inf values in step \d+$"):
        ex.publish(_with(t.cut(False), **{"mlp.b": b}))
    doc = ex.publish(t.cut(ex.wants_full))
    assert doc["kind"] == "snapshot"


def test_a_ten_fold_jump_is_refused_and_stays_refused(store: ObjectStore) -> None:
    t, ex = _published(store)
    cut = t.cut(False)
    rows = cut.tables["item_id"].values * 10
    with pytest.raises(GateRefused) as e:
        ex.publish(_with(cut, rows))
    msg = str(e.value)
    assert msg.startswith("table item_id: RMS ") and f"rows in step {cut.step} vs " in msg
    jump = re.search(r": (\d+\.\d)x > exporter.max_norm_jump 4$", msg)
    assert jump is not None and 9.9 <= float(jump[1]) <= 10.1, msg  # rows at 10x, vs themselves
    assert "as published up to version 2" in msg
    # the reference stays the last published version's: the same scale is refused again,
    # now as a snapshot, while the model is blown up ...
    full = t.cut(True)
    with pytest.raises(GateRefused, match=r"^table item_id: RMS .* > exporter.max_norm_jump 4$"):
        ex.publish(_with(full, full.tables["item_id"].values * 10))
    # ... and the dense tensors are checked the same way
    with pytest.raises(GateRefused, match=r"^dense mlp.w: RMS .* vs 0.2\d* as published"):
        ex.publish(_with(full, **{"mlp.w": t.w * 10}))
    assert list_versions(store) == [0, 1, 2]
    doc = ex.publish(full)  # back to normal: accepted, as a snapshot
    assert doc["kind"] == "snapshot" and ex.stats.refused == 3
    c = DeltaConsumer(store, InPlaceTables())
    c.sync()
    ids, rows = c.backend.rows("item_id")  # type: ignore[attr-defined]
    np.testing.assert_array_equal(rows, t.weight[ids])


def test_growth_from_below_the_floor_and_shrinking_are_not_jumps(store: ObjectStore) -> None:
    t, ex = _published(store)
    cut = t.cut(False)
    b = np.full(16, 0.001, np.float32)  # a tiny bias ...
    ex.publish(_with(cut, **{"mlp.b": b}))
    t.train()
    ex.publish(_with(t.cut(False), **{"mlp.b": b * 300}))  # ... grows 300x, to 0.3 < 4 x 0.1
    t.train()
    cut = t.cut(False)
    ex.publish(_with(cut, cut.tables["item_id"].values * 0.01, **{"mlp.w": t.w * 0}))
    t.train()
    cut = t.cut(False)
    with pytest.raises(GateRefused, match=r"\(exporter.norm_floor 0.1\): 5.0x"):
        ex.publish(_with(cut, **{"mlp.w": np.full_like(t.w, 0.5)}))  # vs the floor: refused
    assert ex.stats.refused == 1


def test_table_without_a_reference_and_tombstone_only_deltas(store: ObjectStore) -> None:
    t, ex = _published(store)
    cut = t.cut(False)
    big = TableDelta("new_field", 2, np.array([1, 2]), np.full((2, 2), 50, np.float32))
    ex.publish(dataclasses.replace(cut, tables={**cut.tables, "new_field": big}))
    t.train()
    cut = t.cut(False)
    gone = TableDelta("new_field", 2, np.empty(0, np.int64), np.empty((0, 2), np.float32), big.ids)
    ex.publish(dataclasses.replace(cut, tables={**cut.tables, "new_field": gone}))
    assert ex.stats.refused == 0


def test_config_rejects_a_factor_of_one_or_less() -> None:
    doc = yaml.safe_load((Path(__file__).parents[1] / "configs" / "local.yaml").read_text())
    assert parse_config(doc).exporter == ExporterConfig()  # the file documents the defaults
    doc["exporter"]["max_norm_jump"] = 1.0
    with pytest.raises(ConfigError, match=r"exporter.max_norm_jump: 1.0 is not a factor above 1"):
        parse_config(doc)
    with pytest.raises(ConfigError, match=r"exporter.norm_floor: -1.0 is not a finite RMS"):
        ExporterConfig(norm_floor=-1.0)
    assert ExporterConfig(max_norm_jump=float("inf")).max_norm_jump == float("inf")


def test_running_statistics_are_checked_for_nan_only(store: ObjectStore) -> None:
    """A normalisation's running mean moves from 0 to the data's scale in one version: no
    jump for an entry the cut names in ``statistics``, a jump for a parameter; NaN in a
    statistic is still refused."""
    t, ex = _published(store)
    t.train()
    big = {"norm.var": np.full(4, 400.0, np.float32)}
    with pytest.raises(GateRefused, match=r"^dense norm.var: RMS 400 "):
        ex.publish(_with(t.cut(ex.wants_full), **big))
    ok = dataclasses.replace(_with(t.cut(ex.wants_full), **big), statistics=frozenset({"norm.var"}))
    ex.publish(ok)
    t.train()
    nan = {"norm.var": np.array([1, np.nan, 1, 1], np.float32)}
    bad = dataclasses.replace(_with(t.cut(False), **nan), statistics=frozenset({"norm.var"}))
    with pytest.raises(GateRefused, match=r"norm\.var: 1 NaN/Inf values"):
        ex.publish(bad)


def test_the_trainer_names_its_buffers_as_statistics() -> None:
    from trainer.core import Trainer
    from trainer.synthetic import synthetic_samples

    t = Trainer([("user_id", 8), ("item_id", 8)], ["price"], mlp=[16])
    t.train_batch(t.featurize(synthetic_samples(100, seed=1)))
    cut = t.take_cut()
    assert cut is not None
    buffers = {n for n, _ in t.model.named_buffers()}
    assert {"norm.mean", "norm.var"} <= buffers
    assert cut.statistics == buffers
    assert not cut.statistics & {n for n, _ in t.model.named_parameters()}
