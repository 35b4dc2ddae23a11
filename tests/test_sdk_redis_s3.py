"""The SDK against the real stack: Redis notifications / poll fallback, RedisTables, s3://."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from exporter.exporter import Exporter
from exporter.sdk import DeltaConsumer, RedisTables
from exporter.settings import ExporterConfig
from exporter.store import open_store
from fluxrec.config import Config
from fluxrec.testing import unique_name
from tests.test_export_chain import Trainer, _assert_same


def _wait(cond, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.redis
@pytest.mark.parametrize("mode", ["notify", "poll"])
def test_follower_gets_every_version_in_order(tmp_path: Path, redis_url: str, mode: str) -> None:
    store = open_store(f"file://{tmp_path / 'o'}")
    channel = unique_name("ch")
    t = Trainer(11)
    ex = Exporter(store, ExporterConfig(snapshot_every=4), redis_url, channel)
    t.train()
    ex.publish(t.cut(True))
    # poll mode: Redis on a port where nothing listens -> the consumer falls back to polling
    url = redis_url if mode == "notify" else "redis://127.0.0.1:1/0"
    c = DeltaConsumer(
        store, redis_url=url, channel=channel, poll_interval_s=5.0 if mode == "notify" else 0.1
    )
    applied: list[int] = []
    orig = c._apply

    def record(*a):  # type: ignore[no-untyped-def]
        orig(*a)
        applied.append(a[0]["sequence"])

    c._apply = record  # type: ignore[method-assign]
    c.start()
    try:
        time.sleep(0.3)
        for _ in range(8):
            t.train()
            ex.publish(t.cut(ex.wants_full))
            time.sleep(0.05)
        assert _wait(lambda: c.version == 8)
    finally:
        c.stop()
    assert applied == list(range(0, 9))
    _assert_same(c, t)
    if mode == "notify":
        assert c.stats.notifications >= 1
    else:
        assert c.stats.redis_down >= 1 and c.stats.notifications == 0


@pytest.mark.redis
def test_redis_table_backend(tmp_path: Path, redis_url: str) -> None:
    store = open_store(f"file://{tmp_path / 'o'}")
    t, ex = Trainer(12), Exporter(store, ExporterConfig(snapshot_every=3))
    backend = RedisTables(redis_url, prefix=unique_name("fx"))
    c = DeltaConsumer(store, backend=backend)
    for _ in range(6):
        t.train()
        ex.publish(t.cut(ex.wants_full))
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
    t, ex = Trainer(13), Exporter(store, ExporterConfig(snapshot_every=3, retain_snapshots=1))
    c = DeltaConsumer(store)
    for _ in range(7):
        t.train()
        ex.publish(t.cut(ex.wants_full))
        c.sync()
        _assert_same(c, t)
    late = DeltaConsumer(store)
    late.sync()
    _assert_same(late, t)
    assert ex.stats.pruned_versions > 0
