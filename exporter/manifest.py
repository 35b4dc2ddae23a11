"""The per-version manifest (JSON), object keys, the LATEST pointer and HMAC signatures.

Object keys under the store's URL (``SEQ`` = sequence, 12 digits, zero-padded)::

    versions/000000000042/manifest.json        written LAST for its version
    versions/000000000042/table-item_id.fxd    one object per table
    versions/000000000042/dense.fxd            all dense tensors (absent if none)
    LATEST.json                                {"format":1,"sequence":42,"base_snapshot":40}

A manifest, worked example (``exporter/manifest.schema.json`` is the JSON Schema)::

    {"format": 1, "sequence": 42, "parent": 41, "kind": "delta", "base_snapshot": 40,
     "objects": [{"key": "versions/000000000042/table-item_id.fxd", "kind": "table",
                  "name": "item_id", "dim": 16, "encoding": "f32", "rows": 3,
                  "tombstones": 2, "bytes": 777, "sha256": "9f2c..."}],
     "kafka_offsets": {"fluxrec.samples": {"0": 81234, "1": 80977}},
     "watermark_ms": 1700000123456, "trainer_step": 1200, "samples": 4915200,
     "created_ms": 1700000124000, "published_ms": 1700000124210, "rollback_of": null}

``signature`` (optional): ``{"alg": "hmac-sha256", "value": HEX}`` over the canonical
JSON (sorted keys, ``(",", ":")`` separators, ASCII) of the manifest without ``signature``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from exporter.errors import (
    BadHeader,
    BadManifest,
    BadSequence,
    BadSignature,
    UnsupportedVersion,
)
from exporter.format import ENCODINGS, check_name

__all__ = [
    "LATEST_KEY",
    "MANIFEST_FORMAT",
    "MAX_MANIFEST_BYTES",
    "canonical_json",
    "dense_key",
    "manifest_key",
    "parse_latest",
    "parse_manifest",
    "sign_manifest",
    "table_key",
    "version_prefix",
]

MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20
LATEST_KEY = "LATEST.json"
_MAX_SEQ = 10**12 - 1


def version_prefix(seq: int) -> str:
    return f"versions/{seq:012d}/"


def manifest_key(seq: int) -> str:
    return version_prefix(seq) + "manifest.json"


def table_key(seq: int, name: str) -> str:
    return version_prefix(seq) + f"table-{check_name(name)}.fxd"


def dense_key(seq: int) -> str:
    return version_prefix(seq) + "dense.fxd"


def canonical_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(doc: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in doc.items() if k != "signature"}
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


def sign_manifest(doc: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``doc`` with an HMAC-SHA256 ``signature`` added."""
    return {**doc, "signature": {"alg": "hmac-sha256", "value": _mac(doc, key)}}


def _need(doc: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    v = doc.get(key)
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise BadManifest(f"{where}: field {key!r} = {v!r} is not {typ}")
    return v


def _seq(doc: dict[str, Any], key: str, where: str, nullable: bool = False) -> int | None:
    v = doc.get(key)
    if v is None and nullable:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _MAX_SEQ:
        raise BadManifest(f"{where}: {key!r} = {v!r} is not a sequence number")
    return v


def parse_manifest(  # noqa: PLR0912, PLR0915
    data: bytes, hmac_key: bytes | None = None, expected_seq: int | None = None
) -> dict[str, Any]:
    """Validate a manifest (FORMAT.md rules, no jsonschema needed) and its signature."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BadManifest(f"manifest of {len(data)} bytes > {MAX_MANIFEST_BYTES}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadManifest(f"manifest is not UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict):
        raise BadManifest("manifest must be a JSON object")
    if doc.get("format") != MANIFEST_FORMAT:
        raise UnsupportedVersion(f"manifest format {doc.get('format')!r}; this reader supports 1")
    seq = _seq(doc, "sequence", "manifest")
    where = f"manifest {seq}"
    if expected_seq is not None and seq != expected_seq:
        raise BadSequence(f"{where}: stored under sequence {expected_seq}")
    parent = _seq(doc, "parent", where, nullable=True)
    base = _seq(doc, "base_snapshot", where)
    kind = doc.get("kind")
    if kind == "snapshot":
        if base != seq:
            raise BadManifest(f"{where}: a snapshot's base_snapshot must be itself")
    elif kind == "delta":
        if parent is None or parent != seq - 1 or base is None or base >= seq:  # type: ignore[operator]
            raise BadManifest(f"{where}: a delta needs parent = sequence-1 and base < sequence")
    else:
        raise BadManifest(f"{where}: kind {kind!r} is not 'delta' or 'snapshot'")
    for key in ("watermark_ms", "trainer_step", "samples", "created_ms", "published_ms"):
        _need(doc, key, int, where)
    offsets = _need(doc, "kafka_offsets", dict, where)
    for topic, parts in offsets.items():
        if not isinstance(parts, dict) or not all(
            isinstance(v, int) and k.isdigit() for k, v in parts.items()
        ):
            raise BadManifest(f"{where}: kafka_offsets[{topic!r}] must map partition -> offset")
    names: set[str] = set()
    dense = 0
    for obj in _need(doc, "objects", list, where):
        if not isinstance(obj, dict):
            raise BadManifest(f"{where}: objects[] entries must be objects")
        okey = _need(obj, "key", str, where)
        if not okey.startswith(version_prefix(seq)):  # type: ignore[arg-type]
            raise BadManifest(f"{where}: object key {okey!r} outside its version prefix")
        _need(obj, "bytes", int, where)
        sha = _need(obj, "sha256", str, where)
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise BadManifest(f"{where}: sha256 {sha!r} is not 64 lowercase hex digits")
        okind = obj.get("kind")
        if okind == "table":
            name = _need(obj, "name", str, where)
            try:
                check_name(name)
            except BadHeader as e:
                raise BadManifest(f"{where}: {e}") from None
            if name in names:
                raise BadManifest(f"{where}: table {name!r} listed twice")
            names.add(name)
            if obj.get("encoding") not in ENCODINGS:
                raise BadManifest(f"{where}: encoding {obj.get('encoding')!r}")
            for k in ("dim", "rows", "tombstones"):
                _need(obj, k, int, where)
            if kind == "snapshot" and obj["tombstones"]:
                raise BadManifest(f"{where}: a snapshot MUST NOT carry tombstones")
        elif okind == "dense":
            dense += 1
            if dense > 1:
                raise BadManifest(f"{where}: more than one dense object")
        else:
            raise BadManifest(f"{where}: object kind {okind!r}")
    _seq(doc, "rollback_of", where, nullable=True)
    sig = doc.get("signature")
    if hmac_key is not None:
        if not isinstance(sig, dict) or sig.get("alg") != "hmac-sha256":
            raise BadSignature(f"{where}: unsigned, but a signing key is configured")
        if not hmac.compare_digest(str(sig.get("value", "")), _mac(doc, hmac_key)):
            raise BadSignature(f"{where}: HMAC-SHA256 signature does not verify")
    return doc


def parse_latest(data: bytes) -> tuple[int, int]:
    """``(sequence, base_snapshot)`` from ``LATEST.json``."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadManifest(f"LATEST.json is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise BadManifest("LATEST.json: expected {'format': 1, 'sequence': N, ...}")
    seq = _seq(doc, "sequence", "LATEST.json")
    base = _seq(doc, "base_snapshot", "LATEST.json")
    return int(seq or 0), int(base or 0)
