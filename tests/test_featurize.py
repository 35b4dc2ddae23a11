"""The vectorised featurizer equals the per-record reference on every field type; bad
records are counted, never drop their batch; request bodies are checked naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurize import reference as ref
from featurize.core import Featurizer
from featurize.errors import BadInput
from featurize.hashing import stable_hash
from featurize.types import FeatureSpec, Samples, SparseSpec

SPEC = FeatureSpec(
    (SparseSpec("user_id"), SparseSpec("tags"), SparseSpec("slot", raw=True)),
    ("price", "age"),
)

_text = st.text(max_size=12)  # any unicode but lone surrogates (not encodable as UTF-8)
_raw = st.one_of(
    st.integers(-(2**63) + 2, 2**63 - 1).map(str),
    st.sampled_from(["x", "+5", " 5", "", str(2**63), str(-(2**63)), "1.5", "007"]),
)
_number = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(10**40), 10**40),  # beyond int64 and float32
    st.sampled_from([-3.4e38, 3.5e38, -1e-45, 0.0, -0.0]),
)


@st.composite
def features(draw: st.DrawFn) -> dict[str, Any]:
    sparse: dict[str, Any] = {}
    for name, values in (("user_id", _text), ("tags", _text), ("slot", _raw)):
        kind = draw(st.sampled_from(["absent", "null", "list", "list", "list"]))
        if kind == "null":
            sparse[name] = None
        elif kind == "list":
            sparse[name] = draw(st.lists(values, max_size=4))
    sparse |= draw(st.dictionaries(st.sampled_from(["other", "ünï"]), st.lists(_text), max_size=1))
    dense: dict[str, Any] = {}
    for name in ("price", "age"):
        kind = draw(st.sampled_from(["absent", "null", "num", "num", "num"]))
        if kind == "null":
            dense[name] = None
        elif kind == "num":
            dense[name] = draw(_number)
    out: dict[str, Any] = {}
    if draw(st.booleans()) or sparse:
        out["sparse"] = sparse
    if draw(st.booleans()) or dense:
        out["dense"] = dense
    return out


_BREAK = [
    ("v", 2),
    ("v", "1"),
    ("labels", {"click": 2}),
    ("labels", {"conversion": 1}),
    ("strategy", "later"),
    ("event_time_ms", "1"),
    ("event_time_ms", 1.5),
    ("sample_id", None),
    ("features", None),
    ("correction", "yes"),
    ("features", {"sparse": {"user_id": "u-1"}}),
    ("features", {"sparse": {"tags": [7]}}),
    ("features", {"sparse": {"tags": ["a", None]}}),
    ("features", {"dense": {"price": "12"}}),
    ("features", {"dense": {"price": True}}),
]


@st.composite
def sample_values(draw: st.DrawFn) -> tuple[bytes, Any]:
    """One Kafka value and what Python's json makes of it (None: not JSON)."""
    k = draw(st.integers(0, 10**6))
    rec: dict[str, Any] = {
        "v": 1,
        "sample_id": f"r-{k}|i-{draw(_text)}|0",
        "event_time_ms": draw(st.integers(0, 2**63 - 1)),
        "features": draw(features()),
        "labels": {"click": draw(st.integers(0, 1)), "conversion": 0},
        "strategy": draw(st.sampled_from(["window", "fake_negative"])),
        "request_id": "r",
    }
    if draw(st.booleans()):
        rec["correction"] = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:
        key, value = draw(st.sampled_from(_BREAK))
        rec[key] = value
    if draw(st.integers(0, 19)) == 0:
        raw = draw(st.sampled_from([b"", b"  ", b"not json", b"[1]", b"{}{}", b"\xff\xfe"]))
        return raw, None
    indent = draw(st.sampled_from([None, 1]))  # pretty-printed values span lines
    text = json.dumps(rec, ensure_ascii=draw(st.booleans()), indent=indent)
    return text.encode(), rec


