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

from sample_join.errors import BadJoinConfig

__all__ = ["JoinConfig", "LabelSpec", "check_join_config"]


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
    late_horizon_ms: int = 3_600_000  # an action this long after its window closed is still late
    max_future_skew_ms: int = 60_000
    dedup_ttl_ms: int = 7_200_000  # dedup state kept this long after the event (event time)
    bot_max_actions: int = 100
    bot_window_ms: int = 60_000
    watermark_out_of_orderness_ms: int = 5_000
    source_idleness_ms: int = 10_000
    transaction_timeout_ms: int = 600_000
    metrics_window_ms: int = 60_000
    metrics_flush_ms: int = 5_000  # processing time between two metric increments per window
    group_id: str = "fluxrec-join"  # Kafka consumer group and transactional-id prefix


#: The broker default of ``transaction.max.timeout.ms`` (the stack starts Kafka with it).
BROKER_MAX_TRANSACTION_TIMEOUT_MS = 900_000


def check_join_config(cfg: JoinConfig) -> None:
    """Raise :class:`BadJoinConfig`, naming the ``join.*`` key and the fix, unless usable."""

    def bad(key: str, problem: str, fix: str) -> BadJoinConfig:
        return BadJoinConfig(f"join.{key}: {problem}; {fix}")

    if not cfg.labels:
        raise bad("labels", "empty", "configure at least one label")
    for field_name, values in (
        ("name", [s.name for s in cfg.labels]),
        ("action", [s.action for s in cfg.labels]),
    ):
        if len(set(values)) != len(values):
            raise bad(f"labels[].{field_name}", f"duplicates in {values}", "make each unique")
    for i, spec in enumerate(cfg.labels):
        if spec.window_ms <= 0:
            raise bad(f"labels[{i}].window_ms", f"{spec.window_ms}", "use a window > 0")
        if not spec.name.replace("_", "").isalnum() or not spec.action:
            raise bad(f"labels[{i}].name", f"{spec.name!r}", "use letters, digits and _")
    for key in ("late_horizon_ms", "bot_max_actions", "source_idleness_ms"):
        if getattr(cfg, key) < 0:
            raise bad(key, f"{getattr(cfg, key)} < 0", "use 0 or more")
    for key in (
        "max_future_skew_ms",
        "dedup_ttl_ms",
        "bot_window_ms",
        "watermark_out_of_orderness_ms",
        "metrics_window_ms",
        "metrics_flush_ms",
    ):
        if getattr(cfg, key) <= 0:
            raise bad(key, f"{getattr(cfg, key)}", "use a value > 0")
    if not 0 < cfg.transaction_timeout_ms <= BROKER_MAX_TRANSACTION_TIMEOUT_MS:
        raise bad(
            "transaction_timeout_ms",
            f"{cfg.transaction_timeout_ms}",
            f"use 1..{BROKER_MAX_TRANSACTION_TIMEOUT_MS} (the broker's transaction.max.timeout.ms "
            "default; raise that on the broker first for more)",
        )
