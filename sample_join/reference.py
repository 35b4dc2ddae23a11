"""Pure-Python reference implementation of the label semantics (``CONTRACTS.md`` section 4).

It consumes raw events in arrival order and returns what the Flink job must produce:
samples, dead letters and reconciliation counts. It keeps all state in memory and is
meant for tests and small replays, not production volume.

Worked example (labels click 5 min, strategy ``window``)::

    events = [
        RawEvent("impression", '{"v":1,"request_id":"r1","item_id":"i1","user_id":"u1",'
                               '"event_time_ms":1000,"features":{"sparse":{},"dense":{}}}'),
        RawEvent("action", '{"v":1,"request_id":"r1","item_id":"i1","user_id":"u1",'
                           '"action":"click","event_time_ms":4000}'),
        RawEvent("action", '{"v":1,"request_id":"r9","item_id":"i1","user_id":"u1",'
                           '"action":"click","event_time_ms":4000}'),
    ]
    out = run_reference(events, cfg)
    out.samples[0].labels == {"click": 1, "conversion": 0}
    out.dead_letters[0].reason == "orphan_action"
    out.counts.balanced()          # 3 in == 1 sample + 1 labelled action + 0 dup + 1 dead
    out.counts.windows[(0, "action", "labelled", None)] == 1   # per metrics window
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from sample_join.settings import JoinConfig, LabelSpec, check_join_config

__all__ = [
    "DEAD_LETTER_REASONS",
    "MAX_DEPTH",
    "Counts",
    "DeadLetter",
    "RawEvent",
    "ReferenceOutput",
    "Sample",
    "decode",
    "run_reference",
    "validate",
]

Stream = Literal["impression", "action"]
Stage = Literal["validate", "join", "abnormal"]

#: Every reason a dead letter can carry (``CONTRACTS.md`` section 3), in check order.
DEAD_LETTER_REASONS = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "unsupported_version",
    "unknown_action",
    "future_event",
    "too_late",
    "bot",
    "orphan_action",
    "late_action",
)


@dataclass(frozen=True)
class RawEvent:
    """One record as read from Kafka: which stream and the payload, the Kafka value as text
    (``value.decode("utf-8", "surrogateescape")``: bytes that are not UTF-8 survive as lone
    surrogates, and such a payload is ``malformed_json``)."""

    stream: Stream
    payload: str


@dataclass(frozen=True)
class Sample:
    """A sample record (``sample.schema.json``) without the version field."""

    sample_id: str
    request_id: str
    item_id: str
    user_id: str
    event_time_ms: int
    features: dict[str, Any]
    labels: dict[str, int]
    label_time_ms: dict[str, int | None]
    strategy: str
    correction: bool
    p_click: float | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"v": 1, **self.__dict__}
        if self.p_click is None:
            del d["p_click"]
        return d


@dataclass(frozen=True)
class DeadLetter:
    """A rejected event: original payload, reason and the stage that rejected it."""

    stream: Stream
    payload: str
    reason: str
    stage: Stage

    def to_json(self) -> dict[str, Any]:
        return {"v": 1, **self.__dict__}


#: ``(window_start_ms, stream, kind, reason)``: the key of a metric record (section 5).
WindowKey = tuple[int, str, str, str | None]


@dataclass
class Counts:
    """Reconciliation counts over a whole run, in total and per event-time window.

    Identity: ``impressions_in + actions_in == impression_samples + actions_labelled +
    duplicates + sum(dead_letters.values())``. Late actions are counted in ``late_actions``
    and also either in ``actions_labelled`` (policy ``correction``) or in dead letters.
    ``windows`` holds what the job's metrics topic sums to (``CONTRACTS.md`` section 5).
    """

    window_ms: int = 60_000
    impressions_in: int = 0
    actions_in: int = 0
    impression_samples: int = 0
    actions_labelled: int = 0
    duplicates: int = 0
    late_actions: int = 0
    corrections: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    windows: Counter[WindowKey] = field(default_factory=Counter)

    def add(self, stream: str, kind: str, t: int | None, reason: str | None = None) -> None:
        """Count one fact about an event of ``stream`` at event time ``t`` (None: unparsed)."""
        start = ((t or 0) // self.window_ms) * self.window_ms
        self.windows[(start, stream, kind, reason)] += 1
        attr = {
            "sample": "impression_samples",
            "labelled": "actions_labelled",
            "duplicate": "duplicates",
            "late_action": "late_actions",
            "correction": "corrections",
        }.get(kind)
        if kind == "in":
            attr = "impressions_in" if stream == "impression" else "actions_in"
        if attr:
            setattr(self, attr, getattr(self, attr) + 1)
        elif kind == "dead_letter":
            self.dead_letters[reason or ""] += 1

    def balanced(self) -> bool:
        out = (
            self.impression_samples
            + self.actions_labelled
            + self.duplicates
            + sum(self.dead_letters.values())
        )
        return self.impressions_in + self.actions_in == out


@dataclass
class ReferenceOutput:
    samples: list[Sample]
    dead_letters: list[DeadLetter]
    counts: Counts


_STRINGS = ("request_id", "item_id", "user_id")
_IMPRESSION_FIELDS: dict[str, type] = {
    **dict.fromkeys(_STRINGS, str),
    "event_time_ms": int,
    "features": dict,
}
_ACTION_FIELDS: dict[str, type] = {
    **dict.fromkeys(_STRINGS, str),
    "action": str,
    "event_time_ms": int,
}


#: Containers nested deeper than this make a payload ``malformed_json`` (CONTRACTS.md 1).
MAX_DEPTH = 128
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def _too_deep(payload: str) -> bool:
    """Whether the payload, read as JSON, opens more than :data:`MAX_DEPTH` containers at
    once (exact for valid JSON; for anything else the answer does not matter, it is
    malformed either way)."""
    if payload.count("[") + payload.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for b in _BRACKET.findall(_STRING.sub("", payload)):
        depth += 1 if b in "[{" else -1
        if depth > MAX_DEPTH:
            return True
    return False


def decode(payload: str) -> dict[str, Any] | None:
    """The payload as a JSON object, or None when it is not one (``malformed_json``):
    not valid UTF-8 (a ``str`` decoded with ``surrogateescape`` then holds lone surrogates),
    not JSON as Python's ``json`` reads it, nested deeper than :data:`MAX_DEPTH`, or not an
    object."""
    try:
        payload.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if _too_deep(payload):
        return None
    try:
        rec = json.loads(payload)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def validate(event: RawEvent, cfg: JoinConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Decode and check one event's content; return (record, None) or (None, reason).

    Covers the reasons up to ``unknown_action``; the time checks need the run's clock and
    watermark (:func:`run_reference`).
    """
    rec = decode(event.payload)
    if rec is None:
        return None, "malformed_json"
    reason = _field_problem(rec, event.stream)
    actions = {s.action for s in cfg.labels}
    if reason is None and event.stream == "action" and rec["action"] not in actions:
        reason = "unknown_action"
    return (None, reason) if reason else (rec, None)