def _check(spec: FeatureSpec, values: list[bytes], docs: list[Any], got: Samples) -> None:
    want = ref.samples(spec, [d if d is not None else [] for d in docs])
    bad = {b.index for b in got.bad}
    assert bad == {i for i, w in enumerate(want) if isinstance(w, BadInput)}
    assert got.skipped == sum(w is None for w in want)
    good = [w for w in want if isinstance(w, ref.RefSample)]
    assert got.index.tolist() == [i for i, w in enumerate(want) if isinstance(w, ref.RefSample)]
    assert len(got) == len(good)
    for f in spec.sparse:
        ids, offsets = got.features.sparse[f.name]
        assert offsets.tolist() == np.cumsum([0] + [len(g.ids[f.name]) for g in good]).tolist()
        assert ids.tolist() == [i for g in good for i in g.ids[f.name]]
        seg = got.features.segment(f.name)  # the C path flags fields of one id per sample
        counts = [len(g.ids[f.name]) for g in good]
        if seg is None:
            assert counts == [1] * len(good)
        else:
            assert seg.tolist() == np.repeat(np.arange(len(good)), counts).tolist()
    dense = np.array([g.dense for g in good], dtype=np.float32).reshape(len(good), 2)
    np.testing.assert_array_equal(got.features.dense, dense)
    assert got.label.tolist() == [g.label for g in good]
    assert got.event_ms.tolist() == [g.event_ms for g in good]
    assert got.fake.tolist() == [g.fake for g in good]
    xor = 0
    for g in good:
        xor ^= stable_hash("sample_id", g.sample_id)
    assert got.id_xor == xor


def test_the_c_fast_path_is_built_and_reads_the_common_case() -> None:
    fz = Featurizer(SPEC)
    assert fz.native  # make deps builds featurize/_fast.c (python -m fluxrec.native)
    clean = [_sample(f"r-{i}", strategy="fake_negative") for i in range(50)]
    s = fz.samples(clean)
    assert len(s) == 50 and fz.slow_values == 0 and s.fake.all()
    assert s.features.one_each == {"user_id"}  # "tags" has two, "slot" none
    # escapes, nulls and bad values are left to the Arrow path, counted, and merged in order
    odd = [
        _sample("r-\u00e9"),
        _sample("r-x", features={"dense": {"age": None}}),
        _sample("r-y", v=2),
        _sample("r-z", correction=True, labels={"click": 0}),
    ]
    s = fz.samples([clean[0], *odd, clean[1]])
    assert fz.slow_values == 4 and s.index.tolist() == [0, 1, 2, 5] and s.skipped == 1
    assert [b.index for b in s.bad] == [3]
    arrow = Featurizer(SPEC, native=False).samples([clean[0], *odd, clean[1]])
    for name, (ids, offsets) in s.features.sparse.items():
        assert ids.tolist() == arrow.features.sparse[name][0].tolist()
        assert offsets.tolist() == arrow.features.sparse[name][1].tolist()
    np.testing.assert_array_equal(s.features.dense, arrow.features.dense)
    assert s.id_xor == arrow.id_xor


def test_names_that_share_a_prefix_any_order_and_a_large_cache() -> None:
    """The C path matches a key against the name expected next in one 8-byte compare
    ("f1": must not take "f10"), falls back to a search when the order changes or the
    JSON is spaced, and keeps a value -> id cache of more than 2 MiB (its own mapping)."""
    names = ["f1", "f10", "f1x", "a_long_name"]
    spec = FeatureSpec(tuple(SparseSpec(n) for n in names), ("d1", "d10"))
    docs: list[Any] = []
    for i in range(40_000):  # 160k distinct values: the cache grows past 2 MiB
        sparse = {n: [f"{n}-{i}"] for n in (names if i % 3 else reversed(names))}
        dense = {"d10": i, "d1": -i} if i % 2 else {"d1": -i, "d10": i}
        docs.append({"v": 1, "sample_id": f"s-{i}", "event_time_ms": i,
                     "features": {"sparse": sparse, "dense": dense},
                     "labels": {"click": i % 2}, "strategy": "window"})  # fmt: skip
    values = [
        json.dumps(d, separators=(",", ":") if i % 5 else (", ", " : ")).encode()
        for i, d in enumerate(docs)
    ]
    fz = Featurizer(spec)
    assert fz.native
    for _ in range(2):  # the second time from the cache
        _check(spec, values, docs, fz.samples(values))
    assert fz.slow_values == 0


