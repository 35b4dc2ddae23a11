"""The vectorised featurizer: raw JSON -> hashed ids, offsets and dense arrays, per batch.

One :class:`Featurizer` serves the trainer (:meth:`Featurizer.samples`: the raw Kafka
values of a poll, ``sample_join/CONTRACTS.md`` section 2) and the scoring server
(:meth:`Featurizer.request`: a ``POST /score`` body). The per-record work runs in C, on
two paths with one result (``featurize/README.md``): the C fast path (``_fast.c``)
reads the common case in one pass, hashing with blake2b behind a bounded value -> id
cache, and leaves every value it does not read exactly (escapes, nulls, bad records) to
the Arrow path: the values are joined with newlines and read by
``pyarrow.json.read_json`` against an explicit schema into columns (one
``list<string>`` per sparse field, one ``float64`` per dense one); validation is
Arrow/numpy compute over those columns; a string value is hashed
(:mod:`featurize.hashing`) once per distinct value of the batch and kept in a bounded
cache::

    fz = Featurizer(FeatureSpec.from_config(cfg))
    s = fz.samples([b'{"v":1,"sample_id":"r-1|i-9|0",...}', b"not json", ...])
    s.features.sparse["user_id"]   # (ids, offsets); s.label, s.event_ms, s.fake
    s.bad                          # (BadRecord(1, "malformed_json", "..."),)

A value that breaks the contract never fails its batch: when Arrow refuses the batch,
it is split in halves until each refused value stands alone (``log2(n)`` reads per bad
value), and each bad value is reported with its reason. JSON ``null`` for a feature, a
feature field or ``correction`` means absent (an empty list, 0, false).

The request path reads unknown feature names too (Arrow infers their type) and counts
them; a request that Arrow cannot read is decoded once more by the reference
(:mod:`featurize.reference`) only to name the field at fault in the 400 answer.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from featurize.errors import BadInput

try:
    from featurize import _fast  # type: ignore[attr-defined]  # built by fluxrec.native
except ImportError:  # not built (no C compiler): every value takes the Arrow path
    _fast = None
from featurize.types import I64, BadRecord, Features, FeatureSpec, Samples

Bool = npt.NDArray[np.bool_]

__all__ = ["Featurizer"]

_MISS = np.iinfo(np.int64).min  # "not in the cache" (a real id equal to it is re-hashed)
_RESERVED = (np.iinfo(np.int64).min, np.iinfo(np.int64).min + 1)  # the tables' sentinels
_DICT_MIN = 512  # values of a field above which distinct values are found first (Arrow)
_BLANK = re.compile(rb"(?:^|\n)[ \t]*(?:\n|$)")
_STRATEGIES = ("window", "fake_negative")
_SHAPES = ("impressions", "instances", "features")  # the keys of a request body
_SID_SALT = hashlib.blake2b(b"sample_id\x1f", digest_size=8)


def _feature_type(spec: FeatureSpec) -> pa.StructType:
    return pa.struct(
        [
            ("sparse", pa.struct([(f.name, pa.list_(pa.string())) for f in spec.sparse])),
            ("dense", pa.struct([(name, pa.float64()) for name in spec.dense])),
        ]
    )


_CHANGED = re.compile(r"Column\((/[^)]*)\) changed from (\w+) to (\w+)")


def _reason(err: BaseException) -> tuple[str, str]:
    """(reason, detail) of a value Arrow refused."""
    msg = str(err).splitlines()[0] if str(err) else type(err).__name__
    m = _CHANGED.search(msg)
    if m:
        path = m.group(1).strip("/").replace("/[]", "[]").replace("/", ".")
        got, want = m.group(3), m.group(2)
        return "bad_type", f"{path or 'the value'}: {got} where the contract has {want}"
    if "Failed to convert JSON" in msg:
        return "bad_type", msg[:300]
    return "malformed_json", msg[:300]


def _framed(values: Sequence[bytes], buf: bytes) -> bool:
    """Whether every value starts with ``{`` and ends with ``}`` in ``buf`` (the values
    joined by newlines): then no line is blank, so Arrow reads at least one row per
    value, and a row count equal to the number of values means one row per value."""
    lens = np.fromiter(map(len, values), np.int64, len(values))
    if lens.min() < 2:
        return False
    ends = np.cumsum(lens + 1) - 2  # the last byte of each value
    b = np.frombuffer(buf, np.uint8)
    return bool((b[ends - lens + 1] == 0x7B).all() and (b[ends] == 0x7D).all())


def _one_line(values: Sequence[bytes]) -> bytes | None:
    """The values joined by newlines, raw newlines inside a value (JSON whitespace only,
    as strings cannot hold them) made spaces; None when a value is empty or blank (Arrow
    would skip its line)."""
    buf = b"\n".join(v.replace(b"\n", b" ").replace(b"\r", b" ") for v in values)
    return None if _BLANK.search(buf) else buf


class _Cache(dict[str, int]):
    """Value -> id; a missing value reads as ``_MISS`` (so lookups run in C, via ``map``)."""

    def __missing__(self, key: str) -> int:
        return int(_MISS)


class Featurizer:
    """Featurizes batches of raw JSON for ``spec`` (module doc).

    ``cache_size`` bounds the value -> id cache (all fields together; cleared when full).
    Threads may share one featurizer (the scoring server's request threads do): the
    cache is dicts of ints, each operation atomic under the GIL, and a race at worst
    hashes a value twice or clears the cache a little early.
    """

    def __init__(self, spec: FeatureSpec, cache_size: int = 1_000_000, native: bool = True) -> None:
        if not spec.sparse and not spec.dense:
            raise BadInput("features: no sparse and no dense feature to read", "features")
        self.spec = spec
        self.cache_size = cache_size
        self.slow_values = 0  # values the C fast path left to the Arrow path (module doc)
        self._native = (
            _fast.Parser(
                [f.name.encode() for f in spec.sparse],
                [f.raw for f in spec.sparse],
                [n.encode() for n in spec.dense],
                spec.label.encode(),
                cache_size,
            )
            if native and _fast is not None
            else None
        )
        self._cache = [_Cache() for _ in spec.sparse]
        self._cached = 0
        feat = _feature_type(spec)
        self._feat = feat
        self._sample_schema = pa.schema(
            [
                ("v", pa.int64()),
                ("sample_id", pa.string()),
                ("event_time_ms", pa.int64()),
                ("features", feat),
                ("labels", pa.struct([(spec.label, pa.int64())])),
                ("strategy", pa.string()),
                ("correction", pa.bool_()),
            ]
        )
        self._sample_opts = pj.ParseOptions(
            explicit_schema=self._sample_schema, unexpected_field_behavior="ignore"
        )
        # one schema per body shape: every nested feature column Arrow must fill costs
        # as much as the one the body has (all three: ~3x the time of one)
        shapes = {
            "features": feat,
            "instances": pa.list_(feat),
            "impressions": pa.list_(pa.struct([("features", feat)])),
        }
        self._request_opts = {
            k: pj.ParseOptions(
                explicit_schema=pa.schema([(k, t)]), unexpected_field_behavior="infer"
            )
            for k, t in shapes.items()
        }
        self._request_opts[""] = pj.ParseOptions(
            explicit_schema=pa.schema(list(shapes.items())), unexpected_field_behavior="infer"
        )

    # ------------------------------------------------------------------ reading

    def _read(self, buf: bytes, opts: pj.ParseOptions) -> pa.Table:
        ro = pj.ReadOptions(use_threads=False, block_size=max(len(buf) + 1, 1 << 16))
        return pj.read_json(io.BytesIO(buf), read_options=ro, parse_options=opts)

    def _read_values(
        self,
        values: Sequence[bytes],
        lo: int,
        hi: int,
        out: list[tuple[pa.Table, int]],
        bad: list[BadRecord],
    ) -> None:
        """Read ``values[lo:hi]`` into ``out`` as (table, first index); halve on refusal."""
        part = values[lo:hi]
        joined = b"\n".join(part)
        # rare: whitespace or newlines around or in a value
        buf = joined if _framed(part, joined) else _one_line(part)
        err: BaseException
        if buf is None:
            err = ValueError("an empty value is not a JSON object")
        else:
            try:
                table = self._read(buf, self._sample_opts)
                if table.num_rows == hi - lo:
                    out.append((table, lo))
                    return
                err = ValueError("a value holds more than one JSON document")
            except (pa.ArrowException, ValueError) as e:
                err = e
            if hi - lo == 1 and (b"\n" in part[0] or b"\r" in part[0]):
                buf = _one_line(part)  # a value printed across lines
                if buf is not None:
                    try:
                        table = self._read(buf, self._sample_opts)
                        if table.num_rows == 1:
                            out.append((table, lo))
                            return
                    except (pa.ArrowException, ValueError) as e:
                        err = e
        if hi - lo == 1:
            bad.append(BadRecord(lo, *_reason(err)))
            return
        mid = (lo + hi) // 2
        self._read_values(values, lo, mid, out, bad)
        self._read_values(values, mid, hi, out, bad)

    # ------------------------------------------------------------------ hashing

    def _hash(self, j: int, values: pa.Array) -> I64:
        """Ids of the string ``values`` of sparse field ``j`` (no nulls)."""
        f = self.spec.sparse[j]
        if len(values) == 0:
            return np.empty(0, np.int64)
        if f.raw:
            return _raw_ids(values)
        idx = None
        uniq = values
        if len(values) > _DICT_MIN:
            enc = pc.dictionary_encode(values)
            uniq, idx = enc.dictionary, enc.indices.to_numpy()
        objs = uniq.to_numpy(zero_copy_only=False)
        cache = self._cache[j]
        h = np.fromiter(map(cache.__getitem__, objs.tolist()), np.int64, len(objs))
        miss = np.flatnonzero(h == _MISS)
        if miss.size:
            if self._cached + miss.size > self.cache_size:
                for c in self._cache:
                    c.clear()
                self._cached = 0
            prefix = f"{f.name}\x1f"
            for k in miss.tolist():
                v = objs[k]
                d = hashlib.blake2b(f"{prefix}{v}".encode(), digest_size=8).digest()
                h[k] = cache[v] = int.from_bytes(d, "little", signed=True)
            self._cached += miss.size
        return h if idx is None else h[idx]

    # ------------------------------------------------------------------ features

    def _columns(self, feat: pa.StructArray, n: int) -> _Columns:
        """The columns of ``n`` feature objects, read once for the checks and the arrays."""
        sparse_arr, dense_arr = _children(feat, ("sparse", "dense"))
        sp, dn = _by_name(sparse_arr), _by_name(dense_arr)
        parts = {f.name: _list_parts(sp[f.name], n) for f in self.spec.sparse}
        dense = np.zeros((n, len(self.spec.dense)), dtype=np.float64)
        for j, name in enumerate(self.spec.dense):
            col = dn[name]
            dense[:, j] = (col.fill_null(0.0) if col.null_count else col).to_numpy(
                zero_copy_only=False
            )
        return _Columns(n, sp, dn, parts, dense)

    def _features(self, c: _Columns) -> tuple[Features, dict[str, int]]:
        """Features of checked columns, and the count of each unknown feature name."""
        sparse: dict[str, tuple[I64, I64]] = {}
        for j, f in enumerate(self.spec.sparse):
            offsets, values = c.parts[f.name]
            sparse[f.name] = (self._hash(j, values), offsets)
        unknown: dict[str, int] = {}
        for kind, known, arrs in (
            ("sparse", c.parts, c.sparse),
            ("dense", set(self.spec.dense), c.dense),
        ):
            for name, col in arrs.items():
                if name not in known and (k := len(col) - col.null_count):
                    unknown[f"{kind}.{name}"] = k
        with np.errstate(over="ignore"):
            return Features(c.n, sparse, c.dense_values.astype(np.float32)), unknown

    def _feature_checks(self, c: _Columns) -> list[_Check]:
        """(row mask, reason, path under ``features``, message) of the rows whose
        features break the contract."""
        checks: list[_Check] = []
        n = c.n
        for f in self.spec.sparse:
            offsets, values = c.parts[f.name]
            where = f"sparse.{f.name}"
            if values.null_count:
                pos = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))
                rows = _rows_of(pos, offsets, n)
                checks.append((rows, "bad_value", where, "null is not a string"))
            if f.raw and len(values):
                ok = _raw_ok(values)
                if not ok.all():
                    rows = _rows_of(np.flatnonzero(~ok), offsets, n)
                    checks.append((rows, "bad_value", where, "not a decimal int64 id (ids: raw)"))
        with np.errstate(over="ignore", invalid="ignore"):
            out = ~np.isfinite(c.dense_values.astype(np.float32))
        if out.any():
            for j in np.flatnonzero(out.any(axis=0)).tolist():
                name = self.spec.dense[j]
                checks.append(
                    (out[:, j], "bad_value", f"dense.{name}", "not a finite float32 number")
                )
        return checks

    # ------------------------------------------------------------------ samples

    @property
    def native(self) -> bool:
        """Whether the C fast path (``featurize/_fast.c``) reads the common case."""
        return self._native is not None

    def samples(self, values: Sequence[bytes]) -> Samples:
        """Featurize the raw Kafka values of Sample records (module doc)."""
        if self._native is None or not values:
            return self._samples_arrow(values)
        ok_b, ids, offsets, dense, label, event_ms, fake, xor, one = self._native.samples(values)
        ok = np.frombuffer(ok_b, np.bool_)
        n = int(ok.sum())
        fast = Samples(
            self._native_features(n, ids, offsets, dense, one),
            np.frombuffer(label, np.float32),
            np.frombuffer(event_ms, np.int64),
            np.frombuffer(fake, np.bool_),
            np.flatnonzero(ok).astype(np.int64),
            _signed(xor),
        )
        if n == len(values):
            return fast
        rest = np.flatnonzero(~ok)
        self.slow_values += len(rest)
        return _merge(fast, self._samples_arrow([values[i] for i in rest.tolist()]), rest)

    def _native_features(
        self,
        n: int,
        ids: list[bytearray],
        offsets: list[bytearray],
        dense: bytearray,
        one: bytes,
    ) -> Features:
        """Features of ``n`` records from the C fast path's buffers (no copy); ``one``
        flags the fields with exactly one id per record."""
        sparse = {
            f.name: (np.frombuffer(i, np.int64), np.frombuffer(o, np.int64))
            for f, i, o in zip(self.spec.sparse, ids, offsets, strict=True)
        }
        single = frozenset(f.name for f, k in zip(self.spec.sparse, one, strict=True) if k)
        rows = np.frombuffer(dense, np.float32).reshape(n, len(self.spec.dense))
        return Features(n, sparse, rows, single)

    def _samples_arrow(self, values: Sequence[bytes]) -> Samples:
        """:meth:`samples` on Arrow's JSON reader: every value, whatever it holds."""
        # Arrow reads bytes that are not UTF-8 in keys it ignores: they are checked first
        not_utf8 = [(i, e) for i, v in enumerate(values) if (e := _utf8_error(v)) is not None]
        if not_utf8:
            skip = {i for i, _ in not_utf8}
            rest = np.array([i for i in range(len(values)) if i not in skip], np.int64)
            s = self._samples_arrow([values[i] for i in rest.tolist()])
            found = [BadRecord(int(rest[b.index]), b.reason, b.detail) for b in s.bad]
            found += [BadRecord(i, "malformed_json", f"not UTF-8: {e}") for i, e in not_utf8]
            return replace(s, index=rest[s.index], bad=tuple(sorted(found, key=lambda b: b.index)))
        bad: list[BadRecord] = []
        parts: list[tuple[pa.Table, int]] = []
        if values:
            self._read_values(values, 0, len(values), parts, bad)
        if not parts:
            return self._empty(bad, 0)
        table = parts[0][0] if len(parts) == 1 else pa.concat_tables([t for t, _ in parts])
        pos = np.concatenate([np.arange(lo, lo + t.num_rows, dtype=np.int64) for t, lo in parts])
        table = table.combine_chunks()
        n = table.num_rows
        col = {name: table.column(name).chunk(0) for name in table.column_names}
        v = col["v"]
        label = _children(col["labels"], (self.spec.label,))[0]
        strategy = col["strategy"]
        lab = label.fill_null(-1).to_numpy(zero_copy_only=False)
        y = f"labels.{self.spec.label}"
        strategy_ok = pc.is_in(strategy, pa.array(_STRATEGIES)).to_numpy(zero_copy_only=False)
        checks: list[_Check] = [
            (_null(v), "missing_field", "v", "absent"),
            (v.fill_null(1).to_numpy(zero_copy_only=False) != 1, "unsupported_version", "v",
             "this trainer reads version 1"),
            (_null(col["sample_id"]), "missing_field", "sample_id", "absent"),
            (_null(col["event_time_ms"]), "missing_field", "event_time_ms", "absent"),
            (lab == -1, "missing_field", y, "absent"),
            ((lab != 0) & (lab != 1) & (lab != -1), "bad_value", y, "need 0 or 1"),
            (_null(strategy), "missing_field", "strategy", "absent"),
            (~strategy_ok & ~_null(strategy), "bad_value", "strategy",
             "use window or fake_negative"),
            (_null(col["features"]), "missing_field", "features", "absent"),
        ]  # fmt: skip
        badmask = np.zeros(n, dtype=bool)
        _apply_checks(checks, badmask, pos, bad, "")
        cols = self._columns(col["features"], n)
        _apply_checks(self._feature_checks(cols), badmask, pos, bad, "features.")
        correction = col["correction"].fill_null(False).to_numpy(zero_copy_only=False)
        skip = correction & (lab != 1) & ~badmask
        keep = ~(badmask | skip)
        skipped = int(skip.sum())
        if not keep.all():
            table = table.filter(pa.array(keep))
            col = {name: table.column(name).combine_chunks() for name in table.column_names}
            pos, lab = pos[keep], lab[keep]
            if table.num_rows:
                cols = self._columns(col["features"], table.num_rows)
        if table.num_rows == 0:
            return self._empty(bad, skipped)
        feats, _ = self._features(cols)
        strat = col["strategy"]
        return Samples(
            feats,
            lab.astype(np.float32),
            col["event_time_ms"].to_numpy(zero_copy_only=False).astype(np.int64),
            pc.equal(strat, "fake_negative").to_numpy(zero_copy_only=False),
            pos,
            _xor_ids(col["sample_id"]),
            skipped,
            tuple(sorted(bad, key=lambda b: b.index)),
        )

    def _empty(self, bad: list[BadRecord], skipped: int) -> Samples:
        feats = Features(
            0,
            {f.name: (np.empty(0, np.int64), np.zeros(1, np.int64)) for f in self.spec.sparse},
            np.zeros((0, len(self.spec.dense)), np.float32),
        )
        e = np.empty(0, np.int64)
        return Samples(
            feats, np.empty(0, np.float32), e, np.empty(0, bool), e, 0, skipped,
            tuple(sorted(bad, key=lambda b: b.index)),
        )  # fmt: skip

    # ------------------------------------------------------------------ requests

    def request(
        self, body: bytes, max_instances: int = 10_000
    ) -> tuple[Features, bool, dict[str, int]]:
        """Featurize a ``POST /score`` body: ``{"features": F}``, ``{"instances": [F, ...]}``
        or ``{"impressions": [{"features": F, ...}, ...]}``. Returns the features, whether
        the body was a single ``features`` object, and the count of each unknown feature
        name (``sparse.NAME`` / ``dense.NAME``: scored without them). Raises
        :class:`BadInput` naming the field at fault."""
        got = None if self._native is None else self._native.request(body, max_instances)
        if got is not None:  # the C fast path read it (else: Arrow, which names the fault)
            single, n, ids, offsets, dense, unknown, one = got
            return self._native_features(n, ids, offsets, dense, one), single, unknown
        table = self._read_request(body)
        if table is None:
            return self._request_fallback(body, max_instances)
        present = [
            k for k in _SHAPES if k in table.column_names and table.column(k).null_count == 0
        ]
        if len(present) != 1:
            raise BadInput(
                "give exactly one of 'impressions' (a list of impression events), "
                "'instances' (a list of features objects) or 'features' (one features object)",
                "",
            )
        key = present[0]
        arr = table.column(key).chunk(0)
        if key == "features":
            feat = arr
        else:
            items = arr.flatten()
            if len(items) > max_instances:
                raise BadInput(f"{len(items)} {key} in one request: at most {max_instances}", key)
            if key == "impressions":
                nulls = _null(items)
                if nulls.any():
                    i = int(np.flatnonzero(nulls)[0])
                    raise BadInput(f"impressions[{i}] is not an object", f"impressions[{i}]")
                feat = _children(items, ("features",))[0]
            else:
                feat = items
        n = len(feat)
        nulls = _null(feat)
        if nulls.any():
            i = int(np.flatnonzero(nulls)[0])
            if key == "impressions":
                raise BadInput(f"impressions[{i}] has no 'features' object", f"impressions[{i}]")
            where = _where(key, i)
            raise BadInput(f"{where}: expected a features object", where)
        cols = self._columns(feat, n)
        checks = self._feature_checks(cols)
        if checks:  # the first instance at fault, then its first field at fault
            i, k = min((int(np.flatnonzero(c[0])[0]), k) for k, c in enumerate(checks))
            path, message = checks[k][2], checks[k][3]
            field = f"{_where(key, i)}.{path}"
            raise BadInput(f"{field}: {message}", field)
        feats, unknown = self._features(cols)
        return feats, key == "features", unknown

    def _read_request(self, body: bytes) -> pa.Table | None:
        """The body as a one-row table with the column of its shape (and any other key,
        inferred); None when Arrow refuses it."""
        buf = body.replace(b"\n", b" ").replace(b"\r", b" ")
        if not buf.strip():
            raise BadInput("the body must be one JSON object (see GET / for the shapes)", "")
        # the shape whose key comes first in the body; checked (Arrow infers the columns
        # of the other keys), and read again with every shape if the guess was wrong
        found = [(buf.find(f'"{k}"'.encode()), k) for k in _SHAPES]
        guess = min(((i, k) for i, k in found if i >= 0), default=(0, ""))[1]
        for shape in dict.fromkeys((guess, "")):
            try:
                table = self._read(buf, self._request_opts[shape])
            except (pa.ArrowException, ValueError):
                return None
            if table.num_rows != 1:
                raise BadInput("the body must be one JSON object (see GET / for the shapes)", "")
            table = table.combine_chunks()
            present = [
                k for k in _SHAPES if k in table.column_names and table.column(k).null_count == 0
            ]
            if present == [shape]:
                break
        return table

    def _request_fallback(
        self, body: bytes, max_instances: int
    ) -> tuple[Features, bool, dict[str, int]]:
        """A body Arrow refused: name the field at fault, or (when only unknown fields
        were at fault) featurize the body without them."""
        from featurize.reference import check_request

        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise BadInput(f"the body is not JSON: {e}", "") from None
        clean = check_request(self.spec, doc, max_instances)  # raises BadInput naming the field
        feats, single, _ = self.request(json.dumps(clean).encode(), max_instances)
        return feats, single, _count_unknown(self.spec, doc)


# ---------------------------------------------------------------------- helpers

_Check = tuple[Bool, str, str, str]  # rows, reason, field path, message


@dataclass(frozen=True)
class _Columns:
    """The feature columns of ``n`` records: every sparse and dense child by name (the
    unknown ones too), (offsets, values) of each known sparse field, the dense values
    (float64, absent = 0)."""

    n: int
    sparse: dict[str, pa.Array]
    dense: dict[str, pa.Array]
    parts: dict[str, tuple[I64, pa.Array]]
    dense_values: npt.NDArray[np.float64]


def _where(key: str, i: int) -> str:
    """The JSON path of the features object of instance ``i`` of a request."""
    if key == "features":
        return "features"
    return f"impressions[{i}].features" if key == "impressions" else f"instances[{i}]"


def _null(a: pa.Array) -> Bool:
    if a.null_count == 0:
        return np.zeros(len(a), dtype=bool)
    out: Bool = a.is_null().to_numpy(zero_copy_only=False)
    return out


def _children(a: pa.Array, names: Sequence[str]) -> list[pa.Array]:
    """Children of a struct array, null where the struct is null (``flatten``)."""
    flat = a.flatten()
    idx = {a.type.field(i).name: i for i in range(a.type.num_fields)}
    return [flat[idx[n]] for n in names]


def _by_name(a: pa.Array) -> dict[str, pa.Array]:
    flat = a.flatten()
    return {a.type.field(i).name: flat[i] for i in range(a.type.num_fields)}


def _list_parts(col: pa.Array, n: int) -> tuple[I64, pa.Array]:
    """``(offsets (n + 1,) from 0, values)`` of a list array (null lists are empty)."""
    if col.null_count:
        lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return offsets, col.flatten()
    off = col.offsets.to_numpy().astype(np.int64)
    first = off[0]
    if first:
        off -= first
    return off, col.flatten()


def _rows_of(pos: npt.NDArray[np.intp], offsets: I64, n: int) -> Bool:
    """Row mask of the rows holding value positions ``pos``."""
    rows = np.zeros(n, dtype=bool)
    rows[np.searchsorted(offsets, pos, side="right") - 1] = True
    return rows


def _apply_checks(
    checks: list[_Check], done: Bool, pos: I64, bad: list[BadRecord], prefix: str
) -> None:
    """Report each row under the first check it fails; rows already ``done`` (bad or
    skipped) are left alone. Marks the reported rows in ``done``."""
    for mask, reason, path, message in checks:
        new = mask & ~done
        if new.any():
            for i in np.flatnonzero(new).tolist():
                bad.append(BadRecord(int(pos[i]), reason, f"{prefix}{path}: {message}"))
            done |= new


def _raw_ok(values: pa.Array) -> Bool:
    """Which raw-id strings are decimal int64 ids (``-?[0-9]+``, not the tables' sentinels)."""
    ok: Bool = pc.match_substring_regex(values, r"^-?[0-9]{1,19}$").to_numpy(zero_copy_only=False)
    idx = np.flatnonzero(ok)
    cand = values.take(pa.array(idx))
    try:
        ids = pc.cast(cand, pa.int64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowException, ValueError):  # a 19-digit value beyond int64 (rare)
        big = [int(v) for v in cand.to_pylist()]
        fits = np.array([-(2**63) <= x < 2**63 for x in big], dtype=bool)
        ok[idx[~fits]] = False
        ids = np.array([x if f else 0 for x, f in zip(big, fits, strict=True)], dtype=np.int64)
        idx = idx[fits]
        ids = ids[fits]
    ok[idx[np.isin(ids, np.array(_RESERVED, dtype=np.int64))]] = False
    return ok


def _raw_ids(values: pa.Array) -> I64:
    out: I64 = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
    return out


def _xor_ids(sample_ids: pa.Array) -> int:
    """XOR of ``stable_hash("sample_id", id)`` over ``sample_ids`` (featurize.hashing)."""
    if len(sample_ids) == 0:
        return 0
    salt = _SID_SALT
    digests = []
    for s in sample_ids.to_numpy(zero_copy_only=False):
        h = salt.copy()
        h.update(s.encode())
        digests.append(h.digest())
    x = np.bitwise_xor.reduce(np.frombuffer(b"".join(digests), dtype="<i8"))
    return int(x)


def _utf8_error(v: bytes) -> str | None:
    """Why ``v`` is not UTF-8 (None: it is)."""
    if v.isascii():
        return None
    try:
        v.decode("utf-8")
    except UnicodeDecodeError as e:
        return str(e)
    return None


def _signed(x: int) -> int:
    """An unsigned 64-bit int as the int64 of the same bits."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _merge(a: Samples, b: Samples, b_pos: I64) -> Samples:
    """The samples of ``a`` and of ``b`` (read from the values at ``b_pos``) in input order."""
    index = np.concatenate([a.index, b_pos[b.index]])
    order = np.argsort(index, kind="stable")
    sparse: dict[str, tuple[I64, I64]] = {}
    for name, (ids_a, off_a) in a.features.sparse.items():
        ids_b, off_b = b.features.sparse[name]
        ids = np.concatenate([ids_a, ids_b])
        starts = np.concatenate([off_a[:-1], off_b[:-1] + off_a[-1]])[order]
        lengths = np.concatenate([np.diff(off_a), np.diff(off_b)])[order]
        offsets = np.zeros(len(order) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        take = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
        sparse[name] = (ids[take], offsets)
    dense = np.concatenate([a.features.dense, b.features.dense])[order]
    bad = [BadRecord(int(b_pos[r.index]), r.reason, r.detail) for r in b.bad]
    return Samples(
        Features(len(order), sparse, dense),
        np.concatenate([a.label, b.label])[order],
        np.concatenate([a.event_ms, b.event_ms])[order],
        np.concatenate([a.fake, b.fake])[order],
        index[order],
        a.id_xor ^ b.id_xor,
        a.skipped + b.skipped,
        tuple(sorted(bad, key=lambda r: r.index)),
    )


def _count_unknown(spec: FeatureSpec, doc: Any) -> dict[str, int]:
    """Unknown feature names of a decoded request (the fallback path only)."""
    from featurize.reference import request_instances

    known = {"sparse": {f.name for f in spec.sparse}, "dense": set(spec.dense)}
    out: dict[str, int] = {}
    for inst in request_instances(doc):
        for kind in ("sparse", "dense"):
            part = inst.get(kind) if isinstance(inst, Mapping) else None
            if isinstance(part, Mapping):
                for name in part:
                    if name not in known[kind]:
                        out[f"{kind}.{name}"] = out.get(f"{kind}.{name}", 0) + 1
    return out
