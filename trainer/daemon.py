"""The training daemon: read_committed consumer -> micro-batches -> Trainer -> exporter.

:func:`run` is the loop of one worker of a job (``trainer.comm``; one worker by default).
It assigns the partitions ``p % world == rank`` of the samples topic (no consumer group:
the trainer owns its offsets and records them with each step, so checkpoints and cuts
carry them), seeks to the trainer's stored offsets, polls at most what one batch still
needs, and trains when a batch is full or ``max_wait_s`` has passed since its first
record. Each iteration the workers agree on what to do (``trainer/lockstep.py``): a step
when any of them is ready (the others train what they have, maybe nothing, so a quiet
partition never blocks the job), a checkpoint, a cut for the exporter, a stop.
Memory stays bounded: the consumer holds at most ``fetch_max_bytes`` of fetched
data and one pending batch, and it only polls again after training (backpressure: a slow
trainer simply lags, and the lag, log end minus position over all partitions, is
reported). The raw values of a batch are featurized together (:mod:`featurize`: Arrow
reads them, no per-record ``json.loads``); values that are not v1 Samples are counted in
``bad`` by reason and skipped, and their offsets move on with the batch::

    stats = run(trainer, bootstrap, "fluxrec.samples", stop=threading.Event())

:func:`serve` is ``fluxrec train`` (and each worker of ``fluxrec train --workers N`` or of
``torchrun -m trainer``): it joins the job's process group, builds the trainer from the
config, resumes from the newest checkpoint, serves ``/metrics`` (on
``trainer.metrics_port + rank``), checkpoints every N seconds or M samples, runs the
exporter on a thread of rank 0 (:class:`~trainer.publish.ExportThread`; with several
workers each writes its part of every version, :class:`~trainer.publish.Publisher`) and,
on SIGTERM/Ctrl-C or when
caught up, writes a final checkpoint and a final export. With ``trace`` (``fluxrec train
--trace PATH``) it appends one JSON line per trained batch (:class:`BatchTrace`): what the
demo's freshness and quality report reads.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from featurize.types import Samples
from trainer.core import Batch, Trainer, to_batch
from trainer.errors import TrainerError
from trainer.lockstep import CutMailbox, agree
from trainer.metrics import PrequentialMetrics
from trainer.publish import ExportThread, Publisher
from trainer.sharded import partitions_of

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = ["BatchTrace", "Checkpointer", "LoopStats", "run", "serve"]

log = logging.getLogger(__name__)


@dataclass
class LoopStats:
    """Running counters of the loop (read by the metrics endpoint)."""

    batches: int = 0
    samples: int = 0  # trained by this process
    skipped: int = 0  # corrections of another label (counted, not trained)
    bad: int = 0
    lag: int = 0
    samples_per_s: float = 0.0  # over the last few seconds
    bad_reasons: dict[str, int] = field(default_factory=dict)
    fatal: str = ""  # why the job stopped, when it cannot go on (run() ends, serve() fails)

    def count_bad(self, reason: str) -> None:
        self.bad += 1
        self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + 1


def _lag(consumer: Any, tps: list[Any], timeout_ms: int = 2000) -> int:
    """Records between the consumer's position and the log end, all partitions (a
    ``KafkaError`` when no broker answers within ``timeout_ms``)."""
    ends = consumer.end_offsets(tps, timeout_ms=timeout_ms)
    return sum(max(0, ends[tp] - consumer.position(tp)) for tp in tps)


def _no_broker(bootstrap: str, e: BaseException, waited_s: float | None = None) -> str:
    """The one line of a broker outage: the cause and the fix."""
    how = f"for {waited_s:g} s (trainer.broker_timeout_s)" if waited_s is not None else "at start"
    return (
        f"no Kafka broker answered at {bootstrap} (kafka.bootstrap) {how}: "
        f"{type(e).__name__}; start the broker (`fluxrec stack up`) or fix kafka.bootstrap, "
        "then start the trainer again: it resumes from its last checkpoint"
    )


def _seek_stored(consumer: Any, tps: list[Any], stored: dict[int, int]) -> None:
    """Seek each partition to the trainer's stored next offset (the beginning if none)."""
    for tp in tps:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            consumer.seek_to_beginning(tp)


