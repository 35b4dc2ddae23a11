"""Records that cross the trainer -> exporter boundary (numpy only: no torch here).

The trainer hands the exporter a :class:`Cut`: a consistent snapshot of what changed
since the previous cut, taken between two training steps::

    Cut(
      step=1200, samples=4_915_200, full=False,
      watermark_ms=1700000123456,                # event-time watermark of trained samples
      offsets={"fluxrec.samples": {0: 81234, 1: 80977}},   # next offset per partition
      tables={
        "item_id": TableDelta(
          name="item_id", dim=16,
          ids=array([17, 42, 9001], dtype=int64),            # changed rows, unique
          values=array([[...16 floats...], ...], float32),   # shape (3, 16), row i <-> ids[i]
          tombstones=array([5, 77], dtype=int64)),           # evicted since the last cut
      },
      dense={"mlp.0.weight": array(..., float32), ...},      # all dense tensors, by name
      created_ms=1700000124000)

``full=True`` means every live row of every table is in ``ids``/``values`` (a snapshot):
the first cut, and any cut after change tracking overflowed its memory bound.
Ids are signed 64-bit feature ids (hashed or raw) as the trainer's tables key them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Cut", "PartsCut", "TableDelta"]


@dataclass(frozen=True)
class TableDelta:
    """Changed rows and tombstones of one embedding table."""

    name: str
    dim: int
    ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    tombstones: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if self.ids.ndim != 1 or self.values.shape != (self.ids.shape[0], self.dim):
            raise ValueError(
                f"table {self.name}: ids {self.ids.shape} and values {self.values.shape} "
                f"do not match dim {self.dim}"
            )


@dataclass(frozen=True)
class Cut:
    """A consistent cut of the trainer's state: what changed since the previous cut.

    ``statistics`` names the entries of ``dense`` that are running statistics of the data
    (a normalisation's mean and variance, counters), not trained parameters: the safety
    gate checks them for NaN/Inf only, since they legitimately move from their initial
    value to the data's scale in one version."""

    step: int
    samples: int
    full: bool
    watermark_ms: int
    offsets: dict[str, dict[int, int]]
    tables: dict[str, TableDelta]
    dense: dict[str, npt.NDArray[np.float32]]
    created_ms: int
    statistics: frozenset[str] = frozenset()


@dataclass(frozen=True)
class PartsCut:
    """A cut whose rows several trainer workers wrote already, each its own part of
    version ``sequence`` (manifest format 2, ``exporter/FORMAT.md`` 4.5); what is left
    is the manifest. ``cut`` carries the version's fields (step, samples, full,
    watermark, the offsets of every worker, created_ms) without rows or tensors;
    ``parts[k]`` lists the manifest entries of the objects part ``k`` wrote::

        PartsCut(sequence=42, cut=Cut(step=1200, ..., tables={}, dense={}),
                 parts=[[{"key": "versions/000000000042/part-0/table-item_id.fxd",
                          "kind": "table", "name": "item_id", ...},
                         {"key": "versions/000000000042/part-0/dense.fxd", ...}],
                        [{"key": "versions/000000000042/part-1/table-item_id.fxd", ...}]])
    """

    sequence: int
    cut: Cut
    parts: list[list[dict[str, Any]]]