def _is_int(v: Any) -> bool:
    """A JSON integer that fits in int64 (the type of ``event_time_ms`` and ``v``)."""
    return type(v) is int and -(2**63) <= v < 2**63


def _field_problem(rec: dict[str, Any], stream: Stream) -> str | None:
    """The first problem with the fields of a decoded record, checked in contract order."""
    fields = _IMPRESSION_FIELDS if stream == "impression" else _ACTION_FIELDS
    for name in ("v", *fields):
        if rec.get(name) is None:
            return "missing_field"
    for name, tp in fields.items():
        ok = _is_int(rec[name]) if tp is int else isinstance(rec[name], tp)
        if not ok:
            return "bad_type"
    if not _is_int(rec["v"]):
        return "bad_type"
    if rec["v"] != 1:
        return "unsupported_version"
    return None


def _event_time(payload: str) -> int | None:
    """``event_time_ms`` when the payload is a JSON object with an integer there."""
    rec = decode(payload)
    t = rec.get("event_time_ms") if rec is not None else None
    return t if _is_int(t) else None


def run_reference(
    events: list[RawEvent], cfg: JoinConfig, now_ms: int | None = None
) -> ReferenceOutput:
    """Apply the label semantics of ``CONTRACTS.md`` section 4 to ``events`` (arrival order).

    ``now_ms`` is the wall clock for the future-skew check (``None`` disables it). The
    watermark seen by an event is the minimum over both streams of ``max(event_time_ms of
    earlier events of the stream whose time parses and is not in the future)``, minus
    ``watermark_out_of_orderness_ms`` (``-inf`` until both streams had such an event).
    The Flink job's watermark is periodic and per partition, so ``too_late`` decisions agree
    only where they are unambiguous; everything else depends on event times alone. Samples
    are returned sorted by ``sample_id``.
    """
    check_join_config(cfg)
    run = _Run(cfg, now_ms)
    for ev in events:
        run.admit(ev)
    return run.finish()


