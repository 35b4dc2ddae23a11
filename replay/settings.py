"""Config section of the ``replay`` package (read by :mod:`fluxrec.config`).

Example (``configs/local.yaml``; every key has a default)::

    replay:
      source: synthetic          # synthetic | obd | taobao | tencent
      path: null                 # folder or file of a real log (obd, taobao, tencent)
      rate: 0                    # events/s to Kafka; 0 = as fast as possible
      time_shift: now            # now | none | live
      delays:
        click: {median_s: 15, sigma: 1.0}
      faults: {malformed: 0.0, duplicate: 0.0, orphan: 0.0}

:func:`check` rejects unusable values with a :class:`~replay.errors.BadReplayConfig` that
names the key; the loader has already checked the types.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from replay.errors import BadReplayConfig

__all__ = [
    "TAOBAO_BEHAVIORS",
    "ClickDelay",
    "Compression",
    "ConversionDelay",
    "DelayConfig",
    "DelaysConfig",
    "FaultsConfig",
    "ProducerConfig",
    "ReplayConfig",
    "SourceName",
    "SyntheticConfig",
    "TaobaoConfig",
    "TencentConfig",
    "TimeShift",
    "check",
]

SourceName = Literal["synthetic", "obd", "taobao", "tencent"]
TimeShift = Literal["now", "none", "live"]
Compression = Literal["none", "lz4", "gzip"]

_Bad = Callable[[str, str, str], BadReplayConfig]

#: Taobao UserBehavior behaviours that can become actions (``pv`` is the exposure).
TAOBAO_BEHAVIORS = ("cart", "fav", "buy")


@dataclass(frozen=True)
class DelayConfig:
    """A log-normal delay: ``median_s`` seconds, ``sigma`` the std-dev of ``ln(delay)``.

    ``sigma: 1.0`` puts 90% of delays within ``median / 5.2 .. median * 5.2``.
    """

    median_s: float = 15.0
    sigma: float = 1.0


@dataclass(frozen=True)
class ClickDelay(DelayConfig):
    """Impression -> click: seconds to minutes."""

    median_s: float = 15.0


@dataclass(frozen=True)
class ConversionDelay(DelayConfig):
    """Click -> conversion: minutes to hours."""

    median_s: float = 600.0


@dataclass(frozen=True)
class DelaysConfig:
    """Delays of the simulated actions: impression -> click (synthetic and obd),
    click -> conversion (synthetic)."""

    click: ClickDelay = field(default_factory=ClickDelay)
    conversion: ConversionDelay = field(default_factory=ConversionDelay)


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic generator: who sees what, when, and the hidden click model.

    Requests arrive as a Poisson process of ``requests_per_s`` (event time) from
    ``start_ms``; each shows ``slate_size`` distinct items at positions 1..slate_size.
    Users and items are drawn from bounded Zipf laws (``p(rank k) ~ k^-exponent``).
    """

    impressions: int = 100_000
    users: int = 20_000
    items: int = 5_000
    categories: int = 50
    user_zipf: float = 0.8
    item_zipf: float = 1.1
    slate_size: int = 3
    requests_per_s: float = 50.0
    start_ms: int = 1_700_000_000_000
    base_ctr: float = 0.03
    conversion_rate: float = 0.1


@dataclass(frozen=True)
class FaultsConfig:
    """Deliberate defects, as fractions of the source's events (see replay/faults.py).

    ``malformed``: an event is followed by a broken copy (bad JSON, a missing field, a
    wrong type, an unknown version, or for actions an unknown action type);
    ``duplicate``: an event is sent twice; ``orphan``: an action is followed by a copy
    whose request has no impression.
    """

    malformed: float = 0.0
    duplicate: float = 0.0
    orphan: float = 0.0


@dataclass(frozen=True)
class ProducerConfig:
    """kafka-python producer settings (``acks`` is always ``all``)."""

    compression: Compression = "lz4"
    linger_ms: int = 20
    batch_size: int = 262_144


def _taobao_actions() -> dict[str, str]:
    return {"cart": "click", "fav": "click", "buy": "conversion"}


@dataclass(frozen=True)
class TaobaoConfig:
    """UserBehavior: which behaviours become actions, and their action type."""

    actions: dict[str, str] = field(default_factory=_taobao_actions)


@dataclass(frozen=True)
class TencentConfig:
    """Tencent pCVR: the month (``YYYY-MM``, UTC) the ``DD`` of ``DDHHMMSS`` times count in;
    the log does not say."""

    month: str = "2017-03"


