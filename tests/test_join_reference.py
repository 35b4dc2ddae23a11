"""The pure-Python reference of the label semantics (sample_join/reference.py): fast unit tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxrec.config import load_config
from sample_join.errors import BadJoinConfig
from sample_join.reference import DEAD_LETTER_REASONS, RawEvent, run_reference, validate
from sample_join.settings import JoinConfig, LabelSpec
from sample_join.testing import schema_validator

REPO = Path(__file__).resolve().parents[1]
CFG = JoinConfig(
    labels=[LabelSpec("click", "click", 300_000), LabelSpec("conversion", "conversion", 3_600_000)],
    watermark_out_of_orderness_ms=1_000,
    late_horizon_ms=600_000,
    bot_max_actions=3,
    bot_window_ms=60_000,
)
T0 = 1_700_000_000_000


def imp(rid: str, t: int, iid: str = "i1", user: str = "u1", **extra: Any) -> RawEvent:
    rec = {"v": 1, "request_id": rid, "item_id": iid, "user_id": user, "event_time_ms": t}
    rec["features"] = {"sparse": {"user_id": [user], "item_id": [iid]}, "dense": {}}
    return RawEvent("impression", json.dumps(rec | extra))


def act(rid: str, t: int, action: str = "click", iid: str = "i1", user: str = "u1") -> RawEvent:
    rec = {"v": 1, "request_id": rid, "item_id": iid, "user_id": user, "action": action}
    rec["event_time_ms"] = t
    return RawEvent("action", json.dumps(rec))


def test_shipped_config_has_the_documented_join_section() -> None:
    cfg = load_config(REPO / "configs" / "local.yaml").join
    assert [(s.name, s.action, s.window_ms) for s in cfg.labels] == [
        ("click", "click", 300_000),
        ("conversion", "conversion", 3_600_000),
    ]
    assert cfg.strategy == "window"
    assert cfg.transaction_timeout_ms <= 900_000  # the broker's transaction.max.timeout.ms


def test_window_labels_late_orphans_and_reconciliation() -> None:
    out = run_reference(
        [
            imp("r1", T0, p_click=0.25),
            imp("r2", T0 + 1_000, iid="i2"),
            act("r1", T0 + 4_000),
            act("r9", T0 + 4_000),  # no impression: orphan
            act("r1", T0 + 4_000),  # duplicate click
            act("r2", T0 + 302_000, iid="i2"),  # after the 5 min window: late
            act("r1", T0 + 3_600_000, "conversion"),  # on the 1 h window edge: labelled
            act("r2", T0 + 4_201_001, "conversion", iid="i2"),  # beyond window + horizon
        ],
        CFG,
    )
    by_id = {s.sample_id: s for s in out.samples}
    assert by_id["r1|i1|0"].labels == {"click": 1, "conversion": 1}
    assert by_id["r1|i1|0"].label_time_ms == {"click": T0 + 4_000, "conversion": T0 + 3_600_000}
    assert by_id["r1|i1|0"].p_click == 0.25
    assert by_id["r2|i2|0"].labels == {"click": 0, "conversion": 0}
    assert by_id["r2|i2|0"].to_json()["v"] == 1 and "p_click" not in by_id["r2|i2|0"].to_json()
    assert sorted(d.reason for d in out.dead_letters) == [
        "late_action",
        "orphan_action",
        "orphan_action",
    ]
    assert out.counts.duplicates == 1 and out.counts.late_actions == 1
    assert out.counts.balanced()
    assert out.counts.impressions_in + out.counts.actions_in == 8
    w = CFG.metrics_window_ms
    assert out.counts.windows[((T0 // w) * w, "action", "duplicate", None)] == 1


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (RawEvent("impression", "{not json"), "malformed_json"),
        (RawEvent("impression", "[1, 2]"), "malformed_json"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","user_id":"u",'
                            '"event_time_ms":1}'), "missing_field"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","action":"click",'
                            '"event_time_ms":1}'), "missing_field"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","user_id":"u",'
                            '"action":"click","event_time_ms":"1"}'), "bad_type"),
        (RawEvent("action", '{"v":1,"request_id":7,"item_id":"i","user_id":"u",'
                            '"action":"click","event_time_ms":1}'), "bad_type"),
        (RawEvent("action", '{"v":2,"request_id":7,"item_id":"i","user_id":"u",'
                            '"action":"click","event_time_ms":1}'), "bad_type"),
        (RawEvent("action", '{"v":2,"request_id":"r","item_id":"i","user_id":"u",'
                            '"action":"click","event_time_ms":1}'), "unsupported_version"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","user_id":"u",'
                            '"action":"like","event_time_ms":1}'), "unknown_action"),
    ],
)  # fmt: skip
def test_validation_reasons(event: RawEvent, reason: str) -> None:
    assert validate(event, CFG) == (None, reason)
    out = run_reference([event], CFG)
    assert [(d.reason, d.stage, d.payload) for d in out.dead_letters] == [
        (reason, "validate", event.payload)
    ]
    assert out.counts.balanced()


def test_future_too_late_bots_and_orphans() -> None:
    events = [imp("r1", T0)]
    # user "bot": 4 actions within 60 s (threshold 3): the 4th exceeds the sliding count
    for k in range(4):
        events += [imp(f"rb{k}", T0 + k, user="bot"), act(f"rb{k}", T0 + 10 + k, user="bot")]
    events += [imp("rf", T0 + 10**9)]  # beyond now_ms + max_future_skew_ms
    events += [act("r3", T0 + 699_999, iid="i3")]
    events += [imp("r3", T0 + 700_000, iid="i3")]  # after its click: the click is an orphan
    events += [act("r1", T0 + 2_000)]  # at or behind the action watermark: too late
    out = run_reference(events, CFG, now_ms=T0 + 1_000_000)
    got = sorted((d.reason, d.stage) for d in out.dead_letters)
    assert got == [
        ("bot", "abnormal"),
        ("future_event", "validate"),
        ("orphan_action", "join"),
        ("too_late", "validate"),
    ]
    bot_dead = [d for d in out.dead_letters if d.reason == "bot"]
    assert json.loads(bot_dead[0].payload)["request_id"] == "rb3"
    labelled = {s.request_id: s.labels["click"] for s in out.samples}
    assert labelled == {"r1": 0, "rb0": 1, "rb1": 1, "rb2": 1, "rb3": 0, "r3": 0}
    assert out.counts.balanced()
    assert {reason for reason, _ in got} <= set(DEAD_LETTER_REASONS)


def test_the_watermark_is_the_minimum_over_both_streams() -> None:
    events = [imp("r1", T0 + 50_000), imp("r0", T0 + 10_000, iid="i0")]  # no action yet
    events += [act("r1", T0 + 20_000)]  # watermark now T0 + 19 s (the actions hold it)
    events += [imp("rf", T0 + 10**9), RawEvent("impression", '{"event_time_ms": "9e99"}')]
    events += [imp("r2", T0 + 19_001, iid="i2")]  # ahead of the watermark
    events += [imp("r3", T0 + 19_000, iid="i3")]  # on it: too late
    events += [imp("r3", T0 + 19_000, iid="i3")]  # and its copy a duplicate
    out = run_reference(events, CFG, now_ms=T0 + 100_000)
    assert sorted(
        (d.reason, json.loads(d.payload).get("request_id")) for d in out.dead_letters
    ) == [
        ("future_event", "rf"),  # ignored by the watermark, too
        ("missing_field", None),
        ("orphan_action", "r1"),  # the click is before its impression
        ("too_late", "r3"),
    ]
    assert out.counts.duplicates == 1 and out.counts.balanced()


def test_late_action_policy_correction_vs_dead_letter() -> None:
    # a click after the 5 min window, within the horizon: late in event time
    events = [imp("r1", T0), act("r1", T0 + 300_001)]
    dead = run_reference(events, CFG)
    assert [d.reason for d in dead.dead_letters] == ["late_action"]
    assert dead.counts.late_actions == 1 and dead.counts.balanced()
    corr = run_reference(events, replace(CFG, late_action_policy="correction"))
    assert not corr.dead_letters and corr.counts.late_actions == 1 and corr.counts.balanced()
    fix = [s for s in corr.samples if s.correction]
    assert [(s.sample_id, s.labels, s.strategy) for s in fix] == [
        ("r1|i1|0|click", {"click": 1, "conversion": 0}, "window")
    ]
    final = {s.sample_id: s for s in corr.samples}["r1|i1|0"]
    assert final.labels == {"click": 0, "conversion": 0}


def test_fake_negative_emits_negative_then_corrections() -> None:
    cfg = replace(CFG, strategy="fake_negative")
    out = run_reference([imp("r1", T0), act("r1", T0 + 5), act("r1", T0 + 9, "conversion")], cfg)
    got = [(s.sample_id, s.labels, s.correction) for s in out.samples]
    assert got == [
        ("r1|i1|0", {"click": 0, "conversion": 0}, False),
        ("r1|i1|0|click", {"click": 1, "conversion": 0}, True),
        ("r1|i1|0|conversion", {"click": 0, "conversion": 1}, True),
    ]
    assert all(s.strategy == "fake_negative" for s in out.samples)
    assert out.counts.balanced()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"labels": [LabelSpec("a", "x", 1), LabelSpec("a", "y", 1)]}, "labels.*duplicates"),
        ({"labels": [LabelSpec("a", "x", 1), LabelSpec("b", "x", 1)]}, "action.*duplicates"),
        ({"labels": []}, "empty"),
        ({"labels": [LabelSpec("a", "x", 0)]}, r"labels\[0\].window_ms"),
        ({"metrics_window_ms": 0}, "join.metrics_window_ms"),
        ({"late_horizon_ms": -1}, "join.late_horizon_ms"),
        ({"transaction_timeout_ms": 900_001}, "transaction.max.timeout.ms"),
    ],
)
def test_bad_join_config_is_rejected_naming_the_key(change: dict[str, Any], match: str) -> None:
    with pytest.raises(BadJoinConfig, match=match):
        run_reference([], replace(CFG, **change))


_event = st.one_of(
    st.builds(imp, st.sampled_from(["r1", "r2", "r3"]), st.integers(T0, T0 + 900_000)),
    st.builds(
        act,
        st.sampled_from(["r1", "r2", "r3", "r4"]),
        st.integers(T0, T0 + 5_000_000),
        st.sampled_from(["click", "conversion", "like"]),
        st.just("i1"),
        st.sampled_from(["u1", "u2"]),
    ),
    st.just(RawEvent("action", "{broken")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_event, max_size=30), st.sampled_from(["window", "fake_negative"]))
def test_reconciliation_identity_holds_for_any_stream(
    events: list[RawEvent], strategy: str
) -> None:
    out = run_reference(events, replace(CFG, strategy=strategy))  # type: ignore[arg-type]
    assert out.counts.balanced()
    base = [s for s in out.samples if not s.correction]
    assert len(base) == out.counts.impression_samples == len({s.sample_id for s in base})
    assert len(out.dead_letters) == sum(out.counts.dead_letters.values())


def test_reference_output_matches_the_json_schemas() -> None:
    events = [imp("r1", T0, p_click=0.5), act("r1", T0 + 1), act("r9", T0 + 2)]
    events += [RawEvent("action", "{broken")]
    for strategy in ("window", "fake_negative"):
        out = run_reference(events, replace(CFG, strategy=strategy))  # type: ignore[arg-type]
        for s in out.samples:
            schema_validator("sample").validate(s.to_json())
        for d in out.dead_letters:
            schema_validator("dead_letter").validate(d.to_json())
    schema_validator("impression").validate(json.loads(imp("r1", T0, p_click=0.5).payload))
    schema_validator("action").validate(json.loads(act("r1", T0).payload))
    bad = dict(json.loads(act("r1", T0).payload), event_time_ms="1")
    assert not schema_validator("action").is_valid(bad)


def test_reconcile_reads_the_newest_totals_and_checks_every_window() -> None:
    from sample_join.errors import SampleJoinError
    from sample_join.reconcile import totals, windows

    out = run_reference(
        [imp("r1", T0), act("r1", T0 + 5), act("r9", T0 + 7), RawEvent("action", "{x")], CFG
    )

    def rec(key: tuple[int, str, str, str | None], n: int) -> bytes:
        start, stream, kind, reason = key
        doc = {"v": 1, "window_start_ms": start, "window_end_ms": start + 1, "stream": stream}
        return json.dumps(doc | {"kind": kind, "reason": reason, "count": n}).encode()

    stale = [rec(k, n + 5) for k, n in out.counts.windows.items()]  # older, wrong totals
    fresh = [rec(k, n) for k, n in out.counts.windows.items()]
    rows = windows(totals([*stale, None, *fresh]))
    assert rows and all(w.balance == 0 for w in rows)
    assert {w.stream for w in rows} == {"impression", "action"}
    off = windows(totals([*fresh, rec((0, "action", "in", None), 99)]))
    assert any(w.balance for w in off)
    with pytest.raises(SampleJoinError, match="not a v1 metric"):
        totals([b'{"v": 1}'])


def test_every_bad_payload_of_the_test_streams_gets_its_reason() -> None:
    from sample_join.testing import BAD_PAYLOADS, build_stream

    events = build_stream([], 2_000, bad_at_ms=T0)
    out = run_reference(events, CFG, now_ms=T0 + 1_000)
    got = sorted((d.stream, d.payload, d.reason) for d in out.dead_letters)
    want = sorted(
        (s, p.replace("@F", str(T0 + 10**10)).replace("@T", str(T0)), r) for s, p, r in BAD_PAYLOADS
    )
    assert got == want
    assert {r for *_, r in BAD_PAYLOADS} == set(DEAD_LETTER_REASONS) - {
        "too_late", "bot", "orphan_action", "late_action"
    }  # fmt: skip
