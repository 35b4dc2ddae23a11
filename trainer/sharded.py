"""Embedding rows sharded over the workers of a job, the lookups that reach them, the cut.

**Ownership.** Every id lives on exactly one worker, chosen through ``N_BUCKETS`` virtual
buckets, a fixed function of the id; a job of another size moves whole buckets (a
checkpoint is re-bucketed on restart, ``trainer/checkpoint.py``)::

    bucket_of(id) = top 12 bits of splitmix64(id)      # 0 .. 4095, the same in any job
    owner_of(id)  = bucket_of(id) % world

Kafka partitions are assigned the same static way: partition ``p`` to worker
``p % world`` (:func:`partitions_of`).

**A step's lookup** (:class:`ShardedLookup`, every table of the batch in one exchange):

1. each worker deduplicates its batch's ids per table and sorts the unique ids by owner;
2. counts ``(world, tables)`` go through ``exchange_counts``, the ids (and, for a table
   holding several fields, each id's field index) through one ``all_to_all``;
3. each owner deduplicates what it received (an id may come from several workers) and
   resolves and admits each id once (``DynamicTable.resolve``); admission counts,
   eviction, tombstones and change tracking stay with the owner;
4. ``gather``: the owner sends every worker the vectors of the ids it asked for (one
   ``all_to_all``); the worker's leaf tensor of unique rows is pooled per field;
5. ``step`` (after ``backward``): each unique row's gradient goes to its owner (one
   ``all_to_all``), which sums the gradients of an id from all workers, divides the sum
   by ``world`` (the dense gradients are averaged, so a step of N workers is the step of
   one worker on the union of their batches) and applies row-wise Adagrad
   (``send_grads`` then ``apply_grads``: the trainer applies only once the job knows
   that every worker's step was finite).

Two workers, one table of dim 4, owner(17) = 0 and owner(42) = owner(99) = 1::

    worker 0: batch [17, 42, 17] -> unique [17, 42] -> [17] to 0, [42] to 1
    worker 1: batch [42, 99]     -> unique [42, 99] -> [] to 0,  [42, 99] to 1
    owner 1 receives [42] (from 0) and [42, 99] (from 1), resolves [42, 99] once, sends
    back one vector to worker 0 and two to worker 1; in backward it receives the same
    shapes of gradients and adds the two for id 42.

Bytes a worker sends per step, for the ids owned by others: 8 per unique id (16 in a
table of several fields), then 4 x dim per vector it returns and per gradient it sends.
With one worker nothing is sent: every exchange returns its input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from trainer.distributed import Comm, split
from trainer.errors import TrainerError
from trainer.tables import Admitted, DynamicTable

__all__ = [
    "N_BUCKETS",
    "Jagged",
    "ShardedLookup",
    "bucket_of",
    "owner_of",
    "partitions_of",
]

I64 = npt.NDArray[np.int64]
Jagged = tuple[I64, I64 | None]
"""One field of a batch: ``(ids, segment)``; segment None means one id per sample."""

N_BUCKETS = 4096
_SHIFT = np.uint64(64 - 12)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def bucket_of(ids: I64) -> I64:
    """The virtual bucket (``0 .. N_BUCKETS - 1``) of each id: splitmix64's finaliser,
    top bits (the id maps use other bits of another mix, so shards hash evenly)."""
    z = np.ascontiguousarray(ids, dtype=np.int64).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return (z >> _SHIFT).astype(np.int64)


def owner_of(ids: I64, world: int) -> I64:
    """The worker that owns each id in a job of ``world`` workers."""
    if world == 1:
        return np.zeros(ids.shape, dtype=np.int64)
    return bucket_of(ids) % world


def partitions_of(topic: str, partitions: Sequence[int], rank: int, world: int) -> list[int]:
    """The partitions of ``topic`` worker ``rank`` reads: ``p % world == rank``."""
    if len(partitions) < world:
        raise TrainerError(
            f"topic {topic!r} (kafka.topics.samples) has {len(partitions)} partitions, fewer "
            f"than the {world} workers: add partitions (kafka-topics.sh --alter "
            f"--partitions {world}; a new topic gets kafka.partitions) or run fewer workers"
        )
    return [p for p in partitions if p % world == rank]


_Chunks = list[list[list[torch.Tensor]]]
"""``chunks[r][g]``: the 1-D pieces for worker ``r`` of table ``g`` (sent back to back)."""


def _exchange(comm: Comm, chunks: _Chunks, recv: list[list[list[int]]]) -> _Chunks:
    """One ``all_to_all`` of every table's pieces; ``recv[s][g]`` are the sizes of the
    pieces worker ``s`` sends for table ``g``. Returns ``out[s][g]``, split alike. On one
    worker it returns ``chunks`` as they are (no copy)."""
    if comm.world == 1:
        return chunks
    flat = [p for row in chunks for pieces in row for p in pieces]
    send = [sum(int(p.numel()) for pieces in row for p in pieces) for row in chunks]
    sizes = [n for row in recv for pieces in row for n in pieces]
    out = comm.all_to_all(torch.cat(flat), send, [sum(sum(ps) for ps in row) for row in recv])
    it = iter(split(out, sizes))
    return [[[next(it) for _ in pieces] for pieces in row] for row in recv]


class _Group:
    """One table's share of a step on this worker: the batch side (unique ids sorted by
    owner, pooling) and the owner side (the ids other workers asked for)."""

    def __init__(
        self,
        comm: Comm,
        table: DynamicTable,
        fields: Sequence[Jagged],
        batch: int,
        index: list[int],
    ) -> None:
        self.table, self.batch, self.n_fields = table, batch, len(fields)
        self.dim = table.p.dim
        self.single = all(seg is None for _, seg in fields)
        if self.single and fields:  # sample-major (B, F): the pooled view needs no copy
            all_ids = np.stack([f[0] for f in fields], axis=1).ravel()
        else:
            all_ids = np.concatenate([f[0] for f in fields]) if fields else np.empty(0, np.int64)
        uniq_t, inverse = torch.unique(torch.from_numpy(all_ids), return_inverse=True)
        uniq = uniq_t.numpy()
        self.multi = len(table.fields) > 1
        self.field0 = index[0] if index else 0
        field_of_uniq = None
        if self.multi:  # the owner admits ids into rows of their field: send it along
            idx = np.array(index, dtype=np.int64)
            if self.single:
                occ = np.tile(idx, batch)
            else:
                occ = np.repeat(idx, [f[0].shape[0] for f in fields])
            field_of_uniq = np.empty(uniq.shape[0], dtype=np.int64)
            field_of_uniq[inverse.numpy()] = occ
        if comm.world > 1:  # unique ids by owner; the inverse follows the new order
            own = owner_of(uniq, comm.world)
            order = np.argsort(own, kind="stable")
            uniq = uniq[order]
            if field_of_uniq is not None:
                field_of_uniq = field_of_uniq[order]
            pos = np.empty(order.shape[0], dtype=np.int64)
            pos[order] = np.arange(order.shape[0])
            inverse = torch.from_numpy(pos)[inverse]
            self.counts = np.bincount(own, minlength=comm.world).astype(np.int64)
        else:
            self.counts = np.array([uniq.shape[0]], dtype=np.int64)
        self.uniq, self.field_of_uniq, self.inverse = uniq, field_of_uniq, inverse
        if not self.single:  # flat output slot (sample * F + field) of every id
            slots = []
            for k, (ids, seg) in enumerate(fields):
                s = np.arange(batch, dtype=np.int64) if seg is None else seg
                if s.shape != ids.shape:
                    raise ValueError(f"field {k}: {ids.shape[0]} ids but {s.shape[0]} segments")
                slots.append(s * len(fields) + k)
            self.slot = torch.from_numpy(np.concatenate(slots))
        self.emb = torch.empty(0, self.dim)
        # owner side, set by ShardedLookup
        self.recv = np.zeros(comm.world, dtype=np.int64)  # ids received from each worker
        self.rows: I64 = np.empty(0, dtype=np.int64)  # rows of the owner's unique ids
        self.inv: torch.Tensor | None = None  # received position -> owner's unique id
        self.only: int | None = None  # the one worker that sent ids (then inv is None)
        self.admitted: Admitted | None = None

    def outgoing(self, r: int) -> slice:
        """The slice of ``uniq`` that worker ``r`` owns."""
        start = int(self.counts[:r].sum())
        return slice(start, start + int(self.counts[r]))

    def incoming(self, s: int) -> slice:
        start = int(self.recv[:s].sum())
        return slice(start, start + int(self.recv[s]))

    def resolve(self, got: list[list[torch.Tensor]], now: int, train: bool, world: int) -> None:
        """Owner side: resolve and admit the ids every worker sent (``got[s]`` = the
        pieces from worker ``s``: ids, then field indices for a table of several fields)."""
        ids = [p[0].cpu().numpy() for p in got]
        senders = [s for s in range(world) if self.recv[s] > 0]
        flds: npt.NDArray[np.int64] | None = None
        if self.multi:
            flds = np.concatenate([np.asarray(p[1].cpu().numpy()) for p in got])
        if len(senders) <= 1:  # ids from one worker are unique already
            self.only = senders[0] if senders else None
            uq = ids[senders[0]] if senders else np.empty(0, dtype=np.int64)
            per_unique = flds
        else:
            allids = torch.from_numpy(np.concatenate(ids))
            uq_t, self.inv = torch.unique(allids, return_inverse=True)
            uq = uq_t.numpy()
            per_unique = None
            if flds is not None:
                per_unique = np.empty(uq.shape[0], dtype=np.int64)
                per_unique[self.inv.numpy()] = flds
        field: int | Callable[[I64], npt.NDArray[np.int16]] = self.field0
        if per_unique is not None:
            pu = per_unique.astype(np.int16)
            field = lambda pos: pu[pos]  # noqa: E731
        self.rows, self.admitted = self.table.resolve(uq, now=now, train=train, field=field)

    def answer(self, world: int) -> list[list[torch.Tensor]]:
        """Owner side: for each worker, the vectors of the ids it sent (flattened)."""
        vec = self.table.gather(self.rows)
        if self.inv is None:
            none = vec[:0].reshape(-1)
            return [[vec.reshape(-1) if s == self.only else none] for s in range(world)]
        return [[vec[self.inv[self.incoming(s)]].reshape(-1)] for s in range(world)]

    def pooled(self) -> torch.Tensor:
        """Mean-pooled embeddings, shape ``(batch, n_fields, dim)``."""
        per_id = torch.index_select(self.emb, 0, self.inverse.to(self.emb.device))
        d = self.dim
        if self.single:
            return per_id.view(self.batch, self.n_fields, d)
        n_out = self.batch * self.n_fields
        slot = self.slot.to(per_id.device)
        out = torch.zeros(n_out, d, device=per_id.device).index_add_(0, slot, per_id)
        ones = torch.ones(slot.shape[0], device=per_id.device)
        n = torch.zeros(n_out, device=per_id.device).index_add_(0, slot, ones)
        return (out / n.clamp(min=1.0).unsqueeze(1)).view(self.batch, self.n_fields, d)


class ShardedLookup:
    """Every table of a batch, looked up on the workers that own its ids (module docstring).

    ``tables[g]`` holds the fields ``fields[g]`` (``field_index[g][k]``: the index in
    ``tables[g].fields`` of ``fields[g][k]``, default ``k``). Construction is local:
    each table's unique ids, sorted by owner; ``counts`` ``(world, tables)`` is how many
    go to each worker. :meth:`exchange` is the id half (ids to the owners, their resolve
    and admission; collective), which touches no row values, so the trainer's pipeline
    overlaps it with the previous update; :meth:`commit` then :meth:`gather` do the rest.
    :meth:`pooled` gives ``(batch, len(fields[g]), dim_g)`` per table; after
    ``backward()``, :meth:`step` sends the gradients to the owners, which update their
    rows. Every worker of the job must make the same calls in the same order.
    """

    def __init__(
        self,
        comm: Comm,
        tables: Sequence[DynamicTable],
        fields: Sequence[Sequence[Jagged]],
        batch: int,
        *,
        now: int = 0,
        train: bool = True,
        field_index: Sequence[Sequence[int]] | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.comm, self.now, self.train = comm, now, train
        self.device = device or torch.device("cpu")
        index = field_index or [list(range(len(f))) for f in fields]
        self.groups = [
            _Group(comm, t, f, batch, list(ix))
            for t, f, ix in zip(tables, fields, index, strict=True)
        ]
        self.counts = np.stack([g.counts for g in self.groups], axis=1)  # (world, G)
        self._committed = self._gathered = False

    def exchange(self, recv: npt.NDArray[np.int64] | None = None) -> ShardedLookup:
        """Ids to their owners, which resolve and admit them (collective). ``recv``: the
        ids each worker sends this one, ``(world, tables)``, when the caller exchanged
        ``counts`` already (the trainer does, with the step's statistics)."""
        comm, gs, w = self.comm, self.groups, self.comm.world
        if recv is None:
            recv = comm.exchange_counts(torch.from_numpy(self.counts)).numpy()
        for k, g in enumerate(gs):
            g.recv = recv[:, k].astype(np.int64)
        chunks: _Chunks = []
        for r in range(w):
            row = []
            for g in gs:
                part = slice(None) if w == 1 else g.outgoing(r)
                pieces = [torch.from_numpy(g.uniq[part])]
                if g.field_of_uniq is not None:
                    pieces.append(torch.from_numpy(g.field_of_uniq[part]))
                row.append(pieces)
            chunks.append(row)
        sizes = [
            [[int(recv[s, k])] * (2 if g.multi else 1) for k, g in enumerate(gs)] for s in range(w)
        ]
        got = _exchange(comm, chunks, sizes)
        for k, g in enumerate(gs):
            g.resolve([got[s][k] for s in range(w)], self.now, self.train, w)
        return self

    def commit(self) -> None:
        """Give the rows admitted for this step their initial values (local; idempotent)."""
        if not self._committed:
            for g in self.groups:
                g.table.commit(g.admitted)
                g.admitted = None
            self._committed = True

    def gather(self) -> None:
        """Owners send the vectors back (collective); each table's leaf of unique rows."""
        self.commit()
        if self._gathered:
            return
        w, gs = self.comm.world, self.groups
        answers = [g.answer(w) for g in gs]  # answers[g][s]
        chunks = [[answers[k][s] for k in range(len(gs))] for s in range(w)]
        sizes = [[[int(g.counts[r]) * g.dim] for g in gs] for r in range(w)]
        got = _exchange(self.comm, chunks, sizes)
        for k, g in enumerate(gs):
            parts = [got[r][k][0] for r in range(w)]
            emb = parts[0] if w == 1 else torch.cat(parts)
            g.emb = emb.view(-1, g.dim).to(self.device).requires_grad_(self.train)
        self._gathered = True

    def finish(self) -> None:
        """:meth:`commit` then :meth:`gather`."""
        self.gather()

    def pooled(self) -> list[torch.Tensor]:
        """Per table: mean-pooled embeddings, ``(batch, n_fields, dim)``."""
        return [g.pooled() for g in self.groups]

    def step(self) -> None:
        """After ``backward()``: gradients to the owners (collective); row-wise Adagrad there."""
        self.send_grads()
        self.apply_grads()

    def send_grads(self) -> None:
        """After ``backward()``: each unique row's gradient to its owner (collective); the
        owner sums an id's gradients from all workers (applied by :meth:`apply_grads`)."""
        w, gs = self.comm.world, self.groups
        chunks: _Chunks = []
        for r in range(w):
            row = []
            for g in gs:
                grad = g.emb.grad if g.emb.grad is not None else torch.zeros_like(g.emb)
                part = slice(None) if w == 1 else g.outgoing(r)
                row.append([grad[part].reshape(-1)])
            chunks.append(row)
        sizes = [[[int(g.recv[s]) * g.dim] for g in gs] for s in range(w)]
        got = _exchange(self.comm, chunks, sizes)
        self._grads: list[torch.Tensor | None] = []
        for k, g in enumerate(gs):
            if g.rows.size == 0 or (w == 1 and g.emb.grad is None):
                self._grads.append(None)  # nothing to update here
                continue
            if g.inv is None:  # one sender: its gradients are per unique id already
                if g.only is None:
                    raise TrainerError(f"table {g.table.name}: rows without a sender")
                grad = got[g.only][k][0].view(-1, g.dim)
            else:
                pieces = torch.cat([got[s][k][0] for s in range(w)]).view(-1, g.dim)
                grad = torch.zeros(g.rows.size, g.dim, device=pieces.device)
                grad.index_add_(0, g.inv.to(pieces.device), pieces)
            grad = grad.cpu()  # the tables live in host memory
            if w > 1:
                grad.div_(w)  # the dense gradients are averaged over the workers too
            self._grads.append(grad)

    def apply_grads(self) -> None:
        """Row-wise Adagrad on the owner's rows with the gradients :meth:`send_grads` got
        (local)."""
        for g, grad in zip(self.groups, self._grads, strict=True):
            if grad is not None:
                g.table.apply_adagrad(g.rows, grad, now=self.now, scratch=True)
