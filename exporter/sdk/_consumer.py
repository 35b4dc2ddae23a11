"""``DeltaConsumer``: follows published versions into a serving backend."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from exporter.errors import (
    BadManifest,
    BadSequence,
    ExporterError,
    MissingPayload,
    ObjectNotFound,
    OversizedPayload,
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
_SLICE_S = 0.1  # the follower thread checks for stop() this often


@dataclass
class ConsumerStats:
    applied: int = 0
    rejected: int = 0  # versions refused (format/chain errors); the last good one is served
    gaps_recovered: int = 0
    notifications: int = 0
    polls: int = 0
    redis_down: int = 0
    last_error: str = ""


def _check_entry(seq: int, obj: dict[str, Any], dec: DecodedTable | DecodedDense) -> None:
    """The decoded object is the one its manifest entry describes."""
    if isinstance(dec, DecodedTable):
        got = {"kind": "table", "name": dec.name, "dim": dec.dim, "encoding": dec.encoding}
        got |= {"rows": len(dec.ids), "tombstones": len(dec.tombstones)}
    else:
        got = {"kind": "dense"}
    want = {k: obj.get(k) for k in got}
    if got != want:
        raise BadManifest(f"version {seq}: {obj['key']} holds {got}, its manifest says {want}")


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
        self._rebuild = False  # the next sync rebuilds from a snapshot (after a rollback)
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
            if obj["bytes"] > self.limits.max_object_bytes:
                raise OversizedPayload(
                    f"version {seq}: {obj['key']} has {obj['bytes']} bytes > limit "
                    f"{self.limits.max_object_bytes} (DeltaConsumer(limits=...))"
                )
            try:
                data = self.store.get(obj["key"])
            except ObjectNotFound:
                if not self.store.exists(manifest_key(seq)):
                    raise VersionNotFound(f"version {seq}: pruned while being read") from None
                raise MissingPayload(f"version {seq}: {obj['key']} is missing") from None
            if len(data) != obj["bytes"]:
                raise Truncated(
                    f"version {seq}: {obj['key']} has {len(data)} bytes, manifest says "
                    f"{obj['bytes']}"
                )
            dec = decode_object(data, obj["sha256"], self.limits)
            del data
            _check_entry(seq, obj, dec)
            if isinstance(dec, DecodedTable):
                tables.append(dec)
            else:
                dense = dec
        return doc, tables, dense

    def _apply(self, doc: dict[str, Any], tables: list[DecodedTable], dense: Any) -> None:
        self.backend.apply(doc, tables, dense)
        self.version, self.watermark_ms = doc["sequence"], doc["watermark_ms"]
        self.stats.applied += 1

    def _chain_to(self, target: int) -> None:
        """Apply the snapshot under ``target``, then each delta after it up to ``target``.

        One version is held in memory at a time, and each is verified before it is applied,
        so a bad delta leaves the last good version of the chain being served.
        """
        try:
            raw = self.store.get(manifest_key(target))
        except ObjectNotFound:
            raise VersionNotFound(f"version {target}: no manifest in {self.store.url}") from None
        base = parse_manifest(raw, self.hmac_key, expected_seq=target)["base_snapshot"]
        for seq in range(base, target + 1):
            self._apply(*self.load_version(seq))

    def _rebuild_to_latest(self, attempts: int = 3) -> None:
        """Rebuild from the newest snapshot chain; if the writer prunes the chain while we
        read it, start again from the newer ``LATEST.json``."""
        for attempt in range(attempts):
            latest, _base = parse_latest(self.store.get(LATEST_KEY))
            try:
                self._chain_to(latest)
                return
            except VersionNotFound:
                if attempt == attempts - 1:
                    raise

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
        if self.version is None or latest < self.version or self._rebuild:
            self._rebuild_to_latest()
            self._rebuild = False
            return
        seq = self.version + 1
        while seq <= latest:
            try:
                doc, tables, dense = self.load_version(seq)
            except VersionNotFound:
                self.stats.gaps_recovered += 1  # pruned or never written: back to a snapshot
                self._rebuild_to_latest()
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
        """Follow new versions again: rebuild from the newest snapshot chain (until that
        succeeds the rolled-back version keeps being served)."""
        with self._lock:
            self.pinned = None
            self._rebuild = True
        return self.sync()

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        """Follow in a background thread: sync on each Redis notification, and poll
        ``LATEST.json`` every ``poll_interval_s`` (the only way while Redis is down)."""
        self.sync()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="delta-consumer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import redis

        pubsub: Any = None
        subscribe_at = 0.0  # when to (re)try subscribing
        poll_at = time.monotonic() + self.poll_interval_s
        while not self._stop.is_set():
            if pubsub is None and self.redis_url and time.monotonic() >= subscribe_at:
                pubsub = self._subscribe()
                subscribe_at = time.monotonic() + self.poll_interval_s
            notified = False
            if pubsub is None:
                self._stop.wait(_SLICE_S)
            else:
                try:
                    msg = pubsub.get_message(timeout=_SLICE_S)
                    notified = bool(msg) and msg.get("type") == "message"
                except (redis.RedisError, OSError):
                    self.stats.redis_down += 1
                    pubsub.close()
                    pubsub = None
            if notified:
                self.stats.notifications += 1
            elif time.monotonic() >= poll_at:
                self.stats.polls += 1
            else:
                continue
            try:
                self.sync()
            except Exception:  # never let the follower thread die; the next round retries
                log.exception("delta consumer: sync failed")
            poll_at = time.monotonic() + self.poll_interval_s
        if pubsub is not None:
            pubsub.close()

    def _subscribe(self) -> Any:
        import redis

        try:
            r = redis.Redis.from_url(self.redis_url or "", socket_connect_timeout=1)
            ps = r.pubsub(ignore_subscribe_messages=True)
            ps.subscribe(self.channel)
            return ps
        except (redis.RedisError, OSError):
            self.stats.redis_down += 1
            return None
