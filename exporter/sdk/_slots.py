"""One embedding table updated in place: rows in fixed-size chunks, a hash index id -> slot.

Every operation takes whole arrays (numpy, no Python loop per row). Storage, for a table
with ``dim`` = 2 holding ids 17 and 42 (slots 0 and 1) after id 5 (slot 2) was deleted::

    index   int32[cap]   open addressing, linear probing, cap a power of two:
                         -1 empty, -2 deleted, else a slot; id x starts at its home
                         position fib(x) >> (64 - bits) and probes +1, +2, ...
                         e.g. [-1, 1, -1, -2, 0, -1, -1, -1]
    ids     int64[n]     id of each slot (stale for free slots): [17, 42, 5]
    chunks  [float32[R, dim], ...]   row of slot s = chunks[s // R][s % R]; growing adds a
                         chunk and never copies rows. A chunk is up to 1 GiB of anonymous
                         ``mmap`` (R = 2^24 rows at dim 16): the OS commits its pages only
                         as slots are handed out, in order, so the unused tail costs no
                         memory and most tables live in a single chunk. Not ``np.empty``:
                         numpy asks for transparent huge pages on large arrays, and first
                         touching a 2 MiB page (zeroing, compaction) made appending rows
                         ~4x slower here (5 ms vs 1.2 ms for 40k rows of dim 16)
    free    int64[k]     slots freed by tombstones, handed out again first: [2]

Memory per live row: ``4 * dim`` (row) + 8 (id) + 4 / load (index, load 0.3..0.75):
about 1.1x the bytes of ids and fp32 rows. Upserting k rows costs O(k): no sort of the
table, no copy of it; ids are handled ``_BATCH`` at a time, so temporaries stay small
however many rows a delta holds. Lookups (the read path) probe in C where
``exporter/sdk/_probe.c`` is built (``python -m fluxrec.native``; a scoring request
makes one lookup of ~100 ids per field, where numpy's per-call cost was the time), and
in numpy otherwise: the same slots (tested).
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

try:  # the read path in C (built by ``python -m fluxrec.native``); numpy without it
    from exporter.sdk import _probe  # type: ignore[attr-defined]
except ImportError:
    _probe = None

__all__ = ["SlotTable"]

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]

_EMPTY, _DELETED = -1, -2
_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: 2^64 / golden ratio
_MAX_LOAD = 0.75  # live + deleted positions per index position before a rebuild
_BUILD_LOAD = 0.6  # a (re)built index is the smallest power of two at most this full
_CHUNK_BYTES = 1 << 30  # of address space: the OS commits a chunk's pages as rows land
_IDS_GROWTH = 1.25
_BATCH = 1 << 16  # ids per vectorised pass


class SlotTable:
    """In-place storage of one table (layout in the module docstring). Not thread-safe:
    the caller (``InPlaceTables``) holds a lock around every call."""

    def __init__(self, dim: int, expected_rows: int = 0, chunk_rows: int = 0) -> None:
        self.dim = dim
        per_chunk = chunk_rows or max(1024, _CHUNK_BYTES // (4 * dim))
        self.rows_per_chunk = 1 << (per_chunk.bit_length() - 1)  # a power of two
        self._shift = self.rows_per_chunk.bit_length() - 1
        self.chunks: list[F32] = []
        self._voids: list[npt.NDArray[Any]] = []  # each chunk as one void item per row
        self.ids: I64 = np.zeros(max(1, int(expected_rows * _IDS_GROWTH)), np.int64)
        self.used = 0  # slots [0, used) have been handed out
        self.free: I64 = np.empty(0, np.int64)
        self.live = 0
        self._deleted = 0
        self._new_index(expected_rows)

    # ------------------------------------------------------------------ sizes

    @property
    def nbytes(self) -> int:
        """Bytes in use: rows and ids of the slots handed out, the index, the free list
        (address space never written to is not counted: it holds no memory)."""
        used = self.used * (4 * self.dim + 8)
        return int(used + self.index.nbytes + self.free.nbytes)

    def _new_index(self, rows: int) -> None:
        bits = max(4, int(np.ceil(np.log2(max(rows, 1) / _BUILD_LOAD))))
        self._bits = bits
        self._mask = (1 << bits) - 1
        self.index: npt.NDArray[np.int32] = np.full(1 << bits, _EMPTY, np.int32)
        self._deleted = 0

    def _home(self, keys: I64) -> npt.NDArray[np.intp]:
        h = keys.view(np.uint64) * _MULT
        return (h >> np.uint64(64 - self._bits)).astype(np.intp)

    # ------------------------------------------------------------------ index

    def _find(self, keys: I64) -> tuple[npt.NDArray[np.intp], I64]:
        """``(position, slot)`` of each key. Where a key is absent its slot is -1 and its
        position the first free (empty or deleted) one on its probe path: where
        :meth:`_claim` can put it. Most keys are at their home position (first step)."""
        pos = self._home(keys)
        cur = self.index.take(pos)
        hit = (cur >= 0) & (self.ids.take(np.maximum(cur, 0)) == keys)
        slot = np.where(hit, cur, -1).astype(np.int64)
        first_free = cur < 0  # pos already is the first free position of these keys
        act = np.flatnonzero((cur != _EMPTY) & ~hit)  # past deleted positions and other ids
        at = (pos.take(act) + 1) & self._mask
        while act.size:
            cur = self.index.take(at)
            free = (cur < 0) & ~first_free.take(act)
            pos[act[free]] = at[free]
            first_free[act[free]] = True
            hit = (cur >= 0) & (self.ids.take(np.maximum(cur, 0)) == keys.take(act))
            pos[act[hit]] = at[hit]
            slot[act[hit]] = cur[hit]
            more = (cur != _EMPTY) & ~hit
            act, at = act[more], (at[more] + 1) & self._mask
        return pos, slot

    def _slots(self, keys: I64) -> I64:
        """The slot of each key, -1 where absent (:meth:`_find` without positions)."""
        if _probe is None:
            return self._find(keys)[1]
        out = np.empty(len(keys), np.int64)
        _probe.find(self.index, self.ids, keys, out, self._bits)
        return out

    def _claim(self, keys: I64, slots: I64, pos: npt.NDArray[np.intp] | None = None) -> I64:
        """Point index positions at ``slots`` (``ids[slots] == keys``, none of them in the
        index yet), probing from ``pos`` (default: their home positions; every position
        from home up to ``pos`` must be taken). Returns the indices into ``keys`` of
        repeated keys that were not placed (another occurrence of the same id was)."""
        act = np.arange(len(keys))
        pos = self._home(keys) if pos is None else pos
        repeated: list[I64] = []
        while act.size:
            want = slots.take(act)
            free = self.index.take(pos) < 0
            self.index[pos[free]] = want[free]  # where keys collide, one write wins
            got = self.index.take(pos).astype(np.int64)
            lost = np.flatnonzero(got != want)
            same = self.ids.take(got.take(lost)) == keys.take(act.take(lost))
            repeated.append(act.take(lost[same]))
            more = lost[~same]
            act, pos = act.take(more), (pos.take(more) + 1) & self._mask
        return np.concatenate(repeated) if repeated else np.empty(0, np.int64)

    def _rebuild(self, rows: int) -> None:
        """A fresh index sized for ``rows`` live rows, holding every live slot."""
        old = self.index
        self._new_index(rows)
        for s in range(0, len(old), _BATCH):
            part = old[s : s + _BATCH]
            slots = part[part >= 0].astype(np.int64)
            self._claim(self.ids[slots], slots)

    # ------------------------------------------------------------------ rows

    def _reserve(self, slots: int) -> None:
        while len(self.chunks) * self.rows_per_chunk < slots:
            size = self.rows_per_chunk * 4 * self.dim
            space = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            chunk = np.frombuffer(space, np.float32).reshape(self.rows_per_chunk, self.dim)
            self.chunks.append(chunk)
            self._voids.append(chunk.view(np.dtype((np.void, 4 * self.dim))).reshape(-1))
        if len(self.ids) < slots:
            grown = np.empty(max(slots, int(len(self.ids) * _IDS_GROWTH)), np.int64)
            grown[: self.used] = self.ids[: self.used]
            self.ids = grown

    def _by_chunk(self, slots: I64) -> Iterator[tuple[int, I64, I64]]:
        """``(chunk, which, offsets)``: ``slots[which]`` lie in ``chunk`` at ``offsets``."""
        which = slots >> self._shift
        low = slots & (self.rows_per_chunk - 1)
        if len(self.chunks) == 1:
            yield 0, np.arange(len(slots)), low
            return
        small = np.uint16 if len(self.chunks) <= 1 << 16 else np.uint32
        order = np.argsort(which.astype(small), kind="stable")  # a radix sort for uint16
        bounds = np.cumsum(np.bincount(which, minlength=len(self.chunks)))
        start = 0
        for c, end in enumerate(bounds.tolist()):
            if end > start:
                sel = order[start:end]
                yield c, sel, low[sel]
            start = end

    def _put(self, slots: I64, rows: F32, take: I64 | None = None) -> None:
        """Write ``rows[take[i]]`` (``rows[i]`` without ``take``) into slot ``slots[i]``."""
        if not len(slots):
            return
        src = np.ascontiguousarray(rows, np.float32).view(np.dtype((np.void, 4 * self.dim)))
        src = src.reshape(-1)
        if len(self.chunks) == 1:
            np.put(self._voids[0], slots, src if take is None else src.take(take))
            return
        for c, sel, off in self._by_chunk(slots):
            np.put(self._voids[c], off, src.take(sel if take is None else take[sel]))

    def gather(self, slots: I64) -> F32:
        if len(self.chunks) == 1:
            return self.chunks[0].take(slots, axis=0)
        out = np.empty((len(slots), self.dim), np.float32)
        dst = out.view(np.dtype((np.void, 4 * self.dim))).reshape(-1)
        for c, sel, off in self._by_chunk(slots):
            dst[sel] = self._voids[c].take(off)
        return out

    # ------------------------------------------------------------------ public

    def lookup(self, ids: npt.ArrayLike, default: float) -> F32:
        q = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        out = np.empty((len(q), self.dim), np.float32)
        for s in range(0, len(q), _BATCH):
            slot = self._slots(q[s : s + _BATCH])
            found = slot >= 0
            part = out[s : s + _BATCH]
            if found.all():
                part[:] = self.gather(slot)
            else:
                part[:] = default
                part[found] = self.gather(slot[found])
        return out

    def delete(self, ids: I64) -> None:
        q = np.ascontiguousarray(ids, dtype=np.int64)
        for s in range(0, len(q), _BATCH):
            pos, slot = self._find(q[s : s + _BATCH])
            at = pos[slot >= 0]
            if len(at) > 1:
                at = np.unique(at)  # an id repeated in ``ids`` is deleted once
            freed = self.index[at].astype(np.int64)
            self.index[at] = _DELETED
            self.free = np.concatenate([self.free, freed])
            self.live -= len(at)
            self._deleted += len(at)

    def upsert(self, ids: I64, rows: F32) -> None:
        """Overwrite the rows of known ids, add the others. Where an id repeats (invalid
        input), one of its rows is kept; the table stays consistent."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        for s in range(0, len(ids), _BATCH):
            self._upsert(ids[s : s + _BATCH], rows[s : s + _BATCH])

    def _upsert(self, ids: I64, rows: F32) -> None:
        if _probe is not None:  # a delta mostly updates rows the table has: no positions
            slot = self._slots(ids)
            if (slot >= 0).all():
                self._put(slot, rows)
                return
        pos, slot = self._find(ids)
        found = slot >= 0
        if found.all():
            self._put(slot, rows)
            return
        new = np.flatnonzero(~found)
        if len(new) < len(ids):
            self._put(slot[found], rows, np.flatnonzero(found))
        k = len(new)
        start: npt.NDArray[np.intp] | None = pos.take(new)
        if (self.live + self._deleted + k) > _MAX_LOAD * len(self.index):
            self._rebuild(self.live + k)
            start = None  # positions of the old index
        reuse = self.free[:k]
        self.free = self.free[k:]
        fresh = np.arange(self.used, self.used + k - len(reuse), dtype=np.int64)
        self._reserve(self.used + len(fresh))
        self.used += len(fresh)
        slots = np.concatenate([reuse, fresh])
        self.ids[slots] = ids.take(new)
        self._put(slots, rows, new)
        # positions taken over from deleted entries are counted as deleted until rebuilt
        repeated = self._claim(ids.take(new), slots, start)
        if len(repeated):
            self.free = np.concatenate([self.free, slots.take(repeated)])
        self.live += k - len(repeated)

    def load(self, ids: I64, rows: F32) -> None:
        """Replace the whole contents (a snapshot)."""
        self.__init__(self.dim, len(ids), self.rows_per_chunk)  # type: ignore[misc]
        self.upsert(ids, rows)

    def items(self) -> tuple[I64, F32]:
        """``(ids, rows)`` of every live row, sorted by id (a copy)."""
        slots = self.index[self.index >= 0].astype(np.int64)
        ids = self.ids[slots]
        order = np.argsort(ids)
        return ids[order], self.gather(slots[order])
