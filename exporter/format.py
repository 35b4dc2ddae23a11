"""Encode and decode one payload object of the delta format (``exporter/FORMAT.md``).

An object holds the changed rows of one embedding table (or all dense tensors)::

    offset  size  field
    0       8     magic  b"FLUXRDLT"
    8       2     format version, u16 little-endian (= 1)
    10      2     flags, u16 LE (= 0; readers MUST reject other values)
    12      4     H = header length, u32 LE, 2 <= H <= MAX_HEADER_BYTES
    16      H     header: UTF-8 JSON object, e.g.
                  {"kind":"table","name":"item_id","dim":16,"encoding":"f32",
                   "rows":3,"tombstones":2,"raw_bytes":1234}
    16+H    B     body: one LZ4 frame; decompressed, an Arrow IPC stream of raw_bytes bytes
    16+H+B  8     B = body length, u64 LE (after the body, so writers can stream)
    24+H+B  32    sha256 of bytes [0, 24+H+B)

The reader checks every length, limit and the sha256 before it decompresses or parses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from exporter import _json
from exporter._lz4 import BLOCK_BYTES, check_frame, write_frame
from exporter.errors import (
    BadBody,
    BadHeader,
    BadMagic,
    ChecksumMismatch,
    OversizedHeader,
    OversizedPayload,
    Truncated,
    UnsupportedVersion,
)

__all__ = [
    "DENSE_SCHEMA",
    "ENCODINGS",
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_BATCHES",
    "MAX_HEADER_BYTES",
    "MAX_RANK",
    "MAX_SCALE",
    "MAX_TENSORS",
    "DecodedDense",
    "DecodedTable",
    "Limits",
    "Write",
    "Written",
    "check_name",
    "decode_object",
    "encode_dense",
    "encode_table",
    "table_schema",
    "write_dense",
    "write_table",
]

MAGIC = b"FLUXRDLT"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 65536
ENCODINGS = ("f32", "f16", "i8")
_PREFIX = struct.Struct("<8sHHI")  # magic, version, flags, header length
_U64 = struct.Struct("<Q")
_DIGEST = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_P = ParamSpec("_P")
_ARROW_VALUE = {"f32": pa.float32(), "f16": pa.float16(), "i8": pa.int8()}

DENSE_SCHEMA = pa.schema(
    [
        pa.field("name", pa.utf8(), nullable=False),
        pa.field("shape", pa.list_(pa.int64()), nullable=False),
        pa.field("value", pa.large_list(pa.float32()), nullable=False),
    ]
)


def table_schema(dim: int, encoding: str) -> pa.Schema:
    """The Arrow schema of a table object: ``id``, ``value`` (null = tombstone)[, ``scale``]."""
    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("value", pa.list_(pa.field("item", _ARROW_VALUE[encoding]), dim)),
    ]
    if encoding == "i8":
        fields.append(pa.field("scale", pa.float32()))
    return pa.schema(fields)


@dataclass(frozen=True)
class Limits:
    """What a reader accepts; the defaults fit tables of ~30M rows x 64 fp32 per object."""

    max_object_bytes: int = 8 << 30
    max_raw_bytes: int = 8 << 30
    max_dim: int = 65536


_DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class DecodedTable:
    """One decoded table object. ``values`` is float32 (fp16/int8 are widened)."""

    name: str
    dim: int
    encoding: str
    ids: npt.NDArray[np.int64]
    values: npt.NDArray[np.float32]
    tombstones: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass(frozen=True)
class DecodedDense:
    """The dense tensors of one version, by name."""

    tensors: dict[str, npt.NDArray[np.float32]]


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):  # not .match: "$" would accept a final newline
        raise BadHeader(f"table name {name!r} must match {_NAME.pattern}")
    return name


def _quantize_i8(values: npt.NDArray[np.float32]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    amax = np.abs(values).max(axis=1) if values.size else np.zeros(values.shape[0], np.float32)
    scale = (amax / 127.0).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    q = np.clip(np.rint(values / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale


@dataclass(frozen=True)
class Written:
    """One object as written: its size in bytes, sha256 (hex) and header."""

    size: int
    sha256: str
    header: dict[str, Any]


Write = Callable[[Any], object]  # receives each bytes-like piece of an object, in order


class _Pieces:
    """A write-only file for ``pa.PythonFile``: keeps the IPC stream's pieces in order."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def write(self, b: Any) -> int:
        self.parts.append(b)
        self.size += len(b)
        return len(b)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def tell(self) -> int:
        return self.size


