"""The Open Bandit Dataset source (ZOZOTOWN fashion recommendations, ``--source obd``).

Input: a folder of OBD campaign files (``bts_men.csv``, ``random_women.csv``, ...) or one
such file, each with its ``<stem>_item_context.csv`` beside it (optional). Row layout::

    ,timestamp,item_id,position,click,propensity_score,user_feature_0..3,user-item_affinity_0..N
    0,2019-11-24 00:01:03.979311+00:00,2,2,0,0.045525,cef3...,2d03...,c2e4...,c39b...,0.0,...

Mapping (one impression per row; one click action per row with ``click`` = 1):

==================  ====================================================================
``request_id``      ``obd-<stem>-<row index>``, e.g. ``obd-bts_men-0``
``item_id``         ``<group>-<item_id>``, group = the stem after its last ``_`` (``men-2``):
                    bts and random campaigns of one group show the same items
``user_id``         ``obd-<hash of user_feature_0..3>``: OBD has no user ids, so this is
                    the user profile (many users share one)
``event_time_ms``   ``timestamp`` (ISO, UTC) in milliseconds
sparse features     ``user_id``, ``item_id``, ``position``, ``user_feature_0..3``, and from
                    the item context ``item_feature_1..3`` (hashed strings)
dense features      ``item_feature_0`` (item context), ``affinity`` (the row's
                    ``user-item_affinity_<item_id>``)
click action        ``replay.click_action`` at ``event_time_ms`` + a delay drawn from
                    ``replay.delays.click`` (the log has no click time), at least 1 ms
==================  ====================================================================

``propensity_score`` (the logging policy's) is not a feature and is not replayed. Delays
come from one random stream per file seeded by ``(seed, stem)``: deterministic.
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from replay.errors import BadLogRow, LogNotFound
from replay.settings import ReplayConfig
from replay.types import Action, Impression, Record, order_key

__all__ = ["ObdSource", "obd_files"]

_REQUIRED = ("timestamp", "item_id", "position", "click", *(f"user_feature_{k}" for k in range(4)))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def obd_files(path: Path) -> list[Path]:
    """The campaign files at ``path`` (a folder, or one file), sorted by name."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LogNotFound(f"{path}: no such file or folder (pass --path to the OBD folder)")
    files = sorted(p for p in path.glob("*.csv") if not p.name.endswith("_item_context.csv"))
    if not files:
        raise LogNotFound(f"{path}: no OBD campaign file (*.csv) here (pass --path to obd/)")
    return files


def iso_ms(text: str) -> int:
    """``2019-11-24 00:01:03.979311+00:00`` -> epoch milliseconds (naive times are UTC)."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


_MS = datetime(1970, 1, 1, 0, 0, 0, 1000, tzinfo=UTC) - _EPOCH


def _user_id(features: list[str]) -> str:
    return "obd-" + hashlib.blake2b("|".join(features).encode(), digest_size=6).hexdigest()


def _item_context(path: Path) -> dict[str, dict[str, str]]:
    """``item_id -> {item_feature_0: ..., ...}`` from ``<stem>_item_context.csv``, if present."""
    ctx = path.with_name(f"{path.stem}_item_context.csv")
    if not ctx.is_file():
        return {}
    with ctx.open(newline="") as f:
        return {row["item_id"]: row for row in csv.DictReader(f)}


class ObdSource:
    """Impressions and simulated clicks of OBD campaign files, in event-time order."""

    name = "obd"

    def __init__(self, cfg: ReplayConfig, path: Path) -> None:
        self.cfg = cfg
        self.files = obd_files(path)
        self._records: list[Record] | None = None

    def stats(self) -> dict[str, int]:
        return {}

    def records(self) -> Iterator[Record]:
        if self._records is None:
            keyed: list[tuple[tuple[int, int, int], Record]] = []
            for path in self.files:
                for rec in self._read(path):
                    keyed.append((order_key(rec, len(keyed)), rec))
            keyed.sort(key=lambda kr: kr[0])
            self._records = [rec for _, rec in keyed]
        return iter(self._records)

    def _read(self, path: Path) -> Iterator[Record]:
        stem = path.stem
        group = stem.rsplit("_", 1)[-1]
        ctx = _item_context(path)
        delay = self.cfg.delays.click
        rng = random.Random(f"obd:{self.cfg.seed}:{stem}")
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
            if missing:
                raise BadLogRow(str(path), 1, f"not an OBD file: no column {', '.join(missing)}")
            for row in reader:
                try:
                    imp, clicked = self._impression(row, stem, group, ctx)
                except (KeyError, ValueError) as e:
                    raise BadLogRow(str(path), reader.line_num, f"bad value: {e}") from None
                yield imp
                if clicked:
                    sec = rng.lognormvariate(math.log(delay.median_s), delay.sigma)
                    t = imp.event_time_ms + max(1, round(sec * 1000))
                    yield Action(imp.request_id, imp.item_id, imp.user_id, self.cfg.click_action, t)

    @staticmethod
    def _impression(
        row: dict[str, str], stem: str, group: str, ctx: dict[str, dict[str, str]]
    ) -> tuple[Impression, bool]:
        item = row["item_id"]
        item_id = f"{group}-{item}"
        user_features = [row[f"user_feature_{k}"] for k in range(4)]
        user_id = _user_id(user_features)
        sparse: dict[str, tuple[str, ...]] = {
            "user_id": (user_id,),
            "item_id": (item_id,),
            "position": (row["position"],),
        }
        for k, v in enumerate(user_features):
            sparse[f"user_feature_{k}"] = (v,)
        dense: dict[str, float] = {}
        item_ctx = ctx.get(item)
        if item_ctx is not None:
            for k in (1, 2, 3):
                sparse[f"item_feature_{k}"] = (item_ctx[f"item_feature_{k}"],)
            dense["item_feature_0"] = _finite(item_ctx["item_feature_0"])
        affinity = row.get(f"user-item_affinity_{item}")
        if affinity is not None:
            dense["affinity"] = _finite(affinity)
        click = row["click"]
        if click not in ("0", "1"):
            raise ValueError(f"click={click!r}, expected 0 or 1")
        imp = Impression(
            request_id=f"obd-{stem}-{row['']}",
            item_id=item_id,
            user_id=user_id,
            event_time_ms=iso_ms(row["timestamp"]),
            sparse=sparse,
            dense=dense,
        )
        return imp, click == "1"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value
