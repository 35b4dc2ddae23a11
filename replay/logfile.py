"""The shared shape of the sources that read one log file whole (Taobao, Tencent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from replay.settings import ReplayConfig
from replay.types import Record

__all__ = ["WholeLogSource"]


class WholeLogSource:
    """Reads ``file`` once, on the first :meth:`records`, into records in event-time order
    (``_read``, which may count what it skipped in ``_stats``)."""

    name = ""

    def __init__(self, cfg: ReplayConfig, file: Path) -> None:
        self.cfg = cfg
        self.file = file
        self._records: list[Record] | None = None
        self._stats: dict[str, int] = {}

    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def records(self) -> Iterator[Record]:
        if self._records is None:
            self._records = self._read()
        return iter(self._records)

    def _read(self) -> list[Record]:
        raise NotImplementedError