@pytest.mark.parametrize("cache_size", [5, 1_000_000])
def test_values_of_every_length_in_every_field(cache_size: int) -> None:
    """The C path caches a value of 1-8 bytes in its field's table, keyed by its bytes,
    and any other (empty, longer) in one table for all: the same value in two fields,
    values that differ in length only or across the 8-byte line, cleared (a small
    cache) or not, all give the reference's ids, the first time and from the cache."""
    words = ["a" * n for n in range(12)] + ["é" * n for n in range(1, 6)] + ["a\tb", "7" * 8]
    docs: list[Any] = []
    for i in range(60):
        user = [words[(i + k) % len(words)] for k in range(i % 3 + 1)]
        tags = [words[(i * 7 + k) % len(words)] for k in range(i % 4)]
        docs.append({"v": 1, "sample_id": f"s-{i}", "event_time_ms": i,
                     "features": {"sparse": {"user_id": user, "tags": tags},
                                  "dense": {"price": i, "age": 1}},
                     "labels": {"click": i % 2}, "strategy": "window"})  # fmt: skip
    values = [json.dumps(d, ensure_ascii=False).encode() for d in docs]
    fz = Featurizer(SPEC, cache_size=cache_size)
    assert fz.native
    for _ in range(2):  # the second time from the cache (unless it was cleared)
        _check(SPEC, values, docs, fz.samples(values))
    escaped = [
        d for d in docs if any("\t" in w for v in d["features"]["sparse"].values() for w in v)
    ]
    assert escaped and fz.slow_values == 2 * len(escaped)  # only they left the C path


def test_sample_ids_of_every_length_in_batches_of_any_size() -> None:
    """The C path hashes the sample ids of a batch eight at a time where prefix and id fit
    one blake2b block (<= 118 bytes of id), one by one otherwise; idle lanes of the last
    group count for nothing. id_xor equals the reference for every length and batch size,
    with slow records (left to Arrow) between the fast ones."""
    fz = Featurizer(SPEC)
    assert fz.native
    lengths = [0, 1, 7, 8, 9, 63, 64, 110, 117, 118, 119, 120, 127, 128, 129, 200, 300]
    sids = ["s" * n for n in lengths] + ["ünï-" * 30, "é" * 59]  # 180 and 118 bytes

    def value(i: int, sid: str) -> bytes:
        rec = json.loads(_sample(sid))
        if i % 4 == 0:  # slow (a null: Arrow's) but a sample, or (v=2) skipped
            rec |= {"v": 2} if i % 8 else {"features": {"dense": {"age": None}}}
        return json.dumps(rec, ensure_ascii=False).encode()

    for size in (1, 2, 7, 8, 9, 15, 16, 17, len(sids)):
        values = [value(i, s) for i, s in enumerate(sids[:size])]
        got = fz.samples(values)
        want = 0
        for i, s in enumerate(sids[:size]):
            if i % 8 != 4:
                want ^= stable_hash("sample_id", s)
        assert got.id_xor == want, size
        assert got.id_xor == Featurizer(SPEC, native=False).samples(values).id_xor


def test_threads_share_one_featurizer() -> None:
    """The trainer featurizes on a prefetch thread and the server on request threads:
    the C parser serves one call at a time and parses samples without the GIL."""
    from concurrent.futures import ThreadPoolExecutor

    fz = Featurizer(SPEC, cache_size=64)  # small: the cache is cleared under the threads
    batches = [[_sample(f"r-{k}-{i}", features={"sparse": {"user_id": [f"u-{k}-{i}"]}})
                for i in range(200)] for k in range(8)]  # fmt: skip
    body = json.dumps({"instances": [{"sparse": {"tags": ["a", "b"]}}] * 50}).encode()
    want = [Featurizer(SPEC, native=False).samples(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(fz.samples, batches * 3))
        reqs = list(pool.map(lambda _: fz.request(body)[0], range(24)))
    for s, w in zip(got, want * 3, strict=True):
        assert s.features.sparse["user_id"][0].tolist() == w.features.sparse["user_id"][0].tolist()
        assert s.id_xor == w.id_xor
    assert all(r.sparse["tags"][0].tolist() == reqs[0].sparse["tags"][0].tolist() for r in reqs)
    assert (
        reqs[0].sparse["tags"][0].tolist()
        == [stable_hash("tags", "a"), stable_hash("tags", "b")] * 50
    )


@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sample_values(), max_size=24))
def test_vectorised_samples_equal_the_reference(
    native: bool, batch: list[tuple[bytes, Any]]
) -> None:
    values = [v for v, _ in batch]
    docs = [json.loads(v) if d is not None else None for v, d in batch]
    fz = Featurizer(SPEC, cache_size=8, native=native)  # a small cache: hits, misses, resets
    _check(SPEC, values, docs, fz.samples(values))
    _check(SPEC, values, docs, fz.samples(values))  # again, from the cache


