"""Config section of the ``sample_join`` package (read by :mod:`fluxrec.config`).

Example (``configs/local.yaml``)::

    join:
      labels:
        - {name: click, action: click, window_ms: 300000}
        - {name: conversion, action: conversion, window_ms: 3600000}
      strategy: window            # window | fake_negative
      late_action_policy: dead_letter   # correction | dead_letter
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["JoinConfig", "LabelSpec"]


@dataclass(frozen=True)
class LabelSpec:
    """One label: ``name`` in the sample, the ``action`` type that makes it 1, its delay window.

    An impression at event time ``t`` gets ``labels[name] = 1`` when an action of type
    ``action`` for the same (request_id, item_id) has event time in ``[t, t + window_ms]``.
    """

    name: str = "click"
    action: str = "click"
    window_ms: int = 300_000


def _default_labels() -> list[LabelSpec]:
    return [
        LabelSpec("click", "click", 300_000),
        LabelSpec("conversion", "conversion", 3_600_000),
    ]


@dataclass(frozen=True)
class JoinConfig:
    """The sample-join job: labels, windows, validation, dedup, dead letters.

    Every field has a default so existing deployment files stay valid.
    Times are milliseconds of event time unless the name says otherwise.
    """

    labels: list[LabelSpec] = field(default_factory=_default_labels)
    strategy: Literal["window", "fake_negative"] = "window"
    late_action_policy: Literal["correction", "dead_letter"] = "dead_letter"
    allowed_lateness_ms: int = 60_000
    max_future_skew_ms: int = 60_000
    dedup_ttl_ms: int = 7_200_000
    bot_max_actions: int = 100
    bot_window_ms: int = 60_000
    watermark_out_of_orderness_ms: int = 5_000
    source_idleness_ms: int = 10_000
    transaction_timeout_ms: int = 600_000
    metrics_window_ms: int = 60_000
