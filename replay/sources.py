"""Choosing a source, and the replay order every source follows.

A source is anything with ``name``, ``records()``, ``stats()`` and ``notes()``:

* ``records()`` yields :class:`~replay.types.Impression` and :class:`~replay.types.Action`
  records in event-time order (impressions first at equal times); each call starts
  again from the beginning and yields the same records (sources are deterministic);
* ``stats()`` counts log rows the source skipped, by reason (after ``records()`` ran);
  ``notes()`` says where the first of each reason was (``file:line: column C: ...``).

=============  =====================================  =========================================
``--source``   module                                 ``--path``
=============  =====================================  =========================================
synthetic      :mod:`replay.synthetic` (the default)  not used
table          :mod:`replay.table`                    a CSV / TSV / JSON lines / Parquet file or
                                                      folder, described by ``replay.table``
                                                      (``configs/obd.yaml``, ``tencent.yaml``)
taobao         :mod:`replay.taobao`                   ``shared/data/taobao_userbehavior``
=============  =====================================  =========================================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from replay.errors import BadReplayConfig
from replay.settings import ReplayConfig
from replay.types import Record

__all__ = ["SYNTHETIC_FEATURES", "Source", "action_types", "open_source"]

#: the features the synthetic source logs with every impression: (sparse, dense)
SYNTHETIC_FEATURES = (("user_id", "item_id", "category", "position"), ("price",))


class Source(Protocol):
    """What :func:`open_source` returns."""

    name: str

    def records(self) -> Iterator[Record]: ...

    def stats(self) -> dict[str, int]: ...

    def notes(self) -> dict[str, str]: ...


def open_source(cfg: ReplayConfig, sparse: Sequence[str] = (), dense: Sequence[str] = ()) -> Source:
    """The source ``cfg.source`` names, reading ``cfg.path`` for the real logs. ``sparse``
    and ``dense``: the names of the model's features (``features:``), which a table
    source reads from the log's columns."""
    if cfg.source == "synthetic":
        from replay.synthetic import SyntheticSource

        return SyntheticSource(cfg)
    if cfg.path is None:
        raise BadReplayConfig(
            "replay.path", "<config>", f"required for source {cfg.source}", "pass --path"
        )
    path = Path(cfg.path)
    if cfg.source == "taobao":
        from replay.taobao import TaobaoSource

        return TaobaoSource(cfg, path)
    from replay.table import TableSource

    return TableSource(cfg, path, sparse, dense)


def action_types(cfg: ReplayConfig) -> list[str]:
    """The action types the source of ``cfg`` sends, in the order its config names them."""
    if cfg.source == "table":
        kinds = [lb.action for lb in cfg.table.labels]
    elif cfg.source == "taobao":
        kinds = list(cfg.taobao.actions.values())
    else:
        kinds = [cfg.click_action, cfg.conversion_action]
    return list(dict.fromkeys(kinds))
