"""Reconciliation from the metrics topic (``CONTRACTS.md`` sections 4.8 and 5).

The topic is an upsert changelog: the newest value of each key is a running total. Per
event-time window and stream the identity is::

    in == sample + labelled + duplicate + dead_letter          (sample: impressions only,
                                                                labelled: actions only)

>>> t = totals([b'{"v":1,"window_start_ms":0,"window_end_ms":60000,"stream":"action",'
...             b'"kind":"in","reason":null,"count":2}'])
>>> [w.balance for w in windows(t)]
[2]
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from sample_join.errors import SampleJoinError

__all__ = ["MetricKey", "WindowCounts", "totals", "windows"]

#: ``(window_start_ms, stream, kind, reason)``
MetricKey = tuple[int, str, str, str | None]

_OUT_KINDS = ("sample", "labelled", "duplicate", "dead_letter")


def totals(values: Iterable[bytes | None]) -> dict[MetricKey, int]:
    """The newest total per key from metric record values in topic order (None: tombstone)."""
    out: dict[MetricKey, int] = {}
    for raw in values:
        if raw is None:
            continue
        try:
            m = json.loads(raw)
            key = (int(m["window_start_ms"]), str(m["stream"]), str(m["kind"]), m["reason"])
            out[key] = int(m["count"])
        except (ValueError, KeyError, TypeError) as e:
            raise SampleJoinError(f"metrics record {raw[:200]!r} is not a v1 metric: {e}") from e
    return out


@dataclass
class WindowCounts:
    """The totals of one (window, stream); ``balance`` is ``in - outs`` (0 when reconciled)."""

    window_start_ms: int
    stream: str
    counts: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)

    @property
    def balance(self) -> int:
        outs = sum(self.counts.get(k, 0) for k in _OUT_KINDS if k != "dead_letter")
        return self.counts.get("in", 0) - outs - sum(self.dead_letters.values())


def windows(t: dict[MetricKey, int]) -> list[WindowCounts]:
    """The totals grouped per (window, stream), in window order."""
    out: dict[tuple[int, str], WindowCounts] = {}
    for (start, stream, kind, reason), n in t.items():
        w = out.setdefault((start, stream), WindowCounts(start, stream))
        if kind == "dead_letter":
            w.dead_letters[str(reason)] = w.dead_letters.get(str(reason), 0) + n
        w.counts[kind] = w.counts.get(kind, 0) + n
    return [out[k] for k in sorted(out)]
