"""Exporter -> store -> DeltaConsumer: chains, snapshots, retention, gate, hostile input."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from exporter.errors import (
    BadMagic,
    BadSequence,
    BadSignature,
    ChecksumMismatch,
    FormatError,
    GateRefused,
    MissingPayload,
    OversizedHeader,
    Truncated,
)
from exporter.exporter import Exporter, cut_stats, list_versions, merge_stats, write_objects
from exporter.format import Limits, decode_object, encode_table
from exporter.manifest import manifest_key, manifest_objects, table_key
from exporter.sdk import DeltaConsumer, InPlaceTables
from exporter.settings import ExporterConfig
from exporter.store import FileStore, ObjectStore, open_store
from exporter.types import Cut, PartsCut, TableDelta

DIM = 4


class Trainer:
    """A fake trainer with real tables: random upserts and evictions, cuts as the contract."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.rows: dict[int, np.ndarray] = {}
        self.changed: set[int] = set()
        self.evicted: set[int] = set()
        self.step = 0

    def train(self, n: int = 50) -> None:
        self.step += 1
        for i in self.rng.integers(0, 400, n):
            self.rows[int(i)] = self.rng.standard_normal(DIM).astype(np.float32) * 0.1
            self.changed.add(int(i))
            self.evicted.discard(int(i))
        for i in self.rng.choice(sorted(self.rows), size=min(5, len(self.rows)), replace=False):
            del self.rows[int(i)]
            self.changed.discard(int(i))
            self.evicted.add(int(i))

    def cut(self, full: bool) -> Cut:
        keys = sorted(self.rows) if full else sorted(self.changed)
        ids = np.array(keys, np.int64)
        vals = np.array([self.rows[k] for k in keys], np.float32).reshape(-1, DIM)
        tomb = np.array([] if full else sorted(self.evicted), np.int64)
        self.changed.clear()
        self.evicted.clear()
        return Cut(
            step=self.step,
            samples=self.step * 100,
            full=full,
            watermark_ms=1_700_000_000_000 + self.step,
            offsets={"fluxrec.samples": {0: self.step, 1: self.step}},
            tables={"item_id": TableDelta("item_id", DIM, ids, vals, tomb)},
            dense={"mlp.w": np.full((2, 3), self.step, np.float32)},
            created_ms=1_700_000_000_000 + self.step,
        )

    def publish(self, ex: Exporter, n: int = 50, parts: int = 1) -> dict[str, object]:
        """Train a step, then publish the cut the exporter asks for; its manifest. With
        ``parts`` > 1 as the trainer's workers do (``trainer/publish.py``): the rows split
        by owner (id % parts), the dense tensors in part 0, gated on the parts' merged
        statistics, each part written under its own keys, then one manifest (format 2)."""
        self.train(n)
        cut = self.cut(ex.wants_full)
        if parts == 1:
            return ex.publish(cut)
        split = [_part(cut, k, parts) for k in range(parts)]
        meta = _part(cut, -1, parts)
        seq = ex.admit(meta, merge_stats([cut_stats(p) for p in split]))
        entries = [write_objects(ex.store, seq, p, ex.cfg.encoding, k) for k, p in enumerate(split)]
        return ex.publish_parts(PartsCut(seq, meta, entries))

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        keys = sorted(self.rows)
        return np.array(keys, np.int64), np.array([self.rows[k] for k in keys]).reshape(-1, DIM)


def _part(cut: Cut, k: int, parts: int) -> Cut:
    """Part ``k`` of ``cut`` (the rows with id % parts == k; part 0 has the dense tensors);
    k = -1: the version's fields only."""
    tables = {}
    for name, d in cut.tables.items():
        mine, gone = d.ids % parts == k, d.tombstones % parts == k
        tables[name] = TableDelta(name, d.dim, d.ids[mine], d.values[mine], d.tombstones[gone])
    return replace(cut, tables=tables if k >= 0 else {}, dense=cut.dense if k == 0 else {})


