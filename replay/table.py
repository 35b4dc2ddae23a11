"""The table source (``--source table``): any log of rows, described in the config.

Input: one file, or a folder of files (``replay.table.files`` / ``exclude`` globs; by
default every ``.csv``, ``.tsv``, ``.jsonl``, ``.parquet`` file, also ``.gz``), read with
pyarrow (:mod:`replay.tablefile`). Example: a short-video exposure log::

    user_id  video_id  time_ms        is_click  long_view  is_follow
    u7       v301      1700000000123  1         0          0

    replay:
      source: table
      path: logs/exposures.tsv
      table:
        user: user_id
        item: video_id
        time: time_ms
        time_unit: ms
        labels:
          - {column: is_click, action: click}
          - {column: long_view, action: long_view}
          - {column: is_follow, action: follow}
    features:
      sparse: [{name: user_id}, {name: item_id}]

Mapping, per row (rows of all files merged in event-time order):

==================  ====================================================================
impression          ``request_id`` (null: ``{file}-{row}``), ``item``, ``user``: a column
                    or a template of columns (``"{group}-{item_id}"``; ``{file}``: the
                    file's name without extension, ``{row}``: the row's index from 0);
                    ``event_time_ms`` from ``time`` in ``time_unit`` (``s``, ``ms``,
                    ``us``, ``ns``, ``iso``, or a strptime format; ``time_prefix`` is
                    put before each value first)
features            every feature of the config's ``features:`` section reads the column of
                    its name, or ``columns[name]`` (a column name, which may pick the
                    column by a row's value: ``"affinity_{item_id}"``); ``user_id`` and
                    ``item_id`` default to the impression's user and item. Empty cells
                    are left out; list cells (JSON, Parquet) give several sparse ids
actions             per label: ``column`` 0/1 -> an action after a delay drawn from the
                    label's ``delay`` (default ``replay.delays.click``), one random stream
                    per file seeded by ``(seed, file)``; ``time_column`` -> an action at
                    that time when the cell is not empty
side tables         ``lookups``: a table joined on ``key``; its columns become the row's
                    (the row's own win); ``file_columns``: constant columns per file
==================  ====================================================================

Bad input: a file that cannot be read, a column the config names that no file has, or a
file of which no row is usable stops the replay with one line naming the file, line and
column (:class:`~replay.errors.BadLog`). A single unusable row is skipped and counted by
reason in ``stats()`` (``bad_time``, ``bad_dense``, ``bad_label``, ``missing_id``,
``bad_row`` for a wrong number of cells), its first occurrence in ``notes()``; an action
that is not usable on its own is dropped and counted (``action_before_impression``,
``label_without_time``).
"""

from __future__ import annotations

import fnmatch
import math
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from replay.errors import BadLog, LogNotFound
from replay.settings import DelayConfig, ReplayConfig, TableConfig
from replay.tablefile import FORMATS, Log, read_log, stem
from replay.types import Action, Impression, Record, order_key