def _partitions(consumer: Any, topic: str, wait_s: float = 10.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        if time.monotonic() > deadline:
            raise TrainerError(
                f"topic {topic!r} (kafka.topics.samples) has no partitions: "
                "create it with `fluxrec stack topics` or run the join job"
            )
        time.sleep(0.2)


def _count_bad(s: Samples, st: LoopStats) -> Batch:
    """The batch of featurized samples; values that were not v1 Samples are counted in
    ``st`` by reason (the first of each reason per batch is logged)."""
    logged: set[str] = set()
    for b in s.bad:
        st.count_bad(b.reason)
        if b.reason not in logged:
            logged.add(b.reason)
            log.warning("trainer: bad sample (%s): %s", b.reason, b.detail)
    return to_batch(s)


class _Feed:
    """Featurizes the raw values of cut batches: at once, or (``prefetch``) on a worker
    thread, so that batch ``n + 1`` is featurized while batch ``n`` trains."""

    def __init__(self, trainer: Trainer, prefetch: bool) -> None:
        self.featurize = trainer.featurizer.samples
        self._pool = (
            ThreadPoolExecutor(1, thread_name_prefix="fluxrec-featurize") if prefetch else None
        )
        self._inflight: tuple[Future[Samples], dict[int, int]] | None = None
        self.empty = to_batch(self.featurize([]))  # what a worker without data trains

    @property
    def prefetching(self) -> bool:
        return self._pool is not None

    @property
    def busy(self) -> bool:
        """Whether a batch is being featurized (or waits to be trained)."""
        return self._inflight is not None

    def cut(
        self, values: list[bytes], offsets: dict[int, int]
    ) -> tuple[Samples, dict[int, int]] | None:
        """Take a cut batch; returns the batch to train now (the previous one when
        prefetching: it trains while this one is featurized)."""
        if self._pool is None:
            return self.featurize(values), offsets
        ready = self.drain()
        self._inflight = (self._pool.submit(self.featurize, values), offsets)
        return ready

    def drain(self) -> tuple[Samples, dict[int, int]] | None:
        """The batch being featurized, once it is (None if none)."""
        if self._inflight is None:
            return None
        fut, offsets = self._inflight
        self._inflight = None
        return fut.result(), offsets

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _poll(
    consumer: Any, room: int, pending: list[bytes], next_off: dict[int, int], timeout_ms: int
) -> bool:
    """Poll up to ``room`` raw values into ``pending``; False when none came."""
    got = consumer.poll(timeout_ms=timeout_ms, max_records=max(room, 1))
    for tp, recs in got.items():
        if recs:
            next_off[tp.partition] = recs[-1].offset + 1
            pending.extend([r.value if r.value is not None else b"" for r in recs])
    return bool(got)


class Checkpointer:
    """When the loop checkpoints (every ``every_s`` seconds or ``every_samples`` samples,
    and only when something was trained or the offsets moved), and how."""

    def __init__(
        self, t: Trainer, write: Callable[[], Path], every_s: float, every_samples: int
    ) -> None:
        self.t, self.write, self.every_s, self.every_samples = t, write, every_s, every_samples
        self.at, self.samples, self.marks = time.monotonic(), t.samples, self._marks()

    def _marks(self) -> tuple[int, str]:
        return self.t.step, repr(self.t.offsets)

    def due(self) -> bool:
        if self._marks() == self.marks:
            return False
        return (
            time.monotonic() - self.at >= self.every_s
            or self.t.samples - self.samples >= self.every_samples
        )

    def __call__(self) -> Path:
        path = self.write()
        self.at, self.samples, self.marks = time.monotonic(), self.t.samples, self._marks()
        return path


def run(  # noqa: PLR0912, PLR0915
    trainer: Trainer,
    bootstrap: str,
    topic: str,
    *,
    stop: threading.Event,
    batch_size: int = 1024,
    max_wait_s: float = 1.0,
    fetch_max_bytes: int = 16 << 20,
    max_samples: int = 0,
    until_caught_up: bool = False,
    stats: LoopStats | None = None,
    on_batch: Callable[[], None] | None = None,
    checkpoint: Checkpointer | None = None,
    cuts: CutMailbox | None = None,
    publisher: Publisher | None = None,
    metadata_max_age_ms: int = 30_000,
    prefetch: bool = True,
    broker_timeout_s: float = 60.0,
) -> LoopStats:
    """Train from ``topic`` until ``stop`` is set (or ``max_samples`` trained, if > 0).

    One worker of ``trainer.comm``'s job: every worker of the job runs this loop, and
    they stop together (any worker's ``stop``). With ``until_caught_up`` the loop also
    ends once nothing is pending and every worker has reached the end of its partitions
    (for tests and one-shot backfills). Records fetched but not yet trained when the loop
    ends are not in the trainer's offsets, so a restart reads them again. ``checkpoint``
    and ``cuts`` (rank 0's exporter) are served between steps, on every worker at once
    (``publisher`` takes them: each worker writes its part; default: ``take_cut``).
    When the topic's partition count changes (seen within ``metadata_max_age_ms``), or no
    broker has answered for ``broker_timeout_s`` (``trainer.broker_timeout_s``), the loop
    ends with ``stats.fatal`` set (the line that names the cause and the fix); no broker
    at start is a :class:`TrainerError` at once.

    With ``prefetch`` (``trainer.prefetch``; :func:`serve` uses it with one worker only,
    where it measured faster: see trainer/README.md) the
    raw values of the next batch are featurized on a worker thread while the current
    batch trains (the featurizer's C parse and the step's torch kernels release the GIL); a
    featurized batch is trained as soon as no next batch is ready to overlap with it, so
    a live stream waits for nothing more than without it.
    """
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    st = stats or LoopStats()
    comm = trainer.comm
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            group_id=None,
            isolation_level="read_committed",
            max_poll_records=batch_size,
            fetch_max_bytes=fetch_max_bytes,
            max_partition_fetch_bytes=min(1 << 20, fetch_max_bytes),
            auto_offset_reset="earliest",
            metadata_max_age_ms=metadata_max_age_ms,  # when a partition count change shows
        )
    except KafkaError as e:
        raise TrainerError(_no_broker(bootstrap, e)) from None
    feed = _Feed(trainer, prefetch)
    # the startup's objects (torch, the model, kafka-python) out of the collector's way:
    # a full collection no longer walks them while records are decoded (the consumer's
    # record decoding is Python: measured 1.1-1.5x faster frozen)
    gc.freeze()
    try:
        every = _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in partitions_of(topic, every, comm.rank, comm.world)]
        consumer.assign(tps)
        _seek_stored(consumer, tps, trainer.offsets.get(topic, {}))
        pending: list[bytes] = []
        next_off: dict[int, int] = {}
        first_at = 0.0  # when the first record of the pending batch arrived
        lag_at = 0.0
        rate_at, rate_n = time.monotonic(), 0
        flowing = False  # the job trained last iteration: poll without waiting
        lost_at = 0.0  # since when no broker has answered (0: one does)
        while True:
            want_stop = stop.is_set() or bool(max_samples and st.samples >= max_samples)
            got = False
            if len(pending) < batch_size and not want_stop:
                wait = 0 if flowing or feed.busy else 100
                got = _poll(consumer, batch_size - len(pending), pending, next_off, wait)
            now = time.monotonic()
            if pending and not first_at:
                first_at = now
            full = bool(pending) and (len(pending) >= batch_size or now - first_at >= max_wait_s)
            if full and feed.prefetching and not feed.busy and not want_stop:
                # featurize it now (on the thread) and poll once more: if the next batch
                # is full at once, it is featurized while this one trains
                feed.cut(pending, dict(next_off))
                pending, first_at = [], 0.0
                continue
            idle = not got and not pending and not feed.busy
            if now - lag_at >= (0.5 if idle else 1.0):  # refresh the lag
                lag_at = now
                try:
                    st.lag, lost_at = _lag(consumer, tps), 0.0
                except KafkaError as e:  # the broker is gone: how long for?
                    lost_at = lost_at or now
                    if time.monotonic() - lost_at >= broker_timeout_s and not st.fatal:
                        st.fatal = _no_broker(bootstrap, e, broker_timeout_s)
                n_parts = len(consumer.partitions_for_topic(topic) or every)
                if n_parts != len(every) and not st.fatal:
                    st.fatal = (
                        f"topic {topic!r} went from {len(every)} to {n_parts} partitions "
                        "while training: restart the trainer (every worker) so that the "
                        "new partitions are assigned"
                    )
            asked, full_cut = cuts.asked() if cuts is not None else (False, False)
            job = agree(
                comm,
                ready=full or feed.busy,  # a batch of bad values only moves the offsets
                stop=want_stop,
                caught_up=until_caught_up and idle and st.lag == 0,
                checkpoint=checkpoint is not None and checkpoint.due(),
                cut=asked,
                cut_full=full_cut,
                fatal=bool(st.fatal),
            )
            flowing = job.ready
            if job.ready:  # every worker trains: a quiet one an empty batch
                if full:  # the batch featurized before (prefetch) trains while this one is
                    ready = feed.cut(pending, dict(next_off))
                    pending, first_at = [], 0.0
                else:
                    ready = feed.drain()
                if ready is None:
                    batch, offsets = feed.empty, {}
                else:
                    batch, offsets = _count_bad(ready[0], st), ready[1]
                    st.batches += 1
                trainer.train_batch(batch, offsets={topic: offsets})
                st.samples += len(batch)
                st.skipped += batch.skipped
                if now - rate_at >= 5.0:
                    st.samples_per_s = (st.samples - rate_n) / (now - rate_at)
                    rate_at, rate_n = now, st.samples
                if on_batch is not None:
                    on_batch()
            if job.checkpoint and checkpoint is not None:
                checkpoint()
            if job.cut:
                cut = (publisher.cut if publisher else trainer.take_cut)(job.cut_full)
                if cuts is not None:
                    cuts.serve(cut)
            if job.stop or job.caught_up or job.fatal:
                if job.fatal and not st.fatal:
                    st.fatal = "another worker of the job cannot go on: see its log"
                break
    finally:
        consumer.close()
        feed.close()
        gc.unfreeze()  # collectable again at exit (extension modules check for leaks then)
    return st


