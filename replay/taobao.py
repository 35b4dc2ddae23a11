"""The Taobao UserBehavior source (``--source taobao``): real action delays.

Input: ``UserBehavior.csv`` (or the folder holding it), no header, sorted by time::

    user_id,item_id,category_id,behavior,timestamp
    543462,1715,1464116,pv,1511658000

Mapping:

* every ``pv`` (item page view) is an exposure, replayed as an impression:
  ``request_id`` ``tb-<line number>``, ``item_id``, ``user_id`` as in the log,
  ``event_time_ms`` = ``timestamp * 1000``; sparse features ``user_id``, ``item_id``,
  ``category``; no dense features;
* every ``cart`` / ``fav`` / ``buy`` whose behaviour is a key of ``replay.taobao.actions``
  becomes an action of the mapped type (default ``cart`` and ``fav`` -> ``click``, ``buy`` ->
  ``conversion``) at its real time, attached to the **latest earlier pv of the same user
  and item** (a pv in the same second counts as earlier). Behaviours with no earlier pv
  are skipped and counted (``stats()["actions_without_pv"]``), as are behaviours not in
  the mapping (``stats()["unmapped_<behaviour>"]``).

Because cart and fav both map to ``click`` by default, a user who does both after one pv
sends two clicks for one impression: the join counts the second as a duplicate. Real
delays are long (pv -> buy median ~9 min), so with the default 5 min click window many
cart/fav actions are orphans; widen ``join.labels`` windows to keep them.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from replay.errors import BadLogRow, LogNotFound
from replay.settings import TAOBAO_BEHAVIORS, ReplayConfig
from replay.types import Action, Impression, Record

__all__ = ["TaobaoSource"]

_FILE = "UserBehavior.csv"
_BEHAVIORS = ("pv", *TAOBAO_BEHAVIORS)


def _log_file(path: Path) -> Path:
    file = path / _FILE if path.is_dir() else path
    if not file.is_file():
        raise LogNotFound(f"{file}: not found (pass --path to taobao_userbehavior/ or {_FILE})")
    return file


class TaobaoSource:
    """Page views as impressions, cart/fav/buy as actions, in event-time order (the log
    is read once, on the first :meth:`records`)."""

    name = "taobao"

    def __init__(self, cfg: ReplayConfig, path: Path) -> None:
        self.cfg = cfg
        self.file = _log_file(path)
        self._records: list[Record] | None = None
        self._stats: dict[str, int] = {}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def notes(self) -> dict[str, str]:
        return {}

    def records(self) -> Iterator[Record]:
        if self._records is None:
            self._records = self._read()
        return iter(self._records)

    def _rows(self) -> list[tuple[int, int, str, str, str, str]]:
        """``(timestamp, line, user, item, category, behaviour)`` by time, pv first at ties."""
        rows = []
        with self.file.open(newline="") as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if len(row) != 5 or row[3] not in _BEHAVIORS:
                    raise BadLogRow(
                        str(self.file),
                        line,
                        f"expected user,item,category,pv|cart|fav|buy,ts: {row}",
                    )
                try:
                    ts = int(row[4])
                except ValueError:
                    raise BadLogRow(str(self.file), line, f"timestamp {row[4]!r}") from None
                rows.append((ts, row[3] != "pv", line, row[0], row[1], row[2], row[3]))
        rows.sort()
        return [(ts, line, user, item, cat, beh) for ts, _, line, user, item, cat, beh in rows]

    def _read(self) -> list[Record]:
        mapping = self.cfg.taobao.actions
        last_pv: dict[tuple[str, str], str] = {}
        stats: dict[str, int] = {}
        out: list[Record] = []
        for ts, line, user, item, cat, behavior in self._rows():
            t = ts * 1000
            if behavior == "pv":
                rid = f"tb-{line}"
                last_pv[(user, item)] = rid
                sparse = {"user_id": (user,), "item_id": (item,), "category": (cat,)}
                out.append(Impression(rid, item, user, t, sparse))
            elif behavior not in mapping:
                stats[f"unmapped_{behavior}"] = stats.get(f"unmapped_{behavior}", 0) + 1
            elif (user, item) not in last_pv:
                stats["actions_without_pv"] = stats.get("actions_without_pv", 0) + 1
            else:
                out.append(Action(last_pv[(user, item)], item, user, mapping[behavior], t))
        self._stats = stats
        return out