def _assert_same(c: DeltaConsumer, t: Trainer) -> None:
    ids, vals = t.table()
    tab = c.state.tables["item_id"]
    np.testing.assert_array_equal(tab.ids, ids)
    np.testing.assert_array_equal(tab.values, vals)
    np.testing.assert_array_equal(c.state.dense["mlp.w"], np.full((2, 3), t.step, np.float32))


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    return open_store(f"file://{tmp_path / 'objects'}")


def _exporter(store: ObjectStore, **kw: object) -> Exporter:
    cfg = ExporterConfig(**{"snapshot_every": 4, "retain_snapshots": 2, **kw})  # type: ignore[arg-type]
    return Exporter(store, cfg)


def follow_pruned_chain(
    store: ObjectStore, seed: int, versions: int = 7
) -> tuple[Trainer, Exporter, DeltaConsumer]:
    """``versions`` versions published (a snapshot every fourth, one retained) and followed
    by a consumer that is checked against the trainer after each."""
    t, ex = Trainer(seed), Exporter(store, ExporterConfig(snapshot_every=3, retain_snapshots=1))
    c = DeltaConsumer(store)
    for _ in range(versions):
        t.publish(ex)
        c.sync()
        _assert_same(c, t)
    return t, ex, c


def test_random_chain_equals_trainer_tables(store: ObjectStore) -> None:
    t, ex = Trainer(1), _exporter(store)
    c = DeltaConsumer(store)
    for _ in range(13):
        t.publish(ex)
        assert c.sync() == 1
        _assert_same(c, t)
    late = DeltaConsumer(store)  # bootstraps from the newest snapshot + deltas
    late.sync()
    assert late.version == c.version == 12
    _assert_same(late, t)
    assert ex.stats.snapshots == 3  # versions 0, 5, 10
    assert list_versions(store)[0] == 5  # retention: two chains kept, 0..4 pruned
    assert c.lag_ms(1_700_000_000_013 + 1000) == 1000


@pytest.mark.parametrize("backend", ["memory", "inplace"])
def test_a_chain_of_two_part_versions_equals_the_trainer_tables(
    store: ObjectStore, backend: str
) -> None:
    t, ex = Trainer(11), _exporter(store)
    c = DeltaConsumer(store, InPlaceTables() if backend == "inplace" else None)
    docs = []
    for _ in range(6):
        doc = t.publish(ex, parts=2)
        docs.append(doc)
        assert doc["format"] == 2 and len(doc["parts"]) == 2
        assert c.sync() == 1
        if backend == "memory":
            _assert_same(c, t)
    ids, vals = t.table()
    if isinstance(c.backend, InPlaceTables):
        got_ids, got_vals = c.backend.rows("item_id")
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_vals, vals)
    late = DeltaConsumer(store)  # bootstraps from a two-part snapshot + two-part deltas
    late.sync()
    assert late.version == 5
    _assert_same(late, t)
    assert any(o.get("tombstones") for d in docs for o in manifest_objects(d))  # deletes too


def test_a_two_part_version_with_a_part_missing_is_not_applied_at_all(
    store: ObjectStore,
) -> None:
    t, ex = Trainer(12), _exporter(store)
    c = DeltaConsumer(store)
    t.publish(ex, parts=2)
    assert c.sync() == 1
    before = (c.state.tables["item_id"].ids.copy(), c.state.tables["item_id"].values.copy())
    doc = t.publish(ex, parts=2)
    store.delete(doc["parts"][1]["objects"][0]["key"])  # part 1's rows of version 1
    assert c.sync() == 0 and c.version == 0  # the whole version refused, not part 0 of it
    assert c.stats.reasons == {"MissingPayload": 1}
    np.testing.assert_array_equal(c.state.tables["item_id"].ids, before[0])
    np.testing.assert_array_equal(c.state.tables["item_id"].values, before[1])


def test_gap_recovers_from_snapshot(store: ObjectStore) -> None:
    t, ex = Trainer(2), _exporter(store, retain_snapshots=1)
    c = DeltaConsumer(store)
    t.train()
    ex.publish(t.cut(True))
    c.sync()
    for _ in range(9):  # the consumer sleeps; versions it needs are pruned meanwhile
        t.publish(ex)
    assert 1 not in list_versions(store)
    c.sync()
    assert c.version == 9 and c.stats.gaps_recovered == 1
    _assert_same(c, t)


