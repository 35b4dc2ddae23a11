"""Pooled lookups over :class:`~trainer.tables.DynamicTable` and the trainer's cut.

A multi-valued field of a batch of ``B`` samples arrives as flat ids plus the sample each
id belongs to (a jagged layout, like torchrec's ``KeyedJaggedTensor``)::

    category: sample 0 -> ["c-1", "c-7"], sample 1 -> [], sample 2 -> ["c-1"]
    ids     = [h(c-1), h(c-7), h(c-1)]      int64, hashed with trainer.hashing
    segment = [0,      0,      2     ]      int64, sample index of each id

:class:`SparseLookup` deduplicates ids (``torch.unique(return_inverse=True)``), resolves
each unique id once, gathers one leaf tensor of unique rows and mean-pools into
``(B, dim)``. After ``backward()`` :meth:`SparseLookup.step` applies row-wise Adagrad to
the unique rows only.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import torch

from exporter.types import Cut, TableDelta
from trainer.tables import DynamicTable

__all__ = ["FusedLookup", "SparseLookup", "take_cut"]


class SparseLookup:
    """One batch's lookup into one table: forward pooling, then a row-wise update."""

    def __init__(
        self,
        table: DynamicTable,
        ids: npt.NDArray[np.int64],
        segment: npt.NDArray[np.int64] | None,
        batch: int,
        *,
        now: int = 0,
        train: bool = True,
    ) -> None:
        self.table = table
        self.now = now
        uniq, inverse = torch.unique(torch.from_numpy(ids), return_inverse=True)
        self.rows = table.lookup(uniq.numpy(), now=now, train=train)
        self.emb = table.gather(self.rows).requires_grad_(train)
        self.inverse = inverse
        self.segment = None if segment is None else torch.from_numpy(segment)
        self.batch = batch

    def pooled(self) -> torch.Tensor:
        """Mean-pooled embeddings, shape ``(batch, dim)`` (zeros for empty samples)."""
        per_id = torch.index_select(self.emb, 0, self.inverse)
        if self.segment is None:  # exactly one id per sample
            return per_id
        out = torch.zeros(self.batch, self.table.p.dim).index_add_(0, self.segment, per_id)
        n = torch.zeros(self.batch).index_add_(0, self.segment, torch.ones(self.segment.shape[0]))
        return out / n.clamp(min=1.0).unsqueeze(1)

    def step(self) -> None:
        """Apply row-wise Adagrad to the unique rows (after ``backward()``)."""
        if self.emb.grad is not None:
            self.table.apply_adagrad(self.rows, self.emb.grad, now=self.now)


class FusedLookup:
    """All fields of a batch looked up in ONE shared table: one dedup, one probe, one update.

    Field ids must already be distinct across fields (stable hashes salt the value with the
    field name). ``fields`` is a list of ``(ids, segment)`` in the jagged layout above; the
    output of :meth:`pooled` has shape ``(batch, len(fields), dim)``::

        fields = [(ids_user (B,), None), (ids_cat (K,), seg_cat (K,))]
        pooled()  ->  (B, 2, dim)        # field 1 mean-pooled per sample
    """

    def __init__(
        self,
        table: DynamicTable,
        fields: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64] | None]],
        batch: int,
        *,
        now: int = 0,
        train: bool = True,
    ) -> None:
        self.table, self.now, self.batch, self.n_fields = table, now, batch, len(fields)
        self.single = all(seg is None for _, seg in fields)
        if self.single and fields:  # sample-major (B, F): the pooled view needs no copy
            all_ids = np.stack([f[0] for f in fields], axis=1).ravel()
        else:
            all_ids = np.concatenate([f[0] for f in fields]) if fields else np.empty(0, np.int64)
        uniq, inverse = torch.unique(torch.from_numpy(all_ids), return_inverse=True)
        self.rows = table.lookup(uniq.numpy(), now=now, train=train)
        self.emb = table.gather(self.rows).requires_grad_(train)
        self.inverse = inverse
        if not self.single:  # flat output slot (sample * F + field) of every id
            slots = []
            for k, (_ids, seg) in enumerate(fields):
                s = np.arange(batch, dtype=np.int64) if seg is None else seg
                slots.append(s * len(fields) + k)
            self.slot = torch.from_numpy(np.concatenate(slots))

    def pooled(self) -> torch.Tensor:
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
            self.table.apply_adagrad(self.rows, self.emb.grad, now=self.now)


def take_cut(
    tables: dict[str, DynamicTable],
    dense: dict[str, torch.Tensor],
    *,
    step: int,
    samples: int,
    watermark_ms: int,
    offsets: dict[str, dict[int, int]],
) -> Cut:
    """A :class:`~exporter.types.Cut` of ``tables`` and ``dense``; resets change tracking.

    If any table overflowed its tracking bound (or was never cut), every table is cut
    full, so the cut as a whole is a consistent snapshot.
    """
    full = any(t.overflow for t in tables.values())
    if full:
        for t in tables.values():
            t.mark_full()
    deltas: dict[str, TableDelta] = {}
    for name, t in tables.items():
        deltas[name], _ = t.take_delta()
    return Cut(
        step=step,
        samples=samples,
        full=full,
        watermark_ms=watermark_ms,
        offsets={k: dict(v) for k, v in offsets.items()},
        tables=deltas,
        dense={k: v.detach().numpy().astype(np.float32, copy=True) for k, v in dense.items()},
        created_ms=int(time.time() * 1000),
    )