@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
@settings(max_examples=100, deadline=None)
@given(st.lists(features(), max_size=12), st.booleans())
def test_request_features_equal_the_reference(
    native: bool, instances: list[dict[str, Any]], ascii_only: bool
) -> None:
    fz = Featurizer(SPEC, native=native)
    body = json.dumps({"instances": instances}, ensure_ascii=ascii_only).encode()
    try:
        want = [ref.features(SPEC, x, f"instances[{i}]") for i, x in enumerate(instances)]
    except BadInput as e:
        with pytest.raises(BadInput) as got:
            fz.request(body)
        assert got.value.field == e.field  # the same field is named
        return
    x, single, unknown = fz.request(body)
    assert not single and x.n == len(instances)
    for f in SPEC.sparse:
        ids, offsets = x.sparse[f.name]
        assert ids.tolist() == [i for w in want for i in w[0][f.name]]
        assert np.diff(offsets).tolist() == [len(w[0][f.name]) for w in want]
    dense = np.array([w[1] for w in want], dtype=np.float32).reshape(len(want), 2)
    np.testing.assert_array_equal(x.dense, dense)
    names = [n for x_ in instances for n, v in x_.get("sparse", {}).items() if v is not None]
    assert sum(unknown.values()) == sum(n in ("other", "ünï") for n in names)


def _sample(sid: str, **kw: Any) -> bytes:
    rec = {
        "v": 1,
        "sample_id": sid,
        "event_time_ms": 1_700_000_000_000,
        "features": {"sparse": {"user_id": ["u-1"], "tags": ["a", "b"]}, "dense": {"age": 3}},
        "labels": {"click": 1},
        "strategy": "window",
    }
    return json.dumps(rec | kw).encode()


@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
def test_bad_values_are_reported_by_reason_and_never_drop_their_batch(native: bool) -> None:
    fz = Featurizer(SPEC, native=native)
    values = [
        _sample("r-0"),
        b"not json",
        _sample("r-2", v=2),
        b"",
        _sample("r-4", labels={"click": 3}),
        _sample("r-5", event_time_ms="soon"),
        _sample("r-6", features={"dense": {"price": 1e39}}),
        b'{"v":1}{"v":1}',
        _sample("r-8"),
    ]
    s = fz.samples(values)
    assert s.index.tolist() == [0, 8]
    assert [(b.index, b.reason) for b in s.bad] == [
        (1, "malformed_json"),
        (2, "unsupported_version"),
        (3, "malformed_json"),
        (4, "bad_value"),
        (5, "bad_type"),
        (6, "bad_value"),
        (7, "malformed_json"),
    ]
    assert "event_time_ms" in s.bad[4].detail and "price" in s.bad[5].detail
    all_bad = fz.samples([b"x", b"{}"])
    assert len(all_bad) == 0 and len(all_bad.bad) == 2


@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
def test_pretty_printed_and_raw_id_values(native: bool) -> None:
    spec = FeatureSpec((SparseSpec("slot", raw=True),), ())
    fz = Featurizer(spec, native=native)
    rec = json.loads(_sample("r-1"))
    rec["features"]["sparse"]["slot"] = ["-12", "9223372036854775807"]
    s = fz.samples([json.dumps(rec, indent=2).encode()])
    assert s.features.sparse["slot"][0].tolist() == [-12, 2**63 - 1]


