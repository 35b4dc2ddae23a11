"""The SDK against the real stack: Redis notifications / poll fallback, RedisTables, s3://."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporter import store as store_module
from exporter.errors import OversizedPayload
from exporter.exporter import Exporter
from exporter.sdk import DeltaConsumer, InMemoryTables, RedisTables
from exporter.settings import ExporterConfig
from exporter.store import open_store
from fluxrec.config import Config
from fluxrec.testing import unique_name
from tests.test_export_chain import Trainer, _assert_same, follow_pruned_chain


def _wait(cond, timeout: float = 120.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


class RecordingTables(InMemoryTables):
    """The in-memory backend, noting the sequence of every version it applies."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[int] = []

    def apply(self, manifest: dict[str, Any], tables: Any, dense: Any) -> None:
        super().apply(manifest, tables, dense)
        self.applied.append(manifest["sequence"])

    def staging(self) -> RecordingTables:  # a rebuild's versions are noted as well
        staged = RecordingTables()
        staged.applied = self.applied
        return staged


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_follower_gets_every_version_in_order(tmp_path: Path, redis_url: str, mode: str) -> None:
    """notify: polling is every hour, so only Redis notifications can deliver in time;
    poll: Redis on a port where nothing listens, so only polling can."""
    store = open_store(f"file://{tmp_path / 'o'}")
    channel = unique_name("ch")
    t = Trainer(11)
    ex = Exporter(store, ExporterConfig(snapshot_every=4), redis_url, channel)
    t.train()
    ex.publish(t.cut(True))
    url = redis_url if mode == "notify" else "redis://127.0.0.1:1/0"
    backend = RecordingTables()
    c = DeltaConsumer(
        store,
        backend,
        redis_url=url,
        channel=channel,
        poll_interval_s=3600.0 if mode == "notify" else 0.1,
    )
    c.start()
    try:
        assert _wait(lambda: mode == "poll" or _subscribed(c))  # no message is lost
        for _ in range(8):
            t.publish(ex)
            time.sleep(0.05)
        assert _wait(lambda: c.version == 8)
    finally:
        c.stop()
    assert backend.applied == list(range(0, 9))
    _assert_same(c, t)
    if mode == "notify":
        assert c.stats.notifications >= 1 and c.stats.polls == 0
    else:
        assert c.stats.redis_down >= 1 and c.stats.notifications == 0 and c.stats.polls >= 1


def _subscribed(c: DeltaConsumer) -> bool:
    import redis

    r = redis.Redis.from_url(c.redis_url or "")
    try:
        return bool(r.pubsub_numsub(c.channel)[0][1])
    finally:
        r.close()


@pytest.mark.redis
def test_redis_table_backend(tmp_path: Path, redis_url: str) -> None:
    store = open_store(f"file://{tmp_path / 'o'}")
    t, ex = Trainer(12), Exporter(store, ExporterConfig(snapshot_every=3))
    backend = RedisTables(redis_url, prefix=unique_name("fx"))
    c = DeltaConsumer(store, backend=backend)
    for _ in range(6):
        t.publish(ex)
        c.sync()
        ids, vals = t.table()
        got = backend.lookup("item_id", ids, dim=4)
        np.testing.assert_array_equal(got, vals)
        assert backend.r.hlen(backend._key("item_id")) == len(ids)
        assert backend.version() == ex.sequence
    np.testing.assert_array_equal(backend.lookup("item_id", [10**9], dim=4), np.zeros((1, 4)))


@pytest.mark.s3
def test_chain_through_real_s3(stack_config: Config) -> None:
    store = open_store("s3://" + unique_name("b") + "/p", stack_config.object_store)
    store.ensure_container()
    t, ex, _c = follow_pruned_chain(store, 13)
    late = DeltaConsumer(store)
    late.sync()
    _assert_same(late, t)
    assert ex.stats.pruned_versions > 0
    # pruned with multi-object deletes: only the last snapshot's chain is left
    assert {int(k.split("/")[1]) for k in store.list("versions/")} == {4, 5, 6}
    key = f"versions/{ex.sequence:012d}/manifest.json"
    size = len(store.get(key))
    assert len(store.get(key, max_bytes=size)) == size
    with pytest.raises(OversizedPayload):  # ContentLength checked before the body is read
        store.get(key, max_bytes=size - 1)


@pytest.mark.s3
def test_delete_many_on_real_s3_in_batches(
    stack_config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3's multi-object delete, split into batches (of 2 here), missing keys included."""
    monkeypatch.setattr(store_module, "DELETE_BATCH", 2)
    store = open_store("s3://" + unique_name("b") + "/p", stack_config.object_store)
    store.ensure_container()
    for i in range(5):
        store.put(f"d/{i}", b"x")
    store.put("e/0", b"y")
    store.delete_many([f"d/{i}" for i in range(6)])  # d/5 does not exist
    assert store.list() == ["e/0"]
