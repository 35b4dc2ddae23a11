"""The Java parse of the join (``flink-functions/``, EventParser) against the Python reference.

Every payload goes through ``io.fluxrec.flink.ParseCli`` (the decoder of the job's sources,
in one JVM) and through ``sample_join.reference``; the reason, the event time, the decoded
fields, the sample fields and the dead-letter payload must agree: valid events of every
shape, every kind of invalid one, pathological ones (deep nesting, a 10 MB string, invalid
UTF-8), and a few thousand random mutations of valid payloads.
"""

from __future__ import annotations

import base64
import json
import math
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pyflink
import pytest

from fluxrec.stack.setup import find_java, functions_jar
from sample_join.reference import (
    DEAD_LETTER_REASONS,
    RawEvent,
    _event_time,
    _p_click,
    decode,
    validate,
)
from sample_join.settings import JoinConfig, LabelSpec
from sample_join.sql import JoinSql
from sample_join.testing import BAD_PAYLOADS

CFG = JoinConfig(
    labels=[LabelSpec("click", "click", 10_000), LabelSpec("conv", "conversión", 30_000)],
    max_future_skew_ms=60_000,
)
NOW = 1_700_000_000_000
CONTENT_REASONS = DEAD_LETTER_REASONS[: DEAD_LETTER_REASONS.index("too_late")]
T = NOW - 5_000


def _imp(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"v": 1, "request_id": "r", "item_id": "i", "user_id": "u"}
    rec |= {"event_time_ms": T, "features": {"sparse": {"a": ["x"]}, "dense": {"p": 1.5}}}
    return rec | over


def _act(**over: Any) -> dict[str, Any]:
    rec = {"v": 1, "request_id": "r", "item_id": "i", "user_id": "u", "action": "click"}
    return rec | {"event_time_ms": T} | over


def _valid_and_invalid() -> list[tuple[str, bytes]]:
    """Hand-made payloads: every field rule, JSON corner and limit."""
    out: list[tuple[str, bytes]] = []
    imp = [
        _imp(),
        _imp(p_click=0.25),
        _imp(p_click=1),
        _imp(p_click=True),
        _imp(p_click="0.3"),
        _imp(p_click=None),
        _imp(p_click=10**30),
        _imp(request_id="r|1", item_id="ü✓😀", user_id='q"\\/\n\t\x7f'),
        _imp(features={}),
        _imp(features=[]),
        _imp(features=None),
        _imp(v=2),
        _imp(v=1.0),
        _imp(v=True),
        _imp(v="1"),
        _imp(v=2**63),
        _imp(event_time_ms=-(2**63)),
        _imp(event_time_ms=2**63),
        _imp(event_time_ms=T + 10**9),  # future
        _imp(event_time_ms=float(T)),
        _imp(request_id=5),
        _imp(user_id=None),
        _imp(action={"x": 1}),  # an extra field, any type
    ]
    out += [("impression", json.dumps(r).encode()) for r in imp]
    act = [
        _act(),
        _act(action="conversión"),
        _act(action="like"),
        _act(action=None),
        _act(action=1),
        _act(user_id=["u"]),
        _act(event_time_ms="1"),
    ]
    out += [("action", json.dumps(r).encode()) for r in act]
    head = b'{"v":1,"request_id":"r","item_id":"i","user_id":"u","event_time_ms":' + str(T).encode()
    escapes = b'"\\u0072\\ud800","item_id":"\\ud83d\\ude00","user_id":"\\ud83d"'
    raw = [
        b'{"v":1,"v":2,"request_id":"r","item_id":"i","user_id":"u","event_time_ms":1,"features":{}}',
        b'{"v":2,"\\u0076":1,"request_id":' + escapes + b',"event_time_ms":1,"features":{"a":NaN}}',
        b' \t\r\n{ "v" : 1 , "request_id" : "r" , "item_id" : "i" , "user_id" : "u" , '
        b'"event_time_ms" : -0 , "features" : { } , "p_click" : 1E+2 } \n',
        head + b',"features":{},"p_click":NaN}',
        head + b',"features":{"b":-Infinity},"p_click":-Infinity}',
        head + b',"features":{"n":' + b"1" * 4300 + b"}}",
        head + b',"features":{"n":-' + b"1" * 4301 + b"}}",
        head + b',"features":{"n":' + b"1" * 5000 + b".5}}",
    ]
    out += [("impression", r) for r in raw]
    broken = [
        b"",
        b"   ",
        b"null",
        b"[1, 2]",
        b'"x"',
        b"{",
        b"{}",
        b'{"v":1,}',
        b'{"v":01}',
        b'{"v":1.}',
        b'{"v":.5}',
        b'{"v":+1}',
        b'{"v":1e}',
        b'{"v":-}',
        b'{"v":tru}',
        b'{"v":nul}',
        b'{"v":-NaN}',
        b'{"v":1} x',
        b'{"v":1}}',
        b'{"v" 1}',
        b"{'v':1}",
        b'{"a":"\\x"}',
        b'{"a":"\\u12"}',
        b'{"a":"\\u12g4"}',
        b'{"a":"\x01"}',
        b'{"a":"\x1f"}',
        b'\xef\xbb\xbf{"v":1}',  # a BOM
        b'{"a":"\xff"}',
        b'{"a":"\xc0\x80"}',  # overlong
        b'{"a":"\xed\xa0\x80"}',  # an encoded surrogate
        b'{"a":"\xe2\x82"}',  # truncated
        b'{"a":"\xf4\x90\x80\x80"}',  # above U+10FFFF
        b'{"a":"\xe2\x82\xac\xf0\x9f\x98\x80"}',  # valid: euro sign, emoji
        b'{"a":1}\xff',
        b"[" * 100_000,
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"a":' + b"[" * 127 + b"]" * 127 + b"}",  # 128 deep: the limit
        b'{"a":' + b"[" * 128 + b"]" * 128 + b"}",  # 129: too deep
        b'{"a":' + b"{" * 50 + b"}" * 50 + b"}",
        b'{"a":"' + b"[" * 300 + b'"}',  # brackets inside a string do not nest
    ]
    out += [(s, r) for r in broken for s in ("impression", "action")]
    out += [
        (s, text.replace("@F", str(T + 10**10)).replace("@T", str(T)).encode())
        for s, text, _ in BAD_PAYLOADS
    ]
    big = b"x" * 10_000_000
    out.append(("impression", json.dumps(_imp(features={"s": "@"})).encode().replace(b"@", big)))
    out.append(("impression", b'{"v":1,"request_id":"' + big))  # unterminated
    return out


