"""Unit tests of the trainer's dynamic tables, admission, eviction and change tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporter.types import Cut, TableDelta
from featurize.hashing import stable_hash, stable_hash_many
from trainer.errors import TableError
from trainer.sparse import FusedLookup, take_cut
from trainer.tables import DynamicTable, IdMap, TableParams


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


def train_on(t: DynamicTable, batch: np.ndarray, now: int = 0) -> FusedLookup:
    """One sample per id of a single-field table; loss = sum of the pooled values."""
    lk = FusedLookup(t, [(batch, None)], batch.size, now=now)
    lk.pooled().sum().backward()
    lk.step()
    return lk


def delta(t: DynamicTable) -> tuple[TableDelta, bool]:
    """The only field's delta of a single-field table."""
    deltas, full = t.take_delta()
    (d,) = deltas.values()
    return d, full


def test_idmap_matches_dict_with_collisions_growth_and_deletes() -> None:
    rng = np.random.default_rng(1)
    m = IdMap(16)
    ref: dict[int, int] = {}
    for _ in range(30):
        k = np.unique(rng.integers(-(2**62), 2**62, 300))
        k = np.concatenate([k, np.arange(50, dtype=np.int64)])  # dense keys collide often
        k = np.unique(k)
        v = rng.integers(0, 1000, k.size)
        m.put(k, v)
        ref.update(zip(k.tolist(), v.tolist(), strict=True))
        gone = k[: k.size // 3]
        m.delete(gone)
        for g in gone.tolist():
            ref.pop(g, None)
    probe = np.array([*ref, 7_777_777_777, -5], dtype=np.int64)
    got = m.get(probe)
    want = [ref.get(p, -1) for p in probe.tolist()]
    assert got.tolist() == want
    assert m.size == len(ref)


def test_idmap_rejects_reserved_keys() -> None:
    with pytest.raises(TableError):
        IdMap().put(np.array([np.iinfo(np.int64).min], dtype=np.int64), ids(1))


def test_stable_hash_is_fixed_and_field_scoped() -> None:
    assert stable_hash("item_id", "i-9") == stable_hash("item_id", "i-9")
    assert stable_hash("item_id", "7") != stable_hash("user_id", "7")
    assert stable_hash_many("f", ["a", "b"]).tolist() == [
        stable_hash("f", "a"),
        stable_hash("f", "b"),
    ]
    # pinned value: changing the hash would silently re-key every deployed table
    assert stable_hash("item_id", "i-9") == int.from_bytes(
        __import__("hashlib").blake2b(b"item_id\x1fi-9", digest_size=8).digest(),
        "little",
        signed=True,
    )


def test_ids_under_admission_threshold_never_get_rows() -> None:
    t = DynamicTable("f", TableParams(dim=4, admit_count=3))
    assert (t.lookup(ids(1, 2)) == -1).all()
    assert (t.lookup(ids(1)) == -1).all()
    rows = t.lookup(ids(1, 2))  # id 1 seen in 3 batches, id 2 in 2
    assert rows[0] >= 0 and rows[1] == -1
    assert len(t) == 1 and t.rejected == 4
    d, full = delta(t)
    assert full and d.ids.tolist() == [1]
    # not-admitted ids read zeros, get no row and no update
    lk = train_on(t, ids(99, 99))
    assert lk.pooled().abs().sum().item() == 0.0
    assert len(t) == 1
    d, _ = delta(t)
    assert d.ids.size == 0  # nothing changed
    # a batch counts an id once, however often it occurs: two more batches admit 99
    train_on(t, ids(99, 99, 99))
    assert len(t) == 1
    train_on(t, ids(99))
    assert t.lookup(ids(99), train=False)[0] >= 0
    d, _ = delta(t)
    assert d.ids.tolist() == [99]


def test_probabilistic_admission_admits_about_p() -> None:
    t = DynamicTable("f", TableParams(dim=2, admit_prob=0.25), seed=3)
    t.lookup(np.arange(4000, dtype=np.int64))
    assert 800 < len(t) < 1200  # binomial(4000, .25): sd ~ 27


def test_cut_contains_exactly_the_changed_rows() -> None:
    t = DynamicTable("f", TableParams(dim=4))
    t.lookup(ids(10, 20, 30, 40))
    first, full = delta(t)
    assert full and sorted(first.ids.tolist()) == [10, 20, 30, 40]
    before = {int(i): v.copy() for i, v in zip(first.ids, first.values, strict=True)}
    train_on(t, ids(20, 30, 20))  # train on 20 and 30 only
    d, full = delta(t)
    assert not full
    assert sorted(d.ids.tolist()) == [20, 30]
    for i, v in zip(d.ids.tolist(), d.values, strict=True):
        assert not np.allclose(v, before[i])
        assert np.array_equal(v, t.gather(t.lookup(ids(i), train=False))[0].numpy())
    # the unchanged rows still hold their old values
    untouched = t.gather(t.lookup(ids(10, 40), train=False)).numpy()
    assert np.allclose(untouched, np.stack([before[10], before[40]]))
    empty, _ = delta(t)
    assert empty.ids.size == 0 and empty.tombstones.size == 0


def test_a_zero_gradient_changes_nothing_and_is_not_in_the_cut() -> None:
    t = DynamicTable("f", TableParams(dim=2))
    rows = t.lookup(ids(1, 2))
    delta(t)
    t.apply_adagrad(rows, torch.tensor([[0.0, 0.0], [0.5, 0.0]]))
    d, _ = delta(t)
    assert d.ids.tolist() == [2]


def test_eviction_by_idle_time_and_lfu_produces_tombstones() -> None:
    t = DynamicTable("f", TableParams(dim=2, max_idle=10, max_rows=2))
    t.lookup(ids(1, 2, 3), now=0)
    for _ in range(3):
        t.lookup(ids(2, 3), now=5)
    delta(t)
    gone = t.evict(now=5)  # 3 live rows > max_rows=2: id 1 is least used
    assert gone.tolist() == [1]
    train_on(t, ids(3), now=12)
    gone = t.evict(now=20)  # id 2 last updated at 0 (admitted), idle 20 > 10
    assert gone.tolist() == [2]
    d, full = delta(t)
    assert not full
    assert sorted(d.tombstones.tolist()) == [1, 2]
    assert d.ids.tolist() == [3]
    assert (t.lookup(ids(1, 2), train=False) == -1).all()
    # a readmitted id is live again: a row, not a tombstone
    t.lookup(ids(1), now=20)
    t.evict(now=20)
    d2, _ = delta(t)
    assert 1 in d2.ids.tolist() and 1 not in d2.tombstones.tolist()
    # evicted again before the next cut: a tombstone once, no row
    t.evict(now=100)
    d3, _ = delta(t)
    assert sorted(d3.tombstones.tolist()) == [1, 3] and d3.ids.size == 0


def test_tracking_overflow_makes_the_next_cut_full() -> None:
    t = DynamicTable("f", TableParams(dim=2, max_tracked=5))
    t.lookup(np.arange(3, dtype=np.int64))
    delta(t)
    t.lookup(np.arange(3, 10, dtype=np.int64))  # 7 new changed rows > 5
    assert t.overflow
    d, full = delta(t)
    assert full and sorted(d.ids.tolist()) == list(range(10))
    _, full = delta(t)
    assert not full
    # tombstones count against the bound too
    t2 = DynamicTable("g", TableParams(dim=2, max_tracked=3, max_rows=1))
    t2.lookup(np.arange(6, dtype=np.int64))
    delta(t2)
    t2.evict(now=0)  # 5 tombstones > 3
    assert t2.overflow and t2.n_tombstones == 0  # none kept: the next cut is a snapshot
    d, full = delta(t2)
    assert full and d.ids.size == 1 and d.tombstones.size == 0


def test_rows_are_reused_after_eviction_and_table_grows() -> None:
    t = DynamicTable("f", TableParams(dim=3, max_rows=1500))
    t.lookup(np.arange(3000, dtype=np.int64))
    assert len(t) == 3000 and t.weight.shape[0] >= 3000
    t.evict(now=0)
    assert len(t) == 1500
    t.lookup(np.arange(5000, 6000, dtype=np.int64))
    assert t.n_rows == 3000  # the 1000 new ids took freed rows
    assert t.bytes_per_row() > 3 * 4


def test_idmap_churn_does_not_grow_the_map() -> None:
    m = IdMap(1024)
    for k in range(200):  # insert and delete 100 fresh keys each round
        batch = np.arange(k * 100, (k + 1) * 100, dtype=np.int64)
        m.put(batch, batch)
        m.delete(batch)
    assert m.size == 0 and m.capacity <= 1024


def test_adagrad_matches_reference_formula() -> None:
    p = TableParams(dim=2, lr=0.1, adagrad_init=0.0)
    t = DynamicTable("f", p)
    rows = t.lookup(ids(5))
    w0 = t.weight[rows[0]].clone()
    g = torch.tensor([[0.3, -0.4]])
    t.apply_adagrad(rows, g)
    acc = (0.09 + 0.16) / 2
    assert torch.allclose(t.weight[rows[0]], w0 - 0.1 * g[0] / (acc**0.5 + p.adagrad_eps))
    assert t.accum[rows[0]].item() == pytest.approx(acc)


def test_multi_valued_pooling_is_a_mean() -> None:
    t = DynamicTable("f", TableParams(dim=2))
    lk = FusedLookup(t, [(ids(1, 2, 1), np.array([0, 0, 2], dtype=np.int64))], 3)
    out = lk.pooled()[:, 0]
    e = t.gather(t.lookup(ids(1, 2), train=False))
    assert torch.allclose(out[0], (e[0] + e[1]) / 2)
    assert out[1].abs().sum().item() == 0.0
    assert torch.allclose(out[2], e[0])


def _cut(tables: dict[str, DynamicTable], step: int, full: bool = False) -> Cut:
    lin = torch.nn.Linear(2, 1)
    return take_cut(
        tables,
        dict(lin.named_parameters()),
        full=full,
        step=step,
        samples=4 * step,
        watermark_ms=9,
        offsets={"s": {0: step}},
    )


def test_take_cut_is_full_for_every_table_when_one_overflows() -> None:
    a = DynamicTable("a", TableParams(dim=2))
    b = DynamicTable("b", TableParams(dim=3, max_tracked=1))
    a.lookup(ids(1))
    b.lookup(ids(1))
    cut = _cut({"a": a, "b": b}, 1)
    assert cut.full and cut.offsets == {"s": {0: 1}}
    a.lookup(ids(2))
    cut = _cut({"a": a, "b": b}, 2)
    assert not cut.full and cut.tables["a"].ids.tolist() == [2] and cut.tables["b"].ids.size == 0
    b.lookup(ids(2, 3))
    cut = _cut({"a": a, "b": b}, 3)
    assert cut.full and sorted(cut.tables["a"].ids.tolist()) == [1, 2]
    assert cut.dense["weight"].shape == (1, 2)
    cut = _cut({"a": a, "b": b}, 4, full=True)  # asked for: every live row
    assert cut.full and sorted(cut.tables["b"].ids.tolist()) == [1, 2, 3]


def test_fused_lookup_matches_per_field_pooling() -> None:
    t = DynamicTable("shared", TableParams(dim=3))
    a = ids(1, 2, 3)  # field a: one id per sample
    c, seg = ids(10, 11, 10), np.array([0, 0, 2], dtype=np.int64)  # field c: jagged
    single = FusedLookup(t, [(a, None), (ids(20, 21, 22), None)], 3).pooled()
    e = t.gather(t.lookup(ids(1, 2, 3, 20, 21, 22), train=False))
    assert torch.allclose(single[:, 0], e[:3]) and torch.allclose(single[:, 1], e[3:])
    lk = FusedLookup(t, [(a, None), (c, seg)], 3)
    out = lk.pooled()
    e10, e11 = t.gather(t.lookup(ids(10, 11), train=False))
    assert torch.allclose(out[0, 1], (e10 + e11) / 2) and out[1, 1].abs().sum() == 0
    assert torch.allclose(out[:, 0], e[:3])
    t.take_delta()
    out[2].sum().backward()  # sample 2 uses ids 3 and 10 only
    lk.step()
    d, _ = delta(t)
    assert sorted(d.ids.tolist()) == [3, 10]


def test_a_shared_table_cuts_and_evicts_per_field() -> None:
    t = DynamicTable("shared", TableParams(dim=2, max_rows=2), fields=["user", "item"])
    # user ids 1..3 (jagged), item ids 100..101; distinct keys, as hashing makes them
    users, seg = ids(1, 2, 3, 1), np.array([0, 0, 1, 1], dtype=np.int64)
    items = ids(100, 101)
    lk = FusedLookup(t, [(users, seg), (items, None)], 2, field_index=[0, 1])
    deltas, full = t.take_delta()
    assert full and set(deltas) == {"user", "item"}
    assert sorted(deltas["user"].ids.tolist()) == [1, 2, 3]
    assert sorted(deltas["item"].ids.tolist()) == [100, 101]
    assert t.rows_per_field() == {"user": 3, "item": 2}
    lk.pooled()[:, 1].sum().backward()  # only the item field has a gradient
    lk.step()
    deltas, full = t.take_delta()
    assert not full and deltas["user"].ids.size == 0
    assert sorted(deltas["item"].ids.tolist()) == [100, 101]
    for _ in range(2):
        t.lookup(ids(1, 3))  # user 2 is the least used user
    gone = t.evict(now=0)  # users 3 > max_rows 2; items 2 <= 2
    assert gone.tolist() == [2]
    deltas, _ = t.take_delta()
    assert deltas["user"].tombstones.tolist() == [2]
    assert deltas["item"].tombstones.size == 0
    with pytest.raises(TableError):
        DynamicTable("x", TableParams(), fields=["a", "a"])
