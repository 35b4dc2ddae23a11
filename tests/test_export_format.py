"""Golden vectors of exporter/FORMAT.md: exact decoding, byte-exact regeneration, the
store chain, every must-reject vector with its error, and the JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exporter.format import DecodedDense, DecodedTable, Limits, decode_object
from exporter.manifest import (
    decode_entry,
    manifest_objects,
    merge_tables,
    parse_latest,
    parse_manifest,
)
from exporter.sdk import DeltaConsumer, InPlaceTables
from exporter.store import FileStore
from exporter.testdata import make_golden

GOLDEN = Path(make_golden.__file__).parent
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())
KEY = make_golden.GOLDEN_HMAC_KEY


@pytest.mark.parametrize("name", sorted(EXPECTED["objects"]))
def test_golden_decodes_exactly(name: str) -> None:
    dec = decode_object((GOLDEN / name).read_bytes())
    exp = EXPECTED["objects"][name]
    assert make_golden.decoded_json(dec) == exp
    if isinstance(dec, DecodedTable):
        assert dec.values.dtype == np.float32
        assert dec.values.tolist() == exp["values"]
    else:
        assert isinstance(dec, DecodedDense)


def test_golden_values_are_the_inputs() -> None:
    x = make_golden.inputs()
    objects = EXPECTED["objects"]
    for enc in ("f32", "f16"):  # the inputs are exact in fp16 too
        assert objects[f"table_{enc}.fxd"]["values"] == x["values"].tolist()
    i8 = np.array(objects["table_i8.fxd"]["values"], np.float32)
    scale = np.abs(x["values"]).max(axis=1, keepdims=True) / 127
    assert (np.abs(i8 - x["values"]) <= scale / 2 + 1e-7).all()


def test_golden_files_regenerate_byte_for_byte() -> None:
    built = make_golden.build()
    on_disk = {
        p.relative_to(GOLDEN).as_posix()
        for p in GOLDEN.rglob("*")
        if p.is_file() and p.suffix in (".fxd", ".json") and p.name != "expected.json"
    }
    assert on_disk == set(built)
    for name, data in built.items():
        assert (GOLDEN / name).read_bytes() == data, name
    assert make_golden.expected(built) == EXPECTED


def test_golden_manifest_parses_and_signature_verifies() -> None:
    raw = (GOLDEN / "manifest.json").read_bytes()
    doc = parse_manifest(raw, KEY, expected_seq=7)
    assert doc["sequence"] == 7 and doc["parent"] == 6 and doc["base_snapshot"] == 5
    assert raw.endswith(b'"}}') and b'"alg":"hmac-sha256-raw"' in raw
    for obj in doc["objects"]:
        data = (GOLDEN / obj["key"].split("/")[-1].replace("table-item_", "table_")).read_bytes()
        assert len(data) == obj["bytes"]
        decode_object(data, obj["sha256"])
    assert parse_latest((GOLDEN / "store" / "LATEST.json").read_bytes(), KEY) == (7, 5)


def test_golden_parts_manifest_names_every_part_and_verifies() -> None:
    raw = (GOLDEN / "manifest_parts.json").read_bytes()
    assert raw == (GOLDEN / "store_parts" / "versions/000000000011/manifest.json").read_bytes()
    doc = parse_manifest(raw, KEY, expected_seq=11)
    assert doc["format"] == 2 and "objects" not in doc
    assert [p["index"] for p in doc["parts"]] == [0, 1]
    objects = manifest_objects(doc)
    assert [o["key"] for o in objects] == [
        "versions/000000000011/part-0/table-item_f32.fxd",
        "versions/000000000011/part-0/dense.fxd",
        "versions/000000000011/part-1/table-item_f32.fxd",
        "versions/000000000011/part-1/table-item_i8.fxd",
    ]
    decoded = []
    for obj in objects:
        data = (GOLDEN / "store_parts" / obj["key"]).read_bytes()
        decoded.append(decode_entry(11, obj, data, Limits()))
    tables = merge_tables([d for d in decoded if isinstance(d, DecodedTable)])
    f32 = next(t for t in tables if t.name == "item_f32")  # the two parts of item_f32, joined
    assert f32.ids.tolist() == [1, 2, 9] and f32.tombstones.tolist() == [3, 6]


def test_the_golden_frames_are_what_they_claim() -> None:
    import lz4.frame

    def frame_info(name: str) -> dict[str, object]:
        data = (GOLDEN / name).read_bytes()
        hlen = int.from_bytes(data[12:16], "little")
        return dict(lz4.frame.get_frame_info(data[16 + hlen : -40]))

    multi = frame_info("table_multiblock.fxd")
    assert multi["block_linked"] and multi["block_checksum"] and multi["content_checksum"]
    assert int(multi["content_size"]) > 4 * int(multi["block_size"])  # several blocks
    data = (GOLDEN / "table_stored.fxd").read_bytes()
    hlen = int.from_bytes(data[12:16], "little")
    first_block = int.from_bytes(data[16 + hlen + 15 : 16 + hlen + 19], "little")
    assert first_block & 0x80000000  # stored


@pytest.mark.parametrize("store", ["store", "store_parts"])
@pytest.mark.parametrize("backend", ["memory", "inplace"])
def test_golden_store_chain_gives_the_expected_state(backend: str, store: str) -> None:
    be = InPlaceTables() if backend == "inplace" else None
    c = DeltaConsumer(FileStore(GOLDEN / store), be, hmac_key=KEY)
    assert c.sync() == 3 and c.version == EXPECTED[store]["latest"]
    assert set(EXPECTED[store]["tables"]) == (
        set(be._tables) if isinstance(be, InPlaceTables) else set(c.state.tables)
    )
    for name, want in EXPECTED[store]["tables"].items():
        if isinstance(be, InPlaceTables):
            ids, vals = be.rows(name)
        else:
            t = c.state.tables[name]
            ids, vals = t.ids, t.values
        assert ids.tolist() == want["ids"]
        assert vals.astype("<f4").tobytes().hex() == want["values_f32le"]


@pytest.mark.parametrize("name", sorted(EXPECTED["negative"]))
def test_negative_vector_gets_its_error(name: str) -> None:
    spec = EXPECTED["negative"][name]
    path = GOLDEN / "negative" / name
    data = path if spec["kind"] == "store" else path.read_bytes()
    assert make_golden.check_negative(data, spec) == spec["error"]


def test_negative_vectors_cover_every_error_class() -> None:
    errors = {v["error"] for v in EXPECTED["negative"].values()}
    assert errors == {
        "BadMagic",
        "UnsupportedVersion",
        "OversizedHeader",
        "OversizedPayload",
        "Truncated",
        "ChecksumMismatch",
        "BadHeader",
        "BadBody",
        "BadManifest",
        "BadSignature",
        "BadSequence",
        "MissingPayload",
    }


def test_manifest_schema_agrees_with_the_reader() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((GOLDEN.parent / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    stores = sorted((GOLDEN / "store").rglob("manifest.json"))
    stores += sorted((GOLDEN / "store_parts").rglob("manifest.json"))
    assert len(stores) == 6
    for path in [GOLDEN / "manifest.json", GOLDEN / "manifest_parts.json", *stores]:
        jsonschema.validate(json.loads(path.read_text()), schema)
    # the must-reject manifests that JSON Schema can express are rejected by it too
    schema_says_no = 0
    for name, spec in EXPECTED["negative"].items():
        if spec["kind"] != "manifest" or spec["error"] not in ("BadManifest",):
            continue
        try:
            doc = json.loads((GOLDEN / "negative" / name).read_bytes())
        except (ValueError, RecursionError):
            continue
        if not jsonschema.Draft202012Validator(schema).is_valid(doc):
            schema_says_no += 1
    assert schema_says_no >= 20
    doc = json.loads((GOLDEN / "manifest.json").read_text())
    doc["objects"][0]["sha256"] = "XYZ"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)
