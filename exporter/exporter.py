"""The exporter: turns the trainer's :class:`~exporter.types.Cut` into published versions.

For each accepted cut, in this order (a reader never sees an incomplete version)::

    1. versions/SEQ/table-NAME.fxd, versions/SEQ/dense.fxd   payload objects
    2. versions/SEQ/manifest.json                            sizes, sha256s, offsets, ...
    3. LATEST.json                                           the pointer readers poll
    4. PUBLISH redis.channel {"sequence": SEQ, "base_snapshot": BASE, "kind": ...}
    5. after a snapshot: prune versions older than the oldest retained snapshot

The safety gate (``GateRefused``, counted in ``stats``) compares scales, never sums, so a
delta's few rows and a snapshot's many are measured alike. The scale of a table in a cut
is the RMS of the elements of its upserted rows; of a dense tensor, the RMS of its
elements. A cut is refused when

- a row or tensor holds NaN or Inf, or
- a scale exceeds ``max_norm_jump`` x max(its reference, ``norm_floor``); dense entries
  the cut names as ``statistics`` (a normalisation's running mean and variance, which
  move from 0 to the data's scale at once) are checked for NaN/Inf only.

References come from published versions only. A dense tensor's is its RMS in the last
published version. A table's is the largest RMS published since the last snapshot (the
snapshot's, over all rows, and each later delta's, over its rows), or the RMS of the last
delta before that snapshot if larger: a delta holds the rows that train most, which are
larger than the table's average, so it is never measured against the whole table alone.
Only growth is refused (shrinking rows, evictions and weight decay are normal), and
``norm_floor`` keeps growth from near zero (a fresh bias, rows at their initial scale)
from counting as a jump. A table or tensor with no reference yet (the exporter's first
version, a new table) is checked for NaN/Inf only.

Example, ``max_norm_jump`` 4, ``norm_floor`` 0.1: item_id published at RMS 0.2; a delta
whose rows have RMS 0.5 passes (2.5x), one at 2.0 is refused (10x); a bias published at
RMS 0.01 may grow to 0.4 (4 x the floor) in one version.

A refusal writes nothing and keeps the references of the last published version; the
refused changes never reached the store, so the next cut must be full (``wants_full``)
and the next version published is a snapshot. While a model stays blown up every cut is
refused (each one logged with its reason); an exporter started afresh has no references.

**Several parts** (manifest format 2, the trainer's workers; ``trainer/publish.py``): every
worker summarises its part with :func:`cut_stats` (sums of squares, NaN/Inf counts: a
few numbers per table), the summaries are merged (:func:`merge_stats`) and the exporter
gates the version on them (:meth:`Exporter.admit`: the same rules, the same references)
before anything is written; each worker then writes its own objects
(:func:`write_objects` with its part index) and :meth:`Exporter.publish_parts` writes
the manifest naming all of them, last::

    seq = exporter.admit(meta, merge_stats([cut_stats(p) for p in parts]))   # or GateRefused
    entries = [write_objects(store, seq, p, encoding, part=k) for k, p in enumerate(parts)]
    exporter.publish_parts(PartsCut(seq, meta, entries))                      # manifest, LATEST
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from exporter.errors import GateRefused, ObjectNotFound, StoreError
from exporter.format import write_dense, write_table
from exporter.manifest import (
    LATEST_KEY,
    MANIFEST_FORMAT,
    PARTS_FORMAT,
    dense_key,
    latest_bytes,
    manifest_key,
    parse_latest,
    parse_manifest,
    sign_manifest,
    table_key,
)
from exporter.settings import ExporterConfig
from exporter.store import ObjectStore
from exporter.types import Cut, PartsCut

__all__ = [
    "ExportStats",
    "Exporter",
    "cut_stats",
    "hmac_key_from_env",
    "list_versions",
    "merge_stats",
    "write_objects",
]

log = logging.getLogger(__name__)
_DEFAULT_CFG = ExporterConfig()


def hmac_key_from_env(cfg: ExporterConfig) -> bytes | None:
    value = os.environ.get(cfg.hmac_key_env, "")
    return value.encode() if value else None


def list_versions(store: ObjectStore) -> list[int]:
    """Sequences that have a manifest, ascending."""
    return sorted(seq for seq, keys in _version_keys(store).items() if manifest_key(seq) in keys)


def _version_keys(store: ObjectStore) -> dict[int, list[str]]:
    """The keys under ``versions/`` by sequence, from one listing."""
    out: dict[int, list[str]] = {}
    for key in store.list("versions/"):
        parts = key.split("/")
        if len(parts) >= 3 and parts[1].isdigit():
            out.setdefault(int(parts[1]), []).append(key)
    return out


def _square_sum(arr: npt.NDArray[np.float32]) -> dict[str, Any]:
    """``{"sumsq", "size", "bad", "bad_rows"}`` of ``arr``: the sum of its squares, its
    element count, and how many values (and rows of a 2-D array) are NaN or Inf."""
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    sq = float(np.dot(flat, flat))  # NaN/Inf anywhere make this non-finite
    bad = bad_rows = 0
    if not np.isfinite(sq):
        finite = np.isfinite(arr)
        bad = int(finite.size - np.count_nonzero(finite))
        if bad:
            sq = 0.0
            if arr.ndim == 2:
                bad_rows = int(np.count_nonzero(~finite.all(axis=1)))
        else:
            sq = float(np.dot(flat.astype(np.float64), flat.astype(np.float64)))  # fp32 overflow
    return {"sumsq": sq, "size": int(flat.size), "bad": bad, "bad_rows": bad_rows}


def cut_stats(cut: Cut) -> dict[str, Any]:
    """What the safety gate needs of a cut (or of one worker's part of it), as JSON::

        {"tables": {"item_id": {"rows": 3, "sumsq": 0.52, "size": 48, "bad": 0,
                                "bad_rows": 0}},
         "dense": {"mlp.0.weight": {"sumsq": 12.5, "size": 4096, "bad": 0, "bad_rows": 0}}}

    ``rows`` counts upserted rows (a table with none is not measured); ``bad`` counts
    NaN/Inf values (then ``sumsq`` is 0)."""
    tables = {n: {"rows": len(t.ids)} | _square_sum(t.values) for n, t in cut.tables.items()}
    return {
        "tables": tables,
        "dense": {n: _square_sum(v) for n, v in cut.dense.items() if v.size},
    }


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The :func:`cut_stats` of a version from those of its parts (sums add up)."""
    out: dict[str, dict[str, dict[str, Any]]] = {"tables": {}, "dense": {}}
    for part in parts:
        for kind in ("tables", "dense"):
            for name, st in part[kind].items():
                have = out[kind].setdefault(name, dict.fromkeys(st, 0))
                for k, v in st.items():
                    have[k] += v
    return out


def _mean_square(key: str, st: dict[str, Any], step: int, rows: str = "") -> float:
    """Mean of the squares from :func:`_square_sum`; ``GateRefused`` when any is NaN/Inf."""
    if st["bad"]:
        where = f" in {st['bad_rows']} of {rows} rows" if rows else ""
        raise GateRefused(f"{key}: {st['bad']} NaN/Inf values{where} in step {step}")
    return float(st["sumsq"]) / max(int(st["size"]), 1)


def write_objects(
    store: ObjectStore, seq: int, cut: Cut, encoding: str, part: int | None = None
) -> list[dict[str, Any]]:
    """Write the objects of ``cut`` for version ``seq`` (one per table, then the dense
    object if it has tensors), under part ``part`` of a multi-part version (None: a
    version of one part, format 1); returns their manifest entries."""
    objects: list[dict[str, Any]] = []
    for name in sorted(cut.tables):
        t = cut.tables[name]
        tomb = None if cut.full else t.tombstones
        key = table_key(seq, name, part)
        with store.writer(key) as write:
            w = write_table(write, name, t.dim, t.ids, t.values, tomb, encoding)
        h = w.header
        objects.append(
            {"key": key, "kind": "table", "name": name, "dim": t.dim}
            | {k: h[k] for k in ("encoding", "rows", "tombstones")}
            | {"bytes": w.size, "sha256": w.sha256}
        )
    if cut.dense:
        key = dense_key(seq, part)
        with store.writer(key) as write:
            w = write_dense(write, cut.dense)
        objects.append({"key": key, "kind": "dense", "bytes": w.size, "sha256": w.sha256})
    return objects


@dataclass
class ExportStats:
    published: int = 0
    snapshots: int = 0
    refused: int = 0
    failed: int = 0  # publications the store failed part-way (the next cut is full)
    pruned_versions: int = 0
    refusals: list[str] = field(default_factory=list)  # reasons, newest last (bounded)


class Exporter:
    """Writes versions for cuts; not thread-safe (one exporter per store prefix)."""

    def __init__(
        self,
        store: ObjectStore,
        cfg: ExporterConfig = _DEFAULT_CFG,
        redis_url: str | None = None,
        channel: str = "fluxrec.versions",
        hmac_key: bytes | None = None,
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.channel = channel
        self.hmac_key = hmac_key
        self.stats = ExportStats()
        self._redis: Any = None
        if redis_url:
            import redis

            # a Redis that is down must not hold up publishing: consumers also poll
            self._redis = redis.Redis.from_url(
                redis_url, socket_connect_timeout=1, socket_timeout=1
            )
        # the safety gate's references (mean squares), from the published versions only:
        # per table the largest since the last snapshot, and that of the last delta
        self._refs: dict[str, float] = {}
        self._last_delta: dict[str, float] = {}
        self._kinds: dict[int, str] = {}  # sequence -> manifest kind, read once (for prune)
        # on a store that has versions, start with a full cut: whoever wrote them, our
        # trainer's change tracking does not start where they end
        self._needs_full = True
        # the version being published: (sequence, the gate's references it leaves)
        self._admitted: tuple[int, dict[str, float], dict[str, float]] | None = None
        self.sequence, self.base_snapshot = self._newest()
        self._deltas_since = self.sequence - self.base_snapshot

    def _newest(self) -> tuple[int, int]:
        """``(sequence, base_snapshot)`` of the newest version: LATEST.json, or a newer
        manifest whose LATEST.json write failed. ``(-1, -1)`` on an empty store."""
        try:
            seq, base = parse_latest(self.store.get(LATEST_KEY))
        except ObjectNotFound:
            seq, base = -1, -1
        versions = list_versions(self.store)
        if versions and versions[-1] > seq:
            seq = versions[-1]
            base = int(parse_manifest(self.store.get(manifest_key(seq)))["base_snapshot"])
        return seq, base

    @property
    def wants_full(self) -> bool:
        """True when the next cut must be full: the first cut of this exporter, after K
        deltas, or after a refusal or a failed write (the trainer forgot those changes)."""
        return (
            self.sequence < 0 or self._needs_full or self._deltas_since >= self.cfg.snapshot_every
        )

    # ------------------------------------------------------------------ safety gate

    def _gate(
        self, cut: Cut, stats: dict[str, Any] | None = None
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Check ``cut`` (rules in the module docstring; ``stats``: its :func:`cut_stats`,
        computed here when None); returns the references it leaves behind if it is
        published. Raises ``GateRefused`` with the reason."""
        stats = cut_stats(cut) if stats is None else stats
        refs = {} if cut.full else dict(self._refs)
        last_delta = dict(self._last_delta)
        for name, st in sorted(stats["tables"].items()):
            key = f"table {name}"
            if not st["rows"]:
                continue  # tombstones only: no row to measure
            ms = _mean_square(key, st, cut.step, str(st["rows"]))
            ref = max(self._refs.get(key, -1.0), self._last_delta.get(key, -1.0))
            self._check_jump(key, ms, ref, cut, f"over {st['rows']} rows")
            refs[key] = max(refs.get(key, 0.0), ms)
            if not cut.full:
                last_delta[key] = ms
        for name, st in sorted(stats["dense"].items()):
            key = f"dense {name}"
            ms = _mean_square(key, st, cut.step)
            if name not in cut.statistics:  # running statistics: NaN/Inf only
                refs[key] = ms
                self._check_jump(key, ms, self._refs.get(key, -1.0), cut, "")
        return refs, last_delta

    def _check_jump(self, key: str, ms: float, ref_ms: float, cut: Cut, what: str) -> None:
        """Refuse when RMS ``ms**0.5`` exceeds max_norm_jump x max(reference, norm_floor);
        ``ref_ms`` < 0: no reference (nothing published yet to compare with)."""
        if ref_ms < 0:
            return
        rms, ref = ms**0.5, ref_ms**0.5
        base = max(ref, self.cfg.norm_floor)
        if rms > self.cfg.max_norm_jump * base:
            floor = f" (exporter.norm_floor {self.cfg.norm_floor:g})" if base > ref else ""
            raise GateRefused(
                f"{key}: RMS {rms:.4g}{' ' + what if what else ''} in step {cut.step} vs "
                f"{ref:.4g} as published up to version {self.sequence}{floor}: "
                f"{rms / base:.1f}x > exporter.max_norm_jump {self.cfg.max_norm_jump:g}"
            )

    # ------------------------------------------------------------------ publish

    def publish(self, cut: Cut, rollback_of: int | None = None) -> dict[str, Any]:
        """Write one version for ``cut``; returns its manifest.

        Raises ``GateRefused`` (nothing written), or a ``StoreError`` when the store
        failed part-way (payloads without a manifest are invisible to readers and are
        overwritten by the next attempt). Either way the next cut must be full: the
        trainer already forgot the changes of this one.
        """
        seq = self._admit(cut, None)
        base = seq if cut.full else self.base_snapshot
        try:
            objects = write_objects(self.store, seq, cut, self.cfg.encoding)
        except BaseException:
            self._failed()
            raise
        return self._finish(seq, base, cut, {"objects": objects}, rollback_of)

    def admit(self, cut: Cut, stats: dict[str, Any]) -> int:
        """A version of several parts: gate it on the merged ``stats`` of its parts
        (:func:`merge_stats`; ``cut`` carries the version's fields, its rows are in the
        parts) before any part is written; returns the sequence to write the parts
        under. Raises ``GateRefused`` (counted; the next cut must be full)."""
        return self._admit(cut, stats)

    def publish_parts(self, parts: PartsCut) -> dict[str, Any]:
        """Write the manifest (format 2) of the parts written for the sequence
        :meth:`admit` gave, then ``LATEST.json``; returns the manifest. A ``StoreError``
        leaves no version (the parts are invisible; the next cut must be full)."""
        base = parts.sequence if parts.cut.full else self.base_snapshot
        body = {"parts": [{"index": k, "objects": objs} for k, objs in enumerate(parts.parts)]}
        return self._finish(parts.sequence, base, parts.cut, body, None)

    def abandon(self, seq: int, reason: str) -> None:
        """The parts of admitted version ``seq`` could not all be written: no version
        (what was written is invisible), and the next cut must be full."""
        self._failed()
        log.warning("exporter: version %d abandoned, next cut is full: %s", seq, reason)

    def _failed(self) -> None:
        self._needs_full = True
        self._admitted = None
        self.stats.failed += 1

    def _admit(self, cut: Cut, stats: dict[str, Any] | None) -> int:
        """Gate ``cut``; the sequence it will be published under (references kept aside
        until it is)."""
        self._adopt_foreign_versions()
        self._admitted = None
        if not cut.full and self.wants_full:
            self._refuse(f"step {cut.step}: a full cut is required (wants_full) but got a delta")
        try:
            refs, last_delta = self._gate(cut, stats)
        except GateRefused as e:
            self._refuse(str(e))
        seq = self.sequence + 1
        self._admitted = (seq, refs, last_delta)
        return seq

    def _finish(
        self, seq: int, base: int, cut: Cut, body: dict[str, Any], rollback_of: int | None
    ) -> dict[str, Any]:
        """Write the manifest of admitted version ``seq`` (``body``: its objects or parts,
        all written), then LATEST.json, notify, prune (after a snapshot); the gate's references of
        :meth:`_admit` take effect."""
        if self._admitted is None or self._admitted[0] != seq:
            self._failed()
            raise GateRefused(f"version {seq} was not admitted (Exporter.admit) before its parts")
        _seq, refs, last_delta = self._admitted
        try:
            doc = self._manifest(seq, base, cut, body, rollback_of)
            raw = sign_manifest(doc, self.hmac_key)
            doc = parse_manifest(raw, self.hmac_key, seq)  # never publish what readers reject
            self.store.put(manifest_key(seq), raw)
        except BaseException:
            self._failed()
            raise
        # the version exists from here on (FORMAT.md: a manifest makes a version)
        self._admitted = None
        self.sequence, self.base_snapshot = seq, base
        self._kinds[seq] = doc["kind"]
        self._deltas_since = 0 if cut.full else self._deltas_since + 1
        self._needs_full = False
        self._refs, self._last_delta = refs, last_delta
        self.stats.published += 1
        self.stats.snapshots += int(cut.full)
        try:
            self.store.put(LATEST_KEY, latest_bytes(seq, base, self.hmac_key))
        except BaseException:
            self.stats.failed += 1  # readers see it once the next version's LATEST lands
            raise
        self._notify(doc)
        if cut.full:  # only a new snapshot makes older versions prunable
            self.prune()
        return doc

    def _manifest(
        self, seq: int, base: int, cut: Cut, body: dict[str, Any], rollback_of: int | None
    ) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": PARTS_FORMAT if "parts" in body else MANIFEST_FORMAT,
            "sequence": seq,
            "parent": seq - 1 if seq > 0 else None,
            "kind": "snapshot" if cut.full else "delta",
            "base_snapshot": base,
            **body,
            "kafka_offsets": {
                topic: {str(p): int(o) for p, o in sorted(parts.items())}
                for topic, parts in sorted(cut.offsets.items())
            },
            "watermark_ms": int(cut.watermark_ms),
            "trainer_step": int(cut.step),
            "samples": int(cut.samples),
            "created_ms": int(cut.created_ms),
            "published_ms": int(time.time() * 1000),
            "rollback_of": rollback_of,
        }
        return doc

    def _adopt_foreign_versions(self) -> None:
        """Another writer (``fluxrec deltas rollback``) may have published since our last
        version: continue after it, and only with a full cut (our deltas do not apply to it)."""
        try:
            seq, base = parse_latest(self.store.get(LATEST_KEY))
        except ObjectNotFound:
            return
        if seq > self.sequence:
            log.warning("exporter: version %d was published by another writer", seq)
            self.sequence, self.base_snapshot = seq, base
            self._deltas_since = seq - base
            self._needs_full = True

    def _refuse(self, reason: str) -> None:
        self.stats.refused += 1
        self.stats.refusals = [*self.stats.refusals[-99:], reason]
        self._needs_full = True
        log.warning("exporter: refused to publish: %s", reason)
        raise GateRefused(reason)

    def _notify(self, doc: dict[str, Any]) -> None:
        if self._redis is None:
            return
        msg = json.dumps(
            {
                "sequence": doc["sequence"],
                "base_snapshot": doc["base_snapshot"],
                "kind": doc["kind"],
            }
        )
        try:
            self._redis.publish(self.channel, msg)
        except Exception as e:  # consumers fall back to polling LATEST.json
            log.warning(
                "exporter: Redis publish failed (%s); consumers will poll", type(e).__name__
            )

    # ------------------------------------------------------------------ retention

    def prune(self) -> int:
        """Delete versions older than the oldest of the last ``retain_snapshots`` snapshots
        (never the chain of our own base snapshot)."""
        keys = _version_keys(self.store)  # one listing: a remote store pays per request
        versions = sorted(seq for seq, ks in keys.items() if manifest_key(seq) in ks)
        keep = max(self.cfg.retain_snapshots, 1)
        snaps = []
        for seq in reversed(versions):
            if self._kind(seq) == "snapshot":
                snaps.append(seq)
                if len(snaps) >= keep:
                    break
        if len(snaps) < keep:
            return 0
        keep_from = min(snaps[-1], self.base_snapshot)
        # every folder below keep_from goes, also one whose manifest is already gone (a prune
        # or a publish cut short); the manifests first, so that no reader finds a manifest
        # without its payload, each group in as few requests as the store allows
        below = [seq for seq in sorted(keys) if seq < keep_from]
        old = [seq for seq in below if manifest_key(seq) in keys[seq]]
        self.store.delete_many([manifest_key(seq) for seq in old])
        self.store.delete_many([k for seq in below for k in keys[seq] if k != manifest_key(seq)])
        for seq in old:
            self._kinds.pop(seq, None)
        self.stats.pruned_versions += len(old)
        return len(old)

    def _kind(self, seq: int) -> str | None:
        if seq not in self._kinds:
            try:
                self._kinds[seq] = str(json.loads(self.store.get(manifest_key(seq))).get("kind"))
            except (ObjectNotFound, ValueError):
                return None
        return self._kinds[seq]

    # ------------------------------------------------------------------ loop

    def run(
        self,
        take_cut: Callable[[bool], Cut | PartsCut | None],
        stop: threading.Event,
        interval_s: float | None = None,
    ) -> None:
        """Every ``interval_s`` ask ``take_cut(full)`` for a cut and publish it, until ``stop``.

        ``take_cut`` returns None when nothing changed, or a :class:`PartsCut` whose parts
        the trainer's workers wrote (after :meth:`admit`). Refusals and store failures are
        logged and counted (``stats``); the loop goes on and asks for a full cut next.
        """
        period = self.cfg.interval_s if interval_s is None else interval_s
        while not stop.is_set():
            started = time.monotonic()
            cut = take_cut(self.wants_full)
            if cut is not None:
                try:
                    if isinstance(cut, PartsCut):
                        self.publish_parts(cut)
                    else:
                        self.publish(cut)
                except GateRefused:
                    pass  # logged and counted in stats.refused
                except StoreError as e:
                    log.warning("exporter: store failed, next cut is full: %s", e)
            stop.wait(max(0.0, period - (time.monotonic() - started)))