_HASH_AHEAD_MIN = 1 << 20  # pieces from this size on are hashed on the worker thread


class _HashingWriter:
    """Passes each piece on to ``write`` and feeds it to sha256; with ``threaded``, large
    pieces are hashed on a worker thread while the caller writes them (both release the
    GIL), one piece at a time so the digest sees the bytes in order."""

    def __init__(self, write: Write, threaded: bool) -> None:
        self._write = write
        self._h = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256") if threaded else None
        self._pending: Future[None] | None = None
        self.size = 0

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def __call__(self, b: Any) -> None:
        self._wait()
        if self._pool is not None and len(b) >= _HASH_AHEAD_MIN:
            self._pending = self._pool.submit(self._h.update, b)
        else:
            self._h.update(b)
        self._write(b)
        self.size += len(b)

    def digest(self) -> bytes:
        self._wait()
        return self._h.digest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _write_object(header: dict[str, Any], stream: _Pieces, write: Write) -> Written:
    """Frame an Arrow IPC stream (layout in the module docstring) into ``write``."""
    header = {**header, "raw_bytes": stream.size}
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    if len(head) > MAX_HEADER_BYTES:
        raise OversizedHeader(f"header of {len(head)} bytes > {MAX_HEADER_BYTES}")
    out = _HashingWriter(write, threaded=stream.size >= 2 * BLOCK_BYTES)
    try:
        out(_PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(head)) + head)
        body_at = out.size
        write_frame(stream.parts, stream.size, out)
        out(_U64.pack(out.size - body_at))
        digest = out.digest()
    finally:
        out.close()
    write(digest)
    return Written(out.size + len(digest), digest.hex(), header)


def _ipc_pieces(batches: list[pa.RecordBatch], schema: pa.Schema) -> _Pieces:
    sink = _Pieces()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), schema) as w:
        for b in batches:
            w.write_batch(b)
    return sink


def write_table(  # noqa: PLR0917
    write: Write,
    name: str,
    dim: int,
    ids: npt.NDArray[np.int64],
    values: npt.NDArray[np.float32],
    tombstones: npt.NDArray[np.int64] | None = None,
    encoding: str = "f32",
) -> Written:
    """Write one table object, piece by piece, into ``write``. Upserts first, then
    tombstones (one record batch each)."""
    check_name(name)
    if encoding not in ENCODINGS:
        raise BadHeader(f"encoding {encoding!r} not one of {ENCODINGS}")
    tomb = np.empty(0, np.int64) if tombstones is None else np.ascontiguousarray(tombstones)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(len(ids), dim)
    schema = table_schema(dim, encoding)
    if encoding == "f32":
        flat: npt.NDArray[Any] = values.reshape(-1)
        scale = None
    elif encoding == "f16":
        flat, scale = values.astype(np.float16).reshape(-1), None
    else:
        q, scale = _quantize_i8(values)
        flat = q.reshape(-1)
    cols: list[pa.Array] = [
        pa.array(ids),
        pa.FixedSizeListArray.from_arrays(pa.array(flat), dim),
    ]
    if scale is not None:
        cols.append(pa.array(scale))
    batches = [pa.record_batch(cols, schema=schema)]
    if len(tomb):
        tcols: list[pa.Array] = [
            pa.array(tomb.astype(np.int64)),
            pa.nulls(len(tomb), schema.field("value").type),
        ]
        if encoding == "i8":
            tcols.append(pa.nulls(len(tomb), pa.float32()))
        batches.append(pa.record_batch(tcols, schema=schema))
    header = {
        "kind": "table",
        "name": name,
        "dim": dim,
        "encoding": encoding,
        "rows": len(ids),
        "tombstones": len(tomb),
    }
    return _write_object(header, _ipc_pieces(batches, schema), write)