class _RecordingMetrics(PrequentialMetrics):
    """Prequential metrics that also keep the last batch's scores for :class:`BatchTrace`."""

    last: tuple[Any, Any, Any] | None = None

    def add(
        self,
        pred: npt.NDArray[np.float64],
        label: npt.NDArray[np.float64],
        event_ms: npt.NDArray[np.int64],
    ) -> None:
        self.last = (pred, label, event_ms)
        super().add(pred, label, event_ms)


class BatchTrace:
    """One JSON line per trained batch, appended to ``path`` (opt-in, for the demo report)::

        {"t": 1700000012345, "step": 41, "n": 212, "lag": 0,
         "offsets": {"0": 1810, "1": 1795},          # next offset per partition after it
         "pred": [0.031, ...], "label": [0, ...],     # prequential: scored before training
         "ev": [1700000001000, ...]}                  # event time of each sample

    ``t`` is the wall-clock time (ms) when the batch was trained; ``pred`` is what the
    prequential metrics compare with ``label`` (module ``trainer.metrics``).
    """

    def __init__(self, path: Path, trainer: Trainer, topic: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.trainer, self.topic = trainer, topic
        self.metrics = _RecordingMetrics(trainer.metrics.window_ms, jsonl=trainer.metrics.jsonl)
        trainer.metrics = self.metrics
        self._file: IO[str] = path.open("a", buffering=1)

    def write(self, stats: LoopStats) -> None:
        last, self.metrics.last = self.metrics.last, None
        if last is None:  # nothing scored (with several workers: only rank 0 scores)
            return
        pred, label, ev = last
        t = self.trainer
        rec = {
            "t": int(time.time() * 1000),
            "step": t.step,
            "n": len(pred),
            "lag": stats.lag,
            "offsets": {str(p): o for p, o in t.offsets.get(self.topic, {}).items()},
            "pred": [round(float(x), 7) for x in pred],
            "label": [int(y) for y in label],
            "ev": [int(e) for e in ev],
        }
        self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def close(self) -> None:
        self._file.close()


def _gauges(t: Trainer, st: LoopStats, exp: ExportThread | None) -> dict[str, Any]:
    mem = t.memory()
    g: dict[str, Any] = {
        "lag": st.lag,
        "samples_total": t.samples,
        "skipped_total": t.skipped,
        "nonfinite_batches_total": t.nonfinite,
        "bad_total": st.bad,
        # values the featurizer's C fast path left to its Arrow path (escapes, nulls, bad
        # records; featurize/README.md): a rising share means a slower input path
        "featurize_slow_values_total": t.featurizer.slow_values,
        "batches_total": st.batches,
        "samples_per_s": round(st.samples_per_s, 1),
        "step": t.step,
        "watermark_ms": t.watermark_ms,
        "table_rows": mem["rows"],
        "table_bytes": mem["bytes"],
        "table_bytes_per_row": mem["bytes_per_row"],
        "table_evicted_total": {n: tab.evicted for n, tab in t.tables.items()},
        "table_rejected_total": {n: tab.rejected for n, tab in t.tables.items()},
    }
    if exp is not None:
        s = exp.exporter.stats
        g |= {
            "export_published_total": s.published,
            "export_snapshots_total": s.snapshots,
            "export_refused_total": s.refused,
            "export_failed_total": getattr(s, "failed", 0),
            "export_errors_total": exp.errors,
            "export_sequence": exp.exporter.sequence,
        }
    return g


def serve(  # noqa: PLR0912, PLR0915
    cfg: Config,
    *,
    checkpoint_dir: Path | None = None,
    export: bool | None = None,
    until_caught_up: bool = False,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = print,
    trace: Path | None = None,
) -> LoopStats:
    """``fluxrec train``: train until ``stop`` (or caught up), with checkpoints and export;
    ``trace``: append a :class:`BatchTrace` line per batch to this file (rank 0).

    A worker of a job when ``WORLD_SIZE`` is set (``trainer.distributed.connect``):
    checkpoints are collective (one part per worker), rank 0 runs the exporter and writes
    ``metrics.jsonl``, worker ``r`` serves ``/metrics`` on ``trainer.metrics_port + r``.
    When another worker is lost (:class:`~trainer.distributed.PeerLost`) it stops without
    a checkpoint or an export."""
    from trainer.checkpoint import load_latest, save
    from trainer.distributed import connect
    from trainer.http import serve_metrics
    from trainer.metrics import prometheus_text

    tc = cfg.trainer
    if tc.threads > 0:
        import torch

        torch.set_num_threads(tc.threads)
    ckdir = checkpoint_dir or tc.checkpoint_dir or cfg.stack.state_dir / "trainer"
    ckdir.mkdir(parents=True, exist_ok=True)
    comm = connect(tc)
    if comm.world > 1:
        inner, who = say, f"fluxrec train [{comm.rank}/{comm.world}]"
        say = lambda line: inner(line.replace("fluxrec train", who, 1))  # noqa: E731
    exp: ExportThread | None = None
    srv = None
    tracer: BatchTrace | None = None
    stats = LoopStats()
    try:
        t = Trainer.from_config(
            cfg, metrics_jsonl=ckdir / "metrics.jsonl" if comm.rank == 0 else None, comm=comm
        )
        resumed = load_latest(t, ckdir)
        say(
            f"fluxrec train: {'resumed from ' + str(resumed) if resumed else 'fresh start'} "
            f"(step {t.step}, {t.samples} samples, "
            f"offsets {t.offsets.get(cfg.kafka.topics.samples)})"
        )
        stop = stop or threading.Event()
        if trace is not None and comm.rank == 0:
            tracer = BatchTrace(trace, t, cfg.kafka.topics.samples)
        exporting = tc.export if export is None else export
        publisher = None
        if exporting:
            from exporter.exporter import Exporter, hmac_key_from_env
            from exporter.store import open_store

            store = open_store(cfg.object_store.url, cfg.object_store)
            if comm.rank == 0:
                exp = ExportThread(
                    t,
                    Exporter(
                        store,
                        cfg.exporter,
                        redis_url=cfg.redis.url,
                        channel=cfg.redis.channel,
                        hmac_key=hmac_key_from_env(cfg.exporter),
                    ),
                ).start()
                say(
                    f"fluxrec train: exporting to {cfg.object_store.url} "
                    f"every {cfg.exporter.interval_s} s"
                )
            publisher = Publisher(t, store, cfg.exporter, exp.exporter if exp else None)
        if tc.metrics_port:
            port = tc.metrics_port + comm.rank
            try:
                srv = serve_metrics(
                    tc.metrics_host,
                    port,
                    lambda: prometheus_text(t.metrics, _gauges(t, stats, exp)),
                )
            except OSError as e:
                raise TrainerError(
                    f"trainer.metrics_port {tc.metrics_port} (+ rank {comm.rank}) on "
                    f"{tc.metrics_host}: port {port}: {e}; pick a free port, or 0 to turn "
                    "/metrics off"
                ) from e

        def write() -> Path:
            path = save(t, ckdir, keep=tc.checkpoint_keep)
            say(f"fluxrec train: checkpoint {path.name} ({t.samples} samples, lag {stats.lag})")
            return path

        def on_batch() -> None:
            if tracer is not None:
                tracer.write(stats)

        run(
            t,
            cfg.kafka.bootstrap,
            cfg.kafka.topics.samples,
            stop=stop,
            batch_size=tc.batch_size,
            max_wait_s=tc.max_batch_wait_s,
            fetch_max_bytes=tc.fetch_max_bytes,
            until_caught_up=until_caught_up,
            on_batch=on_batch,
            stats=stats,
            checkpoint=Checkpointer(t, write, tc.checkpoint_every_s, tc.checkpoint_every_samples),
            cuts=exp.cuts if exp is not None else None,
            publisher=publisher,
            prefetch=tc.prefetch and comm.world == 1,  # one worker only: trainer/README.md
            broker_timeout_s=tc.broker_timeout_s,
        )
        path = save(t, ckdir, keep=tc.checkpoint_keep)
        final = None
        if publisher is not None:  # the final cut is collective: every worker takes part
            if exp is not None:
                exp.close()
            cut = publisher.cut(exp.exporter.wants_full if exp is not None else False)
            if exp is not None:
                final = exp.publish_final(cut)
    finally:
        if exp is not None:
            exp.close()
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        if tracer is not None:
            tracer.close()
        comm.close()
    exported = f", exported version {final['sequence']}" if final else ""
    say(
        f"fluxrec train: stopped after {stats.samples} samples ({stats.bad} bad, "
        f"{stats.skipped} skipped), total {t.samples}, checkpoint {path}{exported}"
    )
    if stats.fatal:
        raise TrainerError(stats.fatal)
    return stats
