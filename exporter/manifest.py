"""The per-version manifest (JSON), object keys, the LATEST pointer and HMAC signatures.

Object keys under the store's URL (``SEQ`` = sequence, 12 digits, zero-padded)::

    versions/000000000042/manifest.json        written LAST for its version
    versions/000000000042/table-item_id.fxd    one object per table
    versions/000000000042/dense.fxd            all dense tensors (absent if none)
    LATEST.json                                {"format":1,"sequence":42,"base_snapshot":40}

A version written by several trainer workers (manifest format 2) has a part per worker,
each object under its part (``part-P``, P = the part's index)::

    versions/000000000042/part-0/table-item_id.fxd   the rows worker 0 owns
    versions/000000000042/part-0/dense.fxd           the dense tensors (one part holds them)
    versions/000000000042/part-1/table-item_id.fxd   the rows worker 1 owns
    versions/000000000042/manifest.json              {"format": 2, ..., "parts": [
                                                        {"index": 0, "objects": [...]},
                                                        {"index": 1, "objects": [...]}]}

A manifest, worked example (``exporter/manifest.schema.json`` is the JSON Schema)::

    {"format": 1, "sequence": 42, "parent": 41, "kind": "delta", "base_snapshot": 40,
     "objects": [{"key": "versions/000000000042/table-item_id.fxd", "kind": "table",
                  "name": "item_id", "dim": 16, "encoding": "f32", "rows": 3,
                  "tombstones": 2, "bytes": 777, "sha256": "9f2c..."}],
     "kafka_offsets": {"fluxrec.samples": {"0": 81234, "1": 80977}},
     "watermark_ms": 1700000123456, "trainer_step": 1200, "samples": 4915200,
     "created_ms": 1700000124000, "published_ms": 1700000124210, "rollback_of": null}

A format-2 manifest has ``parts`` instead of ``objects``; every other field is as in
format 1. :func:`manifest_objects` lists the objects of either format, and
:func:`merge_tables` joins a table's parts into one decoded table (FORMAT.md 4.5).

``signature`` (optional) signs the exact bytes, not a re-serialisation: a signed document
is the unsigned bytes ``U`` (a JSON object ending in ``}``) with its last byte replaced by
``,"signature":{"alg":"hmac-sha256-raw","value":"HEX"}}``, where HEX is the lowercase
HMAC-SHA256 of ``U`` under the shared key. A reader recovers ``U`` from the fixed-length
suffix, so any language verifies it with byte operations only (FORMAT.md 4.3). Manifests
and ``LATEST.json`` are signed alike.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import numpy as np

from exporter import _json
from exporter.errors import (
    BadHeader,
    BadManifest,
    BadSequence,
    BadSignature,
    OversizedPayload,
    Truncated,
    UnsupportedVersion,
)
from exporter.format import (
    ENCODINGS,
    DecodedDense,
    DecodedTable,
    Limits,
    check_name,
    decode_object,
)

__all__ = [
    "LATEST_KEY",
    "MANIFEST_FORMAT",
    "MAX_LATEST_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_PARTS",
    "PARTS_FORMAT",
    "SIGNATURE_ALG",
    "canonical_json",
    "check_entry_size",
    "decode_entry",
    "dense_key",
    "latest_bytes",
    "manifest_key",
    "manifest_objects",
    "merge_tables",
    "parse_latest",
    "parse_manifest",
    "sign_bytes",
    "sign_manifest",
    "table_key",
    "version_prefix",
]

MANIFEST_FORMAT = 1  # one part: what one trainer worker writes (and LATEST.json's format)
PARTS_FORMAT = 2  # a version of several parts (FORMAT.md 4.5)
MAX_PARTS = 4096
MAX_MANIFEST_BYTES = 1 << 20
MAX_LATEST_BYTES = 4096
SIGNATURE_ALG = "hmac-sha256-raw"
LATEST_KEY = "LATEST.json"
_MAX_SEQ = 10**12 - 1
MAX_DIM = Limits().max_dim


def version_prefix(seq: int) -> str:
    return f"versions/{seq:012d}/"


def manifest_key(seq: int) -> str:
    return version_prefix(seq) + "manifest.json"


def _part_prefix(seq: int, part: int | None) -> str:
    return version_prefix(seq) + ("" if part is None else f"part-{part}/")


def table_key(seq: int, name: str, part: int | None = None) -> str:
    """The key of table ``name`` in version ``seq`` (format 2: in part ``part``)."""
    return _part_prefix(seq, part) + f"table-{check_name(name)}.fxd"


def dense_key(seq: int, part: int | None = None) -> str:
    return _part_prefix(seq, part) + "dense.fxd"


def canonical_json(doc: dict[str, Any]) -> bytes:
    """How writers serialise: sorted keys, no whitespace, ASCII (readers accept any JSON)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