def _mutations(seed: int, n: int) -> list[tuple[str, bytes]]:
    """Valid payloads with a few bytes flipped, inserted, deleted or duplicated."""
    rng = random.Random(seed)
    alphabet = b'{}[]",:\\ -+.0123456789eEtrufalsnNI\xff\xc3\xa9u'
    bases = [json.dumps(_imp(p_click=0.5)).encode(), json.dumps(_act()).encode()]
    out = []
    for _ in range(n):
        stream = rng.choice(["impression", "action"])
        b = bytearray(bases[stream == "action"])
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            op = rng.randrange(4)
            if op == 0:
                b[i] = rng.choice(alphabet)
            elif op == 1:
                b.insert(i, rng.choice(alphabet))
            elif op == 2:
                del b[i]
            else:
                b[i:i] = b[i : i + rng.randint(1, 8)]
        out.append((stream, bytes(b)))
    return out


def _java(payloads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    lines = "".join(
        f"{stream[0]} {base64.b64encode(b).decode()}\n" for stream, b in payloads
    ).encode()
    # the CLI decodes with the sources' format, whose rows are Flink's: Flink's jars beside it
    flink_lib = Path(pyflink.__file__).parent / "lib" / "*"
    classpath = f"{functions_jar()}{os.pathsep}{flink_lib}"
    argv = [find_java(), "-cp", classpath, "io.fluxrec.flink.ParseCli"]
    r = subprocess.run(
        [*argv, JoinSql(CFG).spec(), str(NOW)], input=lines, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return [json.loads(x) for x in r.stdout.decode().splitlines()]


def _expected(stream: str, b: bytes) -> dict[str, Any]:
    """What the reference says about one payload, in the CLI's layout."""
    ev = RawEvent(stream, b.decode("utf-8", "surrogateescape"))  # type: ignore[arg-type]
    rec, reason = validate(ev, CFG)
    if rec is not None and rec["event_time_ms"] > NOW + CFG.max_future_skew_ms:
        rec, reason = None, "future_event"
    out: dict[str, Any] = {"reason": reason, "t": _event_time(ev.payload), "payload": ev.payload}
    if rec is None:
        return out
    out |= {k: rec[k] for k in ("request_id", "item_id", "user_id")}
    if stream == "action":
        out["label"] = [s.action for s in CFG.labels].index(rec["action"])
    else:
        fields = {k: rec[k] for k in ("request_id", "item_id", "user_id", "event_time_ms")}
        fields["features"] = rec["features"]
        if (p := _p_click(rec)) is not None:
            fields["p_click"] = p
        out["body"] = fields
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _check(payloads: list[tuple[str, bytes]]) -> None:
    got = _java(payloads)
    assert len(got) == len(payloads)
    for (stream, b), java in zip(payloads, got, strict=True):
        want = _expected(stream, b)
        if "body" in java:
            java["body"] = json.loads("{" + java["body"] + "}")
        shown = b[:120]
        assert java["reason"] == want["reason"], (stream, shown, java["reason"], want["reason"])
        assert java["t"] == want["t"], (stream, shown)
        assert java["payload"] == want["payload"], shown
        assert java.keys() == want.keys(), (shown, java.keys(), want.keys())
        for k in java.keys() - {"reason", "t", "payload"}:
            assert _same(java[k], want[k]), (shown, k, java[k], want[k])


def test_every_shape_of_payload_gets_the_reference_reason_and_fields() -> None:
    payloads = _valid_and_invalid()
    reasons = {_expected(s, b)["reason"] for s, b in payloads}
    assert reasons == {None, *CONTENT_REASONS}
    _check(payloads)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_mutations_of_valid_payloads_agree_with_the_reference(seed: int) -> None:
    payloads = _mutations(seed, 3_000)
    assert len({_expected(s, b)["reason"] for s, b in payloads}) >= 4  # a varied sample
    _check(payloads)


def test_the_dead_letter_payload_gives_the_original_bytes_back() -> None:
    raw = b'{"a":"\xff\xed\xa0\x80 \xe2\x82\xac \x00 \\ "}\xc3'
    (java,) = _java([("impression", raw)])
    assert java["reason"] == "malformed_json"
    assert java["payload"].encode("utf-8", "surrogateescape") == raw
    assert decode(raw.decode("utf-8", "surrogateescape")) is None
