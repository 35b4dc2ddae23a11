"""Pure-Python reference implementation of the label semantics (``CONTRACTS.md`` section 4).

It consumes raw events in arrival order and returns what the Flink job must produce:
samples, dead letters and reconciliation counts. It keeps all state in memory and is
meant for tests and small replays, not production volume.

Worked example (labels click 5 min, strategy ``window``)::

    events = [
        RawEvent("impression", '{"v":1,"request_id":"r1","item_id":"i1","user_id":"u1",'
                               '"event_time_ms":1000,"features":{"sparse":{},"dense":{}}}'),
        RawEvent("action", '{"v":1,"request_id":"r1","item_id":"i1","action":"click",'
                           '"event_time_ms":4000}'),
        RawEvent("action", '{"v":1,"request_id":"r9","item_id":"i1","action":"click",'
                           '"event_time_ms":4000}'),
    ]
    out = run_reference(events, cfg)
    out.samples[0].labels == {"click": 1, "conversion": 0}
    out.dead_letters[0].reason == "orphan_action"
    out.counts.balanced()          # 3 in == 1 sample + 1 labelled action + 0 dup + 1 dead
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from sample_join.errors import BadLabelConfig
from sample_join.settings import JoinConfig, LabelSpec

__all__ = [
    "DEAD_LETTER_REASONS",
    "Counts",
    "DeadLetter",
    "RawEvent",
    "ReferenceOutput",
    "Sample",
    "check_labels",
    "run_reference",
    "validate",
]

Stream = Literal["impression", "action"]
Stage = Literal["validate", "join", "abnormal"]

#: Every reason a dead letter can carry (``CONTRACTS.md`` section 3).
DEAD_LETTER_REASONS = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "unsupported_version",
    "unknown_action",
    "future_event",
    "too_late",
    "orphan_action",
    "bot",
    "late_action",
)


@dataclass(frozen=True)
class RawEvent:
    """One record as read from Kafka: which stream and the undecoded payload."""

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


@dataclass
class Counts:
    """Reconciliation counts over a whole run (the job publishes them per event-time window).

    Identity: ``impressions_in + actions_in == impression_samples + actions_labelled +
    duplicates + sum(dead_letters.values())``. Late actions are counted in ``late_actions``
    and also either in ``actions_labelled`` (policy ``correction``) or in dead letters.
    """

    impressions_in: int = 0
    actions_in: int = 0
    impression_samples: int = 0
    actions_labelled: int = 0
    duplicates: int = 0
    late_actions: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)

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


_IMPRESSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "request_id": str,
    "item_id": str,
    "user_id": str,
    "event_time_ms": int,
    "features": dict,
}
_ACTION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "request_id": str,
    "item_id": str,
    "action": str,
    "event_time_ms": int,
}


def check_labels(labels: list[LabelSpec]) -> None:
    """Raise :class:`BadLabelConfig` unless the label specs are usable."""
    if not labels:
        raise BadLabelConfig("join.labels is empty: configure at least one label")
    names = [spec.name for spec in labels]
    if len(set(names)) != len(names):
        raise BadLabelConfig(f"join.labels has duplicate names {names}: make each unique")
    for spec in labels:
        if spec.window_ms <= 0:
            raise BadLabelConfig(f"join.labels[{spec.name}].window_ms={spec.window_ms}: use > 0")


def validate(event: RawEvent, cfg: JoinConfig) -> tuple[dict[str, Any] | None, str | None]:
    """Decode and check one event; return (record, None) or (None, reason)."""
    try:
        rec = json.loads(event.payload)
    except ValueError:
        return None, "malformed_json"
    if not isinstance(rec, dict):
        return None, "malformed_json"
    reason = _field_problem(rec, event.stream)
    actions = {s.action for s in cfg.labels}
    if reason is None and event.stream == "action" and rec["action"] not in actions:
        reason = "unknown_action"
    return (None, reason) if reason else (rec, None)


def _field_problem(rec: dict[str, Any], stream: Stream) -> str | None:
    """The first problem with the fields of a decoded record, checked in contract order."""
    fields = _IMPRESSION_FIELDS if stream == "impression" else _ACTION_FIELDS
    for name in ("v", *fields):
        if rec.get(name) is None:
            return "missing_field"
    if type(rec["v"]) is not int:
        return "bad_type"
    if rec["v"] != 1:
        return "unsupported_version"
    for name, tp in fields.items():
        ok = type(rec[name]) is int if tp is int else isinstance(rec[name], tp)
        if not ok:
            return "bad_type"
    return None


def run_reference(
    events: list[RawEvent], cfg: JoinConfig, now_ms: int | None = None
) -> ReferenceOutput:
    """Apply the label semantics of ``CONTRACTS.md`` section 4 to ``events`` (arrival order).

    ``now_ms`` is the wall clock for the future-skew check (``None`` disables it). The
    watermark seen by an event is ``max(event_time_ms of earlier accepted events) -
    watermark_out_of_orderness_ms``. Samples are returned sorted by ``sample_id``.
    """
    check_labels(cfg.labels)
    run = _Run(cfg, now_ms)
    for ev in events:
        run.admit(ev)
    return run.finish()


@dataclass
class _Action:
    event: RawEvent
    rec: dict[str, Any]
    watermark: float


class _Run:
    """State of one reference run: phase 1 (arrival order) in ``admit``, the rest in ``finish``."""

    def __init__(self, cfg: JoinConfig, now_ms: int | None) -> None:
        self.cfg = cfg
        self.now_ms = now_ms
        self.counts = Counts()
        self.dead: list[DeadLetter] = []
        self.impressions: dict[tuple[str, str], dict[str, Any]] = {}
        self.actions: dict[tuple[str, str, str], _Action] = {}
        self.max_time = -math.inf
        self.specs = {s.action: s for s in cfg.labels}

    def reject(self, ev: RawEvent, reason: str, stage: Stage) -> None:
        self.dead.append(DeadLetter(ev.stream, ev.payload, reason, stage))
        self.counts.dead_letters[reason] += 1

    def admit(self, ev: RawEvent) -> None:
        """Validation, future/too-late checks and dedup, in arrival order."""
        if ev.stream == "impression":
            self.counts.impressions_in += 1
        else:
            self.counts.actions_in += 1
        rec, reason = validate(ev, self.cfg)
        if rec is None:
            self.reject(ev, reason or "malformed_json", "validate")
            return
        t = rec["event_time_ms"]
        watermark = self.max_time - self.cfg.watermark_out_of_orderness_ms
        if self.now_ms is not None and t > self.now_ms + self.cfg.max_future_skew_ms:
            self.reject(ev, "future_event", "validate")
            return
        if t < watermark - self.cfg.allowed_lateness_ms:
            self.reject(ev, "too_late", "validate")
            return
        self.max_time = max(self.max_time, t)
        if ev.stream == "impression":
            key = (rec["request_id"], rec["item_id"])
            if key in self.impressions:
                self.counts.duplicates += 1
            else:
                self.impressions[key] = rec
        else:
            akey = (rec["request_id"], rec["item_id"], rec["action"])
            if akey in self.actions:
                self.counts.duplicates += 1
            else:
                self.actions[akey] = _Action(ev, rec, watermark)

    def finish(self) -> ReferenceOutput:
        """Orphans, bots, late actions and labels (order-independent given phase 1)."""
        joined = self._join_actions()
        samples, positives = self._classify(joined)
        for key, imp in self.impressions.items():
            self.counts.impression_samples += 1
            pos = positives.get(key, {})
            labels = {s.name: int(s.name in pos) for s in self.cfg.labels}
            times: dict[str, int | None] = {s.name: pos.get(s.name) for s in self.cfg.labels}
            samples.append(_sample(imp, labels, times, strategy=self.cfg.strategy, suffix="0"))
        samples.sort(key=lambda s: s.sample_id)
        return ReferenceOutput(samples, self.dead, self.counts)

    def _join_actions(self) -> list[tuple[_Action, dict[str, Any]]]:
        """Pair each unique action with its impression; the others are orphans."""
        joined: list[tuple[_Action, dict[str, Any]]] = []
        for act in self.actions.values():
            imp = self.impressions.get((act.rec["request_id"], act.rec["item_id"]))
            window = self.specs[act.rec["action"]].window_ms
            t = act.rec["event_time_ms"]
            if imp is None or not imp["event_time_ms"] <= t <= imp["event_time_ms"] + window:
                self.reject(act.event, "orphan_action", "join")
            else:
                joined.append((act, imp))
        return joined

    def _classify(
        self, joined: list[tuple[_Action, dict[str, Any]]]
    ) -> tuple[list[Sample], dict[tuple[str, str], dict[str, int]]]:
        """Bots, late actions, corrections; returns correction samples and window positives."""
        cfg = self.cfg
        per_user: dict[str, list[int]] = {}
        for act, imp in joined:
            per_user.setdefault(imp["user_id"], []).append(act.rec["event_time_ms"])
        samples: list[Sample] = []
        positives: dict[tuple[str, str], dict[str, int]] = {}
        for act, imp in joined:
            t = act.rec["event_time_ms"]
            recent = sum(1 for u in per_user[imp["user_id"]] if t - cfg.bot_window_ms <= u <= t)
            spec = self.specs[act.rec["action"]]
            if recent > cfg.bot_max_actions:
                self.reject(act.event, "bot", "abnormal")
            elif act.watermark > imp["event_time_ms"] + spec.window_ms:
                self.counts.late_actions += 1
                if cfg.late_action_policy == "dead_letter":
                    self.reject(act.event, "late_action", "join")
                else:
                    samples.append(_correction(imp, cfg, spec, t))
                    self.counts.actions_labelled += 1
            else:
                self.counts.actions_labelled += 1
                if cfg.strategy == "fake_negative":
                    samples.append(_correction(imp, cfg, spec, t))
                else:
                    positives.setdefault((imp["request_id"], imp["item_id"]), {})[spec.name] = t
        return samples, positives


def _sample(
    imp: dict[str, Any],
    labels: dict[str, int],
    times: dict[str, int | None],
    *,
    strategy: str,
    suffix: str,
    correction: bool = False,
) -> Sample:
    p = imp.get("p_click")
    has_p = isinstance(p, (int, float)) and not isinstance(p, bool)
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
        p_click=float(p) if has_p else None,  # type: ignore[arg-type]
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
