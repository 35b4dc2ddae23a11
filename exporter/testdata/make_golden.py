"""Regenerate the golden vectors of FORMAT.md: ``python exporter/testdata/make_golden.py``.

Writes ``*.fxd`` objects, ``manifest.json`` and ``expected.json`` (the exact decoding:
ids, tombstones and values as JSON numbers; fp32 values are exactly representable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from exporter.format import DecodedTable, decode_object, encode_dense, encode_table
from exporter.manifest import MANIFEST_FORMAT, canonical_json, dense_key, sign_manifest, table_key

__all__ = ["GOLDEN_HMAC_KEY", "inputs", "main"]

HERE = Path(__file__).resolve().parent
GOLDEN_HMAC_KEY = b"golden-key"


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


def build() -> dict[str, bytes]:
    x = inputs()
    out: dict[str, bytes] = {}
    objects = []
    for enc in ("f32", "f16", "i8"):
        data, digest, header = encode_table(
            f"item_{enc}", 4, x["ids"], x["values"], x["tombstones"], enc
        )
        out[f"table_{enc}.fxd"] = data
        objects.append(
            {
                "key": table_key(7, f"item_{enc}"),
                "kind": "table",
                "name": f"item_{enc}",
                "dim": 4,
                "encoding": enc,
                "rows": header["rows"],
                "tombstones": header["tombstones"],
                "bytes": len(data),
                "sha256": digest,
            }
        )
    data, digest, _header = encode_dense(x["dense"])
    out["dense.fxd"] = data
    objects.append({"key": dense_key(7), "kind": "dense", "bytes": len(data), "sha256": digest})
    manifest = {
        "format": MANIFEST_FORMAT,
        "sequence": 7,
        "parent": 6,
        "kind": "delta",
        "base_snapshot": 5,
        "objects": objects,
        "kafka_offsets": {"fluxrec.samples": {"0": 81234, "1": 80977}},
        "watermark_ms": 1700000123456,
        "trainer_step": 1200,
        "samples": 4915200,
        "created_ms": 1700000124000,
        "published_ms": 1700000124210,
        "rollback_of": None,
    }
    out["manifest.json"] = canonical_json(sign_manifest(manifest, GOLDEN_HMAC_KEY))
    return out


def expected(files: dict[str, bytes]) -> dict[str, Any]:
    exp: dict[str, Any] = {}
    for name, data in files.items():
        if not name.endswith(".fxd"):
            continue
        dec = decode_object(data)
        if isinstance(dec, DecodedTable):
            exp[name] = {
                "name": dec.name,
                "dim": dec.dim,
                "encoding": dec.encoding,
                "ids": dec.ids.tolist(),
                "values": dec.values.tolist(),
                "tombstones": dec.tombstones.tolist(),
            }
        else:
            exp[name] = {"dense": {k: v.tolist() for k, v in dec.tensors.items()}}
    return exp


def main() -> None:
    files = build()
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    (HERE / "expected.json").write_text(json.dumps(expected(files), indent=1) + "\n")


if __name__ == "__main__":
    main()
