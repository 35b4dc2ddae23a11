"""Unit tests of the trainer's dynamic tables, admission, eviction and change tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.errors import TableError
from trainer.hashing import stable_hash, stable_hash_many
from trainer.sparse import SparseLookup, take_cut
from trainer.tables import DynamicTable, IdMap, TableParams


def ids(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


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
    rows = t.lookup(ids(1, 2))  # id 1 seen 3 times, id 2 twice
    assert rows[0] >= 0 and rows[1] == -1
    assert len(t) == 1 and t.rejected == 4
    delta, full = t.take_delta()
    assert full and delta.ids.tolist() == [1]
    # not-admitted ids read zeros and are not updated
    lk = SparseLookup(t, ids(99, 99), None, 2)
    assert lk.pooled().abs().sum().item() == 0.0
    lk.pooled().sum().backward()
    lk.step()
    assert len(t) == 1  # id 99 (seen once: per-batch dedup counts occurrences once)


def test_probabilistic_admission_admits_about_p() -> None:
    t = DynamicTable("f", TableParams(dim=2, admit_prob=0.25), seed=3)
    t.lookup(np.arange(4000, dtype=np.int64))
    assert 800 < len(t) < 1200  # binomial(4000, .25): sd ~ 27


def test_cut_contains_exactly_the_changed_rows() -> None:
    t = DynamicTable("f", TableParams(dim=4))
    t.lookup(ids(10, 20, 30, 40))
    first, full = t.take_delta()
    assert full and sorted(first.ids.tolist()) == [10, 20, 30, 40]
    before = {int(i): v.copy() for i, v in zip(first.ids, first.values, strict=True)}
    # train on 20 and 30 only
    lk = SparseLookup(t, ids(20, 30, 20), None, 3)
    lk.pooled().sum().backward()
    lk.step()
    delta, full = t.take_delta()
    assert not full
    assert sorted(delta.ids.tolist()) == [20, 30]
    for i, v in zip(delta.ids.tolist(), delta.values, strict=True):
        assert not np.allclose(v, before[i])
    # the unchanged rows still hold their old values
    untouched = t.gather(t.lookup(ids(10, 40), train=False)).numpy()
    assert np.allclose(untouched, np.stack([before[10], before[40]]))
    empty, _ = t.take_delta()
    assert empty.ids.size == 0 and empty.tombstones.size == 0


def test_eviction_by_idle_time_and_lfu_produces_tombstones() -> None:
    t = DynamicTable("f", TableParams(dim=2, max_idle=10, max_rows=2))
    t.lookup(ids(1, 2, 3), now=0)
    for _ in range(3):
        t.lookup(ids(2, 3), now=5)
    t.take_delta()
    gone = t.evict(now=5)  # 3 live rows > max_rows=2: id 1 is least used
    assert gone.tolist() == [1]
    lk = SparseLookup(t, ids(3), None, 1, now=12)
    lk.pooled().sum().backward()
    lk.step()
    gone = t.evict(now=20)  # id 2 last updated at 0 (admitted), idle 20 > 10
    assert gone.tolist() == [2]
    delta, full = t.take_delta()
    assert not full
    assert sorted(delta.tombstones.tolist()) == [1, 2]
    assert delta.ids.tolist() == [3]
    assert (t.lookup(ids(1, 2), train=False) == -1).all()
    # a readmitted id is live again: a row, not a tombstone
    t.lookup(ids(1), now=20)
    t.evict(now=20)
    d2, _ = t.take_delta()
    assert 1 in d2.ids.tolist() and 1 not in d2.tombstones.tolist()


def test_tracking_overflow_makes_the_next_cut_full() -> None:
    t = DynamicTable("f", TableParams(dim=2, max_tracked=5))
    t.lookup(np.arange(3, dtype=np.int64))
    t.take_delta()
    t.lookup(np.arange(3, 10, dtype=np.int64))  # 7 new changed rows > 5
    delta, full = t.take_delta()
    assert full and sorted(delta.ids.tolist()) == list(range(10))
    _, full = t.take_delta()
    assert not full


def test_rows_are_reused_after_eviction_and_table_grows() -> None:
    t = DynamicTable("f", TableParams(dim=3, max_rows=1500))
    t.lookup(np.arange(3000, dtype=np.int64))
    assert len(t) == 3000 and t.weight.shape[0] >= 3000
    t.evict(now=0)
    assert len(t) == 1500
    t.lookup(np.arange(5000, 6000, dtype=np.int64))
    assert t.n_rows == 3000  # the 1000 new ids took freed rows
    assert t.bytes_per_row() > 3 * 4


def test_adagrad_matches_reference_formula() -> None:
    p = TableParams(dim=2, lr=0.1, adagrad_init=0.0)
    t = DynamicTable("f", p)
    rows = t.lookup(ids(5))
    w0 = t.weight[rows[0]].clone()
    g = torch.tensor([[0.3, -0.4]])
    t.apply_adagrad(rows, g)
    acc = (0.09 + 0.16) / 2
    assert torch.allclose(t.weight[rows[0]], w0 - 0.1 * g[0] / (acc**0.5 + p.adagrad_eps))


def test_multi_valued_pooling_is_a_mean() -> None:
    t = DynamicTable("f", TableParams(dim=2))
    lk = SparseLookup(t, ids(1, 2, 1), np.array([0, 0, 2], dtype=np.int64), 3)
    out = lk.pooled()
    e = t.gather(t.lookup(ids(1, 2), train=False))
    assert torch.allclose(out[0], (e[0] + e[1]) / 2)
    assert out[1].abs().sum().item() == 0.0
    assert torch.allclose(out[2], e[0])


def test_take_cut_is_full_for_every_table_when_one_overflows() -> None:
    a = DynamicTable("a", TableParams(dim=2))
    b = DynamicTable("b", TableParams(dim=3, max_tracked=1))
    a.lookup(ids(1))
    b.lookup(ids(1))
    lin = torch.nn.Linear(2, 1)
    cut = take_cut(
        {"a": a, "b": b},
        dict(lin.named_parameters()),
        step=1,
        samples=4,
        watermark_ms=9,
        offsets={"s": {0: 3}},
    )
    assert cut.full and cut.offsets == {"s": {0: 3}}
    a.lookup(ids(2))
    cut = take_cut(
        {"a": a, "b": b},
        dict(lin.named_parameters()),
        step=2,
        samples=8,
        watermark_ms=9,
        offsets={"s": {0: 5}},
    )
    assert not cut.full and cut.tables["a"].ids.tolist() == [2] and cut.tables["b"].ids.size == 0
    b.lookup(ids(2, 3))
    cut = take_cut(
        {"a": a, "b": b},
        dict(lin.named_parameters()),
        step=3,
        samples=9,
        watermark_ms=9,
        offsets={"s": {0: 6}},
    )
    assert cut.full and sorted(cut.tables["a"].ids.tolist()) == [1, 2]
    assert cut.dense["weight"].shape == (1, 2)


def test_fused_lookup_matches_per_field_pooling() -> None:
    from trainer.sparse import FusedLookup

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
    delta, _ = t.take_delta()
    assert sorted(delta.ids.tolist()) == [3, 10]
