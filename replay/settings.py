"""Config section of the ``replay`` package (read by :mod:`fluxrec.config`).

Example (``configs/local.yaml``; every key has a default)::

    replay:
      source: synthetic          # synthetic | table | taobao
      path: null                 # folder or file of a real log (table, taobao)
      rate: 0                    # events/s to Kafka; 0 = as fast as possible
      time_shift: now            # now | none | live
      delays:
        click: {median_s: 15, sigma: 1.0}
      faults: {malformed: 0.0, duplicate: 0.0, orphan: 0.0}
      table:                     # source table: any CSV / TSV / JSON lines / Parquet log
        user: user_id            # a column, or a template of columns: "{a}-{b}"
        item: video_id
        time: time_ms
        time_unit: ms            # s | ms | us | ns | iso | a strptime format ("%d%H%M%S")
        labels:                  # each a 0/1 column (delay drawn) or a time column
          - {column: is_click, action: click}
          - {time_column: buy_time, action: conversion}

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
    "TableConfig",
    "TableFormat",
    "TableLabel",
    "TableLookup",
    "TaobaoConfig",
    "TimeShift",
    "check",
]

SourceName = Literal["synthetic", "table", "taobao"]
TableFormat = Literal["auto", "csv", "tsv", "jsonl", "parquet"]
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
    """Delays of the simulated actions: impression -> click (synthetic, and the 0/1 label
    columns of a table), click -> conversion (synthetic)."""

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
class TableLabel:
    """One label of a table log, as an action of type ``action`` (a ``join.labels`` action).

    ``column``: a 0/1 column (also ``true``/``false``); a 1 sends an action after a delay
    drawn from ``delay`` (default ``replay.delays.click``), the log having no action time.
    ``time_column``: the action's own time (same unit as ``time``); an empty cell means
    no action. Both: a 1 sends an action at the time of ``time_column``.
    """

    action: str
    column: str | None = None
    time_column: str | None = None
    delay: DelayConfig | None = None


@dataclass(frozen=True)
class TableLookup:
    """A side table joined to every row by ``key`` (a column of both): its other columns
    become columns of the row (the row's own win). ``path``: relative to the log's
    folder, may name the log file as ``{file}`` (its name without extension)."""

    path: str
    key: str


@dataclass(frozen=True)
class TableConfig:
    """A log of rows described by its columns (``source: table``; replay/SOURCES.md).

    Ids (``request_id``, ``user``, ``item``) and feature columns are a column name, or a
    template of columns in braces (``"{group}-{item_id}"``), where ``{file}`` is the log
    file's name without extension and ``{row}`` the row's index in its file (from 0).
    ``request_id`` null: one request per row (``{file}-{row}``). The model's features are
    the ``features:`` section of the config: each reads the column of its name, or the
    column ``columns`` maps it to; ``user_id`` and ``item_id`` default to the impression's
    user and item.
    """

    user: str = "user_id"
    item: str = "item_id"
    time: str = ""
    time_unit: str = "ms"
    time_prefix: str = ""
    request_id: str | None = None
    labels: list[TableLabel] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)
    lookups: list[TableLookup] = field(default_factory=list)
    file_columns: dict[str, dict[str, str]] = field(default_factory=dict)
    format: TableFormat = "auto"
    files: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)


#: ``time_unit`` values besides strptime formats (which contain ``%``)
TIME_UNITS = ("s", "ms", "us", "ns", "iso")


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
    table: TableConfig = field(default_factory=TableConfig)


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
        ("table.format", TableFormat),
        ("time_shift", TimeShift),
        ("producer.compression", Compression),
    ):
        obj = cfg.producer if key.startswith("producer") else cfg.table if "." in key else cfg
        value = getattr(obj, key.rpartition(".")[2])
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
    if cfg.source == "table":
        _check_table(cfg.table, bad)


def _check_table(t: TableConfig, bad: _Bad) -> None:
    for key in ("user", "item", "time"):
        if not getattr(t, key):
            raise bad(f"table.{key}", "is empty", f"name the column of the {key} (see SOURCES.md)")
    if t.time_unit not in TIME_UNITS and "%" not in t.time_unit:
        raise bad(
            "table.time_unit",
            f"got {t.time_unit!r}",
            f"use one of {', '.join(TIME_UNITS)} or a strptime format such as %Y-%m-%d %H:%M:%S",
        )
    if not t.labels:
        raise bad("table.labels", "is empty", "map at least one column to an action type")
    for k, lb in enumerate(t.labels):
        if not lb.action:
            raise bad(f"table.labels[{k}].action", "is empty", "name a join.labels action")
        if not (lb.column or lb.time_column):
            raise bad(
                f"table.labels[{k}]",
                "has neither column nor time_column",
                "give a 0/1 column, a column of action times, or both",
            )
        d = lb.delay
        if d is not None and not (math.isfinite(d.median_s) and d.median_s > 0 and d.sigma >= 0):
            raise bad(f"table.labels[{k}].delay", f"got {d}", "use median_s > 0 and sigma >= 0")
    for k, lk in enumerate(t.lookups):
        if not (lk.path and lk.key):
            raise bad(
                f"table.lookups[{k}]", "needs path and key", "e.g. {path: ad.csv, key: ad_id}"
            )
