"""Event streams for testing the join against the reference (shipped so users can test theirs).

A :class:`Request` describes one impression and what happens to it; :func:`build_stream`
turns a list of them into raw events in *arrival order* such that every event arrives less
than ``out_of_orderness / 2`` after its event time. Then no event is ever at or behind a
watermark (``too_late`` never applies) and the Flink job's output depends on event time
only, so it must equal :func:`sample_join.reference.run_reference` record for record::

    reqs = [Request("r1", "i1", "u1", t_ms=T0, actions=[Act("click", 3_000)]),
            Request("r2", "i1", "u2", t_ms=T0 + 500, impression=False,       # orphan click
                    actions=[Act("click", 1_000)])]
    events = build_stream(reqs, out_of_orderness_ms=2_000, seed=1)

Duplicates arrive again a little later (same payload); ``delay_ms`` of an action is relative
to its request's time and may be negative (an action before its impression: an orphan).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sample_join.reference import RawEvent, decode

SCHEMAS = Path(__file__).resolve().parent / "schemas"

__all__ = [
    "BAD_PAYLOADS",
    "Act",
    "Request",
    "build_stream",
    "produce_events",
    "schema_validator",
]


@dataclass(frozen=True)
class Act:
    """An action of ``action`` type, ``delay_ms`` after the request; ``dup`` sends it twice."""

    action: str
    delay_ms: int
    dup: bool = False


@dataclass(frozen=True)
class Request:
    """An impression (unless ``impression=False``) and its actions."""

    request_id: str
    item_id: str
    user_id: str
    t_ms: int
    impression: bool = True
    dup: bool = False
    p_click: float | None = None
    actions: Sequence[Act] = field(default_factory=tuple)


#: Invalid payloads (``@T`` stands for the event time, ``@F`` for a time far in the
#: future), one or more per validation reason that does not depend on the watermark.
BAD_PAYLOADS: tuple[tuple[str, str, str], ...] = (
    ("impression", "{not json", "malformed_json"),
    ("impression", "[1, 2]", "malformed_json"),
    (
        "impression",
        '{"v":1,"request_id":"x","item_id":"i","user_id":"u","event_time_ms":@T}',
        "missing_field",
    ),
    (
        "impression",
        '{"v":1,"request_id":"x","item_id":"i","user_id":"u","event_time_ms":@T,"features":[]}',
        "bad_type",
    ),
    (
        "impression",
        '{"v":2,"request_id":"x","item_id":"i","user_id":"u","event_time_ms":@T,"features":{}}',
        "unsupported_version",
    ),
    (
        "action",
        '{"v":1,"request_id":5,"item_id":"i","user_id":"u","action":"click","event_time_ms":@T}',
        "bad_type",
    ),
    (
        "action",
        '{"v":1,"request_id":"r","item_id":"i","user_id":"u","action":"click","event_time_ms":"1"}',
        "bad_type",
    ),
    (
        "action",
        '{"v":1,"request_id":"r","item_id":"i","user_id":null,"action":"click","event_time_ms":@T}',
        "missing_field",
    ),
    (
        "action",
        '{"v":1,"request_id":"r","item_id":"i","user_id":"u","action":"like","event_time_ms":@T}',
        "unknown_action",
    ),
    (
        "action",
        '{"v":1,"request_id":"r","item_id":"i","user_id":"u","action":"click",'
        '"event_time_ms":@T.5}',
        "bad_type",
    ),
    (  # @F: about 115 days ahead of @T, beyond any clock skew
        "impression",
        '{"v":1,"request_id":"f","item_id":"i","user_id":"u","event_time_ms":@F,"features":{}}',
        "future_event",
    ),
    (  # beyond int64
        "action",
        '{"v":1,"request_id":"r","item_id":"i","user_id":"u","action":"click",'
        '"event_time_ms":99999999999999999999}',
        "bad_type",
    ),
)


def _impression(r: Request) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "v": 1,
        "request_id": r.request_id,
        "item_id": r.item_id,
        "user_id": r.user_id,
        "event_time_ms": r.t_ms,
        "features": {
            "sparse": {"user_id": [r.user_id], "item_id": [r.item_id]},
            "dense": {"hour": (r.t_ms // 3_600_000) % 24},
        },
    }
    if r.p_click is not None:
        rec["p_click"] = r.p_click
    return rec


def build_stream(
    requests: Sequence[Request],
    out_of_orderness_ms: int,
    seed: int = 0,
    bad_at_ms: int | None = None,
) -> list[RawEvent]:
    """Raw events in arrival order; each arrives within ``out_of_orderness_ms / 2`` of its
    event time. ``bad_at_ms``: also add every :data:`BAD_PAYLOADS` entry at that time."""
    rng = random.Random(seed)
    jitter = max(out_of_orderness_ms // 2 - 1, 0)
    timed: list[tuple[int, int, RawEvent]] = []

    def emit(t: int, ev: RawEvent, dup: bool = False) -> None:
        for _ in range(2 if dup else 1):
            timed.append((t + rng.randint(0, jitter), len(timed), ev))

    for r in requests:
        if r.impression:
            emit(r.t_ms, RawEvent("impression", json.dumps(_impression(r))), r.dup)
        for a in r.actions:
            t = r.t_ms + a.delay_ms
            rec = {
                "v": 1,
                "request_id": r.request_id,
                "item_id": r.item_id,
                "user_id": r.user_id,
                "action": a.action,
                "event_time_ms": t,
            }
            emit(t, RawEvent("action", json.dumps(rec)), a.dup)
    if bad_at_ms is not None:
        for stream, text, _reason in BAD_PAYLOADS:
            payload = text.replace("@F", str(bad_at_ms + 10**10)).replace("@T", str(bad_at_ms))
            emit(bad_at_ms, RawEvent(stream, payload))  # type: ignore[arg-type]
    timed.sort(key=lambda x: (x[0], x[1]))
    return [ev for _, _, ev in timed]


def _key(payload: str) -> bytes:
    rec = decode(payload)
    return str(rec.get("request_id", "")).encode("utf-8", "surrogatepass") if rec else b""


def produce_events(
    bootstrap: str, impressions: str, actions: str, events: Sequence[RawEvent]
) -> None:
    """Send ``events`` in order (key = request_id) to their topics; waits until acknowledged.

    One producer with one request in flight keeps the arrival order within each partition.
    """
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap, max_in_flight_requests_per_connection=1, linger_ms=5
    )
    try:
        for ev in events:
            topic = impressions if ev.stream == "impression" else actions
            # surrogateescape: a payload decoded so from invalid UTF-8 gets its bytes back
            value = ev.payload.encode("utf-8", "surrogateescape")
            producer.send(topic, value, key=_key(ev.payload))
        producer.flush()
    finally:
        producer.close()


def schema_validator(name: str) -> Any:
    """A ``jsonschema`` validator for ``schemas/{name}.schema.json`` (refs between the
    schemas resolve); needs the ``jsonschema`` package (``fluxrec[dev]``)."""
    import jsonschema
    from referencing import Registry, Resource

    registry: Registry[Any] = Registry()
    for f in SCHEMAS.glob("*.schema.json"):
        registry = registry.with_resource(f.name, Resource.from_contents(json.loads(f.read_text())))
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)