__all__ = ["TableSource", "parse_time_ms", "table_files"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNIT_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
_INTEGRAL_FLOAT = re.compile(r"^(-?\d+)\.0*$")
_PSEUDO = ("file", "row")


def table_files(path: Path, t: TableConfig) -> list[Path]:
    """The log files at ``path`` (a file, or the matching files of a folder), by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LogNotFound(f"{path}: no such file or folder (set replay.path or pass --path)")
    patterns = t.files or [f"*{ext}{c}" for ext in FORMATS for c in ("", ".gz", ".bz2")]
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file()
        and any(fnmatch.fnmatch(p.name, g) for g in patterns)
        and not any(fnmatch.fnmatch(p.name, g) for g in t.exclude)
    )
    if not files:
        raise LogNotFound(
            f"{path}: no log file matches replay.table.files {patterns[:4]}"
            f"{'...' if len(patterns) > 4 else ''} (set replay.table.files)"
        )
    return files


# --------------------------------------------------------------------------- values


def _text(v: Any) -> str | None:
    """A cell as an id string; None when empty."""
    if isinstance(v, str):
        return v or None
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        if not math.isfinite(v):
            return None
        return str(int(v)) if v.is_integer() else repr(v)
    if isinstance(v, datetime):
        return v.isoformat()
    return None if v is None else str(v)


def _number(v: Any) -> float | None:
    """A dense cell as a finite float; None when empty; ValueError when not a number."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return float(v)
    try:
        x = float(v) if isinstance(v, int | float) else float(str(v))
    except ValueError:
        raise ValueError("is not a number") from None
    if not math.isfinite(x):
        raise ValueError("is not a finite number")
    return x


def _flag(v: Any) -> bool:
    """A 0/1 label cell (empty: 0)."""
    if v is None or v == "" or v is False or v == 0:
        return False
    if v is True or v == 1:
        return True
    text = str(v).strip().lower()
    if text in ("0", "0.0", "false", "no"):
        return False
    if text in ("1", "1.0", "true", "yes"):
        return True
    raise ValueError("is not 0 or 1")


def parse_time_ms(v: Any, unit: str, prefix: str = "") -> int:
    """A time cell in ``unit`` (module doc) -> epoch milliseconds; ValueError if unusable.

    >>> parse_time_ms("22174355", "%Y-%m-%d%H%M%S", "2017-03-")
    1490204635000
    """
    if isinstance(v, datetime):
        dt = v if v.tzinfo is not None else v.replace(tzinfo=UTC)
        ms = (dt - _EPOCH) // _MS
    elif unit in _UNIT_MS:
        if isinstance(v, bool) or v is None:
            raise ValueError(f"is not a number of {unit}")
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"is not a number of {unit}") from None
        if not math.isfinite(x):
            raise ValueError(f"is not a number of {unit}")
        ms = round(x * _UNIT_MS[unit])
    else:
        text = _text(v)
        if text is None:
            raise ValueError("is empty")
        m = _INTEGRAL_FLOAT.match(text) if unit != "iso" and "." not in unit else None
        text = prefix + (m.group(1) if m else text)  # 23103048.0: an integer written as float
        try:
            dt = datetime.fromisoformat(text) if unit == "iso" else datetime.strptime(text, unit)
        except ValueError:
            raise ValueError(f"is not a time in {unit!r}") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = (dt - _EPOCH) // _MS
    if not 0 <= ms < 10**15:
        raise ValueError(f"is not a time after 1970 in {unit}")
    return int(ms)


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


class _Template:
    """A column name or a ``{column}`` template (module doc)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        if "{" not in spec:
            self.parts: list[tuple[str, str | None]] = [("", spec)]
            self.plain = True
        else:
            self.parts = [(lit, f) for lit, f, _, _ in string.Formatter().parse(spec)]
            self.plain = False

    @property
    def fields(self) -> list[str]:
        return [f for _, f in self.parts if f is not None]

    def render(self, cell: Any) -> str | None:
        """The value (ids): the column's text, or the template filled in; None if a
        referenced cell is empty."""
        out = []
        for lit, f in self.parts:
            out.append(lit)
            if f is not None:
                t = _text(cell(f))
                if t is None:
                    return None
                out.append(t)
        return "".join(out)


# --------------------------------------------------------------------------- one file


@dataclass
class _Side:
    """A side table: its rows by key."""

    log: Log
    key: str
    index: dict[str, int]
    names: set[str]


class _File:
    """One log file with its side tables and constant columns: cells by name and row."""

    def __init__(self, log: Log, sides: list[_Side], constants: dict[str, str]) -> None:
        self.log, self.sides, self.constants = log, sides, constants
        self.stem = stem(log.file)
        self.own = set(log.names)
        self.available = self.own | set(constants) | set(_PSEUDO)
        for s in sides:
            self.available |= s.names

    def cell(self, i: int, name: str) -> Any:
        if name in self.own:
            return self.log.column(name)[i]
        if name in self.constants:
            return self.constants[name]
        for s in self.sides:
            if name in s.names:
                k = s.index.get(_text(self.log.column(s.key)[i]) or "")
                return None if k is None else s.log.column(name)[k]
        if name == "file":
            return self.stem
        if name == "row":
            return i
        return None


class _Skip(Exception):
    """A row (or one of its actions) that cannot be used: counted by ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _parse(reason: str, column: str, value: Any, fn: Any, *args: Any) -> Any:
    try:
        return fn(value, *args)
    except (ValueError, TypeError, OverflowError) as e:
        raise _Skip(reason, f"column {column!r}: {_short(value)} {e}") from None


