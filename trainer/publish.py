"""One version from the workers of a job: each owner writes its part, rank 0 the manifest.

Every worker of a job takes its cut between the same two steps (the consistent cut:
:meth:`~trainer.core.Trainer.take_cut`, called from the lockstep loop, so the step
boundary is the barrier) and holds the rows it owns. :class:`Publisher` turns those parts
into one version of manifest format 2 (``exporter/FORMAT.md`` 4.5)::

    every worker                      rank 0 (its Exporter)
    part = take_cut(full)             (collective: full if any asks, None everywhere or nowhere)
    gather_json(cut_stats(part))  ->  seq = exporter.admit(version fields, merged stats)
                                      (the safety gate on the whole version; -1: refused)
    seq = broadcast(seq)          <-
    write_objects(store, seq, part, part=rank)      versions/SEQ/part-RANK/table-*.fxd
    gather_json(entries | error)  ->  PartsCut(seq, fields, entries of every part)
                                      -> ExportThread: manifest (naming every part and its
                                         sha256), LATEST.json, notice; or, when a part
                                         failed, no manifest at all (the next cut is full)

Nothing a reader can see is ever partial: a version exists when its manifest does, and
rank 0 writes it only after every worker reported its part written. A refusal writes
nothing. A worker lost half-way fails the next collective (``PeerLost``) on every other
worker, so no manifest is written. Collectives per version: one ``all_gather`` in
``take_cut``, two small gathers of JSON and one broadcast, whatever the rows.

With one worker there are no parts: the cut is the whole version, published in format 1
by the exporter thread as before (every reader, old or new, reads it).

:class:`ExportThread` runs the exporter on a thread of rank 0; the loop serves its cuts
between steps (:class:`~trainer.lockstep.CutMailbox`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from exporter.types import Cut, PartsCut

if TYPE_CHECKING:
    from exporter.exporter import Exporter
    from exporter.settings import ExporterConfig
    from exporter.store import ObjectStore
    from trainer.core import Trainer

__all__ = ["ExportThread", "Publisher"]

log = logging.getLogger(__name__)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class Publisher:
    """How a cut becomes a version on every worker (module docstring). ``store`` and
    ``cfg``: where and how this worker writes its part; ``exporter``: rank 0's (None on
    the other workers)."""

    def __init__(
        self,
        trainer: Trainer,
        store: ObjectStore | None,
        cfg: ExporterConfig,
        exporter: Exporter | None = None,
    ) -> None:
        self.trainer, self.store, self.cfg, self.exporter = trainer, store, cfg, exporter

    def cut(self, full: bool) -> Cut | PartsCut | None:
        """Collective: every worker calls it between the same two steps. Rank 0 gets what
        its exporter publishes (a :class:`Cut` with one worker, a :class:`PartsCut` whose
        parts are written with several; None when nothing changed, the gate refused it or
        a part failed); the other workers get None."""
        part = self.trainer.take_cut(full)
        comm = self.trainer.comm
        if part is None or comm.world == 1:
            return part
        from exporter.exporter import cut_stats, write_objects

        heads = comm.gather_json(
            {
                "stats": cut_stats(part),
                "offsets": {t: {str(p): o for p, o in v.items()} for t, v in part.offsets.items()},
            }
        )
        meta, seq = None, -1
        if heads is not None:  # rank 0
            offsets: dict[str, dict[int, int]] = {}
            for h in heads:  # each worker's partitions
                for topic, parts in h["offsets"].items():
                    offsets.setdefault(topic, {}).update({int(p): o for p, o in parts.items()})
            meta = Cut(
                step=part.step,
                samples=part.samples,
                full=part.full,
                watermark_ms=part.watermark_ms,
                offsets=offsets,
                tables={},
                dense={},
                created_ms=part.created_ms,
                statistics=part.statistics,
            )
            seq = self._admit(meta, [h["stats"] for h in heads])
        seq = comm.broadcast_int(seq)
        if seq < 0:
            return None  # refused (counted on rank 0; the next cut is full)
        entries: list[dict[str, Any]] = []
        error = ""
        try:
            if self.store is None:
                raise RuntimeError("this worker has no object store (export is off here)")
            entries = write_objects(self.store, seq, part, self.cfg.encoding, part=comm.rank)
        except Exception as e:
            error = f"worker {comm.rank}: {_one_line(e)}"
            log.warning("publish: part %d of version %d failed: %s", comm.rank, seq, error)
        got = comm.gather_json({"objects": entries, "error": error})
        if got is None or meta is None or self.exporter is None:
            return None
        errors = [g["error"] for g in got if g["error"]]
        if errors:
            self.exporter.abandon(seq, "; ".join(errors))
            return None
        return PartsCut(seq, meta, [g["objects"] for g in got])

    def _admit(self, meta: Cut, stats: list[dict[str, Any]]) -> int:
        """Rank 0: the sequence to write the parts under, or -1 (refused or failed)."""
        from exporter.errors import GateRefused
        from exporter.exporter import merge_stats

        if self.exporter is None:
            return -1
        try:
            return self.exporter.admit(meta, merge_stats(stats))
        except GateRefused:
            return -1  # logged and counted by the exporter
        except Exception as e:
            self.exporter.abandon(self.exporter.sequence + 1, _one_line(e))
            return -1


class ExportThread:
    """Runs ``exporter.run(cuts.take_cut, ...)`` on a daemon thread of rank 0; the
    training loop takes the cuts between two steps (``cuts``, a
    :class:`~trainer.lockstep.CutMailbox`) through a :class:`Publisher`.

    An exception from the exporter (a store outage, say) is logged and counted, the
    trainer is told that the cut it handed out never reached the store (the next cut is
    full), and the exporter is run again after ``retry_s``.
    """

    def __init__(self, trainer: Trainer, exporter: Exporter, retry_s: float = 5.0) -> None:
        from trainer.lockstep import CutMailbox

        self.trainer, self.exporter, self.retry_s = trainer, exporter, retry_s
        self.cuts = CutMailbox()
        self.stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(target=self._loop, daemon=True, name="exporter")

    def start(self) -> ExportThread:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.exporter.run(self.cuts.take_cut, self.stop)
            except Exception:
                self.errors += 1
                log.exception("exporter failed; retrying in %.0f s with a full cut", self.retry_s)
                self.trainer.mark_full()
                self.stop.wait(self.retry_s)

    def close(self) -> None:
        """Stop the thread (a cut it waits for is answered None)."""
        self.stop.set()
        self.cuts.close()
        self._thread.join()

    def publish_final(self, cut: Cut | PartsCut | None) -> dict[str, Any] | None:
        """Publish the final cut (taken after :meth:`close`, on every worker)."""
        from exporter.errors import GateRefused

        if cut is None:
            return None
        try:
            if isinstance(cut, PartsCut):
                return self.exporter.publish_parts(cut)
            return self.exporter.publish(cut)
        except GateRefused:
            return None  # counted in exporter.stats.refused
        except Exception:
            self.errors += 1
            log.exception("final export failed; the next start exports a full cut")
            return None