_SIG_HEAD = b',"signature":{"alg":"' + SIGNATURE_ALG.encode() + b'","value":"'
_SIG_LEN = len(_SIG_HEAD) + 64 + 3  # HEX, then '"}}'
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_PARTITION = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_MAX_I64 = (1 << 63) - 1


def _mac(unsigned: bytes, key: bytes) -> str:
    return hmac.new(key, unsigned, hashlib.sha256).hexdigest()


def sign_bytes(unsigned: bytes, key: bytes) -> bytes:
    """The signed form of the JSON object ``unsigned`` (module docstring)."""
    if not unsigned.endswith(b"}") or unsigned.rstrip(b"}").rstrip() in (b"{", b""):
        raise BadManifest("only a non-empty JSON object ending in '}' can be signed")
    return unsigned[:-1] + _SIG_HEAD + _mac(unsigned, key).encode() + b'"}}'


def sign_manifest(doc: dict[str, Any], key: bytes | None) -> bytes:
    """``doc`` (no ``signature``) as the bytes a writer stores: canonical JSON, signed
    when ``key`` is given."""
    raw = canonical_json({k: v for k, v in doc.items() if k != "signature"})
    return sign_bytes(raw, key) if key else raw


def _verify(data: bytes, key: bytes, what: str) -> None:
    """Check the signature suffix of ``data`` (BadSignature)."""
    tail = data[-_SIG_LEN:]
    if len(data) <= _SIG_LEN or not tail.startswith(_SIG_HEAD) or not tail.endswith(b'"}}'):
        raise BadSignature(
            f"{what}: not signed with {SIGNATURE_ALG} as its last member, but a key is configured"
        )
    value = tail[len(_SIG_HEAD) : -3]
    unsigned = data[:-_SIG_LEN] + b"}"
    if not hmac.compare_digest(value, _mac(unsigned, key).encode()):
        raise BadSignature(f"{what}: HMAC-SHA256 signature does not verify")


def _check_signature_field(doc: dict[str, Any], where: str) -> None:
    sig = doc.get("signature")
    if "signature" not in doc:
        return
    if (
        not isinstance(sig, dict)
        or set(sig) != {"alg", "value"}
        or sig["alg"] != SIGNATURE_ALG
        or not isinstance(sig["value"], str)
        or not _HEX64.fullmatch(sig["value"])
    ):
        raise BadSignature(
            f"{where}: signature must be {{'alg': {SIGNATURE_ALG!r}, 'value': 64 hex digits}}"
        )


def _load(
    data: bytes, limit: int, what: str, hmac_key: bytes | None, formats: tuple[int, ...]
) -> dict[str, Any]:
    if len(data) > limit:
        raise BadManifest(f"{what} of {len(data)} bytes > {limit}")
    if hmac_key is not None:
        _verify(bytes(data), hmac_key, what)
    doc = _json.loads(data, BadManifest, what)
    if not isinstance(doc, dict):
        raise BadManifest(f"{what} must be a JSON object")
    fmt = doc.get("format")
    if type(fmt) is not int or fmt not in formats:  # not True, not 1.0
        raise UnsupportedVersion(
            f"{what}: format {fmt!r}; this reader supports {' and '.join(map(str, formats))}"
        )
    _check_signature_field(doc, what)
    return doc


def _need(doc: dict[str, Any], key: str, typ: type, where: str, lo: int | None = None) -> Any:
    v: Any = doc.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise BadManifest(f"{where}: field {key!r} = {v!r} is not {typ.__name__}")
    if lo is not None and isinstance(v, int) and v < lo:
        raise BadManifest(f"{where}: field {key!r} = {v!r} is below {lo}")
    return v


def _seq(doc: dict[str, Any], key: str, where: str, nullable: bool = False) -> int | None:
    v = doc.get(key)
    if v is None and nullable and key in doc:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_SEQ:
        raise BadManifest(f"{where}: {key!r} = {v!r} is not a sequence number")
    return v