@dataclass(frozen=True)
class ReplayConfig:
    """Event replay into Kafka: source, rate, time shift, generator, faults, producer.

    Every field has a default so existing deployment files stay valid.
    """

    source: SourceName = "synthetic"
    path: Path | None = None
    rate: float = 0.0
    limit: int = 0
    seed: int = 0
    time_shift: TimeShift = "now"
    run_id: str = ""
    click_action: str = "click"
    conversion_action: str = "conversion"
    delays: DelaysConfig = field(default_factory=DelaysConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    taobao: TaobaoConfig = field(default_factory=TaobaoConfig)
    tencent: TencentConfig = field(default_factory=TencentConfig)


def check(cfg: ReplayConfig, file: str = "<config>") -> None:
    """Raise :class:`BadReplayConfig` (naming the ``replay.*`` key) unless ``cfg`` is usable."""

    def bad(key: str, problem: str, fix: str) -> BadReplayConfig:
        return BadReplayConfig(f"replay.{key}", file, problem, fix)

    _check_run(cfg, bad)
    _check_delays_and_faults(cfg, bad)
    _check_synthetic(cfg.synthetic, bad)
    _check_logs(cfg, bad)


def _check_run(cfg: ReplayConfig, bad: _Bad) -> None:
    for key, allowed in (
        ("source", SourceName),
        ("time_shift", TimeShift),
        ("producer.compression", Compression),
    ):
        value = cfg.producer.compression if key.startswith("producer") else getattr(cfg, key)
        if value not in get_args(allowed):
            raise bad(key, f"got {value!r}", f"use one of {', '.join(get_args(allowed))}")
    if cfg.source != "synthetic" and cfg.path is None:
        raise bad(
            "path", f"required for source {cfg.source}", f"pass --path to the {cfg.source} log"
        )
    for key, value in (("rate", cfg.rate), ("limit", cfg.limit)):
        if not math.isfinite(value) or value < 0:
            raise bad(key, f"got {value}", "use a number >= 0 (0 = no limit)")
    if cfg.run_id and not re.fullmatch(r"[A-Za-z0-9_.:-]+", cfg.run_id):
        raise bad("run_id", f"got {cfg.run_id!r}", "use letters, digits, '_', '.', ':', '-'")
    for key in ("click_action", "conversion_action"):
        if not getattr(cfg, key):
            raise bad(key, "is empty", "name one of the action types of join.labels")
    p = cfg.producer
    if p.linger_ms < 0:
        raise bad("producer.linger_ms", f"got {p.linger_ms}", "use milliseconds >= 0")
    if p.batch_size < 1:
        raise bad("producer.batch_size", f"got {p.batch_size}", "use bytes >= 1")


def _check_delays_and_faults(cfg: ReplayConfig, bad: _Bad) -> None:
    for name, d in (("click", cfg.delays.click), ("conversion", cfg.delays.conversion)):
        if not (math.isfinite(d.median_s) and d.median_s > 0):
            raise bad(f"delays.{name}.median_s", f"got {d.median_s}", "use seconds > 0")
        if not (math.isfinite(d.sigma) and 0 <= d.sigma <= 5):
            raise bad(f"delays.{name}.sigma", f"got {d.sigma}", "use 0 <= sigma <= 5")
    for f in dataclasses.fields(FaultsConfig):
        value = getattr(cfg.faults, f.name)
        if not 0 <= value <= 1:
            raise bad(f"faults.{f.name}", f"got {value}", "use a fraction in [0, 1]")


def _check_synthetic(s: SyntheticConfig, bad: _Bad) -> None:
    for key in ("impressions", "users", "items", "categories", "slate_size"):
        if getattr(s, key) < 1:
            raise bad(f"synthetic.{key}", f"got {getattr(s, key)}", "use an integer >= 1")
    if s.slate_size > s.items:
        raise bad("synthetic.slate_size", f"{s.slate_size} > items {s.items}", "show fewer items")
    for key in ("user_zipf", "item_zipf"):
        if not 0 <= getattr(s, key) <= 5:
            raise bad(f"synthetic.{key}", f"got {getattr(s, key)}", "use 0 <= exponent <= 5")
    if not (math.isfinite(s.requests_per_s) and s.requests_per_s > 0):
        raise bad("synthetic.requests_per_s", f"got {s.requests_per_s}", "use a rate > 0")
    for key in ("base_ctr", "conversion_rate"):
        if not 0 < getattr(s, key) < 1:
            raise bad(f"synthetic.{key}", f"got {getattr(s, key)}", "use a probability in (0, 1)")
    if s.start_ms < 0:
        raise bad("synthetic.start_ms", f"got {s.start_ms}", "use epoch milliseconds >= 0")


def _check_logs(cfg: ReplayConfig, bad: _Bad) -> None:
    for behavior, action in cfg.taobao.actions.items():
        if behavior not in TAOBAO_BEHAVIORS:
            raise bad(
                f"taobao.actions.{behavior}",
                "unknown behaviour",
                f"use {', '.join(TAOBAO_BEHAVIORS)}",
            )
        if not action:
            raise bad(f"taobao.actions.{behavior}", "empty action type", "e.g. click")
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", cfg.tencent.month):
        raise bad("tencent.month", f"got {cfg.tencent.month!r}", "use YYYY-MM, e.g. 2017-03")