@pytest.mark.parametrize(
    ("body", "field", "match"),
    [
        (b"{not json", "", "not JSON"),
        (b"[]", "", "JSON object"),
        (b'{"instances": {"a": 1}}', "instances", "must be a list"),
        (b'{"instances": [{"sparse": {"user_id": "u"}}]}', "instances[0].sparse.user_id", "list"),
        (b'{"instances": [{}, {"sparse": {"tags": [3]}}]}', "instances[1].sparse.tags", "string"),
        (b'{"instances": [{"sparse": {"slot": ["x"]}}]}', "instances[0].sparse.slot", "int64"),
        (b'{"features": {"dense": {"age": "1"}}}', "features.dense.age", "not a number"),
        (b'{"features": {"dense": {"age": NaN}}}', "features.dense.age", "finite"),
        (b'{"instances": [{"dense": {"age": 1e39}}]}', "instances[0].dense.age", "finite"),
        (b'{"impressions": [{"request_id": "r"}]}', "impressions[0]", "no 'features'"),
        (b'{"instances": [null]}', "instances[0]", "features object"),
        (b'{"instances": [], "features": {}}', "", "exactly one of"),
    ],
)
@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
def test_bad_requests_name_the_field(body: bytes, field: str, match: str, native: bool) -> None:
    with pytest.raises(BadInput, match=match) as e:
        Featurizer(SPEC, native=native).request(body)
    assert e.value.field == field


@pytest.mark.parametrize("native", [True, False], ids=["c", "arrow"])
def test_requests_of_every_shape_and_unknown_features(native: bool) -> None:
    fz = Featurizer(SPEC, native=native)
    f = {"sparse": {"user_id": ["u-1"], "colour": ["red"]}, "dense": {"age": 2, "x": 1}}
    one, single, unknown = fz.request(json.dumps({"features": f}).encode())
    assert single and one.n == 1 and unknown == {"sparse.colour": 1, "dense.x": 1}
    many, single, _ = fz.request(json.dumps({"instances": [f, f]}).encode())
    imps, _, _ = fz.request(json.dumps({"impressions": [{"features": f, "v": 1}] * 2}).encode())
    assert not single and many.n == imps.n == 2
    assert many.sparse["user_id"][0].tolist() == [stable_hash("user_id", "u-1")] * 2
    np.testing.assert_array_equal(many.dense, imps.dense)
    # an unknown feature whose type varies between instances is still only ignored
    mixed = {"instances": [{"sparse": {"colour": ["red"]}}, {"sparse": {"colour": 3}}]}
    x, _, unknown = fz.request(json.dumps(mixed).encode())
    assert x.n == 2 and unknown == {"sparse.colour": 2}
    with pytest.raises(BadInput, match="at most 1"):
        fz.request(json.dumps({"instances": [f, f]}).encode(), max_instances=1)


def test_the_hash_is_the_pinned_blake2b() -> None:
    assert stable_hash("item_id", "i-9") == int.from_bytes(
        __import__("hashlib").blake2b(b"item_id\x1fi-9", digest_size=8).digest(),
        "little",
        signed=True,
    )
    assert math.isfinite(float(stable_hash("é", "😀")))


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """A valid Sample's bytes with a few bytes replaced, inserted or cut."""
    doc = json.loads(_sample("r-1"))
    doc["features"]["dense"]["price"] = draw(_number)
    data = bytearray(json.dumps(doc, ensure_ascii=draw(st.booleans())).encode())
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["set", "insert", "cut"]))
        b = draw(st.sampled_from(list(b'"\\{}[],:0-.eE+ nul\x00\x1f\x7f\xc3\xa9\xed\xa0\x80\xff')))
        if op == "insert":
            data.insert(i, b)
        elif i < len(data):
            if op == "set":
                data[i] = b
            else:
                del data[i:]
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(mangled(), min_size=1, max_size=8))
def test_the_c_path_reads_mangled_bytes_as_arrow_does(values: list[bytes]) -> None:
    """Bytes near a valid Sample (the parser's edges: cut strings and numbers, invalid
    UTF-8, control bytes, stray brackets): the C path and the Arrow path behind it
    accept exactly what the reference accepts, with the same arrays."""
    docs: list[Any] = []
    for v in values:
        try:
            docs.append(json.loads(v))
        except ValueError:
            docs.append(None)
    c = Featurizer(SPEC).samples(values)
    _check(SPEC, values, docs, c)