def parse_manifest(  # noqa: PLR0912
    data: bytes, hmac_key: bytes | None = None, expected_seq: int | None = None
) -> dict[str, Any]:
    """Validate a manifest (FORMAT.md section 4, no jsonschema needed) and its signature.

    ``expected_seq`` is the sequence of the key it was read from: a manifest MUST sit at
    ``manifest_key(sequence)`` (else ``BadSequence``)."""
    doc = _load(data, MAX_MANIFEST_BYTES, "manifest", hmac_key, (MANIFEST_FORMAT, PARTS_FORMAT))
    seq = int(_seq(doc, "sequence", "manifest") or 0)
    where = f"manifest {seq}"
    if expected_seq is not None and seq != expected_seq:
        raise BadSequence(f"{where}: stored under sequence {expected_seq}")
    multi = doc["format"] == PARTS_FORMAT
    if not multi and "parts" in doc:
        raise UnsupportedVersion(f"{where}: 'parts' needs manifest format 2")
    if multi and "objects" in doc:
        raise BadManifest(f"{where}: a format-2 manifest lists its objects in 'parts' only")
    parent = _seq(doc, "parent", where, nullable=True)
    if parent != (seq - 1 if seq > 0 else None):
        raise BadManifest(f"{where}: parent {parent!r} must be {seq - 1 if seq else None}")
    base = int(_seq(doc, "base_snapshot", where) or 0)
    kind = doc.get("kind")
    if kind == "snapshot":
        if base != seq:
            raise BadManifest(f"{where}: a snapshot's base_snapshot must be itself")
    elif kind == "delta":
        if base >= seq:
            raise BadManifest(f"{where}: a delta needs base_snapshot < sequence")
    else:
        raise BadManifest(f"{where}: kind {kind!r} is not 'delta' or 'snapshot'")
    for key in ("watermark_ms", "created_ms", "published_ms"):
        _need(doc, key, int, where)
    for key in ("trainer_step", "samples"):
        _need(doc, key, int, where, 0)
    offsets = _need(doc, "kafka_offsets", dict, where)
    for topic, parts in offsets.items():
        if not isinstance(parts, dict) or not all(
            _PARTITION.fullmatch(k) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in parts.items()
        ):
            raise BadManifest(
                f"{where}: kafka_offsets[{topic!r}] must map partition (decimal) -> offset >= 0"
            )
    if multi:
        _check_parts(doc, seq, kind == "snapshot", where)
    else:
        _Objects(seq, kind == "snapshot").check(doc.get("objects"), where)
    rollback_of = _seq(doc, "rollback_of", where, nullable=True) if "rollback_of" in doc else None
    if rollback_of is not None and rollback_of >= seq:
        raise BadManifest(f"{where}: rollback_of {rollback_of} must be an older version")
    return doc


def _check_parts(doc: dict[str, Any], seq: int, snapshot: bool, where: str) -> None:
    """Format 2: ``parts`` is a list of 1..MAX_PARTS parts, part k = ``{"index": k,
    "objects": [...]}``."""
    parts = _need(doc, "parts", list, where)
    if not 1 <= len(parts) <= MAX_PARTS:
        raise BadManifest(f"{where}: {len(parts)} parts; need 1..{MAX_PARTS}")
    rules = _Objects(seq, snapshot)
    for k, part in enumerate(parts):
        if not isinstance(part, dict):
            raise BadManifest(f"{where}: parts[{k}] is not an object")
        index = _need(part, "index", int, where)
        if index != k:
            raise BadManifest(f"{where}: parts[{k}] has index {index}; parts are listed in order")
        rules.check(part.get("objects"), f"{where} part {k}", k)


class _Objects:
    """The rules on the object entries of one version, checked list by list (format 1:
    one list; format 2: one per part): table names unique within a list, one ``dim`` per
    table name in the whole version, at most one dense object in the whole version."""

    def __init__(self, seq: int, snapshot: bool) -> None:
        self.seq, self.snapshot = seq, snapshot
        self.dense = 0
        self.dims: dict[str, int] = {}

    def check(self, objects: Any, where: str, part: int | None = None) -> None:  # noqa: PLR0912
        if not isinstance(objects, list):
            raise BadManifest(f"{where}: field 'objects' = {objects!r} is not list")
        names: set[str] = set()
        for obj in objects:
            if not isinstance(obj, dict):
                raise BadManifest(f"{where}: objects[] entries must be objects")
            okey = _need(obj, "key", str, where)
            _need(obj, "bytes", int, where, 0)
            sha = _need(obj, "sha256", str, where)
            if not _HEX64.fullmatch(sha):
                raise BadManifest(f"{where}: sha256 {sha!r} is not 64 lowercase hex digits")
            okind = obj.get("kind")
            if okind == "table":
                name = _need(obj, "name", str, where)
                try:
                    want = table_key(self.seq, name, part)
                except BadHeader as e:
                    raise BadManifest(f"{where}: {e}") from None
                if name in names:
                    raise BadManifest(f"{where}: table {name!r} listed twice")
                names.add(name)
                if obj.get("encoding") not in ENCODINGS:
                    raise BadManifest(f"{where}: encoding {obj.get('encoding')!r}")
                dim = _need(obj, "dim", int, where, 1)
                if dim > MAX_DIM:
                    raise BadManifest(f"{where}: dim {dim} > {MAX_DIM}")
                if self.dims.setdefault(name, dim) != dim:
                    raise BadManifest(
                        f"{where}: table {name!r} has dim {dim}, {self.dims[name]} in another part"
                    )
                _need(obj, "rows", int, where, 0)
                if _need(obj, "tombstones", int, where, 0) and self.snapshot:
                    raise BadManifest(f"{where}: a snapshot MUST NOT carry tombstones")
            elif okind == "dense":
                self.dense += 1
                if self.dense > 1:
                    raise BadManifest(f"{where}: more than one dense object in the version")
                want = dense_key(self.seq, part)
            else:
                raise BadManifest(f"{where}: object kind {okind!r}")
            if okey != want:
                raise BadManifest(f"{where}: object key {okey!r} must be {want!r}")


