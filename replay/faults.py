"""Deliberate defects, so that a demo exercises every dead-letter path of the join.

:func:`inject` passes every event through and, after it, may add defective copies
(``Event.fault`` says which), each decided by its own random draw per event:

==================  ================  ===================================================
config fraction     ``Event.fault``   the copy
==================  ================  ===================================================
``duplicate``       duplicate         the same key and payload again (the join counts it)
``malformed``       one of ->         chosen uniformly among:
                    malformed_json    the payload cut in half
                    missing_field     ``item_id`` removed
                    bad_type          ``event_time_ms`` as a string (``"1700000000000"``)
                    unsupported_ver.  ``"v": 2``
                    unknown_action    (actions only) ``"action": "x-unconfigured"``
``orphan``          orphan_action     (actions only) ``request_id`` ``<request_id>.orphan``,
                                      a request that has no impression
==================  ================  ===================================================

Every copy keeps the event time of its original, so the replay stays in event-time order.
The draws come from a random stream seeded by ``seed``: deterministic.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from replay.settings import FaultsConfig
from replay.types import Event, Fault, Stream, dumps

__all__ = ["UNKNOWN_ACTION", "inject", "spoil"]

UNKNOWN_ACTION = "x-unconfigured"
_IMPRESSION_KINDS = (
    Fault.MALFORMED_JSON,
    Fault.MISSING_FIELD,
    Fault.BAD_TYPE,
    Fault.UNSUPPORTED_VERSION,
)
_ACTION_KINDS = (*_IMPRESSION_KINDS, Fault.UNKNOWN_ACTION)


def inject(events: Iterable[Event], faults: FaultsConfig, seed: int) -> Iterator[Event]:
    """``events`` with defective copies added after some of them (see the module doc)."""
    if not (faults.duplicate or faults.malformed or faults.orphan):
        yield from events
        return
    rng = random.Random(f"faults:{seed}")
    for ev in events:
        yield ev
        dup, bad, orphan, kind = rng.random(), rng.random(), rng.random(), rng.random()
        if dup < faults.duplicate:
            yield replace(ev, fault=Fault.DUPLICATE)
        if bad < faults.malformed:
            kinds = _IMPRESSION_KINDS if ev.stream is Stream.IMPRESSION else _ACTION_KINDS
            yield spoil(ev, kinds[int(kind * len(kinds))])
        if ev.stream is Stream.ACTION and orphan < faults.orphan:
            yield spoil(ev, Fault.ORPHAN_ACTION)


def spoil(ev: Event, fault: Fault) -> Event:
    """A copy of ``ev`` with the defect ``fault`` (its key changes only for orphans)."""
    if fault is Fault.MALFORMED_JSON:
        return replace(ev, payload=ev.payload[: len(ev.payload) // 2], fault=fault)
    if fault is Fault.DUPLICATE:
        return replace(ev, fault=fault)
    obj: dict[str, Any] = json.loads(ev.payload)
    key = ev.key
    if fault is Fault.MISSING_FIELD:
        del obj["item_id"]
    elif fault is Fault.BAD_TYPE:
        obj["event_time_ms"] = str(obj["event_time_ms"])
    elif fault is Fault.UNSUPPORTED_VERSION:
        obj["v"] = 2
    elif fault is Fault.UNKNOWN_ACTION:
        obj["action"] = UNKNOWN_ACTION
    else:  # ORPHAN_ACTION
        key = obj["request_id"] = f"{obj['request_id']}.orphan"
    return replace(ev, key=key, payload=dumps(obj), fault=fault)
