"""The training loop over Kafka: read_committed consumer -> micro-batches -> Trainer.

:func:`run` assigns every partition of the samples topic (no consumer group: the trainer
owns its offsets and records them in each step, so a cut carries them), polls at most
``batch_size`` records, and trains when a batch is full or ``max_wait_s`` has passed.
Memory stays bounded: the consumer never holds more than one batch (``max_poll_records``)
and the loop only polls again after training. Lag (log end - position) is reported in
:class:`LoopStats`. Undecodable records are counted in ``bad`` and skipped::

    stats = run(trainer, bootstrap, "fluxrec.samples", stop=threading.Event())
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.core import BadSample, Batch, Trainer, featurize

__all__ = ["LoopStats", "run"]


@dataclass
class LoopStats:
    """Running counters of the loop (read by the metrics endpoint)."""

    batches: int = 0
    samples: int = 0
    bad: int = 0
    lag: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)


def _lag(consumer: Any, tps: list[Any]) -> int:
    """Records between the consumer's position and the last stable offset, all partitions."""
    ends = consumer.end_offsets(tps)
    return sum(max(0, ends[tp] - consumer.position(tp)) for tp in tps)


def _seek_stored(consumer: Any, tps: list[Any], stored: dict[int, int]) -> None:
    """Seek each partition to the trainer's stored next offset (the beginning if none)."""
    for tp in tps:
        if tp.partition in stored:
            consumer.seek(tp, stored[tp.partition])
        else:
            consumer.seek_to_beginning(tp)


def _featurize_counting(trainer: Trainer, pending: list[dict[str, Any]], st: LoopStats) -> Batch:
    """Featurize ``pending``; bad samples are counted in ``st`` and left out."""
    try:
        return featurize(pending, trainer.sparse_names, trainer.dense_names)
    except BadSample:
        pass
    good = []
    for s in pending:
        try:
            featurize([s], trainer.sparse_names, trainer.dense_names)
            good.append(s)
        except BadSample:
            st.bad += 1
            st.bad_reasons["bad sample"] = st.bad_reasons.get("bad sample", 0) + 1
    return featurize(good, trainer.sparse_names, trainer.dense_names)


def run(
    trainer: Trainer,
    bootstrap: str,
    topic: str,
    *,
    stop: threading.Event,
    batch_size: int = 1024,
    max_wait_s: float = 1.0,
    max_samples: int = 0,
    until_caught_up: bool = False,
    stats: LoopStats | None = None,
    on_batch: Callable[[], None] | None = None,
) -> LoopStats:
    """Train from ``topic`` until ``stop`` is set (or ``max_samples`` trained, if > 0).

    With ``until_caught_up`` the loop also ends once nothing is pending and the consumer
    has reached the end of every partition (for tests and one-shot backfills).
    """
    from kafka import KafkaConsumer, TopicPartition

    st = stats or LoopStats()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed",
        max_poll_records=batch_size,
        auto_offset_reset="earliest",
    )
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        _seek_stored(consumer, tps, trainer.offsets.get(topic, {}))
        pending: list[dict[str, Any]] = []
        next_off: dict[int, int] = {}
        started = time.monotonic()
        while not stop.is_set():
            if max_samples and st.samples >= max_samples:
                break
            room = batch_size - len(pending)
            got = consumer.poll(timeout_ms=200, max_records=max(room, 1))
            for tp, recs in got.items():
                for r in recs:
                    next_off[tp.partition] = r.offset + 1
                    try:
                        pending.append(json.loads(r.value))
                    except (ValueError, UnicodeDecodeError):
                        st.bad += 1
                        st.bad_reasons["not json"] = st.bad_reasons.get("not json", 0) + 1
            if not got and not pending:  # idle: refresh the lag
                st.lag = _lag(consumer, tps)
                if until_caught_up and st.lag == 0:
                    break
            full = len(pending) >= batch_size
            if pending and (full or time.monotonic() - started >= max_wait_s):
                batch = _featurize_counting(trainer, pending, st)
                trainer.train_batch(batch, offsets={topic: dict(next_off)})
                st.batches += 1
                st.samples += len(batch)
                pending = []
                started = time.monotonic()
                st.lag = _lag(consumer, tps)
                if on_batch is not None:
                    on_batch()
    finally:
        consumer.close()
    return st