def test_prune_removes_payloads_left_without_a_manifest(store: ObjectStore) -> None:
    """A prune cut short between the manifests and the payloads (or a publish cut short
    before its manifest) leaves payloads without a manifest: the next prune removes those
    below the kept range, and nothing at or above it."""
    t, ex = Trainer(4), _exporter(store, snapshot_every=3, retain_snapshots=1)
    for _ in range(5):  # versions 0-4, snapshots 0 and 4: 0-3 pruned
        t.publish(ex)
    store.put("versions/000000000002/tables/item_id.fxd", b"left by a prune cut short")
    store.put("versions/000000000010/tables/item_id.fxd", b"a publish under way")
    for _ in range(4):  # versions 5-8, the snapshot at 8 prunes 4-7 and the orphan of 2
        t.publish(ex)
    seqs = {int(k.split("/")[1]) for k in store.list("versions/")}
    assert seqs == {8, 10}
    assert list_versions(store) == [8]


def test_rollback_pins_a_named_version(store: ObjectStore) -> None:
    t, ex = Trainer(3), _exporter(store, snapshot_every=100)
    snaps = []
    for _ in range(4):
        t.publish(ex)
        snaps.append(t.table())
    c = DeltaConsumer(store)
    c.sync()
    c.rollback(1)
    assert c.version == 1
    np.testing.assert_array_equal(c.state.tables["item_id"].ids, snaps[1][0])
    t.train()
    ex.publish(t.cut(False))
    assert c.sync() == 0 and c.version == 1  # pinned
    c.resume()
    assert c.version == 4
    _assert_same(c, t)


def test_hmac_signature_verified(store: ObjectStore) -> None:
    t = Trainer(5)
    ex = Exporter(store, ExporterConfig(), hmac_key=b"k1")
    t.train()
    ex.publish(t.cut(True))
    assert DeltaConsumer(store, hmac_key=b"k1").sync() == 1
    wrong = DeltaConsumer(store, hmac_key=b"k2")
    assert wrong.sync() == 0 and "BadSignature" in wrong.stats.last_error
    unsigned = open_store(store.url + "-u")
    Exporter(unsigned, ExporterConfig()).publish(t.cut(True))
    c = DeltaConsumer(unsigned, hmac_key=b"k1")
    with pytest.raises(BadSignature):
        c.load_version(0)


# ----------------------------------------------------------------------- hostile input


