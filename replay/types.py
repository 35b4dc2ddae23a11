"""Records of the replay package: typed events (``sample_join/CONTRACTS.md`` v1) and the
wire form they take on their way to Kafka.

A source yields :class:`Impression` and :class:`Action` records in event-time order;
:func:`to_event` turns each into an :class:`Event`, the ``(stream, key, payload,
event_time_ms)`` tuple that is produced to Kafka::

    Impression(request_id="r-17", item_id="i-3", user_id="u-5",
               event_time_ms=1700000017000,
               sparse={"user_id": ("u-5",), "item_id": ("i-3",), "category": ("c-1",)},
               dense={"price": 12.5}, p_click=0.031)
    -> Event(stream=Stream.IMPRESSION, key="r-17", event_time_ms=1700000017000,
             payload='{"v":1,"request_id":"r-17","item_id":"i-3","user_id":"u-5",'
                     '"event_time_ms":1700000017000,"features":{"sparse":{"user_id":["u-5"],'
                     '"item_id":["i-3"],"category":["c-1"]},"dense":{"price":12.5}},'
                     '"p_click":0.031}')

    Action(request_id="r-17", item_id="i-3", user_id="u-5", action="click",
           event_time_ms=1700000031500)
    -> Event(stream=Stream.ACTION, key="r-17", event_time_ms=1700000031500,
             payload='{"v":1,"request_id":"r-17","item_id":"i-3","user_id":"u-5",'
                     '"action":"click","event_time_ms":1700000031500}')

Order: by event time; at equal times impressions come before actions, then the order the
source made them in (``order_key``). ``Event.fault`` is set only on events that
:mod:`replay.faults` injected on purpose.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Action", "Event", "Fault", "Impression", "Record", "Stream", "order_key", "to_event"]

CONTRACT_VERSION = 1


class Stream(enum.StrEnum):
    """Which input topic an event goes to (``kafka.topics.impressions`` / ``.actions``)."""

    IMPRESSION = "impression"
    ACTION = "action"


class Fault(enum.StrEnum):
    """A defect injected on purpose; the values are the join's dead-letter reasons
    (``CONTRACTS.md`` section 3), except ``duplicate``, which the join counts instead."""

    MALFORMED_JSON = "malformed_json"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_ACTION = "unknown_action"
    ORPHAN_ACTION = "orphan_action"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Impression:
    """An item shown to a user, with the features logged at serving time.

    ``sparse``: feature name -> tuple of string ids; ``dense``: name -> finite number;
    ``p_click``: the true click probability (synthetic source only; never trained on).
    """

    request_id: str
    item_id: str
    user_id: str
    event_time_ms: int
    sparse: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dense: Mapping[str, float] = field(default_factory=dict)
    p_click: float | None = None

    stream = Stream.IMPRESSION

    def to_json(self) -> dict[str, Any]:
        """The v1 impression object, fields in contract order."""
        d: dict[str, Any] = {
            "v": CONTRACT_VERSION,
            "request_id": self.request_id,
            "item_id": self.item_id,
            "user_id": self.user_id,
            "event_time_ms": self.event_time_ms,
            "features": {
                "sparse": {k: list(v) for k, v in self.sparse.items()},
                "dense": dict(self.dense),
            },
        }
        if self.p_click is not None:
            d["p_click"] = self.p_click
        return d


@dataclass(frozen=True)
class Action:
    """A user's action (``click``, ``conversion``, ...) on the item of an impression;
    ``user_id`` is the impression's user (the join counts actions per user for bots)."""

    request_id: str
    item_id: str
    user_id: str
    action: str
    event_time_ms: int

    stream = Stream.ACTION

    def to_json(self) -> dict[str, Any]:
        """The v1 action object, fields in contract order."""
        return {
            "v": CONTRACT_VERSION,
            "request_id": self.request_id,
            "item_id": self.item_id,
            "user_id": self.user_id,
            "action": self.action,
            "event_time_ms": self.event_time_ms,
        }