def write_dense(write: Write, tensors: dict[str, npt.NDArray[np.float32]]) -> Written:
    """Write the dense object: one Arrow row per tensor (name, shape, flat fp32 values)."""
    names = sorted(tensors)
    arrs = [np.ascontiguousarray(tensors[n], dtype=np.float32) for n in names]
    batch = pa.record_batch(
        [
            pa.array(names, pa.utf8()),
            pa.array([list(a.shape) for a in arrs], pa.list_(pa.int64())),
            pa.array([a.reshape(-1) for a in arrs], pa.large_list(pa.float32())),
        ],
        schema=DENSE_SCHEMA,
    )
    header = {"kind": "dense", "tensors": len(names)}
    return _write_object(header, _ipc_pieces([batch], DENSE_SCHEMA), write)


def _in_memory(
    writer: Callable[Concatenate[Write, _P], Written],
) -> Callable[_P, tuple[bytes, str, dict[str, Any]]]:
    def encode(*args: _P.args, **kwargs: _P.kwargs) -> tuple[bytes, str, dict[str, Any]]:
        parts: list[Any] = []
        w = writer(parts.append, *args, **kwargs)
        return b"".join(parts), w.sha256, w.header

    encode.__doc__ = f"``{writer.__name__}`` into memory: ``(bytes, sha256 hex, header)``."
    return encode


encode_table = _in_memory(write_table)  # encode_table(name, dim, ids, values, ...)
encode_dense = _in_memory(write_dense)  # encode_dense(tensors)


# --------------------------------------------------------------------------- reading

MAX_BATCHES = 4096  # record batches per object (FORMAT.md 2.3)
MAX_TENSORS = 1 << 20  # dense tensors per object
MAX_RANK = 32  # dimensions of a dense tensor
MAX_SCALE = float(2**100)  # |int8 scale| bound, exact in float32: 127 * 2^100 < FLT_MAX
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
_FB_I32 = struct.Struct("<i")
_FB_U32 = struct.Struct("<I")
_FB_U16 = struct.Struct("<H")


