"""Publication order and failures: payloads, then the manifest, then LATEST.json; a store
that fails part-way never shows readers a partial version, and the exporter recovers."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.errors import GateRefused, StoreUnavailable
from exporter.exporter import Exporter, list_versions
from exporter.manifest import LATEST_KEY, manifest_key, table_key
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import FileStore
from tests.test_export_chain import Trainer, _assert_same


class FlakyStore(FileStore):
    """A real ``file://`` store that records each completed write and, while ``fail`` says
    so for a key, fails that write the way a store outage does."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ensure_container()
        self.writes: list[str] = []
        self.fail: Callable[[str], bool] = lambda key: False

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Callable[[Any], object]]:
        if self.fail(key):
            raise StoreUnavailable(f"{self.url}: put {key} failed 5 times: ConnectionError")
        with super().writer(key) as write:
            yield write
        self.writes.append(key)


@pytest.fixture
def store(tmp_path: Path) -> FlakyStore:
    return FlakyStore(tmp_path / "objects")


def test_payloads_then_manifest_then_latest(store: FlakyStore) -> None:
    t, ex = Trainer(50), Exporter(store, ExporterConfig(snapshot_every=2))
    for _ in range(4):
        t.train()
        before = len(store.writes)
        doc = ex.publish(t.cut(ex.wants_full))
        seq = doc["sequence"]
        writes = store.writes[before:]
        payloads = sorted(o["key"] for o in doc["objects"])
        assert sorted(writes[:-2]) == payloads and len(payloads) == 2  # table + dense
        assert writes[-2:] == [manifest_key(seq), LATEST_KEY]


def _following(store: FlakyStore, seed: int) -> tuple[Trainer, Exporter, DeltaConsumer]:
    """Version 0 published and applied by a consumer."""
    t, ex = Trainer(seed), Exporter(store, ExporterConfig(snapshot_every=100))
    t.publish(ex)
    c = DeltaConsumer(store)
    assert c.sync() == 1
    return t, ex, c


@pytest.mark.parametrize("failing", ["payload", "manifest"])
def test_failure_before_the_manifest_is_invisible_and_needs_a_full_cut(
    store: FlakyStore, failing: str
) -> None:
    t, ex, c = _following(store, 51)
    key = table_key(1, "item_id") if failing == "payload" else manifest_key(1)
    store.fail = lambda k: k == key
    t.train()
    with pytest.raises(StoreUnavailable):
        ex.publish(t.cut(False))  # the trainer has already forgotten these changes
    assert ex.stats.failed == 1 and ex.wants_full and ex.sequence == 0
    assert c.sync() == 0 and c.version == 0 and c.stats.rejected == 0
    assert list_versions(store) == [0]
    store.fail = lambda k: False
    t.train()
    with pytest.raises(GateRefused, match="full cut is required"):
        ex.publish(t.cut(False))
    doc = ex.publish(t.cut(True))
    assert (doc["sequence"], doc["kind"]) == (1, "snapshot")
    assert c.sync() == 1
    _assert_same(c, t)


def test_failure_of_latest_keeps_the_version_and_the_next_one_shows_it(
    store: FlakyStore,
) -> None:
    t, ex, c = _following(store, 52)
    store.fail = lambda k: k == LATEST_KEY
    t.train()
    with pytest.raises(StoreUnavailable):
        ex.publish(t.cut(False))
    assert ex.sequence == 1 and not ex.wants_full  # the manifest made version 1 exist
    assert c.sync() == 0  # LATEST.json still names version 0
    # a second exporter (a restart, or `fluxrec deltas rollback`) continues after it
    assert Exporter(store).sequence == 1
    store.fail = lambda k: False
    t.train()
    ex.publish(t.cut(False))
    assert c.sync() == 2 and c.version == 2
    _assert_same(c, t)


def test_run_loop_survives_store_outages(store: FlakyStore) -> None:
    t, ex = Trainer(53), Exporter(store, ExporterConfig(snapshot_every=100))
    asked: list[bool] = []
    stop = threading.Event()

    def take_cut(full: bool) -> Any:
        asked.append(full)
        # the store is down for the second and third cut
        store.fail = (lambda k: True) if len(asked) in (2, 3) else (lambda k: False)
        if len(asked) == 5:
            stop.set()
        t.train()
        return t.cut(full)

    ex.run(take_cut, stop, interval_s=0.0)
    assert asked == [True, False, True, True, False]
    assert ex.stats.failed == 2 and ex.sequence == 2
    c = DeltaConsumer(store)
    c.sync()
    _assert_same(c, t)