Record = Impression | Action


@dataclass(frozen=True)
class Event:
    """One Kafka record to produce: the topic's stream, key (= request_id), the JSON value
    as text, its event time, and the injected fault if it is a deliberate defect."""

    stream: Stream
    key: str
    payload: str
    event_time_ms: int
    fault: Fault | None = None


def dumps(obj: Mapping[str, Any]) -> str:
    """Compact JSON (no spaces), the form every payload takes; NaN/inf are refused."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_INF = float("inf")


class _NotPlain(Exception):
    """A value the template does not write (the json module does, or refuses it)."""


_enc = json.encoder.encode_basestring  # a str as dumps writes it (C, ensure_ascii=False)


def _num(x: Any) -> str:
    """An exact int or a finite float as :func:`dumps` writes it."""
    t = type(x)
    if t is float and -_INF < x < _INF:
        return float.__repr__(x)
    if t is int:
        return int.__repr__(x)
    raise _NotPlain


def _features(rec: Impression) -> str:
    """``"features":{...}`` and ``p_click`` of an impression, closing the object."""
    sparse = []
    for k, ids in rec.sparse.items():
        if type(k) is not str or type(ids) is not tuple:
            raise _NotPlain
        for i in ids:
            if type(i) is not str:
                raise _NotPlain
        sparse.append(f"{_enc(k)}:[{','.join(map(_enc, ids))}]")
    dense = []
    for k, v in rec.dense.items():
        if type(k) is not str:
            raise _NotPlain
        dense.append(f"{_enc(k)}:{_num(v)}")
    tail = "}" if rec.p_click is None else f',"p_click":{_num(rec.p_click)}}}'
    return f'"features":{{"sparse":{{{",".join(sparse)}}},"dense":{{{",".join(dense)}}}}}{tail}'


def _fast_payload(rec: Record, t: int) -> str:
    """The payload :func:`dumps` makes of ``rec.to_json()`` at time ``t``, written from a
    template (a third of the time); raises :class:`_NotPlain` when a value is not a plain
    str, int or finite float (the json module then writes it, or refuses NaN and inf)."""
    rid, iid, uid = rec.request_id, rec.item_id, rec.user_id
    if type(rid) is not str or type(iid) is not str or type(uid) is not str or type(t) is not int:
        raise _NotPlain
    head = (
        f'{{"v":{CONTRACT_VERSION},"request_id":{_enc(rid)},'
        f'"item_id":{_enc(iid)},"user_id":{_enc(uid)},'
    )
    if type(rec) is Impression:
        return f'{head}"event_time_ms":{t},{_features(rec)}'
    if type(rec) is not Action or type(rec.action) is not str:
        raise _NotPlain
    return f'{head}"action":{_enc(rec.action)},"event_time_ms":{t}}}'


def to_event(rec: Record, event_time_ms: int | None = None) -> Event:
    """The wire form of a record (``key`` is its ``request_id``), at ``event_time_ms``
    instead of the record's own time when given (cheaper than a copy of the record).

    The payload is :func:`dumps` of ``rec.to_json()`` (with that time), byte for byte;
    records of plain strs and numbers are written from a template instead of through the
    ``json`` module, which costs a third of the time.
    """
    if event_time_ms is None:
        event_time_ms = rec.event_time_ms
    try:
        payload = _fast_payload(rec, event_time_ms)
    except _NotPlain:
        obj = rec.to_json()
        obj["event_time_ms"] = event_time_ms
        payload = dumps(obj)
    return Event(rec.stream, rec.request_id, payload, event_time_ms)


def order_key(rec: Record, seq: int) -> tuple[int, int, int]:
    """Sort key of the replay order: event time, impressions first, then ``seq``."""
    return (rec.event_time_ms, 0 if rec.stream is Stream.IMPRESSION else 1, seq)