class _Rows:
    """Turns the rows of one file into records (module doc), given the table config."""

    def __init__(self, src: TableSource, f: _File) -> None:
        t = src.t
        self.t, self.f = t, f
        self.user, self.item = _Template(_as_template(t.user)), _Template(_as_template(t.item))
        self.request = _Template(_as_template(t.request_id or "{file}-{row}"))
        self.sparse = [(n, _Template(t.columns[n]) if n in t.columns else None) for n in src.sparse]
        self.dense = [(n, _Template(t.columns.get(n, n))) for n in src.dense]
        self.delays = [lb.delay or src.cfg.delays.click for lb in t.labels]
        self.rng = random.Random(f"table:{src.cfg.seed}:{f.stem}")

    def _time(self, column: str, value: Any) -> int:
        t = self.t
        return int(_parse("bad_time", column, value, parse_time_ms, t.time_unit, t.time_prefix))

    def impression(self, i: int) -> tuple[Impression, list[tuple[int, int | None]]]:
        """Row ``i``'s impression and, per label that is set, ``(label index, time)``."""
        t, f = self.t, self.f

        def cell(name: str) -> Any:
            return f.cell(i, name)

        t_imp = self._time(t.time, cell(t.time))
        tpls = (self.request, self.user, self.item)
        ids = [tpl.render(cell) for tpl in tpls]
        if None in ids:
            empty = [tpl.spec for tpl, v in zip(tpls, ids, strict=True) if v is None]
            raise _Skip("missing_id", f"empty {', '.join(empty)}")
        rid, uid, iid = (str(v) for v in ids)
        labels = self._labels(cell)
        sp: dict[str, tuple[str, ...]] = {}
        for name, tpl in self.sparse:
            if tpl is None:
                value = uid if name == "user_id" else iid if name == "item_id" else cell(name)
            else:
                value = _feature_cell(tpl, cell)
            got = _ids(value)
            if got:
                sp[name] = got
        dn: dict[str, float] = {}
        for name, tpl in self.dense:
            x = _parse("bad_dense", tpl.spec, _feature_cell(tpl, cell), _number)
            if x is not None:
                dn[name] = x
        return Impression(rid, iid, uid, t_imp, sp, dn), labels

    def _labels(self, cell: Callable[[str], Any]) -> list[tuple[int, int | None]]:
        """``(label index, action time or None)`` of each label that is set."""
        out: list[tuple[int, int | None]] = []
        for k, lb in enumerate(self.t.labels):
            flagged = True
            if lb.column:
                flagged = _parse("bad_label", lb.column, cell(lb.column), _flag)
            at = None
            if lb.time_column and flagged:
                v = cell(lb.time_column)
                if _text(v) is not None:
                    at = self._time(lb.time_column, v)
                elif not lb.column:
                    flagged = False  # no time, no action
            if flagged:
                out.append((k, at))
        return out

    def action(self, imp: Impression, k: int, at: int | None) -> Action:
        lb = self.t.labels[k]
        if at is None and lb.time_column:
            raise _Skip("label_without_time", f"column {lb.time_column!r} is empty")
        if at is None:
            at = imp.event_time_ms + _delay_ms(self.rng, self.delays[k])
        elif at < imp.event_time_ms:
            raise _Skip(
                "action_before_impression",
                f"column {lb.time_column!r}: {imp.event_time_ms - at} ms before the impression",
            )
        return Action(imp.request_id, imp.item_id, imp.user_id, lb.action, at)


