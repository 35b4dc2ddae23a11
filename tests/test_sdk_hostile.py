"""The consumer never serves an older version without an explicit rollback, and every
hostile object or store entry is a typed, counted rejection (FORMAT.md sections 1, 8)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.errors import ChecksumMismatch, ObjectNotFound, OversizedPayload, UnsafeObject
from exporter.exporter import Exporter
from exporter.manifest import LATEST_KEY, latest_bytes, manifest_key, table_key
from exporter.sdk import DeltaConsumer, InMemoryTables, InPlaceTables
from exporter.settings import ExporterConfig
from exporter.store import FileStore
from exporter.testdata import make_golden
from tests.test_export_chain import Trainer

GOLDEN = Path(make_golden.__file__).parent


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    s = FileStore(tmp_path / "objects")
    s.ensure_container()
    return s


def _corrupt(store: FileStore, key: str) -> None:
    data = bytearray(store.get(key))
    data[20] ^= 0x40
    store.put(key, bytes(data))


class Watcher:
    """Records every version readers can see while ``sync``/``rollback`` run."""

    def __init__(self, version: Callable[[], int | None]) -> None:
        self.version = version
        self.seen: list[int] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _look(self) -> None:
        v = self.version()
        if v is not None and (not self.seen or self.seen[-1] != v):
            self.seen.append(v)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._look()

    def __enter__(self) -> Watcher:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)
        self._look()


def _backends() -> Iterator[tuple[str, Callable[[], InMemoryTables | InPlaceTables]]]:
    yield "memory", InMemoryTables
    yield "inplace", InPlaceTables


def _version_of(be: InMemoryTables | InPlaceTables) -> Callable[[], int | None]:
    if isinstance(be, InPlaceTables):
        return lambda: be.version
    return lambda: None if be.state is None else be.state.version


@pytest.mark.parametrize(("name", "make"), list(_backends()))
def test_corrupt_delta_inside_a_rebuild_keeps_the_served_version(
    store: FileStore, name: str, make: Callable[[], InMemoryTables | InPlaceTables]
) -> None:
    t, ex = Trainer(41), Exporter(store, ExporterConfig(snapshot_every=100))
    for _ in range(3):
        t.publish(ex)
    be = make()
    c = DeltaConsumer(store, be)
    assert c.sync() == 3 and c.version == 2
    for _ in range(3):
        t.publish(ex)  # 3, 4, 5
    store.delete(manifest_key(3))  # a gap: the consumer rebuilds from snapshot 0 ...
    _corrupt(store, table_key(1, "item_id"))  # ... whose chain holds a corrupt delta
    with Watcher(_version_of(be)) as w:
        assert c.sync() == 0
    assert c.version == 2 and w.seen == [2]
    assert c.stats.reasons == {"ChecksumMismatch": 1} and c.stats.gaps_recovered == 1


@pytest.mark.parametrize(("name", "make"), list(_backends()))
def test_gap_rebuild_readers_never_see_an_older_version(
    store: FileStore, name: str, make: Callable[[], InMemoryTables | InPlaceTables]
) -> None:
    t, ex = Trainer(42), Exporter(store, ExporterConfig(snapshot_every=4, retain_snapshots=2))
    for _ in range(4):
        t.publish(ex)
    be = make()
    c = DeltaConsumer(store, be)
    c.sync()
    for _ in range(4):
        t.publish(ex)  # 4, then 5 (a snapshot), 6, 7
    store.delete(manifest_key(4))
    with Watcher(_version_of(be)) as w:
        c.sync()  # rebuilds 5..7 aside, then swaps
    assert c.version == 7 and c.stats.rebuilds == 2
    assert w.seen == sorted(w.seen) and w.seen[0] == 3 and w.seen[-1] == 7


def test_failed_rollback_keeps_the_served_version_and_following(store: FileStore) -> None:
    t, ex = Trainer(43), Exporter(store, ExporterConfig(snapshot_every=100))
    for _ in range(4):
        t.publish(ex)
    c = DeltaConsumer(store)
    c.sync()
    good = c.state
    original = store.get(table_key(1, "item_id"))
    _corrupt(store, table_key(1, "item_id"))
    with pytest.raises(ChecksumMismatch):
        c.rollback(2)
    assert c.version == 3 and c.state is good and c.pinned is None
    assert c.stats.rollbacks == 0 and c.stats.reasons == {"ChecksumMismatch": 1}
    t.publish(ex)
    assert c.sync() == 1 and c.version == 4  # still following
    c.rollback(0)  # an explicit rollback is the one way down: counted
    assert c.version == 0 and c.stats.rollbacks == 1
    assert c.resume() == 0 and c.version == 0  # forward from 0 needs version 1: corrupt
    store.put(table_key(1, "item_id"), original)
    assert c.sync() == 4 and c.version == 4  # repaired: forward again


def test_a_lowered_latest_never_moves_the_consumer_back(store: FileStore) -> None:
    t, ex = Trainer(44), Exporter(store, ExporterConfig(snapshot_every=2))
    for _ in range(5):
        t.publish(ex)
    c = DeltaConsumer(store)
    c.sync()
    assert c.version == 4
    store.put(LATEST_KEY, latest_bytes(1, 0, None))
    assert c.sync() == 0 and c.version == 4
    assert c.stats.stale_latest == 1 and c.stats.rejected == 0


def test_with_hmac_latest_must_be_signed(store: FileStore) -> None:
    t, ex = Trainer(45), Exporter(store, ExporterConfig(), hmac_key=b"k")
    t.publish(ex)
    c = DeltaConsumer(store, hmac_key=b"k")
    assert c.sync() == 1
    t.publish(ex)
    store.put(LATEST_KEY, latest_bytes(1, 0, None))  # unsigned
    assert c.sync() == 0 and c.stats.reasons == {"BadSignature": 1}
    store.put(LATEST_KEY, latest_bytes(1, 0, b"k"))
    assert c.sync() == 1 and c.version == 1


def _deep(raw: bytes) -> bytes:
    return raw[:-1] + b',"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"


def _non_ascii_signature(raw: bytes) -> bytes:
    return raw[:-1] + b',"signature":{"alg":"hmac-sha256-raw","value":"%s"}}' % ("é" * 64).encode()


def _superscript_partition(raw: bytes) -> bytes:
    return raw.replace(b'"fluxrec.samples":{"0"', '"fluxrec.samples":{"²"'.encode())


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_deep, "BadManifest"),  # was a RecursionError
        (_non_ascii_signature, "BadSignature"),  # was a TypeError
        (_superscript_partition, "BadManifest"),  # passed str.isdigit
    ],
)
def test_hostile_manifests_are_typed_and_counted(
    store: FileStore, edit: Callable[[bytes], bytes], reason: str
) -> None:
    t, ex = Trainer(46), Exporter(store, ExporterConfig())
    t.publish(ex)
    c = DeltaConsumer(store)
    c.sync()
    t.publish(ex)
    raw = store.get(manifest_key(1))
    assert edit(raw) != raw
    store.put(manifest_key(1), edit(raw))
    assert c.sync() == 0 and c.version == 0
    assert c.stats.reasons == {reason: 1}


def test_null_dense_shape_through_the_consumer_is_typed(store: FileStore) -> None:
    t, ex = Trainer(47), Exporter(store, ExporterConfig())
    t.publish(ex)
    c = DeltaConsumer(store)
    c.sync()
    t.publish(ex)
    bad = (GOLDEN / "negative" / "dense_null_shape.fxd").read_bytes()
    key = "versions/000000000001/dense.fxd"
    store.put(key, bad)
    assert c.sync() == 0
    assert set(c.stats.reasons) <= {"Truncated", "ChecksumMismatch"}  # the manifest pins it


# ----------------------------------------------------------------------------- file store


def test_file_store_refuses_symlinks_fifos_and_oversized(store: FileStore, tmp_path: Path) -> None:
    store.put("a/ok.bin", b"12345")
    assert store.get("a/ok.bin", 5) == b"12345"
    with pytest.raises(OversizedPayload):
        store.get("a/ok.bin", 4)
    os.symlink("/dev/zero", store.root / "a" / "zero.bin")
    with pytest.raises(UnsafeObject):
        store.get("a/zero.bin")
    os.symlink(store.root / "a", store.root / "link")
    with pytest.raises(UnsafeObject):
        store.get("link/ok.bin")
    os.mkfifo(store.root / "a" / "fifo.bin")
    result: list[BaseException | bytes] = []

    def read_fifo() -> None:
        try:
            result.append(store.get("a/fifo.bin"))
        except BaseException as e:
            result.append(e)

    th = threading.Thread(target=read_fifo, daemon=True)
    th.start()
    th.join(30)
    assert not th.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], UnsafeObject)
    with pytest.raises(ObjectNotFound):
        store.get("a")  # a directory
    with pytest.raises(ObjectNotFound):
        store.get("a/ok.bin/x")


def test_a_symlinked_object_is_a_counted_rejection(store: FileStore, tmp_path: Path) -> None:
    t, ex = Trainer(48), Exporter(store, ExporterConfig())
    t.publish(ex)
    c = DeltaConsumer(store)
    c.sync()
    t.publish(ex)
    path = store.root / table_key(1, "item_id")
    path.unlink()
    os.symlink("/dev/zero", path)
    assert c.sync() == 0 and c.stats.reasons == {"UnsafeObject": 1} and c.version == 0