class _Run:
    """State of one reference run: phase 1 (arrival order) in ``admit``, the rest in ``finish``.

    ``impressions`` and ``actions`` hold the accepted first arrivals by their join keys.
    """

    def __init__(self, cfg: JoinConfig, now_ms: int | None) -> None:
        self.cfg = cfg
        self.now_ms = now_ms
        self.counts = Counts(window_ms=cfg.metrics_window_ms)
        self.dead: list[DeadLetter] = []
        self.impressions: dict[tuple[str, str], dict[str, Any]] = {}
        self.actions: dict[tuple[str, str, str], tuple[RawEvent, dict[str, Any]]] = {}
        self.max_time: dict[str, float] = {"impression": -math.inf, "action": -math.inf}
        self.seen: set[tuple[str, str, str, str]] = set()  # dedup keys, first arrivals
        self.specs = {s.action: s for s in cfg.labels}

    def reject(self, ev: RawEvent, reason: str, stage: Stage, t: int | None) -> None:
        self.dead.append(DeadLetter(ev.stream, ev.payload, reason, stage))
        self.counts.add(ev.stream, "dead_letter", t, reason)

    def _future(self, t: int) -> bool:
        return self.now_ms is not None and t > self.now_ms + self.cfg.max_future_skew_ms

    def admit(self, ev: RawEvent) -> None:
        """Validation, future check, dedup and the too-late check, in arrival order."""
        t_raw = _event_time(ev.payload)
        self.counts.add(ev.stream, "in", t_raw)
        watermark = min(self.max_time.values()) - self.cfg.watermark_out_of_orderness_ms
        if t_raw is not None and not self._future(t_raw):
            self.max_time[ev.stream] = max(self.max_time[ev.stream], t_raw)
        rec, reason = validate(ev, self.cfg)
        if rec is None:
            self.reject(ev, reason or "malformed_json", "validate", t_raw)
            return
        t = rec["event_time_ms"]
        if self._future(t):
            self.reject(ev, "future_event", "validate", t)
            return
        action = rec["action"] if ev.stream == "action" else ""
        key = (ev.stream, rec["request_id"], rec["item_id"], action)
        if key in self.seen:
            self.counts.add(ev.stream, "duplicate", t)
            return
        self.seen.add(key)
        if t <= watermark:
            self.reject(ev, "too_late", "validate", t)
        elif ev.stream == "impression":
            self.impressions[(rec["request_id"], rec["item_id"])] = rec
        else:
            self.actions[(rec["request_id"], rec["item_id"], rec["action"])] = (ev, rec)

    def finish(self) -> ReferenceOutput:
        """Bots, orphans, late actions and labels (order-independent given phase 1)."""
        cfg = self.cfg
        samples: list[Sample] = []
        positives: dict[tuple[str, str], dict[str, int]] = {}
        for ev, rec in self._non_bots():
            t = rec["event_time_ms"]
            spec = self.specs[rec["action"]]
            imp = self.impressions.get((rec["request_id"], rec["item_id"]))
            t_imp = imp["event_time_ms"] if imp else None
            if (
                imp is None
                or t_imp is None
                or not t_imp <= t <= t_imp + spec.window_ms + cfg.late_horizon_ms
            ):
                self.reject(ev, "orphan_action", "join", t)
                continue
            late = t > t_imp + spec.window_ms
            if late:
                self.counts.add("action", "late_action", t)
                if cfg.late_action_policy == "dead_letter":
                    self.reject(ev, "late_action", "join", t)
                    continue
            self.counts.add("action", "labelled", t)
            if late or cfg.strategy == "fake_negative":
                samples.append(_correction(imp, cfg, spec, t))
                self.counts.add("action", "correction", t)
            else:
                positives.setdefault((imp["request_id"], imp["item_id"]), {})[spec.name] = t
        for key, imp in self.impressions.items():
            self.counts.add("impression", "sample", imp["event_time_ms"])
            pos = positives.get(key, {}) if cfg.strategy == "window" else {}
            labels = {s.name: int(s.name in pos) for s in cfg.labels}
            times: dict[str, int | None] = {s.name: pos.get(s.name) for s in cfg.labels}
            samples.append(_sample(imp, labels, times, strategy=cfg.strategy, suffix="0"))
        samples.sort(key=lambda s: s.sample_id)
        return ReferenceOutput(samples, self.dead, self.counts)

    def _non_bots(self) -> list[tuple[RawEvent, dict[str, Any]]]:
        """Unique actions that are not bot traffic; bot actions go to the dead letters."""
        cfg = self.cfg
        if cfg.bot_max_actions <= 0:
            return list(self.actions.values())
        per_user: dict[str, list[int]] = {}
        for _, rec in self.actions.values():
            per_user.setdefault(rec["user_id"], []).append(rec["event_time_ms"])
        kept = []
        for ev, rec in self.actions.values():
            t = rec["event_time_ms"]
            recent = sum(1 for u in per_user[rec["user_id"]] if t - cfg.bot_window_ms <= u <= t)
            if recent > cfg.bot_max_actions:
                self.reject(ev, "bot", "abnormal", t)
            else:
                kept.append((ev, rec))
        return kept


