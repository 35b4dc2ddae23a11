"""Choosing a source, and the replay order every source follows.

A source is anything with ``name``, ``records()`` and ``stats()``:

* ``records()`` yields :class:`~replay.types.Impression` and :class:`~replay.types.Action`
  records in event-time order (impressions first at equal times); each call starts
  again from the beginning and yields the same records (sources are deterministic);
* ``stats()`` counts log rows the source skipped, by reason (after ``records()`` ran).

=============  =====================================  =========================================
``--source``   module                                 ``--path``
=============  =====================================  =========================================
synthetic      :mod:`replay.synthetic` (the default)  not used
obd            :mod:`replay.obd`                      ``shared/data/obd`` or one campaign CSV
taobao         :mod:`replay.taobao`                   ``shared/data/taobao_userbehavior``
tencent        :mod:`replay.tencent`                  ``shared/data/tencent_pcvr``
=============  =====================================  =========================================
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from replay.errors import BadReplayConfig
from replay.settings import ReplayConfig
from replay.types import Record

__all__ = ["Source", "open_source"]


class Source(Protocol):
    """What :func:`open_source` returns."""

    name: str

    def records(self) -> Iterator[Record]: ...

    def stats(self) -> dict[str, int]: ...


def open_source(cfg: ReplayConfig) -> Source:
    """The source ``cfg.source`` names, reading ``cfg.path`` for the real logs."""
    if cfg.source == "synthetic":
        from replay.synthetic import SyntheticSource

        return SyntheticSource(cfg)
    if cfg.path is None:
        raise BadReplayConfig(
            "replay.path", "<config>", f"required for source {cfg.source}", "pass --path"
        )
    path = Path(cfg.path)
    if cfg.source == "obd":
        from replay.obd import ObdSource

        return ObdSource(cfg, path)
    if cfg.source == "taobao":
        from replay.taobao import TaobaoSource

        return TaobaoSource(cfg, path)
    from replay.tencent import TencentSource

    return TencentSource(cfg, path)
