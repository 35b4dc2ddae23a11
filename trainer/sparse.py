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
Adagrad to the unique rows only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch

from exporter.types import Cut, TableDelta
from trainer.tables import DynamicTable

__all__ = ["FusedLookup", "Jagged", "take_cut"]

I64 = npt.NDArray[np.int64]
Jagged = tuple[I64, I64 | None]
"""One field of a batch: ``(ids, segment)``; segment None means one id per sample."""


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
        self.table, self.now, self.batch, self.n_fields = table, now, batch, len(fields)
        index = list(range(len(fields))) if field_index is None else list(field_index)
        self.single = all(seg is None for _, seg in fields)
        if self.single and fields:  # sample-major (B, F): the pooled view needs no copy
            all_ids = np.stack([f[0] for f in fields], axis=1).ravel()
        else:
            all_ids = np.concatenate([f[0] for f in fields]) if fields else np.empty(0, np.int64)
        uniq, inverse = torch.unique(torch.from_numpy(all_ids), return_inverse=True)

        def field_of(pos: I64) -> npt.NDArray[np.int16]:
            """Field (index into ``table.fields``) of the unique ids at ``pos``."""
            idx = np.array(index, dtype=np.int16)
            if self.single:
                occ = np.tile(idx, batch)
            else:
                occ = np.repeat(idx, [f[0].shape[0] for f in fields])
            per_unique = np.empty(uniq.shape[0], dtype=np.int16)
            per_unique[inverse.numpy()] = occ
            return per_unique[pos]

        multi = len(table.fields) > 1
        self.rows, self._admitted = table.resolve(
            uniq.numpy(),
            now=now,
            train=train,
            field=field_of if multi else index[0] if index else 0,
        )
        self.inverse = inverse
        if not self.single:  # flat output slot (sample * F + field) of every id
            slots = []
            for k, (ids, seg) in enumerate(fields):
                s = np.arange(batch, dtype=np.int64) if seg is None else seg
                if s.shape != ids.shape:
                    raise ValueError(f"field {k}: {ids.shape[0]} ids but {s.shape[0]} segments")
                slots.append(s * len(fields) + k)
            self.slot = torch.from_numpy(np.concatenate(slots))
        self.train = train
        self._gathered = False
        self.emb = torch.empty(0, table.p.dim)
        if not defer:
            self.finish()

    def finish(self) -> None:
        """Initialise the rows admitted for this batch and gather its unique rows.

        Construction with ``defer=True`` stops after the id work (dedup, probe,
        admission: :meth:`DynamicTable.resolve`), which touches no row values and may
        overlap the previous step's update; this is the rest. Idempotent.
        """
        if self._admitted is not None:
            self.table.commit(self._admitted)
            self._admitted = None
        if not self._gathered:
            self.emb = self.table.gather(self.rows).requires_grad_(self.train)
            self._gathered = True

    def pooled(self) -> torch.Tensor:
        """Mean-pooled embeddings, shape ``(batch, n_fields, dim)``."""
        per_id = torch.index_select(self.emb, 0, self.inverse)
        d = self.table.p.dim
        if self.single:
            return per_id.view(self.batch, self.n_fields, d)
        n_out = self.batch * self.n_fields
        out = torch.zeros(n_out, d).index_add_(0, self.slot, per_id)
        n = torch.zeros(n_out).index_add_(0, self.slot, torch.ones(self.slot.shape[0]))
        return (out / n.clamp(min=1.0).unsqueeze(1)).view(self.batch, self.n_fields, d)

    def step(self) -> None:
        """Apply row-wise Adagrad to the unique rows (after ``backward()``)."""
        if self.emb.grad is not None:
            self.table.apply_adagrad(self.rows, self.emb.grad, now=self.now, scratch=True)


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
        dense={k: v.detach().numpy().astype(np.float32, copy=True) for k, v in dense.items()},
        created_ms=int(time.time() * 1000),
        statistics=statistics & dense.keys(),
    )
