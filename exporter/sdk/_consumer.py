"""``DeltaConsumer``: follows published versions into a serving backend."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from exporter.errors import (
    BadSequence,
    ExporterError,
    MissingPayload,
    ObjectNotFound,
    Truncated,
    VersionNotFound,
)
from exporter.format import DecodedDense, DecodedTable, Limits, decode_object
from exporter.manifest import LATEST_KEY, manifest_key, parse_latest, parse_manifest
from exporter.sdk._tables import Backend, InMemoryTables, TableSet
from exporter.store import ObjectStore

__all__ = ["ConsumerStats", "DeltaConsumer"]

log = logging.getLogger(__name__)
_DEFAULT_LIMITS = Limits()


@dataclass
class ConsumerStats:
    applied: int = 0
    rejected: int = 0  # versions refused (format/chain errors); the last good one is served
    gaps_recovered: int = 0
    notifications: int = 0
    polls: int = 0
    redis_down: int = 0
    last_error: str = ""


class DeltaConsumer:
    """Bootstraps from the newest snapshot + following deltas, then follows new versions.

    >>> c = DeltaConsumer(open_store(url), redis_url=..., channel="fluxrec.versions")
    >>> c.sync()                        # or c.start() for a background follower
    >>> c.state.lookup("item_id", [17, 42])   # rows; missing ids -> zeros
    >>> c.version, c.lag_ms()
    """

    def __init__(
        self,
        store: ObjectStore,
        backend: Backend | None = None,
        *,
        redis_url: str | None = None,
        channel: str = "fluxrec.versions",
        hmac_key: bytes | None = None,
        poll_interval_s: float = 1.0,
        limits: Limits = _DEFAULT_LIMITS,
    ) -> None:
        self.store = store
        self.backend: Backend = backend if backend is not None else InMemoryTables()
        self.redis_url = redis_url
        self.channel = channel
        self.hmac_key = hmac_key
        self.poll_interval_s = poll_interval_s
        self.limits = limits
        self.stats = ConsumerStats()
        self.version: int | None = None
        self.watermark_ms: int | None = None
        self.pinned: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading

    @property
    def state(self) -> TableSet:
        """The current version's tables (in-memory backend only)."""
        if not isinstance(self.backend, InMemoryTables) or self.backend.state is None:
            raise VersionNotFound("no version applied yet (or not an in-memory backend)")
        return self.backend.state

    def lag_ms(self, now_ms: int | None = None) -> int | None:
        """Now minus the event-time watermark of the applied version."""
        if self.watermark_ms is None:
            return None
        return (int(time.time() * 1000) if now_ms is None else now_ms) - self.watermark_ms

    def load_version(
        self, seq: int
    ) -> tuple[dict[str, Any], list[DecodedTable], DecodedDense | None]:
        """Fetch and fully verify one version (manifest + every object) without applying it."""
        try:
            raw = self.store.get(manifest_key(seq))
        except ObjectNotFound:
            raise VersionNotFound(f"version {seq}: no manifest in {self.store.url}") from None
        doc = parse_manifest(raw, self.hmac_key, expected_seq=seq)
        tables: list[DecodedTable] = []
        dense: DecodedDense | None = None
        for obj in doc["objects"]:
            try:
                data = self.store.get(obj["key"])
            except ObjectNotFound:
                raise MissingPayload(f"version {seq}: {obj['key']} is missing") from None
            if len(data) != obj["bytes"]:
                raise Truncated(
                    f"version {seq}: {obj['key']} has {len(data)} bytes, manifest says "
                    f"{obj['bytes']}"
                )
            dec = decode_object(data, obj["sha256"], self.limits)
            if isinstance(dec, DecodedTable):
                if obj["kind"] != "table" or dec.name != obj["name"] or dec.dim != obj["dim"]:
                    raise MissingPayload(f"version {seq}: {obj['key']} is not table {obj['name']}")
                tables.append(dec)
            else:
                dense = dec
        return doc, tables, dense

    def _apply(self, doc: dict[str, Any], tables: list[DecodedTable], dense: Any) -> None:
        self.backend.apply(doc, tables, dense)
        self.version, self.watermark_ms = doc["sequence"], doc["watermark_ms"]
        self.stats.applied += 1

    def _chain_to(self, target: int) -> None:
        """Apply the snapshot under ``target`` and the deltas after it up to ``target``."""
        doc, tables, dense = self.load_version(target)
        base = doc["base_snapshot"]
        chain = [self.load_version(s) for s in range(base, target)] + [(doc, tables, dense)]
        for prev, cur in itertools.pairwise(chain):
            if cur[0]["kind"] == "delta" and cur[0]["parent"] != prev[0]["sequence"]:
                raise BadSequence(f"version {cur[0]['sequence']}: parent breaks the chain")
        for item in chain:
            self._apply(*item)

    # ------------------------------------------------------------------ following

    def sync(self) -> int:
        """Apply every version newer than ours; returns how many were applied.

        Errors are counted (``stats.rejected``, ``stats.last_error``) and the last good
        version keeps being served; the next sync tries again.
        """
        with self._lock:
            before = self.stats.applied
            try:
                self._sync()
            except ExporterError as e:
                self.stats.rejected += 1
                self.stats.last_error = f"{type(e).__name__}: {e}"
                log.warning("delta consumer: kept version %s: %s", self.version, e)
            return self.stats.applied - before

    def _sync(self) -> None:
        if self.pinned is not None:
            return
        try:
            latest, _base = parse_latest(self.store.get(LATEST_KEY))
        except ObjectNotFound:
            return
        if self.version is None or latest < self.version:
            self._chain_to(latest)
            return
        seq = self.version + 1
        while seq <= latest:
            try:
                doc, tables, dense = self.load_version(seq)
            except VersionNotFound:
                self.stats.gaps_recovered += 1  # pruned or never written: back to a snapshot
                self._chain_to(latest)
                return
            if doc["kind"] == "delta" and doc["parent"] != self.version:
                raise BadSequence(
                    f"version {seq}: parent {doc['parent']} != current version {self.version}"
                )
            self._apply(doc, tables, dense)
            seq += 1

    def rollback(self, seq: int) -> None:
        """Serve version ``seq`` (rebuilt from its snapshot) and stop following until
        :meth:`resume`. Raises if that version cannot be rebuilt."""
        with self._lock:
            self._chain_to(seq)
            self.pinned = seq

    def resume(self) -> int:
        self.pinned = None
        with self._lock:
            self.version = None  # rebuild from the newest snapshot
        return self.sync()

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Follow in a background thread: Redis notifications, polling as fallback."""
        self.sync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="delta-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        pubsub: Any = None
        while not self._stop.is_set():
            if pubsub is None and self.redis_url:
                pubsub = self._subscribe()
            if pubsub is not None:
                try:
                    msg = pubsub.get_message(timeout=self.poll_interval_s)
                    if msg and msg.get("type") == "message":
                        self.stats.notifications += 1
                    else:
                        self.stats.polls += 1
                except Exception:
                    self.stats.redis_down += 1
                    pubsub = None
                    self._stop.wait(self.poll_interval_s)
            else:
                self._stop.wait(self.poll_interval_s)
                self.stats.polls += 1
            self.sync()
        if pubsub is not None:
            pubsub.close()

    def _subscribe(self) -> Any:
        import redis

        try:
            r = redis.Redis.from_url(self.redis_url or "", socket_connect_timeout=1)
            ps = r.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(self.channel)
            return ps
        except redis.RedisError:
            self.stats.redis_down += 1
            return None
