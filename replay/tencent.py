"""The Tencent social-ads pCVR source (``--source tencent``): real click -> conversion delays.

Input: the folder holding ``train.csv`` or ``train_small.csv`` (or one such file), and
optionally the side tables ``ad.csv``, ``position.csv``, ``user.csv`` beside it::

    instanceID,label,clickTime,conversionTime,creativeID,userID,positionID,connectionType,telecomsOperator
    22174355,1,22174355,23103048.0,4565,2497012,3150,1,1

Times are ``DDHHMMSS`` (day of month, hour, minute, second) in the month
``replay.tencent.month`` (UTC; the log does not say which month).

Mapping: each row is a **click**, replayed as the impression (the exposure of pCVR):
``request_id`` ``tc-<instanceID>``, ``item_id`` = ``creativeID``, ``user_id`` = ``userID``,
``event_time_ms`` = ``clickTime``. A row with ``label`` 1 and a ``conversionTime`` adds an
action ``replay.conversion_action`` at ``conversionTime``. No click action is sent (every
row is a click), so train on the conversion label. Sparse features (strings): ``user_id``,
``item_id``, ``position_id``, ``connection_type``, ``telecoms_operator``; from ``ad.csv``
``ad_id``, ``campaign_id``, ``advertiser_id``, ``app_id``, ``app_platform``; from
``position.csv`` ``siteset_id``, ``position_type``; from ``user.csv`` ``age``, ``gender``,
``education``, ``marriage_status``, ``have_baby``, ``hometown``, ``residence``. No dense
features. Skipped and counted in ``stats()``: conversions without a time
(``conversions_without_time``) or before the click (``conversions_before_click``).
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

from replay.errors import BadLogRow, LogNotFound
from replay.logfile import WholeLogSource
from replay.settings import ReplayConfig
from replay.types import Action, Impression, Record, order_key

__all__ = ["TencentSource", "ddhhmmss_ms"]

_HEADER = (
    "instanceID",
    "label",
    "clickTime",
    "conversionTime",
    "creativeID",
    "userID",
    "positionID",
    "connectionType",
    "telecomsOperator",
)
#: side table -> (its key column, {column: feature name})
_SIDE = {
    "ad.csv": (
        "creativeID",
        {
            "adID": "ad_id",
            "camgaignID": "campaign_id",  # sic: the log's spelling
            "advertiserID": "advertiser_id",
            "appID": "app_id",
            "appPlatform": "app_platform",
        },
    ),
    "position.csv": ("positionID", {"sitesetID": "siteset_id", "positionType": "position_type"}),
    "user.csv": (
        "userID",
        {
            "age": "age",
            "gender": "gender",
            "education": "education",
            "marriageStatus": "marriage_status",
            "haveBaby": "have_baby",
            "hometown": "hometown",
            "residence": "residence",
        },
    ),
}


def ddhhmmss_ms(text: str, month: str) -> int:
    """``"22174355"`` (or ``"22174355.0"``) in month ``"2017-03"`` -> epoch ms of
    2017-03-22 17:43:55 UTC. Raises ``ValueError`` on an impossible time."""
    value = int(float(text))
    dd, hh, mm, ss = value // 1_000_000, value // 10_000 % 100, value // 100 % 100, value % 100
    if not (1 <= dd <= 31 and hh < 24 and mm < 60 and ss < 60):
        raise ValueError(f"{text!r} is not a DDHHMMSS time")
    year, mon = (int(x) for x in month.split("-"))
    start = datetime(year, mon, 1, tzinfo=UTC)
    t = start + timedelta(days=dd - 1, hours=hh, minutes=mm, seconds=ss)
    if t.month != mon:
        raise ValueError(f"{text!r}: day {dd} is not in {month}")
    return int(t.timestamp()) * 1000


def _log_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("train.csv", "train_small.csv"):
        if (path / name).is_file():
            return path / name
    raise LogNotFound(f"{path}: no train.csv or train_small.csv (pass --path to tencent_pcvr/)")


class TencentSource(WholeLogSource):
    """Clicks as impressions and conversions as actions, in event-time order."""

    name = "tencent"

    def __init__(self, cfg: ReplayConfig, path: Path) -> None:
        super().__init__(cfg, _log_file(path))

    def _read(self) -> list[Record]:
        with self.file.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in _HEADER if c not in (reader.fieldnames or [])]
            if missing:
                raise BadLogRow(str(self.file), 1, f"not a pCVR file: no column {missing}")
            rows = [(reader.line_num, row) for row in reader]
        side = {name: self._side(name, rows) for name in _SIDE}
        month = self.cfg.tencent.month
        stats: dict[str, int] = {}
        keyed: list[tuple[tuple[int, int, int], Record]] = []
        for line, row in rows:
            try:
                imp = self._impression(row, side, month)
                conv = row["conversionTime"].strip()
                t_conv = ddhhmmss_ms(conv, month) if conv else None
            except (KeyError, ValueError) as e:
                raise BadLogRow(str(self.file), line, f"bad value: {e}") from None
            keyed.append((order_key(imp, len(keyed)), imp))
            if row["label"].strip() != "1":
                continue
            if t_conv is None:
                stats["conversions_without_time"] = stats.get("conversions_without_time", 0) + 1
            elif t_conv < imp.event_time_ms:
                stats["conversions_before_click"] = stats.get("conversions_before_click", 0) + 1
            else:
                act = Action(
                    imp.request_id, imp.item_id, imp.user_id, self.cfg.conversion_action, t_conv
                )
                keyed.append((order_key(act, len(keyed)), act))
        keyed.sort(key=lambda kr: kr[0])
        self._stats = stats
        return [rec for _, rec in keyed]

    def _side(self, name: str, rows: list[tuple[int, dict[str, str]]]) -> dict[str, dict[str, str]]:
        """The rows of side table ``name`` that the log refers to, by key (empty if absent)."""
        path = self.file.with_name(name)
        if not path.is_file():
            return {}
        key, _ = _SIDE[name]
        wanted = {row[key] for _, row in rows}
        with path.open(newline="") as f:
            return {r[key]: r for r in csv.DictReader(f) if r.get(key) in wanted}

    @staticmethod
    def _impression(
        row: dict[str, str], side: dict[str, dict[str, dict[str, str]]], month: str
    ) -> Impression:
        sparse: dict[str, tuple[str, ...]] = {
            "user_id": (row["userID"],),
            "item_id": (row["creativeID"],),
            "position_id": (row["positionID"],),
            "connection_type": (row["connectionType"],),
            "telecoms_operator": (row["telecomsOperator"],),
        }
        for name, (key, columns) in _SIDE.items():
            found = side[name].get(row[key])
            if found is not None:
                for column, feature in columns.items():
                    sparse[feature] = (found[column],)
        return Impression(
            request_id=f"tc-{row['instanceID']}",
            item_id=row["creativeID"],
            user_id=row["userID"],
            event_time_ms=ddhhmmss_ms(row["clickTime"], month),
            sparse=sparse,
        )
