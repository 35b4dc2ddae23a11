"""Serving backends: immutable in-process numpy tables, and a shared Redis table."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from exporter.format import DecodedDense, DecodedTable
from exporter.sdk._slots import SlotTable

__all__ = ["Backend", "InMemoryTables", "InPlaceTables", "RedisTables", "Table", "TableSet"]


@dataclass(frozen=True)
class Table:
    """One embedding table: ``ids`` sorted ascending, ``values[i]`` is the row of ``ids[i]``.

    Example: ``Table("item_id", 2, ids=[5, 17], values=[[.1, .2], [.3, .4]])``;
    ``lookup([17, 99])`` -> ``[[.3, .4], [0, 0]]`` (missing ids -> ``default``, zeros).
    """

    name: str
    dim: int
    ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]

    def lookup(self, ids: npt.ArrayLike, default: float = 0.0) -> npt.NDArray[np.float32]:
        q = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(self.ids) == 0:
            return np.full((len(q), self.dim), default, np.float32)
        pos = np.minimum(np.searchsorted(self.ids, q), len(self.ids) - 1)
        found = self.ids[pos] == q
        out: npt.NDArray[np.float32] = self.values[pos]
        out[~found] = default
        return out

    def apply(self, d: DecodedTable) -> Table:
        """A new table with ``d`` applied (tombstones, then upserts); ``self`` is unchanged.

        Vectorized merge: sort the delta ids, one ``searchsorted`` against the sorted table,
        then one ``np.insert`` for new ids and one scatter for updated rows.
        """
        ids, vals = self.ids, self.values
        if len(d.tombstones) and len(ids):
            pos = np.minimum(np.searchsorted(ids, d.tombstones), len(ids) - 1)
            hit = pos[ids[pos] == d.tombstones]
            ids, vals = np.delete(ids, hit), np.delete(vals, hit, axis=0)
        if len(d.ids) == 0:
            return Table(self.name, self.dim, ids, vals)
        dids, dvals = _sorted_last(d.ids, d.values)
        pos = np.searchsorted(ids, dids)
        found = pos < len(ids)
        found[found] = ids[pos[found]] == dids[found]
        upd_at, upd_vals = pos[found], dvals[found]
        if found.all():
            if vals is self.values:
                vals = vals.copy()  # copy-on-write: readers of the old version keep theirs
        else:
            new = ~found
            at = pos[new]
            ids = np.insert(ids, at, dids[new])
            vals = np.insert(vals, at, dvals[new], axis=0)
            upd_at = upd_at + np.searchsorted(at, upd_at, side="right")  # shift by inserts
        vals[upd_at] = upd_vals
        return Table(self.name, self.dim, ids, vals)

    @staticmethod
    def from_rows(d: DecodedTable) -> Table:
        return Table(d.name, d.dim, *_sorted_last(d.ids, d.values))

    @property
    def nbytes(self) -> int:
        return int(self.ids.nbytes + self.values.nbytes)


def _sorted_last(
    ids: npt.NDArray[np.int64], values: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """``(ids, values)`` sorted by id; where an id repeats (invalid input), its last row."""
    if len(ids) < 2 or (ids[1:] > ids[:-1]).all():  # already sorted and unique: no copy
        return ids, values
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    last = np.append(ids[1:] != ids[:-1], True)
    if not last.all():
        order, ids = order[last], ids[last]
    return ids, np.take(values, order, axis=0)


@dataclass(frozen=True)
class TableSet:
    """One consistent version: readers hold a reference and never see a later change."""

    version: int
    watermark_ms: int
    tables: dict[str, Table] = field(default_factory=dict)
    dense: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)

    def lookup(self, table: str, ids: npt.ArrayLike, default: float = 0.0) -> Any:
        return self.tables[table].lookup(ids, default)


class Backend(Protocol):
    """What :class:`~exporter.sdk.DeltaConsumer` writes to. ``apply`` applies one version
    atomically for readers; rebuilds go through ``staging()`` (an empty backend of the
    same kind that nobody reads) and ``swap(staged)`` (take over its state at once)."""

    def apply(
        self,
        manifest: dict[str, Any],
        tables: list[DecodedTable],
        dense: DecodedDense | None,
    ) -> None: ...

    def staging(self) -> Backend: ...

    def swap(self, staged: Backend) -> None: ...


class InMemoryTables:
    """In-process tables; ``apply`` builds a new :class:`TableSet` and swaps one reference."""

    def __init__(self) -> None:
        self.state: TableSet | None = None

    def apply(
        self, manifest: dict[str, Any], tables: list[DecodedTable], dense: DecodedDense | None
    ) -> None:
        snapshot = manifest["kind"] == "snapshot"
        old = self.state
        base: dict[str, Table] = {} if snapshot or old is None else dict(old.tables)
        for d in tables:
            prev = base.get(d.name)
            if prev is None or prev.dim != d.dim:
                empty = Table(
                    d.name, d.dim, np.empty(0, np.int64), np.empty((0, d.dim), np.float32)
                )
                prev = empty
            base[d.name] = prev.apply(d) if not snapshot else Table.from_rows(d)
        dn = {} if snapshot or old is None else old.dense
        if dense:
            dn = {**dn, **dense.tensors}  # a dense object replaces the tensors it names
        self.state = TableSet(manifest["sequence"], manifest["watermark_ms"], base, dn)

    def staging(self) -> InMemoryTables:
        return InMemoryTables()

    def swap(self, staged: Backend) -> None:
        if not isinstance(staged, InMemoryTables):
            raise TypeError(f"cannot swap in {type(staged).__name__}")
        self.state = staged.state  # one reference: readers see the old or the new version

    def lookup(self, table: str, ids: npt.ArrayLike, default: float = 0.0) -> Any:
        state = self.state
        if state is None:
            raise KeyError("no version applied yet")
        return state.lookup(table, ids, default)


class InPlaceTables:
    """In-process tables updated in place under a lock: memory ~1.1x the rows.

    Versions stay atomic because :meth:`lookup` and :meth:`apply` hold the same lock
    (a lookup waits while a version is applied, then sees all of it). Each table is a
    :class:`~exporter.sdk._slots.SlotTable`: rows in fixed-size chunks and a hash index
    id -> slot, so applying k rows costs O(k) whatever the size of the table.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tables: dict[str, SlotTable] = {}
        self.dense: dict[str, npt.NDArray[np.float32]] = {}
        self.version: int | None = None

    def apply(
        self, manifest: dict[str, Any], tables: list[DecodedTable], dense: DecodedDense | None
    ) -> None:
        snapshot = manifest["kind"] == "snapshot"
        with self._lock:
            if snapshot:
                self._tables, self.dense = {}, {}
            for d in tables:
                t = self._tables.get(d.name)
                if t is None or t.dim != d.dim or snapshot:
                    t = self._tables[d.name] = SlotTable(d.dim, len(d.ids))
                t.delete(d.tombstones)
                t.upsert(d.ids, d.values)
            if dense:
                self.dense = {**self.dense, **dense.tensors}
            self.version = int(manifest["sequence"])

    def staging(self) -> InPlaceTables:
        return InPlaceTables()

    def swap(self, staged: Backend) -> None:
        if not isinstance(staged, InPlaceTables):
            raise TypeError(f"cannot swap in {type(staged).__name__}")
        with self._lock:
            self._tables, self.dense, self.version = staged._tables, staged.dense, staged.version

    def lookup(self, table: str, ids: npt.ArrayLike, default: float = 0.0) -> Any:
        with self._lock:
            return self._tables[table].lookup(ids, default)

    def rows(self, table: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, values)`` sorted by id (a copy, for checks and exports)."""
        with self._lock:
            return self._tables[table].items()

    def nbytes(self) -> int:
        return sum(t.nbytes for t in self._tables.values())


class RedisTables:
    """A shared table in Redis, applied in one MULTI/EXEC per version.

    Keys: ``{prefix}:t:{table}`` hash, field = id as 8 bytes little-endian, value = the
    row as ``dim`` float32 little-endian; ``{prefix}:dense:{name}`` the same for tensors;
    ``{prefix}:version`` = ``{"sequence": N, "watermark_ms": W}``. A snapshot is written
    into ``...:t:{table}:next`` keys first, then RENAMEd over the live keys in one MULTI.
    """

    def __init__(self, redis_url: str, prefix: str = "fluxrec", client: Any = None) -> None:
        import redis

        self.redis_url = redis_url
        self.r = client if client is not None else redis.Redis.from_url(redis_url)
        self.prefix = prefix

    def staging(self) -> RedisTables:
        """Keys under ``{prefix}:staging`` (emptied first), swapped in by :meth:`swap`."""
        staged = RedisTables(self.redis_url, f"{self.prefix}:staging", self.r)
        for k in list(self.r.scan_iter(f"{staged.prefix}:*")):
            self.r.delete(k)
        return staged

    def swap(self, staged: Backend) -> None:
        """RENAME every staged key over its live key and delete live keys the staged
        version does not have, in one MULTI/EXEC."""
        if not isinstance(staged, RedisTables):
            raise TypeError(f"cannot swap in {type(staged).__name__}")
        moves = {}
        for pattern in (":t:*", ":dense:*", ":version"):
            for k in self.r.scan_iter(staged.prefix + pattern):
                key = k.decode()
                if not key.endswith(":next"):
                    moves[key] = self.prefix + key[len(staged.prefix) :]
        live = {
            k.decode()
            for pattern in (":t:*", ":dense:*")
            for k in self.r.scan_iter(self.prefix + pattern)
        }
        pipe = self.r.pipeline(transaction=True)
        for k in live - set(moves.values()):
            pipe.delete(k)
        for src, dst in moves.items():
            pipe.rename(src, dst)
        pipe.execute()

    def _key(self, table: str) -> str:
        return f"{self.prefix}:t:{table}"

    def apply(  # noqa: PLR0912
        self, manifest: dict[str, Any], tables: list[DecodedTable], dense: DecodedDense | None
    ) -> None:
        import json

        snapshot = manifest["kind"] == "snapshot"
        chunk = 10_000
        if snapshot:
            for d in tables:
                tmp = self._key(d.name) + ":next"
                self.r.delete(tmp)
                for i in range(0, len(d.ids), chunk):
                    self.r.hset(tmp, mapping=_rows(d.ids[i : i + chunk], d.values[i : i + chunk]))
        pipe = self.r.pipeline(transaction=True)
        if snapshot:
            live = {k.decode() for k in self.r.scan_iter(f"{self.prefix}:t:*")}
            names = {self._key(d.name) for d in tables}
            for k in live - names:
                if not k.endswith(":next"):
                    pipe.delete(k)
            for d in tables:
                if len(d.ids):
                    pipe.rename(self._key(d.name) + ":next", self._key(d.name))
                else:
                    pipe.delete(self._key(d.name))
        else:
            for d in tables:
                if len(d.tombstones):
                    pipe.hdel(self._key(d.name), *[i.tobytes() for i in d.tombstones.astype("<i8")])
                for i in range(0, len(d.ids), chunk):
                    pipe.hset(
                        self._key(d.name),
                        mapping=_rows(d.ids[i : i + chunk], d.values[i : i + chunk]),
                    )
        if dense:
            for name, arr in dense.tensors.items():
                pipe.set(f"{self.prefix}:dense:{name}", arr.astype("<f4").tobytes())
        pipe.set(
            f"{self.prefix}:version",
            json.dumps(
                {"sequence": manifest["sequence"], "watermark_ms": manifest["watermark_ms"]}
            ),
        )
        pipe.execute()

    def lookup(self, table: str, ids: npt.ArrayLike, dim: int, default: float = 0.0) -> Any:
        q = np.asarray(ids, dtype="<i8").reshape(-1)
        got = self.r.hmget(self._key(table), [i.tobytes() for i in q])
        out = np.full((len(q), dim), default, np.float32)
        for i, b in enumerate(got):
            if b is not None:
                out[i] = np.frombuffer(b, "<f4")
        return out

    def version(self) -> int | None:
        import json

        raw = self.r.get(f"{self.prefix}:version")
        return None if raw is None else int(json.loads(raw)["sequence"])


def _rows(ids: npt.NDArray[np.int64], values: npt.NDArray[np.float32]) -> Any:
    v = values.astype("<f4", copy=False)
    return {i.tobytes(): v[k].tobytes() for k, i in enumerate(ids.astype("<i8"))}
