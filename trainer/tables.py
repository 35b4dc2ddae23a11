"""Dynamic embedding tables: growable, CPU, no fixed vocabulary.

A :class:`DynamicTable` maps signed int64 feature ids to rows of a float32 matrix through
:class:`IdMap`, a numpy-vectorised open-addressing (linear probing) hash map, so a batch of
ids is resolved without a per-id Python loop. One table may hold the rows of several
fields (``fields``) of the same dim: their ids must be distinct keys (the stable hash
salts every value with its field name), and each row carries the index of its field, so
the table exports one :class:`~exporter.types.TableDelta` per field. Layout of a table of
``dim=4`` holding fields ``["user_id", "item_id"]``::

    IdMap   keys  [EMPTY, 42, EMPTY, 17, DELETED, ...]   (capacity = power of two)
            rows  [   -1,  0,    -1,  1,      -1, ...]   slot -> row
    rows    weight[0] = embedding of id 42               (float32, shape (capacity, 4))
            accum[0]  = row-wise Adagrad accumulator     (float32, one per row)
            row_id[0] = 42, last_update[0], freq[0]      (int64 bookkeeping)
            row_field[0] = 1                             (int16: id 42 is an item_id)

Ids pass **admission** before they get a row: an id must be seen in ``admit_count``
batches (counted in a second, bounded IdMap) and then wins a coin flip with
``admit_prob``. Ids that are not admitted read a zero vector and get no gradient.

**Eviction** frees rows idle for longer than ``max_idle`` (time since last update, in the
caller's clock) and, above ``max_rows`` rows of one field, that field's least frequently
used rows. Every evicted id becomes a tombstone of its field for the next delta.

**Change tracking** marks each row written since the last :meth:`DynamicTable.take_delta`.
Memory is bounded by ``max_tracked`` changed rows plus tombstones (a bitmap over rows and
a tombstone list that never exceeds the bound); past it the table flags an overflow and
the next delta is a full snapshot (nothing is ever dropped silently)::

    t.take_delta()  ->  ({"user_id": TableDelta(ids=[17], values=(1, 4), tombstones=[5]),
                          "item_id": TableDelta(ids=[42], values=(1, 4), tombstones=[])},
                         False)          # False: a delta, True: a full snapshot
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from exporter.types import TableDelta
from trainer.errors import TableError

__all__ = ["DynamicTable", "IdMap", "TableParams"]

_EMPTY = np.int64(np.iinfo(np.int64).min)
_DELETED = np.int64(np.iinfo(np.int64).min + 1)
_MULT = np.uint64(0x9E3779B97F4A7C15)

I64 = npt.NDArray[np.int64]
I16 = npt.NDArray[np.int16]


def _mix(ids: I64, mask: int) -> I64:
    """Fibonacci hashing of ids to slots in ``[0, mask]``."""
    h = ids.view(np.uint64) * _MULT
    h ^= h >> np.uint64(29)
    return (h & np.uint64(mask)).astype(np.int64)


class IdMap:
    """Open-addressing int64 -> int64 map; every operation takes a whole array of keys.

    ``EMPTY`` and ``DELETED`` (the two smallest int64) are reserved and rejected as keys.
    A slot's key and value are adjacent (one ``(capacity + 1, 2)`` array, ``keys`` and
    ``vals`` are views of its columns), so a probe that finds its key has the value in
    the same cache line; the extra last row holds the value -1 that ``vals[-1]`` reads
    for an absent key.
    """

    def __init__(self, capacity: int = 1024) -> None:
        cap = 1 << max(4, (capacity - 1).bit_length())
        self._kv: I64 = np.empty((cap + 1, 2), dtype=np.int64)
        self._kv[:, 0] = _EMPTY
        self._kv[:, 1] = -1
        self.keys: I64 = self._kv[:cap, 0]
        self.vals: I64 = self._kv[:, 1]  # vals[-1] == vals[cap] == -1: "absent"
        self.size = 0
        self.used = 0  # live + deleted slots

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[0])

    def nbytes(self) -> int:
        return int(self._kv.nbytes)

    def _find(self, ids: I64) -> I64:
        """Slot of each id, or -1 where absent."""
        mask = self.capacity - 1
        slot = _mix(ids, mask)
        k = self.keys[slot]
        hit = k == ids  # the first probe settles most ids (load <= 1/2): no indirection
        pending = np.flatnonzero(~hit & (k != _EMPTY))
        if pending.size == 0:  # every id settled by its first probe
            slot[~hit] = -1
            return slot
        out = np.where(hit, slot, -1)
        slot = (slot[pending] + 1) & mask
        while pending.size:
            k = self.keys[slot]
            hit = k == ids[pending]
            out[pending[hit]] = slot[hit]
            go = ~hit & (k != _EMPTY)
            pending, slot = pending[go], (slot[go] + 1) & mask
        return out

    def get(self, ids: I64) -> I64:
        """Value of each id, -1 where absent."""
        return self.vals[self._find(ids)]  # slot -1 reads the sentinel -1

    def put(self, ids: I64, vals: I64, absent: bool = False) -> None:
        """Insert or overwrite; ``ids`` must be unique. ``absent``: the caller knows that
        none of them is in the map (skips the search for ones to overwrite)."""
        if ids.size == 0:
            return
        if ((ids == _EMPTY) | (ids == _DELETED)).any():
            raise TableError("ids -2**63 and -2**63+1 are reserved; hash them to other values")
        new_ids, new_vals = ids, vals
        if not absent:
            slot = self._find(ids)
            old = slot >= 0
            self.vals[slot[old]] = vals[old]
            new_ids, new_vals = ids[~old], vals[~old]
            if new_ids.size == 0:
                return
        if (self.used + new_ids.size) * 2 > self.capacity:
            # sized from the live keys: a rehash after many deletes purges DELETED slots
            # at the same capacity instead of doubling (churn must not grow the map)
            self._rehash((self.size + new_ids.size) * 4)
        mask = self.capacity - 1
        pending = np.arange(new_ids.size)
        slot = _mix(new_ids, mask)
        pend_ids, pend_vals = new_ids, new_vals
        while pending.size:
            free = self.keys[slot] == _EMPTY
            # claim free slots; with duplicates the last write wins, losers probe on
            self.keys[slot[free]] = pend_ids[free]
            won = free & (self.keys[slot] == pend_ids)
            self.vals[slot[won]] = pend_vals[won]
            lost = ~won
            pending, slot = pending[lost], (slot[lost] + 1) & mask
            pend_ids, pend_vals = pend_ids[lost], pend_vals[lost]
        self.size += int(new_ids.size)
        self.used += int(new_ids.size)

    def delete(self, ids: I64) -> None:
        slot = self._find(ids)
        slot = slot[slot >= 0]
        self.keys[slot] = _DELETED
        self.vals[slot] = -1
        self.size -= int(slot.size)

    def items(self) -> tuple[I64, I64]:
        live = (self.keys != _EMPTY) & (self.keys != _DELETED)
        return self.keys[live].copy(), self.vals[: self.capacity][live].copy()

    def _rehash(self, capacity: int) -> None:
        k, v = self.items()
        self.__init__(capacity)  # type: ignore[misc]
        self.put(k, v)


@dataclass(frozen=True)
class TableParams:
    """Admission, eviction, optimizer and tracking parameters of one table."""

    dim: int = 16
    admit_count: int = 1
    admit_prob: float = 1.0
    init_std: float = 0.01
    lr: float = 0.05
    adagrad_eps: float = 1e-8
    adagrad_init: float = 0.0
    max_rows: int = 0  # per field; 0: unbounded; above it LFU eviction
    max_idle: int = 0  # 0: never; evict rows not updated for longer (caller's clock)
    max_tracked: int = 1_000_000  # changed rows + tombstones held before a full cut
    max_candidates: int = 1_000_000  # ids counted for admission before counting restarts


FieldOf = int | Callable[[I64], I16]
"""The field of ids being admitted: one index for all, or a function of their positions."""


@dataclass(frozen=True)
class Admitted:
    """Rows handed out by :meth:`DynamicTable.resolve`, not yet initialised: their
    initial values (drawn already) and, unless ``booked``, their ids, fields and
    frequencies (written by ``resolve`` when the arrays did not need to grow)."""

    rows: I64
    ids: I64
    fields: int | I16
    now: int
    init: torch.Tensor
    booked: bool


class DynamicTable:
    """One growable embedding table (one or more fields of one dim) with admission,
    eviction and change tracking."""

    def __init__(
        self, name: str, params: TableParams, seed: int = 0, fields: Sequence[str] = ()
    ) -> None:
        if params.dim <= 0 or params.admit_count < 1 or not 0.0 < params.admit_prob <= 1.0:
            raise TableError(
                f"table {name}: need dim > 0, admit_count >= 1, 0 < admit_prob <= 1, got {params}"
            )
        self.name = name
        self.fields = list(fields) or [name]
        if len(set(self.fields)) != len(self.fields) or len(self.fields) > 2**15:
            raise TableError(f"table {name}: fields {self.fields} must be unique (< 32768)")
        self.p = params
        self.ids = IdMap()
        self.candidates = IdMap()
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)
        cap = 1024
        self.weight = torch.zeros(cap, params.dim)
        self.accum = torch.full((cap,), params.adagrad_init)
        self.row_id: I64 = np.full(cap, _EMPTY, dtype=np.int64)
        self.last_update: I64 = np.zeros(cap, dtype=np.int64)
        self.freq: I64 = np.zeros(cap, dtype=np.int64)
        self.row_field: I16 = np.zeros(cap, dtype=np.int16)
        self.dirty = np.zeros(cap, dtype=bool)
        self.n_dirty = 0
        self.free: list[int] = []
        self.n_rows = 0  # high-water mark of rows handed out
        self.tombstones: list[tuple[I64, I16]] = []  # (ids, fields) evicted since the cut
        self.n_tombstones = 0
        self.overflow = True  # the first delta is always full
        self.rejected = 0  # id occurrences not admitted (counted, never silent)
        self.evicted = 0

    # ------------------------------------------------------------------ sizes
    def __len__(self) -> int:
        return self.ids.size

    def rows_per_field(self) -> dict[str, int]:
        """Live rows of each field."""
        live = self.row_id[: self.n_rows] != _EMPTY
        counts = np.bincount(self.row_field[: self.n_rows][live], minlength=len(self.fields))
        return {f: int(c) for f, c in zip(self.fields, counts, strict=True)}

    def bytes_per_row(self) -> int:
        """Bytes one live row costs: weight, accumulator, bookkeeping, hash slots (load 1/2)."""
        return self.p.dim * 4 + 4 + 8 * 3 + 2 + 1 + 2 * 16

    def nbytes(self) -> int:
        """Bytes held now, spare capacity and the admission counters included."""
        return int(
            self.weight.nbytes
            + self.accum.nbytes
            + self.row_id.nbytes * 3
            + self.row_field.nbytes
            + self.dirty.nbytes
            + self.ids.nbytes()
            + self.candidates.nbytes()
        )

    # ------------------------------------------------------------------ rows
    def _grow(self, need: int) -> None:
        cap = self.weight.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        w = torch.zeros(new, self.p.dim)
        w[:cap] = self.weight
        a = torch.full((new,), self.p.adagrad_init)
        a[:cap] = self.accum
        self.weight, self.accum = w, a
        for attr, fill in (
            ("row_id", _EMPTY),
            ("last_update", 0),
            ("freq", 0),
            ("row_field", 0),
            ("dirty", False),
        ):
            old = getattr(self, attr)
            arr = np.full(new, fill, dtype=old.dtype)
            arr[:cap] = old
            setattr(self, attr, arr)

    def _alloc(self, n: int) -> I64:
        """Numbers of ``n`` free rows, the arrays grown to hold them."""
        rows = self._take_rows(n)
        self._grow(self.n_rows)
        return rows

    def _take_rows(self, n: int) -> I64:
        """Numbers of ``n`` free rows without growing the arrays (:meth:`commit` does):
        :meth:`resolve` may run while the previous step's update writes the rows."""
        take = min(n, len(self.free))
        reused = np.array(self.free[len(self.free) - take :], dtype=np.int64)
        del self.free[len(self.free) - take :]
        fresh = np.arange(self.n_rows, self.n_rows + n - take, dtype=np.int64)
        self.n_rows += n - take
        return np.concatenate([reused, fresh]) if take else fresh

    def _check_bound(self) -> None:
        """Past ``max_tracked``, give up on tracking: the next delta is a full snapshot."""
        if self.n_dirty + self.n_tombstones > self.p.max_tracked:
            self.overflow = True
            self.tombstones, self.n_tombstones = [], 0  # a snapshot needs none

    def _mark(self, rows: I64) -> None:
        if self.overflow:  # the next delta is full anyway
            return
        new = rows[~self.dirty[rows]]
        self.dirty[new] = True
        self.n_dirty += int(new.size)
        self._check_bound()

    def lookup(self, unique_ids: I64, now: int = 0, train: bool = True, field: FieldOf = 0) -> I64:
        """Rows of unique ids, -1 for ids without a row.

        With ``train`` the ids are counted and admitted: admitted ids get fresh rows
        (normal(0, init_std), marked changed) of field ``field`` (an index into
        ``fields``, or a function from positions in ``unique_ids`` to indices).
        Same as :meth:`resolve` then :meth:`commit`.
        """
        rows, new = self.resolve(unique_ids, now, train, field)
        self.commit(new)
        return rows

    def resolve(
        self, unique_ids: I64, now: int = 0, train: bool = True, field: FieldOf = 0
    ) -> tuple[I64, Admitted | None]:
        """The id half of :meth:`lookup`: rows of unique ids (-1: no row), counting and
        admitting them, and the admitted rows, which :meth:`commit` must initialise
        before the table is read or changed otherwise.

        It touches the id maps, the free-row counters, the frequencies, ids and fields
        of rows and the random generator, never the row values, accumulators, update
        times or change tracking that :meth:`apply_adagrad` writes, nor reallocates an
        array: it may overlap the previous step's update (the trainer's pipeline)."""
        rows = self.ids.get(unique_ids)
        if not train:
            return rows, None
        found = rows >= 0
        self.freq[rows[found]] += 1
        missing = np.flatnonzero(~found)
        if missing.size == 0:
            return rows, None
        miss_ids = unique_ids[missing]
        if self.p.admit_count == 1 and self.p.admit_prob >= 1.0:  # everyone is admitted
            admitted = missing
        else:
            counts = np.maximum(self.candidates.get(miss_ids), 0) + 1
            ok = counts >= self.p.admit_count
            if self.p.admit_prob < 1.0:
                ok &= self._rng.random(miss_ids.size) < self.p.admit_prob
            n_wait = int(miss_ids.size - np.count_nonzero(ok))
            if self.candidates.size + n_wait > self.p.max_candidates:
                self.candidates = IdMap()  # bounded: counting restarts, stricter admission
            self.candidates.put(miss_ids[~ok], counts[~ok])
            self.candidates.delete(miss_ids[ok])
            self.rejected += n_wait
            if n_wait == miss_ids.size:
                return rows, None
            admitted = missing[ok]
        new_ids = unique_ids[admitted]
        new_rows = self._take_rows(new_ids.size)
        self.ids.put(new_ids, new_rows, absent=True)  # they just missed
        rows[admitted] = new_rows
        fields = field if isinstance(field, int) else field(admitted)
        init = torch.randn(new_rows.size, self.p.dim, generator=self._gen).mul_(self.p.init_std)
        booked = self.n_rows <= self.row_id.shape[0]  # no growth: book them now
        if booked:  # arrays that the update never writes
            self.row_id[new_rows] = new_ids
            self.freq[new_rows] = 1
            self.row_field[new_rows] = fields
        return rows, Admitted(new_rows, new_ids, fields, now, init, booked)

    def commit(self, new: Admitted | None) -> None:
        """Give the rows admitted by :meth:`resolve` their initial values and bookkeeping."""
        if new is None:
            return
        self._grow(self.n_rows)
        r = torch.from_numpy(new.rows)
        self.weight.index_copy_(0, r, new.init)
        self.accum.index_fill_(0, r, self.p.adagrad_init)
        if not new.booked:
            self.row_id[new.rows] = new.ids
            self.freq[new.rows] = 1
            self.row_field[new.rows] = new.fields
        self.last_update[new.rows] = new.now
        self._mark(new.rows)

    def gather(self, rows: I64) -> torch.Tensor:
        """Embeddings of ``rows`` (zeros where the row is -1), a new tensor."""
        r = torch.from_numpy(rows)
        if rows.size and rows.min() < 0:
            out = self.weight.index_select(0, r.clamp(min=0))
            out[r < 0] = 0.0
            return out
        return self.weight.index_select(0, r)

    def apply_adagrad(
        self, rows: I64, grad: torch.Tensor, now: int = 0, scratch: bool = False
    ) -> None:
        """Row-wise Adagrad on unique ``rows`` (rows of -1 are skipped).

        ``accum[r] += mean(g_r ** 2)``; ``w[r] -= lr * g_r / (sqrt(accum[r]) + eps)``.
        Rows whose gradient is all zero do not change and are not marked, so the next
        delta holds exactly the rows whose values changed. ``scratch``: ``grad`` may be
        overwritten (saves a copy of it).
        """
        sq = torch.linalg.vecdot(grad, grad)  # sum of squares, one pass
        keep = rows >= 0
        zero = (sq == 0).numpy()
        if zero.any():  # all zero, or so small that the squares underflow: look closer
            z = np.flatnonzero(zero)
            keep[z] &= grad[torch.from_numpy(z)].ne(0).any(1).numpy()
        if not keep.all():
            if not keep.any():
                return
            k = torch.from_numpy(keep)
            rows, grad, sq = rows[keep], grad[k], sq[k]
        r = torch.from_numpy(rows)
        acc = self.accum.index_select(0, r).add_(sq, alpha=1.0 / grad.shape[1])
        self.accum.index_copy_(0, r, acc)
        scale = acc.sqrt_().add_(self.p.adagrad_eps).reciprocal_().mul_(-self.p.lr)
        step = grad.mul_(scale.unsqueeze(1)) if scratch else grad * scale.unsqueeze(1)
        self.weight.index_add_(0, r, step)
        self.last_update[rows] = now
        self._mark(rows)

    # ------------------------------------------------------------------ eviction
    def evict(self, now: int) -> I64:
        """Evict idle rows and, above ``max_rows`` rows of a field, its least used rows.

        Returns the evicted ids (each a tombstone of its field in the next delta).
        """
        live_rows = np.flatnonzero(self.row_id[: self.n_rows] != _EMPTY)
        victims = np.empty(0, dtype=np.int64)
        if self.p.max_idle > 0:
            victims = live_rows[now - self.last_update[live_rows] > self.p.max_idle]
        if self.p.max_rows > 0:
            rest = np.setdiff1d(live_rows, victims, assume_unique=True)
            lfu = [victims]
            for f in range(len(self.fields)):
                mine = rest if len(self.fields) == 1 else rest[self.row_field[rest] == f]
                extra = mine.size - self.p.max_rows
                if extra > 0:
                    lfu.append(mine[np.argsort(self.freq[mine], kind="stable")[:extra]])
            victims = np.concatenate(lfu)
        if victims.size == 0:
            return victims
        ids = self.row_id[victims].copy()
        self.ids.delete(ids)
        self.row_id[victims] = _EMPTY
        self.weight[torch.from_numpy(victims)] = 0.0
        self.n_dirty -= int(np.count_nonzero(self.dirty[victims]))
        self.dirty[victims] = False
        self.free.extend(victims.tolist())
        self.evicted += int(ids.size)
        if not self.overflow:  # a full snapshot needs no tombstones
            self.tombstones.append((ids, self.row_field[victims].copy()))
            self.n_tombstones += int(ids.size)
            self._check_bound()
        return ids

    # ------------------------------------------------------------------ export
    def take_delta(self) -> tuple[dict[str, TableDelta], bool]:
        """Per field: rows changed and ids evicted since the last delta; resets tracking.

        Returns the deltas and whether they are full (a snapshot of every live row).
        """
        full = self.overflow
        live = self.row_id[: self.n_rows] != _EMPTY
        rows = np.flatnonzero(live if full else self.dirty[: self.n_rows])
        tomb, tomb_f = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int16)
        if not full and self.tombstones:
            tomb = np.concatenate([t for t, _ in self.tombstones])
            tomb_f = np.concatenate([f for _, f in self.tombstones])
            gone = self.ids.get(tomb) < 0  # a re-admitted id is live: a row, not a tombstone
            tomb, first = np.unique(tomb[gone], return_index=True)
            tomb_f = tomb_f[gone][first]
        ids = self.row_id[rows]
        values = self.weight[torch.from_numpy(rows)].numpy()
        self.dirty[:] = False
        self.n_dirty = 0
        self.tombstones = []
        self.n_tombstones = 0
        self.overflow = False
        dim = self.p.dim
        if len(self.fields) == 1:
            name = self.fields[0]
            return {name: TableDelta(name, dim, ids, values, tomb)}, full
        fields = self.row_field[rows]
        out = {}
        for k, name in enumerate(self.fields):
            mine = fields == k
            out[name] = TableDelta(name, dim, ids[mine], values[mine], tomb[tomb_f == k])
        return out, full

    def mark_full(self) -> None:
        """Force the next delta to be a full snapshot (e.g. after a restore)."""
        self.overflow = True
        self.tombstones, self.n_tombstones = [], 0
