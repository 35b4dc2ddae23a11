"""Regenerate the golden vectors of FORMAT.md: ``python exporter/testdata/make_golden.py``.

Writes, beside this file::

    table_f32.fxd table_f16.fxd table_i8.fxd dense.fxd   objects of the chain's version 7
    table_multiblock.fxd   a linked multi-block LZ4 frame (64 KiB blocks, block and content
                           checksums) over a stream of three record batches
    table_stored.fxd       one stored (incompressible) LZ4 block
    manifest.json          version 7 (a delta), signed with GOLDEN_HMAC_KEY
    manifest_parts.json    version 11 of store_parts/ (format 2, two parts), signed
    store/                 a store: versions 5 (snapshot), 6, 7 (deltas), a signed LATEST.json
    store_parts/           a store of two-part versions (manifest format 2): 10 (snapshot),
                           11 (delta), then 12 (a format-1 delta), a signed LATEST.json
    negative/NAME.*        must-reject objects, manifests and LATEST.json files
    negative/store_*/      stores whose newest version a reader must reject whole
    expected.json          the exact decoding of every positive vector (float32 values as
                           JSON numbers and as the hex of their little-endian bytes), the
                           state of the store after its chain, and for each negative vector
                           the error class a reader MUST raise

Every vector is checked against the Python reader while it is generated: a negative
vector that the reader does not reject with its declared error stops the script.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pyarrow as pa

from exporter._lz4 import _header as lz4_header
from exporter.errors import ExporterError
from exporter.format import (
    DENSE_SCHEMA,
    MAGIC,
    MAX_BATCHES,
    DecodedDense,
    DecodedTable,
    Limits,
    decode_object,
    encode_dense,
    encode_table,
    table_schema,
)
from exporter.manifest import (
    MANIFEST_FORMAT,
    MAX_PARTS,
    PARTS_FORMAT,
    canonical_json,
    check_entry_size,
    decode_entry,
    dense_key,
    latest_bytes,
    manifest_key,
    parse_latest,
    parse_manifest,
    sign_bytes,
    sign_manifest,
    table_key,
)
from exporter.sdk import DeltaConsumer, InMemoryTables
from exporter.store import FileStore

__all__ = ["GOLDEN_HMAC_KEY", "build", "check_negative", "decoded_json", "inputs", "main"]

HERE = Path(__file__).resolve().parent
GOLDEN_HMAC_KEY = b"golden-key"
_PREFIX = struct.Struct("<8sHHI")
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def inputs() -> dict[str, Any]:
    ids = np.array([17, 42, -9001], np.int64)
    values = np.array(
        [[0.5, -1.0, 2.25, 0.0], [1.5, 0.125, -0.75, 3.0], [-2.0, 0.0, 0.0, 1.0]], np.float32
    )
    return {
        "ids": ids,
        "values": values,
        "tombstones": np.array([5, 77], np.int64),
        "dense": {"mlp.bias": np.array([0.25, -0.5], np.float32)},
    }


# ----------------------------------------------------------------------------- helpers


def seal(prefix_header_body: bytes) -> bytes:
    """Bytes ``[0, 24+H+B)`` of an object with their sha256 trailer appended."""
    return prefix_header_body + hashlib.sha256(prefix_header_body).digest()


def frame(
    header: dict[str, Any] | bytes,
    body: bytes,
    *,
    version: int = 1,
    flags: int = 0,
    hlen: int | None = None,
    magic: bytes = MAGIC,
) -> bytes:
    """A whole object around an LZ4 ``body`` (header as a dict is written canonically)."""
    head = header if isinstance(header, bytes) else canonical_json(header)
    n = len(head) if hlen is None else hlen
    return seal(_PREFIX.pack(magic, version, flags, n) + head + body + _U64.pack(len(body)))


def ipc(schema: pa.Schema, batches: list[pa.RecordBatch], **options: Any) -> bytes:
    sink = pa.BufferOutputStream()
    opts = pa.ipc.IpcWriteOptions(**options)
    with pa.ipc.new_stream(sink, schema, options=opts) as w:
        for b in batches:
            w.write_batch(b)
    return bytes(sink.getvalue().to_pybytes())


def lz4f(raw: bytes, **kw: Any) -> bytes:
    return bytes(lz4.frame.compress(raw, compression_level=0, store_size=True, **kw))


def stored_frame(raw: bytes) -> bytes:
    """One stored block (high bit of its size set), as the writer emits incompressible data."""
    return lz4_header(len(raw)) + _U32.pack(len(raw) | 0x80000000) + raw + b"\0\0\0\0"


def table_header(  # noqa: PLR0917
    name: str, dim: int, enc: str, rows: int, tomb: int, raw: int
) -> dict[str, Any]:
    return {
        "kind": "table",
        "name": name,
        "dim": dim,
        "encoding": enc,
        "rows": rows,
        "tombstones": tomb,
        "raw_bytes": raw,
    }


def table_object(
    schema: pa.Schema,
    batches: list[pa.RecordBatch],
    rows: int,
    tomb: int = 0,
    *,
    raw: bytes | None = None,
    body: Callable[[bytes], bytes] = lz4f,
    **header: Any,
) -> bytes:
    """A table object with an arbitrary Arrow stream (or ``raw`` bytes) in its body."""
    raw = ipc(schema, batches) if raw is None else raw
    vtype = schema.field("value").type
    dim = vtype.list_size if isinstance(vtype, pa.FixedSizeListType) else 4
    enc = "i8" if len(schema) == 3 else "f16" if "halffloat" in str(vtype) else "f32"
    h = table_header("t", dim, enc, rows, tomb, len(raw)) | header
    return frame(h, body(raw))


def f32_batch(ids: list[int], vals: Any, dim: int = 4, schema: pa.Schema | None = None) -> Any:
    schema = schema or table_schema(dim, "f32")
    child = pa.array(
        np.asarray(vals, np.float32).reshape(-1), schema.field("value").type.value_type
    )
    return pa.record_batch(
        [pa.array(ids, pa.int64()), pa.FixedSizeListArray.from_arrays(child, dim)], schema=schema
    )


def i8_batch(ids: list[int], q: Any, scale: list[Any], dim: int = 4) -> pa.RecordBatch:
    child = pa.array(np.asarray(q, np.int8).reshape(-1), pa.int8())
    return pa.record_batch(
        [
            pa.array(ids, pa.int64()),
            pa.FixedSizeListArray.from_arrays(child, dim),
            pa.array(scale, pa.float32()),
        ],
        schema=table_schema(dim, "i8"),
    )


def dense_object(batch: pa.RecordBatch, tensors: int, schema: pa.Schema = DENSE_SCHEMA) -> bytes:
    raw = ipc(schema, [batch])
    return frame({"kind": "dense", "tensors": tensors, "raw_bytes": len(raw)}, lz4f(raw))


def dense_batch(names: list[Any], shapes: list[Any], values: list[Any]) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array(names, pa.utf8()),
            pa.array(shapes, pa.list_(pa.int64())),
            pa.array(values, pa.large_list(pa.float32())),
        ],
        schema=DENSE_SCHEMA,
    )


def f32_hex(a: Any) -> str:
    return np.ascontiguousarray(a, "<f4").tobytes().hex()


def decoded_json(dec: DecodedTable | DecodedDense) -> dict[str, Any]:
    """A decoding as JSON: values as numbers and as the hex of their float32 LE bytes."""
    if isinstance(dec, DecodedTable):
        return {
            "name": dec.name,
            "dim": dec.dim,
            "encoding": dec.encoding,
            "ids": dec.ids.tolist(),
            "values": dec.values.tolist(),
            "values_f32le": f32_hex(dec.values),
            "tombstones": dec.tombstones.tolist(),
        }
    return {
        "dense": {k: v.tolist() for k, v in dec.tensors.items()},
        "dense_shapes": {k: list(v.shape) for k, v in dec.tensors.items()},
        "dense_f32le": {k: f32_hex(v) for k, v in dec.tensors.items()},
    }


# ----------------------------------------------------------------------------- positive


def _manifest(seq: int, kind: str, base: int, objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "sequence": seq,
        "parent": seq - 1 if seq else None,
        "kind": kind,
        "base_snapshot": base,
        "objects": objects,
        "kafka_offsets": {"fluxrec.samples": {"0": 81234 + seq, "1": 80977 + seq}},
        "watermark_ms": 1700000123456 + seq,
        "trainer_step": 1200 + seq,
        "samples": 4915200 + seq,
        "created_ms": 1700000124000 + seq,
        "published_ms": 1700000124210 + seq,
        "rollback_of": None,
    }


def _entry(
    seq: int, name: str | None, data: bytes, header: dict[str, Any], part: int | None = None
) -> dict[str, Any]:
    digest = hashlib.sha256(data[:-32]).hexdigest()
    if name is None:
        return {"key": dense_key(seq, part), "kind": "dense", "bytes": len(data), "sha256": digest}
    return {
        "key": table_key(seq, name, part),
        "kind": "table",
        "name": name,
        "dim": header["dim"],
        "encoding": header["encoding"],
        "rows": header["rows"],
        "tombstones": header["tombstones"],
        "bytes": len(data),
        "sha256": digest,
    }


def _version7() -> tuple[dict[str, bytes], list[dict[str, Any]]]:
    x = inputs()
    files: dict[str, bytes] = {}
    objects = []
    for enc in ("f32", "f16", "i8"):
        data, _digest, header = encode_table(
            f"item_{enc}", 4, x["ids"], x["values"], x["tombstones"], enc
        )
        files[f"table_{enc}.fxd"] = data
        objects.append(_entry(7, f"item_{enc}", data, header))
    data, _digest, header = encode_dense(x["dense"])
    files["dense.fxd"] = data
    objects.append(_entry(7, None, data, header))
    return files, objects


def _store() -> dict[str, bytes]:
    """Versions 5 (snapshot), 6 and 7 (deltas) and LATEST.json, as store keys."""
    rng = np.random.default_rng(5)
    out: dict[str, bytes] = {}
    objects5 = []
    for enc in ("f32", "f16", "i8"):
        ids = np.array([5, 17, 77, 100, -3], np.int64)
        vals = (rng.integers(-64, 64, (5, 4)) / 16).astype(np.float32)
        data, _d, header = encode_table(f"item_{enc}", 4, ids, vals, None, enc)
        out[table_key(5, f"item_{enc}")] = data
        objects5.append(_entry(5, f"item_{enc}", data, header))
    data, _d, header = encode_dense({"mlp.bias": np.array([1.0, 2.0], np.float32)})
    out[dense_key(5)] = data
    objects5.append(_entry(5, None, data, header))
    ids6 = np.array([100, 200], np.int64)
    vals6 = np.array([[1, 2, 3, 4], [-1, -2, -3, -4]], np.float32) / 8
    data, _d, header = encode_table("item_f32", 4, ids6, vals6, np.array([-3], np.int64))
    out[table_key(6, "item_f32")] = data
    objects6 = [_entry(6, "item_f32", data, header)]
    files7, objects7 = _version7()
    for obj, data in zip(objects7, files7.values(), strict=True):
        out[obj["key"]] = data
    for seq, kind, objs in (
        (5, "snapshot", objects5),
        (6, "delta", objects6),
        (7, "delta", objects7),
    ):
        out[manifest_key(seq)] = sign_manifest(_manifest(seq, kind, 5, objs), GOLDEN_HMAC_KEY)
    out["LATEST.json"] = latest_bytes(7, 5, GOLDEN_HMAC_KEY)
    return out


def _parts_manifest(
    seq: int, kind: str, base: int, parts: list[list[dict[str, Any]]]
) -> dict[str, Any]:
    doc = {k: v for k, v in _manifest(seq, kind, base, []).items() if k != "objects"}
    return doc | {
        "format": PARTS_FORMAT,
        "parts": [{"index": k, "objects": objs} for k, objs in enumerate(parts)],
    }


def _rows(ids: list[int], k: int) -> Any:
    """Rows exact in every encoding: small multiples of 1/8."""
    a = (np.array(ids, np.float32)[:, None] * k + np.arange(4, dtype=np.float32)) % 16 - 8
    return (a / 8).astype(np.float32)


def _parts_store() -> dict[str, bytes]:
    """A store of two-part versions: 10 (snapshot: part 0 holds ids 1, 3, 5 of item_f32
    and the dense tensors, part 1 ids 2, 4, 6 of item_f32 and 7, 8 of item_i8), 11 (a
    delta: each part upserts and tombstones its own ids; part 1 tombstones item_i8 7
    only), 12 (a delta of format 1: one writer again), LATEST.json -> 12."""
    out: dict[str, bytes] = {}

    def put(seq: int, part: int | None, name: str | None, obj: tuple[Any, ...]) -> dict[str, Any]:
        data, _digest, header = obj
        entry = _entry(seq, name, data, header, part)
        out[entry["key"]] = data
        return entry

    p10: list[list[dict[str, Any]]] = [[], []]
    for part, ids in ((0, [1, 3, 5]), (1, [2, 4, 6])):
        rows = encode_table("item_f32", 4, np.array(ids, np.int64), _rows(ids, 3), None, "f32")
        p10[part].append(put(10, part, "item_f32", rows))
    p10[1].append(
        put(
            10,
            1,
            "item_i8",
            encode_table("item_i8", 4, np.array([7, 8], np.int64), _rows([7, 8], 5), None, "i8"),
        )
    )
    p10[0].append(put(10, 0, None, encode_dense({"mlp.bias": np.array([0.5, -0.25], np.float32)})))
    p11: list[list[dict[str, Any]]] = [[], []]
    for part, ids, tomb in ((0, [1], [3]), (1, [2, 9], [6])):
        obj = encode_table(
            "item_f32", 4, np.array(ids, np.int64), _rows(ids, 7), np.array(tomb, np.int64), "f32"
        )
        p11[part].append(put(11, part, "item_f32", obj))
    empty = np.empty(0, np.int64)
    i8 = encode_table("item_i8", 4, empty, np.zeros((0, 4), np.float32), np.array([7]), "i8")
    p11[1].append(put(11, 1, "item_i8", i8))
    p11[0].append(put(11, 0, None, encode_dense({"mlp.bias": np.array([1.5, 2.0], np.float32)})))
    obj12 = encode_table("item_f32", 4, np.array([5], np.int64), _rows([5], 11), np.array([9]))
    o12 = [put(12, None, "item_f32", obj12)]
    for seq, doc in (
        (10, _parts_manifest(10, "snapshot", 10, p10)),
        (11, _parts_manifest(11, "delta", 10, p11)),
        (12, _manifest(12, "delta", 10, o12)),
    ):
        out[manifest_key(seq)] = sign_manifest(doc, GOLDEN_HMAC_KEY)
    out["LATEST.json"] = latest_bytes(12, 10, GOLDEN_HMAC_KEY)
    return out


def _multiblock() -> bytes:
    rng = np.random.default_rng(11)
    dim, schema = 8, table_schema(8, "f32")
    batches = []
    for b in range(3):
        n = 3000
        ids = (np.arange(n, dtype=np.int64) + b * n) * 7919
        vals = (rng.integers(-8, 8, (n, dim)) / 4).astype(np.float32)
        batches.append(f32_batch(ids.tolist(), vals, dim, schema))
    raw = ipc(schema, batches)
    body = lz4f(
        raw,
        block_size=lz4.frame.BLOCKSIZE_MAX64KB,
        block_linked=True,
        block_checksum=True,
        content_checksum=True,
    )
    return frame(table_header("multi", dim, "f32", 9000, 0, len(raw)), body)


def _stored() -> bytes:
    rng = np.random.default_rng(12)
    ids = rng.integers(-(1 << 62), 1 << 62, 64)
    vals = rng.standard_normal((64, 16)).astype(np.float32)
    raw = ipc(table_schema(16, "f32"), [f32_batch(ids.tolist(), vals, 16)])
    return frame(table_header("stored", 16, "f32", 64, 0, len(raw)), stored_frame(raw))


def positive() -> dict[str, bytes]:
    files, objects = _version7()
    files["table_multiblock.fxd"] = _multiblock()
    files["table_stored.fxd"] = _stored()
    files["manifest.json"] = sign_manifest(_manifest(7, "delta", 5, objects), GOLDEN_HMAC_KEY)
    files.update({f"store/{k}": v for k, v in _store().items()})
    parts = _parts_store()
    files.update({f"store_parts/{k}": v for k, v in parts.items()})
    files["manifest_parts.json"] = parts[manifest_key(11)]
    return files


# ----------------------------------------------------------------------------- negative

Vector = tuple[str, bytes, dict[str, Any]]  # file name, bytes, expectation


def _obj(name: str, data: bytes, error: str, **kw: Any) -> Vector:
    return f"{name}.fxd", data, {"kind": "object", "error": error} | kw


def _negative_objects() -> list[Vector]:  # noqa: PLR0915
    x = inputs()
    good, _d, _h = encode_table("t", 4, x["ids"], x["values"], x["tombstones"])
    sch = table_schema(4, "f32")
    ok_batch = f32_batch([1, 2], [[0.5] * 4, [1.5] * 4])
    ok_raw = ipc(sch, [ok_batch])
    h = table_header("t", 4, "f32", 2, 0, len(ok_raw))
    body = lz4f(ok_raw)
    hlen = _PREFIX.unpack_from(good, 0)[3]
    v: list[Vector] = []
    # framing, in the order readers check it
    v.append(_obj("bad_magic", frame(h, body, magic=b"FLUXRDLX"), "BadMagic"))
    v.append(_obj("version_2", frame(h, body, version=2), "UnsupportedVersion"))
    v.append(_obj("flags_1", frame(h, body, flags=1), "UnsupportedVersion"))
    v.append(_obj("header_length_1", frame(b"{", body, hlen=1), "OversizedHeader"))
    head = canonical_json(h)
    v.append(_obj("header_length_65537", frame(head, body, hlen=65537), "OversizedHeader"))
    v.append(_obj("truncated", good[:-1], "Truncated"))
    v.append(_obj("one_byte_more", good + b"\0", "Truncated"))
    v.append(_obj("body_length_wrong", seal(good[:-40] + _U64.pack(len(body) + 1)), "Truncated"))
    bad = bytearray(good)
    bad[16 + hlen] ^= 1
    v.append(_obj("sha256_trailer", bytes(bad), "ChecksumMismatch"))
    # header JSON
    for name, text in (
        ("header_not_json", b"{kind:table}"),
        ("header_bom", b"\xef\xbb\xbf" + head),
        ("header_utf16", head.decode().encode("utf-16-le")),
        ("header_duplicate_key", head[:-1] + b',"dim":4}'),
        ("header_nan", head.replace(b'"dim":4', b'"dim":NaN')),
        ("header_array", b"[" + head + b"]"),
        ("header_deep", head[:-1] + b',"x":' + b"[" * 16 + b"]" * 16 + b"}"),
        ("header_huge_int", head.replace(b'"dim":4', b'"dim":' + b"9" * 65)),
    ):
        v.append(_obj(name, frame(text, body), "BadHeader"))
    for name, change in (
        ("header_kind", {"kind": "tensor"}),
        ("header_name", {"name": "../t"}),
        ("header_name_newline", {"name": "t\n"}),
        ("header_dim_0", {"dim": 0}),
        ("header_dim_bool", {"dim": True}),
        ("header_encoding", {"encoding": "bf16"}),
        ("header_rows_negative", {"rows": -1}),
        ("header_raw_bytes_string", {"raw_bytes": "1"}),
    ):
        v.append(_obj(name, frame(h | change, body), "BadHeader"))
    v.append(_obj("rows_mismatch", frame(h | {"rows": 3}, body), "BadHeader"))
    v.append(_obj("tombstones_mismatch", frame(h | {"tombstones": 1}, body), "BadHeader"))
    v.append(
        _obj(
            "raw_bytes_over_limit",
            frame(h | {"raw_bytes": (8 << 30) + 1}, body),
            "OversizedPayload",
        )
    )
    v.append(
        _obj(
            "raw_bytes_impossible",
            frame(h | {"raw_bytes": 255 * len(body) + 1025}, body),
            "OversizedPayload",
        )
    )
    # the LZ4 frame
    v.append(
        _obj(
            "lz4_content_size_mismatch",
            frame(h | {"raw_bytes": len(ok_raw) + 1}, body),
            "BadHeader",
        )
    )
    nosize = bytes(lz4.frame.compress(ok_raw, store_size=False))
    v.append(_obj("lz4_no_content_size", frame(h, nosize), "BadBody"))
    v.append(_obj("lz4_two_frames", frame(h, body + lz4f(b"x")), "BadBody"))
    v.append(_obj("lz4_trailing_byte", frame(h, body + b"\0"), "BadBody"))
    v.append(_obj("lz4_no_end_mark", frame(h, body[:-4]), "BadBody"))
    v.append(
        _obj(
            "lz4_skippable_frame", frame(h, _U32.pack(0x184D2A50) + _U32.pack(0) + body), "BadBody"
        )
    )
    flg = bytearray(body)
    flg[4] |= 0x01  # DictID
    v.append(_obj("lz4_dictionary", frame(h, bytes(flg)), "BadBody"))
    flg = bytearray(body)
    flg[5] = 0x30  # block maximum size id 3
    v.append(_obj("lz4_block_size_id_3", frame(h, bytes(flg)), "BadBody"))
    hc = bytearray(body)
    hc[14] ^= 0xFF
    v.append(_obj("lz4_header_checksum", frame(h, bytes(hc)), "BadBody"))
    ck = bytearray(lz4f(ok_raw, block_checksum=True))
    ck[-5] ^= 0x01  # the block checksum (last 4 bytes before the end mark)
    v.append(_obj("lz4_block_checksum", frame(h, bytes(ck)), "BadBody"))
    ck = bytearray(lz4f(ok_raw, content_checksum=True))
    ck[-1] ^= 0x01
    v.append(_obj("lz4_content_checksum", frame(h, bytes(ck)), "BadBody"))
    big = lz4_header(len(ok_raw)) + _U32.pack((4 << 20) + 1) + b"\0" * 8 + b"\0\0\0\0"
    v.append(_obj("lz4_block_over_maximum", frame(h, big), "BadBody"))
    # a compressed block whose first sequence copies from before the output
    evil = bytes([0x10, 0x41, 0x05, 0x00, 0x50, 0x41, 0x41, 0x41, 0x41, 0x41])
    evil_body = lz4_header(len(ok_raw)) + _U32.pack(len(evil)) + evil + b"\0\0\0\0"
    v.append(_obj("lz4_offset_before_output", frame(h, evil_body), "BadBody"))
    many = lz4_header(len(ok_raw)) + (_U32.pack(1 | 0x80000000) + b"A") * 2 + b"\0\0\0\0"
    v.append(_obj("lz4_too_many_blocks", frame(h | {"raw_bytes": len(ok_raw)}, many), "BadBody"))
    short = stored_frame(ok_raw[:-1])[:-4]
    short = lz4_header(len(ok_raw)) + short[15:] + b"\0\0\0\0"
    v.append(_obj("lz4_shorter_than_content_size", frame(h, short), "BadBody"))

    # the Arrow stream
    def arrow(name: str, raw: bytes, rows: int = 2, tomb: int = 0, **hk: Any) -> Vector:
        return _obj(
            name,
            frame(table_header("t", 4, "f32", rows, tomb, len(raw)) | hk, lz4f(raw)),
            "BadBody",
        )

    v.append(arrow("arrow_body_compression", ipc(sch, [ok_batch], compression="lz4")))
    v.append(arrow("arrow_no_end_of_stream", ok_raw[:-8]))
    v.append(arrow("arrow_old_end_of_stream", ok_raw[:-8] + b"\0\0\0\0"))
    v.append(arrow("arrow_bytes_after_end", ok_raw + b"\0" * 8))
    v.append(arrow("arrow_not_ipc", b"\0" * 64))
    v.append(arrow("arrow_two_schemas", ok_raw[:-8] + ipc(sch, [])))
    elem = pa.schema(
        [sch.field("id"), pa.field("value", pa.list_(pa.field("element", pa.float32()), 4))]
    )
    v.append(arrow("arrow_child_name", ipc(elem, [f32_batch([1, 2], np.ones(8), 4, elem)])))
    f64 = pa.schema(
        [sch.field("id"), pa.field("value", pa.list_(pa.field("item", pa.float64()), 4))]
    )
    b64 = pa.record_batch(
        [pa.array([1, 2], pa.int64()), pa.FixedSizeListArray.from_arrays(pa.array(np.ones(8)), 4)],
        schema=f64,
    )
    v.append(arrow("arrow_value_float64", ipc(f64, [b64])))
    meta = sch.with_metadata({"k": "v"})
    v.append(
        arrow("arrow_schema_metadata", ipc(meta, [ok_batch.replace_schema_metadata({"k": "v"})]))
    )
    fmeta = pa.schema(
        [sch.field("id").with_metadata({"ARROW:extension:name": "x"}), sch.field("value")]
    )
    v.append(
        arrow("arrow_field_metadata", ipc(fmeta, [pa.record_batch(ok_batch.columns, schema=fmeta)]))
    )
    nid = pa.schema([pa.field("id", pa.int64()), sch.field("value")])
    v.append(arrow("arrow_id_nullable", ipc(nid, [pa.record_batch(ok_batch.columns, schema=nid)])))
    nitem = pa.schema(
        [
            sch.field("id"),
            pa.field("value", pa.list_(pa.field("item", pa.float32(), nullable=False), 4)),
        ]
    )
    v.append(
        arrow("arrow_item_not_nullable", ipc(nitem, [f32_batch([1, 2], np.ones(8), 4, nitem)]))
    )
    extra = sch.append(pa.field("scale", pa.float32()))
    eb = pa.record_batch([*ok_batch.columns, pa.array([1.0, 1.0], pa.float32())], schema=extra)
    v.append(arrow("arrow_extra_column", ipc(extra, [eb])))
    v.append(arrow("arrow_dim_3", ipc(table_schema(3, "f32"), [f32_batch([1, 2], np.ones(6), 3)])))
    null_id = pa.record_batch([pa.array([1, None], pa.int64()), ok_batch.column(1)], schema=sch)
    v.append(arrow("null_id", ipc(sch, [null_id])))
    null_item = pa.record_batch(
        [
            pa.array([1, 2], pa.int64()),
            pa.FixedSizeListArray.from_arrays(pa.array([1.0] * 7 + [None], pa.float32()), 4),
        ],
        schema=sch,
    )
    v.append(arrow("null_item_in_a_row", ipc(sch, [null_item])))
    v.append(arrow("nan_value", ipc(sch, [f32_batch([1, 2], [0.5] * 7 + [float("nan")])])))
    v.append(arrow("inf_value", ipc(sch, [f32_batch([1, 2], [float("-inf")] + [0.5] * 7)])))
    s16 = table_schema(4, "f16")
    b16 = pa.record_batch(
        [
            pa.array([1, 2], pa.int64()),
            pa.FixedSizeListArray.from_arrays(
                pa.array(np.array([np.inf] + [1] * 7, np.float16)), 4
            ),
        ],
        schema=s16,
    )
    raw16 = ipc(s16, [b16])
    v.append(
        _obj(
            "f16_inf_value",
            frame(table_header("t", 4, "f16", 2, 0, len(raw16)), lz4f(raw16)),
            "BadBody",
        )
    )
    s8 = table_schema(4, "i8")
    for name, q, scale in (
        ("i8_minus_128", [-128] + [1] * 7, [0.5, 0.5]),
        ("i8_negative_scale", [1] * 8, [0.5, -0.5]),
        ("i8_nan_scale", [1] * 8, [float("nan"), 0.5]),
        ("i8_scale_over_2_100", [1] * 8, [float(2**101), 0.5]),
        ("i8_null_scale", [1] * 8, [None, 0.5]),
    ):
        raw8 = ipc(s8, [i8_batch([1, 2], q, scale)])
        v.append(
            _obj(name, frame(table_header("t", 4, "i8", 2, 0, len(raw8)), lz4f(raw8)), "BadBody")
        )
    tomb8 = pa.record_batch(
        [
            pa.array([3], pa.int64()),
            pa.nulls(1, s8.field("value").type),
            pa.array([0.5], pa.float32()),
        ],
        schema=s8,
    )
    raw8 = ipc(s8, [i8_batch([1, 2], [1] * 8, [0.5, 0.5]), tomb8])
    v.append(
        _obj(
            "i8_tombstone_with_scale",
            frame(table_header("t", 4, "i8", 2, 1, len(raw8)), lz4f(raw8)),
            "BadBody",
        )
    )
    empty = f32_batch([], np.zeros((0, 4)))
    raw_many = ipc(sch, [empty] * (MAX_BATCHES + 1))
    v.append(arrow("arrow_too_many_batches", raw_many, rows=0))
    # valid offsets [0, 2, 3] of 'value', patched in the IPC bytes to [0, 2, 9]
    raw_d = ipc(DENSE_SCHEMA, [dense_batch(["a", "b"], [[2], [1]], [[1.0, 2.0], [3.0]])])
    offsets = np.array([0, 2, 3], np.int64).tobytes()
    if raw_d.count(offsets) != 1:
        raise RuntimeError("dense offsets not found once in the IPC stream")
    raw_d = raw_d.replace(offsets, np.array([0, 2, 9], np.int64).tobytes())
    hd = {"kind": "dense", "tensors": 2, "raw_bytes": len(raw_d)}
    v.append(_obj("dense_offsets_out_of_range", frame(hd, lz4f(raw_d)), "BadBody"))
    for name, batch, count in (
        ("dense_null_shape", dense_batch(["a"], [None], [[1.0]]), 1),
        ("dense_null_name", dense_batch([None], [[1]], [[1.0]]), 1),
        ("dense_null_shape_item", dense_batch(["a"], [[None]], [[1.0]]), 1),
        ("dense_shape_mismatch", dense_batch(["a"], [[2, 2]], [[1.0, 2.0, 3.0]]), 1),
        ("dense_negative_dimension", dense_batch(["a"], [[-1, -1]], [[1.0]]), 1),
        ("dense_shape_overflow", dense_batch(["a"], [[1 << 32, 1 << 32]], [[]]), 1),
        ("dense_rank_33", dense_batch(["a"], [[1] * 33], [[1.0]]), 1),
        ("dense_repeated_name", dense_batch(["a", "a"], [[1], [1]], [[1.0], [2.0]]), 2),
        ("dense_nan", dense_batch(["a"], [[1]], [[float("nan")]]), 1),
        ("dense_null_value_item", dense_batch(["a"], [[1]], [[None]]), 1),
    ):
        v.append(_obj(name, dense_object(batch, count), "BadBody"))
    v.append(
        _obj(
            "dense_count_mismatch", dense_object(dense_batch(["a"], [[1]], [[1.0]]), 2), "BadHeader"
        )
    )
    return v


def _man(name: str, data: bytes, error: str, hmac: bool = True, seq: int = 7) -> Vector:
    return f"{name}.json", data, {"kind": "manifest", "error": error, "hmac": hmac, "seq": seq}


def _negative_manifests() -> list[Vector]:
    _files, objects = _version7()
    doc = _manifest(7, "delta", 5, objects)
    key = GOLDEN_HMAC_KEY

    def signed(d: dict[str, Any]) -> bytes:
        return sign_manifest(d, key)

    def raw_signed(b: bytes) -> bytes:
        return sign_bytes(b, key)

    good = signed(doc)
    unsigned = canonical_json(doc)
    v: list[Vector] = []
    v.append(_man("m_unsigned", unsigned, "BadSignature"))
    wrong = bytearray(good)
    wrong[-4] = ord("0") if wrong[-4] != ord("0") else ord("1")
    v.append(_man("m_wrong_hmac", bytes(wrong), "BadSignature"))
    v.append(_man("m_trailing_newline", good + b"\n", "BadSignature"))
    v.append(_man("m_other_key", sign_manifest(doc, b"other-key"), "BadSignature"))
    old = canonical_json(doc | {"signature": {"alg": "hmac-sha256", "value": "0" * 64}})
    v.append(_man("m_old_algorithm", old, "BadSignature"))
    v.append(_man("m_signature_not_last", canonical_json(json.loads(good)), "BadSignature"))
    v.append(_man("m_signature_non_ascii", good[:-6] + "é".encode() + good[-4:], "BadSignature"))
    v.append(
        _man(
            "m_signature_non_ascii_unkeyed",
            good[:-6] + "é".encode() + good[-4:],
            "BadSignature",
            hmac=False,
        )
    )
    v.append(
        _man(
            "m_signature_bad_shape_unkeyed",
            canonical_json(doc | {"signature": "x"}),
            "BadSignature",
            hmac=False,
        )
    )
    for name, text in (
        ("m_duplicate_key", unsigned[:-1] + b',"samples":1}'),
        ("m_nan", unsigned.replace(b'"watermark_ms":1700000123463', b'"watermark_ms":NaN')),
        (
            "m_infinity",
            unsigned.replace(b'"watermark_ms":1700000123463', b'"watermark_ms":-Infinity'),
        ),
        ("m_deep", unsigned[:-1] + b',"x":' + b"[" * 16 + b"]" * 16 + b"}"),
        ("m_very_deep", unsigned[:-1] + b',"x":' + b"[" * 100000 + b"]" * 100000 + b"}"),
        ("m_bom", b"\xef\xbb\xbf" + unsigned),
        ("m_invalid_utf8", unsigned[:-1] + b',"x":"\xff"}'),
        (
            "m_int_over_int64",
            unsigned.replace(b'"samples":4915207', b'"samples":9223372036854775808'),
        ),
        ("m_long_number", unsigned.replace(b'"samples":4915207', b'"samples":' + b"1" + b"0" * 64)),
        ("m_control_character", unsigned[:-1] + b',"x":"a\tb"}'),
        ("m_trailing_comma", unsigned[:-1] + b",}"),
    ):
        v.append(
            _man(
                name,
                raw_signed(text) if name != "m_bom" else text,
                "BadManifest",
                hmac=name != "m_bom",
            )
        )
    v.append(_man("m_not_an_object", b"[1]", "BadManifest", hmac=False))
    v.append(_man("m_format_3", signed(doc | {"format": 3}), "UnsupportedVersion"))
    v.append(_man("m_parts", signed(doc | {"parts": []}), "UnsupportedVersion"))
    v.append(_man("m_stored_under_another_sequence", signed(doc), "BadSequence", seq=8))
    for name, change in (
        ("m_parent_wrong", {"parent": 5}),
        ("m_parent_missing", {"parent": None}),
        ("m_delta_base_not_below", {"base_snapshot": 7}),
        ("m_snapshot_base_not_itself", {"kind": "snapshot"}),
        ("m_kind", {"kind": "full"}),
        ("m_sequence_negative", {"sequence": -1}),
        ("m_sequence_too_big", {"sequence": 10**12}),
        ("m_trainer_step_bool", {"trainer_step": True}),
        ("m_samples_float", {"samples": 1.0}),
        ("m_samples_negative", {"samples": -1}),
        ("m_watermark_string", {"watermark_ms": "1"}),
        ("m_partition_superscript", {"kafka_offsets": {"t": {"²": 1}}}),
        ("m_partition_leading_zero", {"kafka_offsets": {"t": {"01": 1}}}),
        ("m_partition_newline", {"kafka_offsets": {"t": {"0\n": 1}}}),
        ("m_format_true", {"format": True}),
        ("m_format_float", {"format": 1.0}),
        ("m_offset_negative", {"kafka_offsets": {"t": {"0": -1}}}),
        ("m_offsets_not_object", {"kafka_offsets": {"t": [1]}}),
        ("m_rollback_of_not_older", {"rollback_of": 7}),
        ("m_objects_not_list", {"objects": {}}),
    ):
        d = doc | change
        if name == "m_parent_missing":
            d = {k: v_ for k, v_ in doc.items() if k != "parent"}
        err = "UnsupportedVersion" if name.startswith("m_format") else "BadManifest"
        v.append(_man(name, signed(d), err))
    snap = _manifest(7, "snapshot", 7, objects)
    v.append(_man("m_snapshot_with_tombstones", signed(snap), "BadManifest"))
    edits: tuple[tuple[str, Callable[[list[dict[str, Any]]], object]], ...] = (
        ("m_key_other_version", lambda o: o[0].update(key=table_key(6, "item_f32"))),
        ("m_key_not_its_name", lambda o: o[0].update(key=table_key(7, "item_f16"))),
        ("m_dense_key", lambda o: o[3].update(key="versions/000000000007/dense2.fxd")),
        ("m_two_dense", lambda o: o.append(dict(o[3]))),
        ("m_table_twice", lambda o: o.append(dict(o[0]))),
        ("m_table_name", lambda o: o[0].update(name="x/y")),
        ("m_sha256_uppercase", lambda o: o[0].update(sha256=o[0]["sha256"].upper())),
        ("m_sha256_newline", lambda o: o[0].update(sha256=o[0]["sha256"][:63] + "\n")),
        ("m_table_name_newline", lambda o: o[0].update(name="item_f32\n")),
        ("m_bytes_negative", lambda o: o[0].update(bytes=-1)),
        ("m_dim_0", lambda o: o[0].update(dim=0)),
        ("m_dim_65537", lambda o: o[0].update(dim=65537)),
        ("m_encoding", lambda o: o[0].update(encoding="bf16")),
        ("m_object_kind", lambda o: o[0].update(kind="blob")),
        ("m_rows_missing", lambda o: o[0].pop("rows")),
    )
    for name, edit in edits:
        objs = [dict(o) for o in objects]
        edit(objs)
        v.append(_man(name, signed(doc | {"objects": objs}), "BadManifest"))
    big = doc | {"x": "a" * (1 << 20)}
    v.append(_man("m_over_1_mib", signed(big), "BadManifest"))
    latest = latest_bytes(7, 5, key)
    v.append(
        (
            "l_unsigned.json",
            latest_bytes(7, 5, None),
            {"kind": "latest", "error": "BadSignature", "hmac": True},
        )
    )
    v.append(
        (
            "l_wrong_hmac.json",
            latest.replace(b'"value":"', b'"value":"0')[:-3] + b'"}}',
            {"kind": "latest", "error": "BadSignature", "hmac": True},
        )
    )
    for name, d, err in (
        ("l_base_after_sequence", {"format": 1, "sequence": 7, "base_snapshot": 8}, "BadManifest"),
        ("l_format_2", {"format": 2, "sequence": 7, "base_snapshot": 5}, "UnsupportedVersion"),
        ("l_sequence_string", {"format": 1, "sequence": "7", "base_snapshot": 5}, "BadManifest"),
        (
            "l_over_4_kib",
            {"format": 1, "sequence": 7, "base_snapshot": 5, "x": "a" * 4096},
            "BadManifest",
        ),
    ):
        v.append(
            (f"{name}.json", sign_manifest(d, key), {"kind": "latest", "error": err, "hmac": True})
        )
    return v


def _negative_parts() -> list[Vector]:
    """Format-2 manifests (version 11 of store_parts/) that break a rule of FORMAT.md 4.5."""
    good = json.loads(_parts_store()[manifest_key(11)])
    doc = {k: v for k, v in good.items() if k != "signature"}
    parts = doc["parts"]
    key = GOLDEN_HMAC_KEY

    def man(name: str, d: dict[str, Any], error: str = "BadManifest") -> Vector:
        return _man(name, sign_manifest(d, key), error, seq=11)

    def edit(name: str, fn: Callable[[list[dict[str, Any]]], object]) -> Vector:
        ps = [{"index": p["index"], "objects": [dict(o) for o in p["objects"]]} for p in parts]
        fn(ps)
        return man(name, doc | {"parts": ps})

    f32_0 = parts[0]["objects"][0]
    v: list[Vector] = [
        man(
            "m2_objects_without_parts",
            {k: x for k, x in doc.items() if k != "parts"} | {"objects": parts[0]["objects"]},
        ),
        man("m2_objects_and_parts", doc | {"objects": []}),
        man("m2_parts_missing", {k: x for k, x in doc.items() if k != "parts"}),
        man("m2_parts_empty", doc | {"parts": []}),
        man("m2_parts_not_list", doc | {"parts": {"0": parts[0]}}),
        man(
            "m2_too_many_parts",
            doc | {"parts": [{"index": k, "objects": []} for k in range(MAX_PARTS + 1)]},
        ),
        man("m2_parts_format_1", doc | {"format": 1}, "UnsupportedVersion"),
        man("m2_part_not_object", doc | {"parts": [[f32_0], parts[1]]}),
        edit("m2_part_index_wrong", lambda ps: ps[0].update(index=1)),
        edit("m2_parts_out_of_order", lambda ps: ps.reverse()),
        edit("m2_part_index_missing", lambda ps: ps[1].pop("index")),
        edit("m2_part_index_string", lambda ps: ps[0].update(index="0")),
        edit("m2_part_index_bool", lambda ps: ps[1].update(index=True)),
        edit("m2_part_objects_missing", lambda ps: ps[1].pop("objects")),
        edit("m2_part_objects_not_list", lambda ps: ps[1].update(objects={})),
        edit(
            "m2_key_without_part",
            lambda ps: ps[0]["objects"][0].update(key=table_key(11, "item_f32")),
        ),
        edit(
            "m2_key_other_part",
            lambda ps: ps[0]["objects"][0].update(key=table_key(11, "item_f32", 1)),
        ),
        edit(
            "m2_key_leading_zero",
            lambda ps: ps[0]["objects"][0].update(
                key="versions/000000000011/part-00/table-item_f32.fxd"
            ),
        ),
        edit("m2_dense_key_without_part", lambda ps: ps[0]["objects"][1].update(key=dense_key(11))),
        edit(
            "m2_table_twice_in_a_part",
            lambda ps: ps[1]["objects"].append(dict(ps[1]["objects"][0])),
        ),
        edit("m2_table_dim_differs", lambda ps: ps[1]["objects"][0].update(dim=8)),
        edit(
            "m2_two_dense",
            lambda ps: ps[1]["objects"].append(ps[0]["objects"][1] | {"key": dense_key(11, 1)}),
        ),
        man("m2_snapshot_with_tombstones", doc | {"kind": "snapshot", "base_snapshot": 11}),
    ]
    return v


def _negative_stores() -> list[Vector]:
    """store_parts/ with one object of version 11's part 1 missing, or corrupt: no reader
    may apply any of version 11 (nor, rebuilding from nothing, the chain up to 12)."""
    store = _parts_store()
    key = table_key(11, "item_f32", 1)
    missing = {k: d for k, d in store.items() if k != key}
    corrupt = dict(store)
    flipped = bytearray(store[key])
    flipped[-1] ^= 1  # in its sha256 trailer
    corrupt[key] = bytes(flipped)
    v: list[Vector] = []
    for name, files, error in (
        ("store_part_missing", missing, "MissingPayload"),
        ("store_part_corrupt", corrupt, "ChecksumMismatch"),
    ):
        for k, data in files.items():
            v.append((f"{name}/{k}", data, {}))
        v.append((name, b"", {"kind": "store", "error": error, "hmac": True}))
    return v


def _negative_entries() -> list[Vector]:
    """An object checked against its manifest entry (FORMAT.md 7: size, sha256, fields)."""
    files, objects = _version7()
    data, entry = files["table_f32.fxd"], objects[0]
    v: list[Vector] = []
    for name, change, error in (
        ("e_bytes_over_limit", {"bytes": (8 << 30) + 1}, "OversizedPayload"),
        ("e_bytes_more", {"bytes": len(data) + 1}, "Truncated"),
        ("e_bytes_fewer", {"bytes": len(data) - 1}, "Truncated"),
        ("e_sha256", {"sha256": "0" * 64}, "ChecksumMismatch"),
        ("e_name", {"name": "item_f16"}, "BadManifest"),
        ("e_dim", {"dim": 5}, "BadManifest"),
        ("e_encoding", {"encoding": "f16"}, "BadManifest"),
        ("e_rows", {"rows": 4}, "BadManifest"),
        ("e_tombstones", {"tombstones": 0}, "BadManifest"),
        ("e_kind", {"kind": "dense"}, "BadManifest"),
    ):
        v.append((f"{name}.fxd", data, {"kind": "entry", "error": error, "entry": entry | change}))
    return v


def negative() -> list[Vector]:
    """Every must-reject vector; a store vector is its files (no spec), then its name
    (the directory) with the spec."""
    return (
        _negative_objects()
        + _negative_manifests()
        + _negative_parts()
        + _negative_entries()
        + _negative_stores()
    )


# ----------------------------------------------------------------------------- checking


def check_negative(data: Any, spec: dict[str, Any]) -> str:
    """The error class name the Python reader raises for one negative vector ("" if none);
    ``data``: its bytes, or for a store vector its directory."""
    key = GOLDEN_HMAC_KEY if spec.get("hmac") else None
    try:
        if spec["kind"] == "object":
            decode_object(data)
        elif spec["kind"] == "manifest":
            parse_manifest(data, key, expected_seq=spec["seq"])
        elif spec["kind"] == "latest":
            parse_latest(data, key)
        elif spec["kind"] == "store":  # data: the store's directory (a Path)
            c = DeltaConsumer(FileStore(data), InMemoryTables(), hmac_key=key)
            c.sync()
            if c.version is not None:
                return ""  # it applied something
            return c.stats.last_error.split(":")[0]
        else:
            check_entry_size(7, spec["entry"], Limits())
            decode_entry(7, spec["entry"], data, Limits())
    except ExporterError as e:
        return type(e).__name__
    return ""


def _chain_state(name: str, latest: int, base: int, applied: int) -> dict[str, Any]:
    store = FileStore(HERE / name)
    backend = InMemoryTables()
    c = DeltaConsumer(store, backend, hmac_key=GOLDEN_HMAC_KEY)
    if c.sync() != applied or c.version != latest:
        raise RuntimeError(f"the golden {name} does not apply: {c.stats}")
    state = c.state
    return {
        "latest": latest,
        "base_snapshot": base,
        "watermark_ms": state.watermark_ms,
        "tables": {
            n: {"dim": t.dim, "ids": t.ids.tolist(), "values_f32le": f32_hex(t.values)}
            for n, t in sorted(state.tables.items())
        },
        "dense": {n: f32_hex(a) for n, a in sorted(state.dense.items())},
    }


def build() -> dict[str, bytes]:
    """Every vector file, by its path relative to this folder (except expected.json)."""
    out = positive()
    for name, data, spec in negative():
        if spec.get("kind") != "store":  # a store vector is a directory of files
            out[f"negative/{name}"] = data
    return out


def expected(files: dict[str, bytes]) -> dict[str, Any]:
    objects = {
        name: decoded_json(decode_object(data))
        for name, data in sorted(files.items())
        if name.endswith(".fxd") and "/" not in name
    }
    neg: dict[str, Any] = {}
    for name, data, spec in negative():
        if not spec:
            continue  # a file of a store vector
        got = check_negative(HERE / "negative" / name if spec["kind"] == "store" else data, spec)
        if got != spec["error"]:
            raise RuntimeError(
                f"negative/{name}: the Python reader says {got!r}, not {spec['error']}"
            )
        neg[name] = spec
    return {
        "hmac_key": GOLDEN_HMAC_KEY.decode(),
        "objects": objects,
        "store": _chain_state("store", 7, 5, 3),
        "store_parts": _chain_state("store_parts", 12, 10, 3),
        "negative": neg,
    }


def main() -> None:
    files = build()
    for name, data in files.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (HERE / "expected.json").write_text(json.dumps(expected(files), indent=1) + "\n")


if __name__ == "__main__":
    main()