def _int(header: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = header.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise BadHeader(f"header field {key!r} = {v!r}: expected an integer in [{lo}, {hi}]")
    return v


def _unframe(  # noqa: PLR0912
    data: bytes | memoryview, expected_sha256: str | None, limits: Limits
) -> tuple[dict[str, Any], memoryview]:
    """Check the framing and sha256 (FORMAT.md 2.1, 7), parse the header; ``(header, body)``."""
    view = memoryview(data)
    n = len(view)
    if n > limits.max_object_bytes:
        raise OversizedPayload(f"object of {n} bytes > limit {limits.max_object_bytes}")
    if n < _PREFIX.size:
        raise Truncated(f"object of {n} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, flags, hlen = _PREFIX.unpack_from(view, 0)
    if magic != MAGIC:
        raise BadMagic(f"magic {bytes(magic)!r} is not {MAGIC!r}: not a fluxrec delta object")
    if version != FORMAT_VERSION:
        raise UnsupportedVersion(f"format version {version}; this reader supports 1")
    if flags != 0:
        raise UnsupportedVersion(f"flags {flags:#x}: this reader supports 0")
    if hlen > MAX_HEADER_BYTES or hlen < 2:
        raise OversizedHeader(f"header length {hlen} outside [2, {MAX_HEADER_BYTES}]")
    body_at = _PREFIX.size + hlen
    if n < body_at + _U64.size + _DIGEST:
        raise Truncated(f"object of {n} bytes cannot hold a {hlen}-byte header")
    (blen,) = _U64.unpack_from(view, n - _DIGEST - _U64.size)
    if body_at + blen + _U64.size + _DIGEST != n:
        raise Truncated(
            f"framing declares {body_at + blen + _U64.size + _DIGEST} bytes, object has {n}"
        )
    digest = hashlib.sha256(view[: n - _DIGEST]).digest()
    if digest != view[n - _DIGEST :]:
        raise ChecksumMismatch("sha256 of the object does not match its trailer")
    if expected_sha256 is not None and digest.hex() != expected_sha256:
        raise ChecksumMismatch(
            f"object sha256 {digest.hex()[:16]}... differs from the manifest's "
            f"{expected_sha256[:16]}..."
        )
    header = _json.loads(view[_PREFIX.size : body_at], BadHeader, "header")
    if not isinstance(header, dict):
        raise BadHeader("header must be a JSON object")
    raw = _int(header, "raw_bytes", 0, (1 << 63) - 1)
    if raw > limits.max_raw_bytes:
        raise OversizedPayload(f"raw_bytes {raw} > limit {limits.max_raw_bytes}")
    if raw > 255 * blen + 1024:  # LZ4 cannot expand more than ~255x
        raise OversizedPayload(f"raw_bytes {raw} impossible for an LZ4 body of {blen} bytes")
    return header, view[body_at : body_at + blen]


def _fb_field(buf: memoryview, table: int, field: int) -> int:
    """Position of ``field`` of the flatbuffer table at ``table``; 0 when absent."""
    vtable = table - _FB_I32.unpack_from(buf, table)[0]
    (vsize,) = _FB_U16.unpack_from(buf, vtable)
    at = 4 + 2 * field
    if at + 2 > vsize:
        return 0
    (off,) = _FB_U16.unpack_from(buf, vtable + at)
    return table + off if off else 0


def _body_compressed(metadata: Any) -> bool:
    """Whether a RecordBatch message (flatbuffer ``Message``) has a ``compression``
    field: ``Message.header`` (field 2) -> ``RecordBatch.compression`` (field 3)."""
    buf = memoryview(metadata)
    try:
        (root,) = _FB_U32.unpack_from(buf, 0)
        header = _fb_field(buf, root, 2)
        if not header:
            raise BadBody("record batch message without a header")
        batch = header + _FB_U32.unpack_from(buf, header)[0]
        return _fb_field(buf, batch, 3) != 0
    except struct.error:
        raise BadBody("record batch message metadata is not a flatbuffer") from None


def _same_field(got: pa.Field, want: pa.Field) -> bool:
    """Name, type, nullability, no metadata; list children by name too (``==`` on
    Arrow list types ignores the child's name)."""
    if (got.name, got.nullable, got.metadata) != (want.name, want.nullable, None):
        return False
    if got.type != want.type:
        return False
    if isinstance(want.type, (pa.ListType, pa.LargeListType, pa.FixedSizeListType)):
        return _same_field(got.type.value_field, want.type.value_field)
    return True


def _check_schema(got: pa.Schema, want: pa.Schema) -> None:
    if (
        got.metadata
        or len(got) != len(want)
        or not all(_same_field(g, w) for g, w in zip(got, want, strict=True))
    ):
        raise BadBody(f"Arrow schema {got} (metadata {got.metadata}) is not {want}")


def _batches(body: memoryview, raw: int, want: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Decompress the LZ4 frame (structure checked first) and read the Arrow IPC stream
    message by message: a schema equal to ``want``, then record batches without body
    compression, then the end-of-stream marker as the last 8 bytes. Each batch is
    fully validated."""
    check_frame(body, raw)
    try:
        plain = pa.decompress(body, decompressed_size=raw, codec="lz4", asbytes=False)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise BadBody(f"LZ4 frame does not decode: {e}") from None
    try:
        src = pa.BufferReader(plain)
        messages = pa.ipc.MessageReader.open_stream(src)
        first = messages.read_next_message()
        if first.type != "schema":
            raise BadBody(f"Arrow stream starts with a {first.type!r} message, not a schema")
        _check_schema(pa.ipc.read_schema(first), want)
        count = 0
        while True:
            at = src.tell()
            try:
                msg = messages.read_next_message()
            except StopIteration:
                break
            if msg.type != "record batch":
                raise BadBody(f"Arrow message {msg.type!r}: only record batches may follow")
            if _body_compressed(msg.metadata):
                raise BadBody("Arrow record batch uses body compression: not allowed")
            count += 1
            if count > MAX_BATCHES:
                raise BadBody(f"more than {MAX_BATCHES} record batches")
            batch = pa.ipc.read_record_batch(msg, want)
            batch.validate(full=True)
            yield batch
    except StopIteration:
        raise BadBody("Arrow stream has no schema message") from None
    except (pa.ArrowException, OSError, ValueError, IndexError) as e:
        if isinstance(e, BadBody):
            raise
        raise BadBody(f"Arrow stream does not decode: {e}") from None
    if at != raw - len(_EOS) or bytes(plain[raw - len(_EOS) :]) != _EOS:
        raise BadBody("Arrow stream does not end with exactly one end-of-stream marker")


def decode_object(
    data: bytes | memoryview,
    expected_sha256: str | None = None,
    limits: Limits = _DEFAULT_LIMITS,
) -> DecodedTable | DecodedDense:
    """Verify and decode one object; raises a :class:`~exporter.errors.FormatError` subclass."""
    header, body = _unframe(data, expected_sha256, limits)
    kind = header.get("kind")
    raw = int(header["raw_bytes"])
    if kind == "table":
        return _decode_table(header, body, raw, limits)
    if kind == "dense":
        return _decode_dense(header, body, raw)
    raise BadHeader(f"header kind {kind!r}: expected 'table' or 'dense'")


_FINITE_STEP = 1 << 20
_ZEROS = np.zeros(_FINITE_STEP, np.float32)


def _finite(values: npt.NDArray[np.float32], what: str) -> None:
    """``BadBody`` unless every float32 value is finite: the dot product with zeros is 0
    for finite values and NaN once one is NaN or Inf (0 x Inf = NaN); one BLAS pass, half
    the time of ``min`` and ``max``, in 1M-value steps so nothing large is allocated."""
    flat = values.reshape(-1)
    for s in range(0, len(flat), _FINITE_STEP):
        part = flat[s : s + _FINITE_STEP]
        if np.dot(part, _ZEROS[: len(part)]) != 0:
            raise BadBody(f"{what}: NaN or Inf values are not allowed")


def _no_nulls(arr: pa.Array, what: str) -> None:
    if arr.null_count:
        raise BadBody(f"{what}: {arr.null_count} nulls are not allowed")


def _decode_table(
    header: dict[str, Any], body: memoryview, raw: int, limits: Limits
) -> DecodedTable:
    name = header.get("name")
    if not isinstance(name, str):
        raise BadHeader("table header needs a string 'name'")
    check_name(name)
    dim = _int(header, "dim", 1, limits.max_dim)
    enc = header.get("encoding")
    if enc not in ENCODINGS:
        raise BadHeader(f"encoding {enc!r} not one of {ENCODINGS}")
    rows = _int(header, "rows", 0, raw)
    ntomb = _int(header, "tombstones", 0, raw)
    ids_parts: list[Any] = []
    val_parts: list[Any] = []
    scale_parts: list[Any] = []
    tomb_parts: list[Any] = []
    for batch in _batches(body, raw, table_schema(dim, enc)):
        try:
            _split_rows(batch, dim, enc, ids_parts, val_parts, scale_parts, tomb_parts)
        except (pa.ArrowException, ValueError, IndexError) as e:
            if isinstance(e, BadBody):
                raise
            raise BadBody(f"Arrow body does not decode: {e}") from None
    ids = _cat(ids_parts, np.int64, (0,))
    vals = _cat(val_parts, _np_dtype(enc), (0, dim))
    tomb = _cat(tomb_parts, np.int64, (0,))
    if len(ids) != rows or len(tomb) != ntomb:
        raise BadHeader(
            f"body has {len(ids)} rows / {len(tomb)} tombstones, header says {rows} / {ntomb}"
        )
    if enc == "f32":
        out = vals
        _finite(out, f"table {name}")
    elif enc == "f16":
        out = vals.astype(np.float32)  # exact: Inf and NaN stay what they are
        _finite(out, f"table {name}")
    else:
        scale = _cat(scale_parts, np.float32, (0,))
        if len(scale) and not (
            np.isfinite(scale).all() and scale.min() >= 0 and scale.max() <= MAX_SCALE
        ):
            raise BadBody(f"table {name}: int8 scales must be finite and in [0, 2^100]")
        if len(vals) and vals.min() == -128:
            raise BadBody(f"table {name}: int8 value -128 is not allowed (range -127..127)")
        out = vals.astype(np.float32) * scale[:, None]  # float32 x float32, rounded once
    return DecodedTable(name, dim, str(enc), ids, out, tomb)


def _split_rows(  # noqa: PLR0917
    batch: pa.RecordBatch,
    dim: int,
    enc: str,
    ids_parts: list[Any],
    val_parts: list[Any],
    scale_parts: list[Any],
    tomb_parts: list[Any],
) -> None:
    """Append one batch's upserts (ids, values, scales) and tombstones to the parts."""
    idcol, vcol = batch.column(0), batch.column(1)
    _no_nulls(idcol, "column 'id'")
    nulls = vcol.null_count
    if nulls:
        dead = vcol.is_null()
        dead_batch = batch.filter(dead) if nulls < len(batch) else batch
        tomb_parts.append(dead_batch.column(0).to_numpy())
        if enc == "i8" and dead_batch.column(2).null_count != len(dead_batch):
            raise BadBody("int8 tombstone rows must have a null 'scale'")
        if nulls == len(batch):
            return
        batch = batch.filter(pc.invert(dead))
        idcol, vcol = batch.column(0), batch.column(1)
    child = vcol.values.slice(vcol.offset * dim, len(vcol) * dim)
    _no_nulls(child, "items of non-null 'value' rows")
    ids_parts.append(idcol.to_numpy())
    val_parts.append(child.to_numpy(zero_copy_only=False).reshape(len(vcol), dim))
    if enc == "i8":
        scol = batch.column(2)
        _no_nulls(scol, "'scale' of int8 rows")
        scale_parts.append(scol.to_numpy())


def _np_dtype(enc: str) -> Any:
    return {"f32": np.float32, "f16": np.float16, "i8": np.int8}[enc]


def _cat(parts: list[Any], dtype: Any, empty_shape: tuple[int, ...]) -> Any:
    if not parts:
        return np.empty(empty_shape, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _decode_dense(header: dict[str, Any], body: memoryview, raw: int) -> DecodedDense:
    count = _int(header, "tensors", 0, MAX_TENSORS)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for batch in _batches(body, raw, DENSE_SCHEMA):
        try:
            names, shapes, values = batch.column(0), batch.column(1), batch.column(2)
            _no_nulls(names, "dense column 'name'")
            _no_nulls(shapes, "dense column 'shape'")
            _no_nulls(values, "dense column 'value'")
            _no_nulls(shapes.values, "dense 'shape' items")
            _no_nulls(values.values, "dense 'value' items")
            for i, (name, shape) in enumerate(
                zip(names.to_pylist(), shapes.to_pylist(), strict=True)
            ):
                flat = values[i].values.to_numpy(zero_copy_only=False)
                if len(shape) > MAX_RANK or any(d < 0 for d in shape):
                    raise BadBody(f"dense tensor {name!r}: shape {shape} (rank <= {MAX_RANK})")
                if math.prod(shape) != len(flat):
                    raise BadBody(f"dense tensor {name!r}: shape {shape} != {len(flat)} values")
                if name in out:
                    raise BadBody(f"dense tensor {name!r} appears twice")
                tensor = flat.astype(np.float32, copy=False)
                _finite(tensor, f"dense tensor {name!r}")
                out[name] = tensor.reshape(shape)
        except (pa.ArrowException, ValueError, IndexError) as e:
            if isinstance(e, BadBody):
                raise
            raise BadBody(f"Arrow body does not decode: {e}") from None
    if len(out) != count:
        raise BadHeader(f"body has {len(out)} tensors, header says {count}")
    return DecodedDense(out)