def _two_versions(store: ObjectStore) -> tuple[Trainer, DeltaConsumer]:
    t, ex = Trainer(6), _exporter(store)
    t.train()
    ex.publish(t.cut(True))
    c = DeltaConsumer(store)
    c.sync()
    t.train()
    ex.publish(t.cut(False))
    return t, c


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[:-10]
    if how == "bitflip":
        b = bytearray(data)
        b[len(b) // 2] ^= 0x10
        return bytes(b)
    if how == "magic":
        return b"NOTFLUXR" + data[8:]
    if how == "header":
        return data[:12] + (10**6).to_bytes(4, "little") + data[16:]
    raise ValueError(how)


@pytest.mark.parametrize(
    ("how", "error"),
    [
        ("truncated", Truncated),
        ("bitflip", ChecksumMismatch),
        ("magic", BadMagic),
        ("header", OversizedHeader),
    ],
)
def test_hostile_object_rejected_and_last_good_served(
    store: ObjectStore, how: str, error: type[Exception]
) -> None:
    _t, c = _two_versions(store)
    key = table_key(1, "item_id")
    bad = _corrupt(store.get(key), how)
    with pytest.raises(error):
        decode_object(bad)
    store.put(key, bad)
    before = c.state
    assert c.sync() == 0
    assert c.version == 0 and c.state is before and c.stats.rejected == 1
    assert c.stats.last_error.startswith(("Truncated", "ChecksumMismatch", "BadMagic", "Oversized"))


def test_wrong_checksum_in_manifest(store: ObjectStore) -> None:
    _t, c = _two_versions(store)
    import json

    m = json.loads(store.get(manifest_key(1)))
    m["objects"][0]["sha256"] = "0" * 64
    store.put(manifest_key(1), json.dumps(m).encode())
    assert c.sync() == 0 and c.version == 0
    assert c.stats.last_error.startswith("ChecksumMismatch")


def test_wrong_sequence_and_missing_payload(store: ObjectStore) -> None:
    _t, c = _two_versions(store)
    v1 = store.get(manifest_key(1))
    store.put(manifest_key(1), store.get(manifest_key(0)))  # a manifest under the wrong key
    assert c.sync() == 0 and c.stats.last_error.startswith("BadSequence")
    with pytest.raises(BadSequence):
        c.load_version(1)
    store.put(manifest_key(1), v1)
    store.delete(table_key(1, "item_id"))
    assert c.sync() == 0 and c.stats.last_error.startswith("MissingPayload")
    with pytest.raises(MissingPayload):
        c.load_version(1)
    assert c.version == 0 and c.stats.rejected == 2


def test_reader_limits_reject_before_decompressing() -> None:
    data, _, _ = encode_table("t", 2, np.arange(1000), np.zeros((1000, 2), np.float32))
    with pytest.raises(FormatError, match="limit"):
        decode_object(data, limits=Limits(max_object_bytes=100))
    with pytest.raises(FormatError, match="raw_bytes"):
        decode_object(data, limits=Limits(max_raw_bytes=100))


def test_atomicity_consumer_polling_during_publication(store: ObjectStore) -> None:
    """A consumer syncing in a tight loop while versions are written only ever holds
    states equal to some published version of the trainer's tables."""
    t, ex = Trainer(9), _exporter(store, snapshot_every=5)
    expected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    snapshots: list[tuple[int, np.ndarray, np.ndarray]] = []
    done = threading.Event()
    c = DeltaConsumer(store)

    def poll() -> None:
        while not done.is_set():
            c.sync()
            if c.version is not None:
                s = c.state  # one reference = one consistent version
                tab = s.tables["item_id"]
                snapshots.append((s.version, tab.ids.copy(), tab.values.copy()))

    th = threading.Thread(target=poll)
    th.start()
    try:
        for _ in range(15):
            t.train(200)
            expected[ex.sequence + 1] = t.table()
            ex.publish(t.cut(ex.wants_full))
    finally:
        done.set()
        th.join()
    assert c.stats.rejected == 0
    assert snapshots
    for version, ids, vals in snapshots:
        np.testing.assert_array_equal(ids, expected[version][0])
        np.testing.assert_array_equal(vals, expected[version][1])


def test_sdk_import_is_light() -> None:
    code = (
        "import sys, exporter.sdk, exporter.format, exporter.manifest;"
        "bad=[m for m in ('torch','pyflink') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("encoding", "tol"), [("f16", 1e-3), ("i8", 0.01)])
def test_compact_encodings_through_a_chain(store: ObjectStore, encoding: str, tol: float) -> None:
    t, ex = Trainer(14), _exporter(store, encoding=encoding)
    c = DeltaConsumer(store)
    for _ in range(6):
        t.publish(ex)
    c.sync()
    ids, vals = t.table()
    tab = c.state.tables["item_id"]
    np.testing.assert_array_equal(tab.ids, ids)
    np.testing.assert_allclose(tab.values, vals, atol=tol)
    assert tab.values.dtype == np.float32


def test_run_loop_asks_for_full_cuts_and_stops(store: ObjectStore) -> None:
    t, ex = Trainer(15), _exporter(store, snapshot_every=2)
    asked: list[bool] = []
    stop = threading.Event()

    def take_cut(full: bool) -> Cut | None:
        asked.append(full)
        if len(asked) >= 6:
            stop.set()
        t.train()
        return t.cut(full)

    ex.run(take_cut, stop, interval_s=0.0)
    assert asked == [True, False, False, True, False, False]
    assert ex.sequence == 5 and ex.stats.snapshots == 2
    c = DeltaConsumer(store)
    c.sync()
    _assert_same(c, t)


def test_in_place_backend_follows_the_chain(store: ObjectStore) -> None:
    from exporter.sdk import InPlaceTables

    t, ex = Trainer(16), _exporter(store, snapshot_every=5)
    backend = InPlaceTables()
    c = DeltaConsumer(store, backend=backend)
    for _ in range(12):
        t.publish(ex, 120)
        c.sync()
        ids, vals = t.table()
        got_ids, got_vals = backend.rows("item_id")
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_vals, vals)
        np.testing.assert_array_equal(backend.lookup("item_id", ids[:7]), vals[:7])
        assert backend.version == ex.sequence
    assert (backend.lookup("item_id", [10**12]) == 0).all()


def test_in_place_backend_lookups_see_whole_versions() -> None:
    """A reader looping over lookups while versions are applied in place only ever sees
    rows of one version: version v writes the value v into every row."""
    from exporter.format import DecodedTable
    from exporter.sdk import InPlaceTables

    backend = InPlaceTables()
    ids = np.arange(0, 20_000, 2, dtype=np.int64)
    done = threading.Event()
    mixed: list[set[float]] = []

    def read() -> None:
        while not done.is_set():
            if backend.version is None:
                continue
            got = set(np.unique(backend.lookup("t", ids[::-1])).tolist())
            if len(got) != 1:
                mixed.append(got)

    th = threading.Thread(target=read)
    th.start()
    try:
        for v in range(30):
            kind = "snapshot" if v == 0 else "delta"
            vals = np.full((len(ids), 4), float(v), np.float32)
            d = DecodedTable("t", 4, "f32", ids, vals)
            backend.apply({"kind": kind, "sequence": v, "watermark_ms": 0}, [d], None)
    finally:
        done.set()
        th.join()
    assert mixed == []


def test_sdk_public_surface_is_pinned() -> None:
    import exporter.sdk

    assert sorted(exporter.sdk.__all__) == [
        "Backend",
        "ConsumerStats",
        "DeltaConsumer",
        "ExporterError",
        "InMemoryTables",
        "InPlaceTables",
        "Limits",
        "RedisTables",
        "Table",
        "TableSet",
        "open_store",
    ]
    for name in exporter.sdk.__all__:
        assert hasattr(exporter.sdk, name)


def test_exporter_continues_after_a_foreign_version(store: ObjectStore) -> None:
    """After a rollback written by another process, the exporter neither overwrites it
    nor publishes a delta on top of it: it needs a full cut and continues after it."""
    t, ex = Trainer(17), _exporter(store, snapshot_every=100)
    for _ in range(3):
        t.publish(ex)
    other = _exporter(store)
    other.publish(t.cut(True), rollback_of=1)  # as `fluxrec deltas rollback` does
    t.train()
    with pytest.raises(GateRefused, match="full cut is required"):
        ex.publish(t.cut(False))
    doc = ex.publish(t.cut(True))
    assert doc["sequence"] == 4 and doc["kind"] == "snapshot"
    assert list_versions(store) == [3, 4]  # two snapshot chains retained: 3 and 4


class _ReadHookStore(FileStore):
    """A real ``file://`` store that runs ``hook`` once, when ``key`` is first read."""

    key, hook = "", None

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        if key == self.key and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return super().get(key, max_bytes)


def test_chain_pruned_while_a_consumer_reads_it(tmp_path: Path) -> None:
    """The writer prunes the chain a consumer is bootstrapping from: the consumer starts
    again from the newer snapshot instead of rejecting anything."""
    store = _ReadHookStore(tmp_path / "objects")
    store.ensure_container()
    t, ex = Trainer(18), _exporter(store, snapshot_every=2, retain_snapshots=1)
    for _ in range(3):
        t.publish(ex)  # 0 snapshot, 1 and 2 deltas
    store.key = table_key(1, "item_id")
    store.hook = lambda: [t.publish(ex) for _ in range(4)]  # 3 and 6 are snapshots
    c = DeltaConsumer(store)
    c.sync()  # reads LATEST (2), version 0, then version 1's table: the hook prunes 0..5
    assert store.hook is None and list_versions(store) == [6]
    assert c.version == 6 and c.stats.rejected == 0
    _assert_same(c, t)
