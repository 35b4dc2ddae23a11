"""One replay from a config: what ``fluxrec replay`` runs (importable, so tests and demos
can call it with their own config and topics)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from fluxrec.config import Config
from replay.errors import BadReplayConfig
from replay.produce import Pacer, ensure_topics, produce, write_lines
from replay.settings import ReplayConfig, check
from replay.sources import Source, action_types, open_source
from replay.stream import Tally, replay_events
from replay.types import Stream

__all__ = ["ReplayReport", "open_configured_source", "run_replay"]


@dataclass(frozen=True)
class ReplayReport:
    """What one replay sent, and how fast."""

    source: str
    target: str
    events: dict[str, int]
    actions: dict[str, int]
    faults: dict[str, int]
    skipped: dict[str, int]
    bytes: int
    elapsed_s: float
    first_ms: int | None = None
    last_ms: int | None = None
    oracle_auc: float | None = None
    topics: dict[str, str] = field(default_factory=dict)
    interrupted: bool = False
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.events.values())

    @property
    def rate(self) -> float:
        """Events per second of wall-clock time."""
        return self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def lines(self) -> list[str]:
        """The summary ``fluxrec replay`` prints."""

        def counts(c: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items())) or "none"

        def at(ms: int | None) -> str:
            if ms is None:
                return "-"
            return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

        out = [f"replay {self.source} -> {self.target}"]
        if self.interrupted:
            out[0] += " (interrupted: what was sent so far)"
        for stream in Stream:
            where = f" -> {self.topics[stream]}" if stream in self.topics else ""
            out.append(f"  {stream + 's':19}{self.events.get(stream, 0):>8,}{where}")
        out.append(f"  {'actions by type':19}{counts(self.actions)}")
        out.append(f"  {'injected faults':19}{counts(self.faults)}")
        if self.skipped:
            out.append(f"  {'log rows skipped':19}{counts(self.skipped)}")
            for reason, where in sorted(self.notes.items()):
                out.append(f"  {'':19}first {reason}: {where}")
        out.append(f"  {'event time':19}{at(self.first_ms)} .. {at(self.last_ms)}")
        if self.oracle_auc is not None:
            value = (
                "n/a, no click yet"
                if math.isnan(self.oracle_auc)
                else f"{self.oracle_auc:.4f} (p_click vs the generated clicks)"
            )
            out.append(f"  {'oracle AUC':19}{value}")
        out.append(
            f"  {'sent':19}{self.total:,} events, {self.bytes / 1e6:.1f} MB in "
            f"{self.elapsed_s:.2f} s = {self.rate:,.0f} events/s"
        )
        return out


def open_configured_source(cfg: Config, rcfg: ReplayConfig | None = None) -> Source:
    """The source of ``rcfg`` (default ``cfg.replay``), checked against the rest of ``cfg``:
    its action types must be actions of ``join.labels``, its features those of
    ``features:``. Raises :class:`BadReplayConfig` naming the key otherwise."""
    rcfg = rcfg or cfg.replay
    check(rcfg, str(cfg.source))
    known = {lb.action for lb in cfg.join.labels}
    for action in action_types(rcfg):
        if rcfg.source == "synthetic" and action == rcfg.conversion_action:
            continue  # the synthetic source sends conversions whatever the join trains
        if known and action not in known:
            key = "table.labels" if rcfg.source == "table" else f"{rcfg.source} actions"
            raise BadReplayConfig(
                f"replay.{key}",
                str(cfg.source),
                f"action type {action!r} is not an action of join.labels {sorted(known)}",
                "add it to join.labels or map the column to one of them",
            )
    return open_source(
        rcfg, [f.name for f in cfg.features.sparse], [f.name for f in cfg.features.dense]
    )


def run_replay(
    cfg: Config,
    rcfg: ReplayConfig | None = None,
    *,
    topics: dict[Stream, str] | None = None,
    dry_run: TextIO | None = None,
    now_ms: int | None = None,
) -> ReplayReport:
    """Replay ``rcfg`` (default ``cfg.replay``) into Kafka at ``cfg.kafka.bootstrap``, or as
    JSON lines into ``dry_run``. ``topics`` default to ``kafka.topics.impressions/actions``;
    they are created when missing. ``now_ms`` (default: the wall clock) anchors the shift."""
    rcfg = rcfg or cfg.replay
    source = open_configured_source(cfg, rcfg)
    if topics is None:
        topics = {
            Stream.IMPRESSION: cfg.kafka.topics.impressions,
            Stream.ACTION: cfg.kafka.topics.actions,
        }
    if dry_run is not None:
        target = "stdout (dry run)"
    else:
        target = f"kafka {cfg.kafka.bootstrap} ({rcfg.producer.compression})"
        ensure_topics(cfg.kafka.bootstrap, list(topics.values()), cfg.kafka.partitions)
    tally = Tally(click_action=rcfg.click_action)
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    events = replay_events(source, rcfg, now, tally)
    pacer = Pacer(rcfg.rate, live=rcfg.time_shift == "live")
    start = time.monotonic()
    interrupted = False
    try:
        if dry_run is not None:
            write_lines(events, dry_run, pacer=pacer, on_sent=tally.count)
        else:
            produce(
                events, cfg.kafka.bootstrap, topics, rcfg.producer, pacer=pacer, on_sent=tally.count
            )
    except KeyboardInterrupt:
        interrupted = True
    elapsed = time.monotonic() - start
    return ReplayReport(
        source=source.name,
        target=target,
        events={str(k): v for k, v in tally.events.items()},
        actions=dict(tally.actions),
        faults={str(k): v for k, v in tally.faults.items()},
        skipped=source.stats(),
        notes=source.notes(),
        bytes=tally.bytes,
        elapsed_s=elapsed,
        first_ms=tally.first_ms,
        last_ms=tally.last_ms,
        oracle_auc=tally.oracle_auc(),
        topics={} if dry_run is not None else {str(k): v for k, v in topics.items()},
        interrupted=interrupted,
    )
