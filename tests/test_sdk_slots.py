"""``SlotTable`` (the storage of ``InPlaceTables``) against a dict, under random operations."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.sdk._slots import SlotTable

DIM = 3
# small id space: many repeats, updates, re-inserts after deletes and hash collisions
ids_st = st.lists(st.integers(-40, 40) | st.sampled_from([-(2**63), 2**63 - 1, 0]), max_size=60)
ops_st = st.lists(st.tuples(st.sampled_from(["upsert", "delete"]), ids_st), max_size=25)


def _check(t: SlotTable, model: dict[int, np.ndarray]) -> None:
    ids, rows = t.items()
    assert ids.tolist() == sorted(model)
    for i, r in zip(ids.tolist(), rows, strict=True):
        np.testing.assert_array_equal(r, model[i])
    probe = np.array([*model, 10**6, -(10**6)], np.int64)
    got = t.lookup(probe, default=-1.0)
    for i, r in zip(probe.tolist(), got, strict=True):
        np.testing.assert_array_equal(r, model.get(i, np.full(DIM, -1.0, np.float32)))
    assert t.live == len(model)
    # the C read path (exporter/sdk/_probe.c) finds the slots the numpy probe finds
    assert t._slots(probe).tolist() == t._find(probe)[1].tolist()


def test_the_c_read_path_is_built() -> None:
    from exporter.sdk import _slots

    assert _slots._probe is not None  # make venv builds it (python -m fluxrec.native)


@settings(max_examples=150, deadline=None)
@given(ops=ops_st, chunk_rows=st.sampled_from([1, 2, 8, 1024]))
def test_slot_table_matches_a_dict(ops: list[tuple[str, list[int]]], chunk_rows: int) -> None:
    t = SlotTable(DIM, 0, chunk_rows=chunk_rows)
    model: dict[int, np.ndarray] = {}
    for step, (op, keys) in enumerate(ops):
        arr = np.array(keys, np.int64)
        if op == "delete":
            t.delete(arr)
            for k in keys:
                model.pop(k, None)
        else:
            unique = list(dict.fromkeys(keys))  # repeated ids: covered by the next test
            arr = np.array(unique, np.int64)
            rows = np.arange(len(unique) * DIM, dtype=np.float32).reshape(-1, DIM) + step * 1000
            t.upsert(arr, rows)
            model.update({k: rows[i] for i, k in enumerate(unique)})
        _check(t, model)
    assert len(t.index) >= 16 and (t.index >= 0).sum() == len(model)


@settings(max_examples=80, deadline=None)
@given(keys=st.lists(st.integers(0, 20), min_size=1, max_size=40))
def test_repeated_ids_keep_one_row_and_stay_consistent(keys: list[int]) -> None:
    """Invalid input (an id twice in one delta) must not corrupt the index: each id is
    stored once, with one of its rows, and deletes remove it for good."""
    t = SlotTable(DIM, 0, chunk_rows=4)
    t.upsert(np.array(keys[::2], np.int64), np.zeros((len(keys[::2]), DIM), np.float32))
    rows = np.repeat(np.arange(len(keys), dtype=np.float32)[:, None], DIM, axis=1)
    t.upsert(np.array(keys, np.int64), rows)
    ids, got = t.items()
    assert ids.tolist() == sorted(set(keys))
    for i, r in zip(ids.tolist(), got, strict=True):
        candidates = {float(j) for j, k in enumerate(keys) if k == i}
        assert float(r[0]) in candidates
    t.delete(np.array(keys, np.int64))
    assert t.live == 0 and len(t.items()[0]) == 0
    assert (t.lookup(np.array(keys, np.int64), default=7.0) == 7.0).all()


def test_grows_across_chunks_and_rebuilds_without_losing_rows() -> None:
    rng = np.random.default_rng(3)
    t = SlotTable(4, 10, chunk_rows=64)
    model: dict[int, np.ndarray] = {}
    for step in range(30):
        new = rng.choice(5000, 300, replace=False).astype(np.int64)
        rows = rng.standard_normal((300, 4)).astype(np.float32)
        t.upsert(new, rows)
        model.update(zip(new.tolist(), rows, strict=True))
        gone = rng.choice(sorted(model), 100, replace=False)
        t.delete(gone)
        for k in gone.tolist():
            del model[k]
        if step % 10 == 9:
            ids, rows = t.items()
            assert ids.tolist() == sorted(model)
    assert len(t.chunks) > 1 and t.live == len(model)
    keys = sorted(model)
    np.testing.assert_array_equal(t.lookup(np.array(keys), 0.0), np.array([model[k] for k in keys]))