class TableSource:
    """Impressions and actions of a table log, in event-time order (module doc)."""

    name = "table"

    def __init__(
        self,
        cfg: ReplayConfig,
        path: Path,
        sparse: Sequence[str] = (),
        dense: Sequence[str] = (),
    ) -> None:
        self.cfg, self.t = cfg, cfg.table
        self.files = table_files(path, self.t)
        self.sparse, self.dense = list(sparse), list(dense)
        self._records: list[Record] | None = None
        self._stats: Counter[str] = Counter()
        self._notes: dict[str, str] = {}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def notes(self) -> dict[str, str]:
        """The first skip of each reason: ``file:line: column C: value problem``."""
        return dict(self._notes)

    def records(self) -> Iterator[Record]:
        if self._records is None:
            keyed: list[tuple[tuple[int, int, int], Record]] = []
            for file in self.files:
                for rec in self._read(file):
                    keyed.append((order_key(rec, len(keyed)), rec))
            keyed.sort(key=lambda kr: kr[0])
            self._records = [rec for _, rec in keyed]
        return iter(self._records)

    # ------------------------------------------------------------------ reading

    def _skip(self, reason: str, where: str, detail: str) -> None:
        self._stats[reason] += 1
        self._notes.setdefault(reason, f"{where}: {detail}")

    def _open(self, file: Path) -> _File:
        log = read_log(file, self.t.format)
        sides = []
        for k, lk in enumerate(self.t.lookups):
            side_path = file.parent / lk.path.replace("{file}", stem(file))
            if not side_path.is_file():
                raise LogNotFound(
                    f"{side_path}: no such side table (replay.table.lookups[{k}].path)"
                )
            side = read_log(side_path)
            if lk.key not in side.names:
                raise BadLog(
                    f"{side_path}:1: no column {lk.key!r} (replay.table.lookups[{k}].key); "
                    f"the header has {_names(side.names)}"
                )
            index = {}
            for j, v in enumerate(side.column(lk.key)):
                key = _text(v)
                if key is not None:
                    index[key] = j
            sides.append(_Side(side, lk.key, index, set(side.names) - {lk.key}))
        return _File(log, sides, self.t.file_columns.get(stem(file), {}))

    def _specs(self) -> dict[str, _Template]:
        """Config key -> template, for every column the config names."""
        t = self.t
        out = {
            "replay.table.user": _Template(_as_template(t.user)),
            "replay.table.item": _Template(_as_template(t.item)),
            "replay.table.time": _Template(t.time),
        }
        if t.request_id is not None:
            out["replay.table.request_id"] = _Template(_as_template(t.request_id))
        for k, lb in enumerate(t.labels):
            for attr in ("column", "time_column"):
                if getattr(lb, attr):
                    out[f"replay.table.labels[{k}].{attr}"] = _Template(getattr(lb, attr))
        for kind, names in (("sparse", self.sparse), ("dense", self.dense)):
            for name in names:
                if name in t.columns:
                    out[f"replay.table.columns.{name}"] = _Template(t.columns[name])
                elif name not in ("user_id", "item_id") or kind == "dense":
                    out[f"features.{kind} {name}"] = _Template(name)
        return out

    def _check_columns(self, f: _File) -> None:
        for key, tpl in self._specs().items():
            for name in tpl.fields:
                if name in f.available:
                    continue
                names = f.log.names
                hint = ""
                if len(names) == 1 and ("," in names[0] or "\t" in names[0]):
                    hint = "; only one column: is the delimiter right (.csv or .tsv)?"
                raise BadLog(
                    f"{f.log.file}:1: no column {name!r} ({key}); the header has "
                    f"{_names(names)}{hint}"
                )

    def _read(self, path: Path) -> list[Record]:
        f = self._open(path)
        self._check_columns(f)
        log = f.log
        for where, problem in log.bad_rows:
            self._skip("bad_row", where, problem)
        if log.rows == 0:
            raise BadLog(f"{path}: no rows, only a header")
        rows = _Rows(self, f)
        out: list[Record] = []
        kept = 0
        for i in range(log.rows):
            try:
                imp, labels = rows.impression(i)
            except _Skip as e:
                self._skip(e.reason, log.where(i), e.detail)
                continue
            out.append(imp)
            kept += 1
            for k, at in labels:
                try:
                    out.append(rows.action(imp, k, at))
                except _Skip as e:
                    self._skip(e.reason, log.where(i), e.detail)
        if not kept:
            first = next(iter(self._notes.values()), "")
            raise BadLog(f"{path}: no usable row; the first: {first}")
        return out


def _as_template(spec: str) -> str:
    """An id spec: a bare column name means that column's value."""
    return spec if "{" in spec else "{" + spec + "}"


def _feature_cell(tpl: _Template, cell: Any) -> Any:
    """A feature's cell: the column named by ``tpl`` (rendered with the row's values)."""
    if tpl.plain:
        return cell(tpl.spec)
    name = tpl.render(cell)
    return None if name is None else cell(name)


def _ids(value: Any) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        return tuple(t for t in (_text(v) for v in value) if t is not None)
    t = _text(value)
    return () if t is None else (t,)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:12])
    return shown + (f", ... ({len(names)} columns)" if len(names) > 12 else "")


def _delay_ms(rng: random.Random, d: DelayConfig) -> int:
    sec = rng.lognormvariate(math.log(d.median_s), d.sigma)
    return max(1, round(sec * 1000))