def manifest_objects(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The object entries of a parsed manifest: format 1's ``objects``, or format 2's
    parts' objects in part order."""
    if doc["format"] == PARTS_FORMAT:
        return [obj for part in doc["parts"] for obj in part["objects"]]
    return list(doc["objects"])


def merge_tables(tables: list[DecodedTable]) -> list[DecodedTable]:
    """One decoded table per name: the objects of a table from several parts joined in
    part order (their upserts, then their tombstones: FORMAT.md 4.5), in the order of
    each name's first object. A table in one object is returned as it is (no copy)."""
    by_name: dict[str, list[DecodedTable]] = {}
    for t in tables:
        by_name.setdefault(t.name, []).append(t)
    out = []
    for name, ts in by_name.items():
        if len(ts) == 1:
            out.append(ts[0])
            continue
        out.append(
            DecodedTable(
                name,
                ts[0].dim,
                ts[0].encoding,
                np.concatenate([t.ids for t in ts]),
                np.concatenate([t.values for t in ts]),
                np.concatenate([t.tombstones for t in ts]),
            )
        )
    return out


def parse_latest(data: bytes, hmac_key: bytes | None = None) -> tuple[int, int]:
    """``(sequence, base_snapshot)`` from ``LATEST.json`` (signed when a key is given)."""
    doc = _load(data, MAX_LATEST_BYTES, "LATEST.json", hmac_key, (MANIFEST_FORMAT,))
    seq = int(_seq(doc, "sequence", "LATEST.json") or 0)
    base = int(_seq(doc, "base_snapshot", "LATEST.json") or 0)
    if base > seq:
        raise BadManifest(f"LATEST.json: base_snapshot {base} > sequence {seq}")
    return seq, base


def latest_bytes(seq: int, base: int, key: bytes | None) -> bytes:
    """``LATEST.json`` as a writer stores it (signed when ``key`` is given)."""
    return sign_manifest({"format": MANIFEST_FORMAT, "sequence": seq, "base_snapshot": base}, key)


def check_entry_size(seq: int, obj: dict[str, Any], limits: Limits) -> None:
    """Before fetching: the entry's ``bytes`` within the reader's limit (OversizedPayload)."""
    if obj["bytes"] > limits.max_object_bytes:
        raise OversizedPayload(
            f"version {seq}: {obj['key']} has {obj['bytes']} bytes > limit "
            f"{limits.max_object_bytes} (DeltaConsumer(limits=...))"
        )


def decode_entry(
    seq: int, obj: dict[str, Any], data: bytes, limits: Limits
) -> DecodedTable | DecodedDense:
    """Verify the object ``data`` fetched for the manifest entry ``obj`` (FORMAT.md 7):
    its size (``Truncated``), sha256 (``ChecksumMismatch``), the object itself, and that
    it is what the entry says (``BadManifest``)."""
    check_entry_size(seq, obj, limits)
    if len(data) != obj["bytes"]:
        raise Truncated(
            f"version {seq}: {obj['key']} has {len(data)} bytes, manifest says {obj['bytes']}"
        )
    dec = decode_object(data, obj["sha256"], limits)
    if isinstance(dec, DecodedTable):
        got = {"kind": "table", "name": dec.name, "dim": dec.dim, "encoding": dec.encoding}
        got |= {"rows": len(dec.ids), "tombstones": len(dec.tombstones)}
    else:
        got = {"kind": "dense"}
    want = {k: obj.get(k) for k in got}
    if got != want:
        raise BadManifest(f"version {seq}: {obj['key']} holds {got}, its manifest says {want}")
    return dec
