"""``DeltaConsumer``: follows published versions into a serving backend.

The served version only moves forward. Following applies N+1, N+2, ... to the live
backend (each version fetched and verified whole first). Every rebuild from a snapshot
(bootstrap, a gap, :meth:`DeltaConsumer.rollback`) is applied into a *staging* backend
and swapped in only when its whole chain applied, so a reader never sees a version older
than the one served before, nor a half-built one. ``LATEST.json`` is a hint: one that
names a version below ours is ignored and counted (``stats.stale_latest``); only
:meth:`DeltaConsumer.rollback`, called by an operator, moves to an older version, and it
is counted (``stats.rollbacks``) and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
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
from exporter.format import DecodedDense, DecodedTable, Limits
from exporter.manifest import (
    LATEST_KEY,
    MAX_LATEST_BYTES,
    MAX_MANIFEST_BYTES,
    check_entry_size,
    decode_entry,
    manifest_key,
    manifest_objects,
    merge_tables,
    parse_latest,
    parse_manifest,
)
from exporter.sdk._tables import Backend, InMemoryTables, TableSet
from exporter.store import ObjectStore

__all__ = ["ConsumerStats", "DeltaConsumer"]

log = logging.getLogger(__name__)
_DEFAULT_LIMITS = Limits()
_SLICE_S = 0.1  # the follower thread checks for stop() this often

Version = tuple[dict[str, Any], list[DecodedTable], DecodedDense | None]


@dataclass
class ConsumerStats:
    applied: int = 0
    rejected: int = 0  # failed syncs/rollbacks (typed errors); the last good version is served
    reasons: dict[str, int] = field(default_factory=dict)  # rejections by error class
    gaps_recovered: int = 0
    rebuilds: int = 0  # chains applied in staging and swapped in
    rollbacks: int = 0  # explicit rollback() calls that moved to an older version
    stale_latest: int = 0  # LATEST.json named a version below ours: ignored
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
        self._stale_logged: int | None = None
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

    def _manifest(self, seq: int) -> dict[str, Any]:
        try:
            raw = self.store.get(manifest_key(seq), MAX_MANIFEST_BYTES)
        except ObjectNotFound:
            raise VersionNotFound(f"version {seq}: no manifest in {self.store.url}") from None
        except OversizedPayload:
            raise BadManifest(f"version {seq}: manifest larger than {MAX_MANIFEST_BYTES}") from None
        return parse_manifest(raw, self.hmac_key, expected_seq=seq)

    def load_version(self, seq: int) -> Version:
        """Fetch and fully verify one version (manifest + every object) without applying it."""
        doc = self._manifest(seq)
        tables: list[DecodedTable] = []
        dense: DecodedDense | None = None
        for obj in manifest_objects(doc):
            check_entry_size(seq, obj, self.limits)
            try:
                data = self.store.get(obj["key"], obj["bytes"])
            except ObjectNotFound:
                if not self.store.exists(manifest_key(seq)):
                    raise VersionNotFound(f"version {seq}: pruned while being read") from None
                raise MissingPayload(f"version {seq}: {obj['key']} is missing") from None
            except OversizedPayload:
                raise Truncated(
                    f"version {seq}: {obj['key']} has more than the {obj['bytes']} bytes "
                    "its manifest says"
                ) from None
            dec = decode_entry(seq, obj, data, self.limits)
            del data
            if isinstance(dec, DecodedTable):
                tables.append(dec)
            else:
                dense = dec
        return doc, merge_tables(tables), dense  # a table in several parts: one table

    def _latest(self) -> int | None:
        """The sequence ``LATEST.json`` names (signed when a key is configured), or None."""
        try:
            raw = self.store.get(LATEST_KEY, MAX_LATEST_BYTES)
        except ObjectNotFound:
            return None
        except OversizedPayload:
            raise BadManifest(f"LATEST.json larger than {MAX_LATEST_BYTES} bytes") from None
        return parse_latest(raw, self.hmac_key)[0]

    def _applied(self, doc: dict[str, Any], count: int) -> None:
        self.version, self.watermark_ms = int(doc["sequence"]), int(doc["watermark_ms"])
        self.stats.applied += count

    def _build(self, target: int) -> tuple[Backend, dict[str, Any], int]:
        """Apply the snapshot under ``target`` and each delta after it up to ``target``
        into a fresh staging backend; ``(staging, target's manifest, versions applied)``.
        One version is held in memory at a time, each verified before it is applied."""
        base = int(self._manifest(target)["base_snapshot"])
        staging = self.backend.staging()
        doc: dict[str, Any] = {}
        for seq in range(base, target + 1):
            doc, tables, dense = self.load_version(seq)
            if (seq == base) != (doc["kind"] == "snapshot") or doc["base_snapshot"] != base:
                raise BadSequence(
                    f"version {seq}: {doc['kind']} on base {doc['base_snapshot']} breaks the "
                    f"chain {base}..{target}"
                )
            staging.apply(doc, tables, dense)
        return staging, doc, target - base + 1

    def _rebuild(self, target: int | None, attempts: int = 3) -> None:
        """Build the chain of ``target`` (None: of LATEST.json) in staging and swap it in.
        If the writer prunes the chain while we read it, start again from the newer
        ``LATEST.json``. The live backend is untouched unless the whole chain applied."""
        for attempt in range(attempts):
            goal = self._latest() if target is None else target
            if goal is None:
                return
            if target is None and self.version is not None and goal <= self.version:
                return  # nothing newer to rebuild to: never move back
            try:
                staging, doc, count = self._build(goal)
            except VersionNotFound:
                if target is not None or attempt == attempts - 1:
                    raise
                continue
            self.backend.swap(staging)
            self.stats.rebuilds += 1
            self._applied(doc, count)
            return

    # ------------------------------------------------------------------ following

    def sync(self) -> int:
        """Apply every version newer than ours; returns how many were applied.

        Every failure is counted (``stats.rejected``, ``stats.reasons`` by error class,
        ``stats.last_error``) and the last good version keeps being served; the next sync
        tries again. Failures are ``ExporterError`` subclasses; anything else would be a
        bug in this SDK: it is counted and logged with its traceback, never raised.
        """
        with self._lock:
            before = self.stats.applied
            try:
                self._sync()
            except Exception as e:
                self._reject(e)
            return self.stats.applied - before

    def _reject(self, e: Exception) -> None:
        name = type(e).__name__
        self.stats.rejected += 1
        self.stats.reasons[name] = self.stats.reasons.get(name, 0) + 1
        self.stats.last_error = f"{name}: {e}"
        if isinstance(e, ExporterError):
            log.warning("delta consumer: kept version %s: %s: %s", self.version, name, e)
        else:
            log.error("delta consumer: kept version %s: unexpected error", self.version, exc_info=e)

    def _sync(self) -> None:
        if self.pinned is not None:
            return
        if self.version is None:
            self._rebuild(None)
            return
        latest = self._latest()
        if latest is None:
            return
        if latest < self.version:
            self.stats.stale_latest += 1
            if self._stale_logged != latest:
                self._stale_logged = latest
                log.warning(
                    "delta consumer: LATEST.json names version %d, below ours (%d): ignored",
                    latest,
                    self.version,
                )
            return
        seq = self.version + 1
        while seq <= latest:
            try:
                doc, tables, dense = self.load_version(seq)
            except VersionNotFound:
                self.stats.gaps_recovered += 1  # pruned or never written: back to a snapshot
                self._rebuild(None)
                return
            if doc["kind"] == "delta" and doc["parent"] != self.version:
                raise BadSequence(
                    f"version {seq}: parent {doc['parent']} != current version {self.version}"
                )
            self.backend.apply(doc, tables, dense)
            self._applied(doc, 1)
            seq += 1

    def rollback(self, seq: int) -> None:
        """Serve version ``seq`` (rebuilt from its snapshot in staging) and stop following
        until :meth:`resume`. The only way to an older version: counted and logged. If it
        cannot be rebuilt, the version served before stays, and the error is counted and
        raised."""
        with self._lock:
            before = self.version
            try:
                self._rebuild(seq)
            except Exception as e:
                self._reject(e)
                raise
            self.pinned = seq
            self.stats.rollbacks += 1
            log.warning("delta consumer: rolled back from version %s to %d", before, seq)

    def resume(self) -> int:
        """Follow new versions again, forward from the rolled-back version."""
        with self._lock:
            self.pinned = None
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
