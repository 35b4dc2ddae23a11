"""Golden vectors of exporter/FORMAT.md: exact decoding, byte-exact re-encoding, schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporter.format import DecodedDense, DecodedTable, decode_object
from exporter.manifest import parse_manifest
from exporter.testdata import make_golden

GOLDEN = Path(make_golden.__file__).parent
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_decodes_exactly(name: str) -> None:
    dec = decode_object((GOLDEN / name).read_bytes())
    exp = EXPECTED[name]
    if isinstance(dec, DecodedTable):
        assert (dec.name, dec.dim, dec.encoding) == (exp["name"], exp["dim"], exp["encoding"])
        assert dec.ids.tolist() == exp["ids"]
        assert dec.tombstones.tolist() == exp["tombstones"]
        assert dec.values.dtype == np.float32
        assert dec.values.tolist() == exp["values"]
    else:
        assert isinstance(dec, DecodedDense)
        assert {k: v.tolist() for k, v in dec.tensors.items()} == exp["dense"]


def test_golden_values_are_the_inputs() -> None:
    x = make_golden.inputs()
    for enc in ("f32", "f16"):  # the inputs are exact in fp16 too
        assert EXPECTED[f"table_{enc}.fxd"]["values"] == x["values"].tolist()
    i8 = np.array(EXPECTED["table_i8.fxd"]["values"], np.float32)
    scale = np.abs(x["values"]).max(axis=1, keepdims=True) / 127
    assert (np.abs(i8 - x["values"]) <= scale / 2 + 1e-7).all()


def test_golden_reencodes_byte_for_byte() -> None:
    for name, data in make_golden.build().items():
        assert (GOLDEN / name).read_bytes() == data, name


def test_golden_manifest_parses_and_signature_verifies() -> None:
    raw = (GOLDEN / "manifest.json").read_bytes()
    doc = parse_manifest(raw, make_golden.GOLDEN_HMAC_KEY, expected_seq=7)
    assert doc["sequence"] == 7 and doc["parent"] == 6 and doc["base_snapshot"] == 5
    for obj in doc["objects"]:
        data = (GOLDEN / obj["key"].split("/")[-1].replace("table-item_", "table_")).read_bytes()
        assert len(data) == obj["bytes"]
        decode_object(data, obj["sha256"])


def test_manifest_schema_matches_writer() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((GOLDEN.parent / "manifest.schema.json").read_text())
    doc = json.loads((GOLDEN / "manifest.json").read_text())
    jsonschema.validate(doc, schema)
    doc["objects"][0]["sha256"] = "XYZ"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)