def _p_click(imp: dict[str, Any]) -> float | None:
    """The logged number as written (the job copies its JSON text: 1 stays 1)."""
    p = imp.get("p_click")
    return p if isinstance(p, int | float) and not isinstance(p, bool) else None


def _sample(
    imp: dict[str, Any],
    labels: dict[str, int],
    times: dict[str, int | None],
    *,
    strategy: str,
    suffix: str,
    correction: bool = False,
) -> Sample:
    return Sample(
        sample_id=f"{imp['request_id']}|{imp['item_id']}|{suffix}",
        request_id=imp["request_id"],
        item_id=imp["item_id"],
        user_id=imp["user_id"],
        event_time_ms=imp["event_time_ms"],
        features=imp["features"],
        labels=labels,
        label_time_ms=times,
        strategy=strategy,
        correction=correction,
        p_click=_p_click(imp),
    )


def _correction(imp: dict[str, Any], cfg: JoinConfig, spec: LabelSpec, t: int) -> Sample:
    """A positive correction record: only ``spec``'s label is 1; its id ends in the label name."""
    labels = {s.name: int(s.name == spec.name) for s in cfg.labels}
    times: dict[str, int | None] = {
        s.name: (t if s.name == spec.name else None) for s in cfg.labels
    }
    return _sample(
        imp, labels, times, strategy=cfg.strategy, suffix=f"0|{spec.name}", correction=True
    )
