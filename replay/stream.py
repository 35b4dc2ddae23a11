"""From a source to the events to send: limit, run id, time shift, wire form, faults.

::

    source.records()  ->  first ``limit``  ->  ``run_id`` prefix on request ids
        ->  event time + offset (``time_shift``)  ->  Event (JSON)  ->  faults.inject

Time shift (``replay.time_shift``), with ``now`` the wall clock when the replay starts:

======  =====================================================================================
none    event times as in the log (a 2019 log stays in 2019)
now     every time moves by one offset so that the **last** replayed event is at ``now`` and
        the first at ``now - span``: relative times are kept and nothing is in the future,
        so the join's ``future_event`` check (``join.max_future_skew_ms``) never fires
live    every time moves so that the **first** event is at ``now``, and each event is sent
        when the wall clock reaches its (shifted) event time: a real-time replay, the log's
        pace and delays included (``rate`` still caps events/s). Events leave a moment
        (the producer's start-up) after their event time, as logged events do.
======  =====================================================================================
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from replay.faults import inject
from replay.oracle import auc
from replay.settings import ReplayConfig
from replay.sources import Source
from replay.types import Event, Impression, Record, to_event

__all__ = ["ORACLE_MAX_IMPRESSIONS", "Tally", "bounds", "replay_events", "time_offset"]

#: the oracle AUC covers the first this many impressions (bounded memory)
ORACLE_MAX_IMPRESSIONS = 500_000


@dataclass
class Tally:
    """What a replay sent: events per stream and per fault, bytes, event-time range, and
    (for sources with ``p_click``) the oracle AUC of ``p_click`` against the clicks, over
    the first :data:`ORACLE_MAX_IMPRESSIONS` impressions."""

    click_action: str = "click"
    events: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    _p_click: dict[tuple[str, str], float] = field(default_factory=dict, init=False, repr=False)
    _clicked: set[tuple[str, str]] = field(default_factory=set, init=False, repr=False)

    def observe(self, rec: Record) -> None:
        """A clean record on its way out (before faults)."""
        if isinstance(rec, Impression):
            if rec.p_click is not None and len(self._p_click) < ORACLE_MAX_IMPRESSIONS:
                self._p_click[(rec.request_id, rec.item_id)] = rec.p_click
        else:
            self.actions[rec.action] += 1
            key = (rec.request_id, rec.item_id)
            if rec.action == self.click_action and key in self._p_click:
                self._clicked.add(key)

    def count(self, ev: Event) -> None:
        """An event that was sent."""
        self.events[ev.stream] += 1
        self.bytes += len(ev.payload.encode())
        if ev.fault is not None:
            self.faults[ev.fault] += 1
        if self.first_ms is None:
            self.first_ms = ev.event_time_ms
        self.last_ms = ev.event_time_ms

    @property
    def total(self) -> int:
        return sum(self.events.values())

    def oracle_auc(self) -> float | None:
        """AUC of ``p_click`` against "a click action was generated"; None without p_click."""
        if not self._p_click:
            return None
        keys = list(self._p_click)
        return auc([self._p_click[k] for k in keys], [int(k in self._clicked) for k in keys])


def bounds(source: Source, limit: int) -> tuple[int, int] | None:
    """Event times of the first and the last of the first ``limit`` records (0: all)."""
    recs = source.records()
    first = next(iter(recs), None)
    if first is None:
        return None
    last = first
    for last in itertools.islice(recs, limit - 1 if limit else None):  # noqa: B007
        pass
    return first.event_time_ms, last.event_time_ms


def time_offset(source: Source, cfg: ReplayConfig, now_ms: int) -> int:
    """Milliseconds added to every event time for ``cfg.time_shift`` (module doc)."""
    if cfg.time_shift == "none":
        return 0
    # live needs only the first event's time: limit 1 stops the pass there
    span = bounds(source, cfg.limit if cfg.time_shift == "now" else 1)
    if span is None:
        return 0
    return now_ms - (span[1] if cfg.time_shift == "now" else span[0])


def _shift(rec: Record, offset: int, prefix: str) -> Record:
    if not offset and not prefix:
        return rec
    return replace(
        rec, request_id=prefix + rec.request_id, event_time_ms=rec.event_time_ms + offset
    )


def replay_events(
    source: Source, cfg: ReplayConfig, now_ms: int, tally: Tally | None = None
) -> Iterator[Event]:
    """The events of one replay, in order (see the module doc)."""
    offset = time_offset(source, cfg, now_ms)
    prefix = f"{cfg.run_id}-" if cfg.run_id else ""
    recs: Iterable[Record] = source.records()
    if cfg.limit:
        recs = itertools.islice(recs, cfg.limit)

    def clean() -> Iterator[Event]:
        for rec in recs:
            out = _shift(rec, offset, prefix)
            if tally is not None:
                tally.observe(out)
            yield to_event(out)

    return inject(clean(), cfg.faults, cfg.seed)
