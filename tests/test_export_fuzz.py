"""Fuzzing the reader: every truncation and every single-bit flip of the golden objects is
rejected with the error its byte region calls for; random edits (even re-sealed with a
valid sha256) raise nothing but ``FormatError``; and a consumer that meets any of them
keeps serving its last good version, then applies the version once it is repaired."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.errors import (
    BadMagic,
    BadSignature,
    ChainError,
    ChecksumMismatch,
    FormatError,
    OversizedHeader,
    Truncated,
    UnsupportedVersion,
)
from exporter.exporter import Exporter
from exporter.format import (
    MAX_HEADER_BYTES,
    DecodedDense,
    DecodedTable,
    decode_object,
    encode_dense,
    encode_table,
)
from exporter.manifest import dense_key, manifest_key, parse_manifest, table_key
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import open_store
from exporter.testdata import make_golden
from tests.test_export_chain import Trainer

GOLDEN = Path(make_golden.__file__).parent
SMALL = ("table_f32.fxd", "table_f16.fxd", "table_i8.fxd", "dense.fxd")
OBJECTS = {name: (GOLDEN / name).read_bytes() for name in SMALL}
KEY = b"fuzz-key"


def expected_error(data: bytes, bit: int) -> type[FormatError]:
    """The error a reader must raise for ``data`` with bit ``bit`` flipped (FORMAT.md §4)."""
    at, n = bit // 8, len(data)
    if at < 8:
        return BadMagic
    if at < 12:
        return UnsupportedVersion  # version or flags
    if at < 16:
        flipped = bytearray(data)
        flipped[at] ^= 1 << (bit % 8)
        hlen = int.from_bytes(flipped[12:16], "little")
        return OversizedHeader if not 2 <= hlen <= MAX_HEADER_BYTES else Truncated
    if n - 40 <= at < n - 32:
        return Truncated  # the body length no longer matches the object's size
    return ChecksumMismatch  # header, body or the digest itself


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_bit_flip_of_a_golden_object_has_its_own_error(name: str) -> None:
    data = OBJECTS[name]
    seen: dict[str, int] = {}
    for bit in range(len(data) * 8):
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        want = expected_error(data, bit)
        with pytest.raises(FormatError) as exc:
            decode_object(bytes(b))
        assert type(exc.value) is want, (bit, exc.value)
        seen[want.__name__] = seen.get(want.__name__, 0) + 1
    assert set(seen) == {"BadMagic", "UnsupportedVersion", "OversizedHeader", "Truncated"} | {
        "ChecksumMismatch"
    }


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_every_truncation_and_extension_is_truncated(name: str) -> None:
    data = OBJECTS[name]
    for n in range(len(data)):
        with pytest.raises(Truncated):
            decode_object(data[:n])
    for extra in (b"\0", b"\0" * 40, data[-40:]):
        with pytest.raises(Truncated):
            decode_object(data + extra)


def test_every_bit_flip_of_the_signed_golden_manifest_is_rejected() -> None:
    """With the key, any changed byte breaks the signature over the raw bytes; without
    it, each flip still fails the strict JSON or a manifest rule (or leaves a valid doc)."""
    raw = (GOLDEN / "manifest.json").read_bytes()
    parse_manifest(raw, make_golden.GOLDEN_HMAC_KEY, expected_seq=7)
    unkeyed: set[str] = set()
    for bit in range(len(raw) * 8):
        b = bytearray(raw)
        b[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BadSignature):
            parse_manifest(bytes(b), make_golden.GOLDEN_HMAC_KEY, expected_seq=7)
        try:
            parse_manifest(bytes(b), None, expected_seq=7)
        except (FormatError, ChainError) as e:
            unkeyed.add(type(e).__name__)
    assert {"BadManifest", "BadSignature", "BadSequence"} <= unkeyed


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


OBJECT_BODIES = [
    *(d[:-32] for d in OBJECTS.values()),
    encode_table("t", 3, np.arange(20), np.ones((20, 3), np.float32), np.arange(50, 53))[0][:-32],
    encode_dense({"a": np.ones((2, 2), np.float32), "b": np.zeros(3, np.float32)})[0][:-32],
]


@settings(max_examples=400, deadline=None)
@given(
    which=st.integers(0, len(OBJECT_BODIES) - 1),
    edits=st.lists(st.tuples(st.integers(16, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_resealed_edits_raise_only_format_errors(which: int, edits: list[tuple[int, int]]) -> None:
    """With a valid sha256 the LZ4, Arrow and header checks must still catch every edit
    (or decode to a valid object): never another exception, never a crash."""
    body = bytearray(OBJECT_BODIES[which])
    for at, value in edits:
        body[16 + (at - 16) % (len(body) - 16)] = value
    with contextlib.suppress(FormatError):
        assert isinstance(decode_object(_reseal(bytes(body))), (DecodedTable, DecodedDense))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.binary(max_size=64).map(lambda b: b"FLUXRDLT" + b))
def test_arbitrary_bytes_raise_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        decode_object(data)


# ----------------------------------------------------------------------- the consumer

TARGETS = [table_key(1, "item_id"), dense_key(1), manifest_key(1)]


def _mutate(data: bytes, how: str, where: int) -> bytes:
    if how == "flip":
        b = bytearray(data)
        b[where % len(b)] ^= 1 << (where % 8)
        return bytes(b)
    if how == "truncate":
        return data[: where % len(data)]
    return data + bytes([where % 256])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target=st.sampled_from(TARGETS),
    how=st.sampled_from(["flip", "truncate", "append"]),
    where=st.integers(0, 10**6),
)
def test_consumer_keeps_its_last_good_version(target: str, how: str, where: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        store = open_store(f"file://{d}")
        t, ex = Trainer(40), Exporter(store, ExporterConfig(), hmac_key=KEY)
        t.train()
        ex.publish(t.cut(True))
        c = DeltaConsumer(store, hmac_key=KEY)
        assert c.sync() == 1
        good = c.state
        t.train()
        ex.publish(t.cut(False))
        data = store.get(target)
        bad = _mutate(data, how, where)
        store.put(target, bad)
        assert c.sync() == 0
        assert c.version == 0 and c.state is good and c.stats.rejected == 1
        if target != manifest_key(1):  # a payload: the error its byte region calls for
            bit = (where % len(data)) * 8 + where % 8
            want = expected_error(data, bit).__name__ if how == "flip" else "Truncated"
            assert c.stats.last_error.startswith(want + ":"), (c.stats.last_error, want)
        else:  # the signed manifest: any change to its bytes breaks the signature
            assert c.stats.last_error.startswith("BadSignature:"), c.stats.last_error
        store.put(target, data)  # repaired: the consumer applies it on the next sync
        assert c.sync() == 1 and c.version == 1 and c.stats.rejected == 1


def test_structured_fuzzing_finds_no_untyped_error_hang_or_memory_blowup() -> None:
    """3000 cases of tests/fuzz_delta.py (fixed seed; README: the longer release run) in a
    fresh process, so its peak RSS is its own: every case decodes or raises an
    ExporterError, directly and through a DeltaConsumer, within 2x the reader's limits."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_delta", "--cases", "3000", "--seed", "1"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["untyped"] == 0, res["untyped_examples"]
    assert out.returncode == 0
    assert set(res["mutators"]) == {
        "truncate",
        "flip",
        "reseal",
        "header",
        "lengths",
        "lz4",
        "arrow",
        "bomb",
    }
    assert res["peak_rss_over_limit"] <= 2
    assert res["slowest_case_s"] < 60  # no hang (a FIFO or a bomb would block or swap)
    assert {"decoded", "BadBody", "OversizedPayload", "sync:UnsafeObject"} <= set(res["outcomes"])
