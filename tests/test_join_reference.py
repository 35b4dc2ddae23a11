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
from sample_join.errors import BadLabelConfig
from sample_join.reference import DEAD_LETTER_REASONS, RawEvent, run_reference, validate
from sample_join.settings import JoinConfig, LabelSpec

REPO = Path(__file__).resolve().parents[1]
CFG = JoinConfig(
    labels=[LabelSpec("click", "click", 300_000), LabelSpec("conversion", "conversion", 3_600_000)],
    watermark_out_of_orderness_ms=1_000,
    allowed_lateness_ms=10_000,
    bot_max_actions=3,
    bot_window_ms=60_000,
)
T0 = 1_700_000_000_000


def imp(rid: str, t: int, iid: str = "i1", user: str = "u1", **extra: Any) -> RawEvent:
    rec = {"v": 1, "request_id": rid, "item_id": iid, "user_id": user, "event_time_ms": t}
    rec["features"] = {"sparse": {"user_id": [user], "item_id": [iid]}, "dense": {}}
    return RawEvent("impression", json.dumps(rec | extra))


def act(rid: str, t: int, action: str = "click", iid: str = "i1") -> RawEvent:
    rec = {"v": 1, "request_id": rid, "item_id": iid, "action": action, "event_time_ms": t}
    return RawEvent("action", json.dumps(rec))


def test_shipped_config_has_the_documented_join_section() -> None:
    cfg = load_config(REPO / "configs" / "local.yaml").join
    assert [(s.name, s.action, s.window_ms) for s in cfg.labels] == [
        ("click", "click", 300_000),
        ("conversion", "conversion", 3_600_000),
    ]
    assert cfg.strategy == "window"
    assert cfg.transaction_timeout_ms <= 900_000  # the broker's transaction.max.timeout.ms


def test_window_labels_orphans_and_reconciliation() -> None:
    out = run_reference(
        [
            imp("r1", T0, p_click=0.25),
            imp("r2", T0 + 1_000, iid="i2"),
            act("r1", T0 + 4_000),
            act("r1", T0 + 400_000, "conversion"),
            act("r9", T0 + 4_000),  # no impression: orphan
            act("r1", T0 + 395_000, iid="i1", action="click"),  # duplicate click
            act("r2", T0 + 302_000, iid="i2"),  # after the 5 min click window: orphan
        ],
        replace(CFG, allowed_lateness_ms=3_600_000),
    )
    by_id = {s.sample_id: s for s in out.samples}
    assert by_id["r1|i1|0"].labels == {"click": 1, "conversion": 1}
    assert by_id["r1|i1|0"].label_time_ms == {"click": T0 + 4_000, "conversion": T0 + 400_000}
    assert by_id["r1|i1|0"].p_click == 0.25
    assert by_id["r2|i2|0"].labels == {"click": 0, "conversion": 0}
    assert by_id["r2|i2|0"].to_json()["v"] == 1 and "p_click" not in by_id["r2|i2|0"].to_json()
    assert [d.reason for d in out.dead_letters] == ["orphan_action", "orphan_action"]
    assert out.counts.duplicates == 1
    assert out.counts.balanced()
    assert out.counts.impressions_in + out.counts.actions_in == 7


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (RawEvent("impression", "{not json"), "malformed_json"),
        (RawEvent("impression", "[1, 2]"), "malformed_json"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","event_time_ms":1}'),
         "missing_field"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","action":"click",'
                            '"event_time_ms":"1"}'), "bad_type"),
        (RawEvent("action", '{"v":1,"request_id":7,"item_id":"i","action":"click",'
                            '"event_time_ms":1}'), "bad_type"),
        (RawEvent("action", '{"v":2,"request_id":"r","item_id":"i","action":"click",'
                            '"event_time_ms":1}'), "unsupported_version"),
        (RawEvent("action", '{"v":1,"request_id":"r","item_id":"i","action":"like",'
                            '"event_time_ms":1}'), "unknown_action"),
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
        events += [imp(f"rb{k}", T0 + k, user="bot"), act(f"rb{k}", T0 + 10 + k)]
    events += [imp("rf", T0 + 10**9)]  # beyond now_ms + max_future_skew_ms
    events += [imp("r3", T0 + 700_000, iid="i3")]  # watermark -> T0 + 699 s
    events += [act("r3", T0 + 699_999, iid="i3")]  # before its impression: orphan
    events += [act("r1", T0 + 2_000)]  # < watermark - allowed lateness: too late
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


def test_late_action_policy_correction_vs_dead_letter() -> None:
    # the click arrives (in time by its own timestamp) after the watermark passed the window end
    events = [imp("r1", T0), imp("r2", T0 + 400_000, iid="i2"), act("r1", T0 + 299_000)]
    cfg = replace(CFG, allowed_lateness_ms=1_000_000)
    dead = run_reference(events, cfg)
    assert [d.reason for d in dead.dead_letters] == ["late_action"]
    assert dead.counts.late_actions == 1 and dead.counts.balanced()
    corr = run_reference(events, replace(cfg, late_action_policy="correction"))
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


def test_bad_label_config_is_rejected() -> None:
    with pytest.raises(BadLabelConfig, match="duplicate"):
        run_reference([], replace(CFG, labels=[LabelSpec("a", "x", 1), LabelSpec("a", "y", 1)]))
    with pytest.raises(BadLabelConfig, match="empty"):
        run_reference([], replace(CFG, labels=[]))


_event = st.one_of(
    st.builds(imp, st.sampled_from(["r1", "r2", "r3"]), st.integers(T0, T0 + 900_000)),
    st.builds(
        act,
        st.sampled_from(["r1", "r2", "r3", "r4"]),
        st.integers(T0, T0 + 5_000_000),
        st.sampled_from(["click", "conversion", "like"]),
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


def _validator(name: str) -> Any:
    import jsonschema
    from referencing import Registry, Resource

    schemas = REPO / "sample_join" / "schemas"
    registry: Registry[Any] = Registry()
    for f in schemas.glob("*.schema.json"):
        doc = json.loads(f.read_text())
        registry = registry.with_resource(f.name, Resource.from_contents(doc))
    schema = json.loads((schemas / f"{name}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_reference_output_matches_the_json_schemas() -> None:
    events = [imp("r1", T0, p_click=0.5), act("r1", T0 + 1), act("r9", T0 + 2)]
    events += [RawEvent("action", "{broken")]
    for strategy in ("window", "fake_negative"):
        out = run_reference(events, replace(CFG, strategy=strategy))  # type: ignore[arg-type]
        for s in out.samples:
            _validator("sample").validate(s.to_json())
        for d in out.dead_letters:
            _validator("dead_letter").validate(d.to_json())
    _validator("impression").validate(json.loads(imp("r1", T0, p_click=0.5).payload))
    _validator("action").validate(json.loads(act("r1", T0).payload))
    bad = dict(json.loads(act("r1", T0).payload), event_time_ms="1")
    assert not _validator("action").is_valid(bad)
