"""Pooled lookups over :class:`~trainer.tables.DynamicTable` and the trainer's cut.

A multi-valued field of a batch of ``B`` samples arrives as flat ids plus the sample each
id belongs to (a jagged layout, like torchrec's ``KeyedJaggedTensor``)::

    category: sample 0 -> ["c-1", "c-7"], sample 1 -> [], sample 2 -> ["c-1"]
    ids     = [h(c-1), h(c-7), h(c-1)]      int64, hashed with featurize.hashing
    segment = [0,      0,      2     ]      int64, sample index of each id
    (a field with exactly one value per sample has segment None)

:class:`FusedLookup` looks up every field that one table holds in one go: it deduplicates
the ids of all those fields (``torch.unique(return_inverse=True)``), resolves and admits
each unique id once, gathers one leaf tensor of unique rows and mean-pools it into
``(B, n_fields, dim)``. After ``backward()`` :meth:`FusedLookup.step` applies row-wise
Adagrad to the unique rows only. It is :class:`~trainer.sharded.ShardedLookup` (which
the trainer uses for all its tables at once, on any number of workers) for one table of
one worker.

:func:`take_cut` is one worker's cut of the tables it holds (its part of a version;
``trainer.publish`` makes one version of the parts).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from exporter.types import Cut, TableDelta
from trainer.distributed import Comm
from trainer.sharded import Jagged, ShardedLookup
from trainer.tables import DynamicTable

__all__ = ["FusedLookup", "Jagged", "take_cut"]

_ONE = Comm.local()


class FusedLookup:
    """All fields of a batch that live in ONE table: one dedup, one probe, one update.

    ``fields[k]`` is field ``field_index[k]`` of ``table.fields`` (default: ``k``); ids
    of different fields must be distinct keys (the stable hash salts values with the
    field name). The output of :meth:`pooled` has shape ``(batch, len(fields), dim)``::

        fields = [(ids_user (B,), None), (ids_cat (K,), seg_cat (K,))]
        pooled()  ->  (B, 2, dim)        # field 1 mean-pooled per sample, zeros if empty
    """

    def __init__(
        self,
        table: DynamicTable,
        fields: Sequence[Jagged],
        batch: int,
        *,
        now: int = 0,
        train: bool = True,
        field_index: Sequence[int] | None = None,
        defer: bool = False,
    ) -> None:
        self._lk = ShardedLookup(
            _ONE,
            [table],
            [fields],
            batch,
            now=now,
            train=train,
            field_index=None if field_index is None else [field_index],
        ).exchange()
        if not defer:
            self.finish()

    @property
    def emb(self) -> torch.Tensor:
        """The leaf tensor of unique rows (after :meth:`finish`)."""
        return self._lk.groups[0].emb

    def finish(self) -> None:
        """Initialise the rows admitted for this batch and gather its unique rows
        (construction with ``defer=True`` stops before this). Idempotent."""
        self._lk.finish()

    def pooled(self) -> torch.Tensor:
        """Mean-pooled embeddings, shape ``(batch, n_fields, dim)``."""
        return self._lk.pooled()[0]

    def step(self) -> None:
        """Apply row-wise Adagrad to the unique rows (after ``backward()``)."""
        self._lk.step()


def take_cut(
    tables: dict[str, DynamicTable],
    dense: dict[str, torch.Tensor],
    *,
    full: bool = False,
    step: int,
    samples: int,
    watermark_ms: int,
    offsets: dict[str, dict[int, int]],
    statistics: frozenset[str] = frozenset(),
) -> Cut:
    """A :class:`~exporter.types.Cut` of ``tables`` and ``dense``; resets change tracking.

    The cut is full (every live row of every field) when ``full`` is asked for, or when
    any table overflowed its tracking bound (or was never cut): then every table is cut
    full, so the cut as a whole is a consistent snapshot.
    """
    full = full or any(t.overflow for t in tables.values())
    deltas: dict[str, TableDelta] = {}
    for t in tables.values():
        if full:
            t.mark_full()
        deltas.update(t.take_delta()[0])
    return Cut(
        step=step,
        samples=samples,
        full=full,
        watermark_ms=watermark_ms,
        offsets={k: dict(v) for k, v in offsets.items()},
        tables=deltas,
        dense={k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in dense.items()},
        created_ms=int(time.time() * 1000),
        statistics=statistics & dense.keys(),
    )
