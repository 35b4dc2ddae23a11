"""Event sources of ``fluxrec replay`` (replay/): records, order, determinism, faults,
time shift and contract conformance. No services, no real logs (see test_replay_data.py)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxrec.config import Config, load_config
from replay.errors import BadLog, BadLogRow, BadReplayConfig, LogNotFound
from replay.faults import UNKNOWN_ACTION, inject, spoil
from replay.oracle import auc
from replay.settings import (
    ClickDelay,
    DelaysConfig,
    FaultsConfig,
    ReplayConfig,
    SyntheticConfig,
    TaobaoConfig,
    check,
)
from replay.sources import Source, open_source
from replay.stream import Tally, replay_events
from replay.synthetic import SyntheticSource
from replay.table import parse_time_ms
from replay.taobao import TaobaoSource
from replay.types import Action, Event, Fault, Impression, Record, Stream, dumps, to_event
from sample_join.reference import RawEvent, run_reference, validate
from sample_join.settings import JoinConfig

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "sample_join" / "schemas"
NOW = 1_800_000_000_000


def sample_source(name: str, path: Path, **replay: Any) -> tuple[Source, ReplayConfig]:
    """The source of ``configs/NAME.yaml`` reading ``path``, with ``replay`` keys replaced
    (``time_shift`` none by default), and its replay config."""
    cfg: Config = load_config(REPO / "configs" / f"{name}.yaml")
    rc = replace(cfg.replay, path=path, **{"time_shift": "none", **replay})
    sparse = [f.name for f in cfg.features.sparse]
    return open_source(rc, sparse, [f.name for f in cfg.features.dense]), rc


def small(**synthetic: Any) -> ReplayConfig:
    base = {"impressions": 3000, "users": 500, "items": 300} | synthetic
    return ReplayConfig(synthetic=SyntheticConfig(**base), time_shift="none")


def raw(ev: Event) -> RawEvent:
    """The event as the join reads it from Kafka."""
    return RawEvent("impression" if ev.stream is Stream.IMPRESSION else "action", ev.payload)


def schema_validators() -> dict[str, jsonschema.Draft202012Validator]:
    out = {}
    for stream in Stream:
        schema = json.loads((SCHEMAS / f"{stream}.schema.json").read_text())
        out[str(stream)] = jsonschema.Draft202012Validator(schema)
    return out


def assert_conforms(events: list[Event], join: JoinConfig | None = None) -> None:
    """Every clean event validates against the v1 schema and passes the join's checks."""
    validators = schema_validators()
    join = join or JoinConfig()
    for ev in events:
        obj = json.loads(ev.payload)
        validators[ev.stream].validate(obj)
        assert ev.key == obj["request_id"]
        assert ev.event_time_ms == obj["event_time_ms"]
        rec, reason = validate(raw(ev), join)
        assert reason is None and rec is not None


def assert_event_time_order(recs: list[Record]) -> None:
    keys = [(r.event_time_ms, 0 if isinstance(r, Impression) else 1) for r in recs]
    assert keys == sorted(keys)


# --------------------------------------------------------------------------- records


def test_wire_form_is_the_v1_contract_in_contract_order() -> None:
    imp = Impression(
        "r-1", "i-9", "u-3", 1_700_000_000_000, {"category": ("c-1", "c-7")}, {"price": 12.5}, 0.031
    )
    ev = to_event(imp)
    assert ev == Event(
        Stream.IMPRESSION,
        "r-1",
        '{"v":1,"request_id":"r-1","item_id":"i-9","user_id":"u-3",'
        '"event_time_ms":1700000000000,"features":{"sparse":{"category":["c-1","c-7"]},'
        '"dense":{"price":12.5}},"p_click":0.031}',
        1_700_000_000_000,
    )
    assert "p_click" not in to_event(replace(imp, p_click=None)).payload
    act = to_event(Action("r-1", "i-9", "u-3", "click", 1_700_000_004_000))
    assert act.stream is Stream.ACTION and act.key == "r-1"
    assert act.payload == (
        '{"v":1,"request_id":"r-1","item_id":"i-9","user_id":"u-3","action":"click",'
        '"event_time_ms":1700000004000}'
    )
    assert_conforms([ev, act])


_texts = st.text(max_size=6)  # any unicode: quotes, backslashes, controls, surrogates
_numbers = st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.booleans())
_records = st.one_of(
    st.builds(
        Impression,
        _texts,
        _texts,
        _texts,
        st.integers(0, 2**62),
        st.dictionaries(_texts, st.lists(_texts, max_size=3).map(tuple), max_size=3),
        st.dictionaries(_texts, _numbers, max_size=3),
        st.one_of(st.none(), _numbers),
    ),
    st.builds(Action, _texts, _texts, _texts, _texts, st.integers(0, 2**62)),
)


@settings(max_examples=400, deadline=None)
@given(_records, st.one_of(st.none(), st.integers(0, 2**62)))
def test_wire_form_is_dumps_of_to_json_byte_for_byte(rec: Record, at: int | None) -> None:
    """The payload written from a template equals the json module's, and NaN / inf are
    refused the same way."""
    obj = rec.to_json()
    if at is not None:
        obj["event_time_ms"] = at
    try:
        want = dumps(obj)
    except ValueError:  # NaN or inf
        with pytest.raises(ValueError, match="JSON compliant"):
            to_event(rec, at)
        return
    ev = to_event(rec, at)
    assert ev.payload == want
    assert ev.event_time_ms == (rec.event_time_ms if at is None else at)


def test_oracle_auc_known_values() -> None:
    assert auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auc([0.5, 0.5, 0.5], [0, 1, 0]) == 0.5
    assert auc([0.9, 0.1], [0, 1]) == 0.0
    assert math.isnan(auc([0.2, 0.3], [0, 0]))
    with pytest.raises(ValueError, match="one label per score"):
        auc([0.1], [0, 1])


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_for_a_seed() -> None:
    cfg = small(impressions=500)
    a = [to_event(r) for r in SyntheticSource(cfg).records()]
    b = [to_event(r) for r in SyntheticSource(cfg).records()]
    c = [to_event(r) for r in SyntheticSource(replace(cfg, seed=1)).records()]
    assert a == b
    assert a != c
    assert sum(isinstance(r, Impression) for r in SyntheticSource(cfg).records()) == 500


def test_synthetic_events_conform_and_are_in_event_time_order() -> None:
    recs = list(SyntheticSource(small()).records())
    assert_event_time_order(recs)
    assert_conforms([to_event(r) for r in recs])
    imps = [r for r in recs if isinstance(r, Impression)]
    assert set(imps[0].sparse) == {"user_id", "item_id", "category", "position"}
    assert set(imps[0].dense) == {"price"}
    slates: dict[str, list[str]] = {}
    for r in imps:
        slates.setdefault(r.request_id, []).append(r.item_id)
    assert all(len(v) == len(set(v)) for v in slates.values())  # distinct items per request
    assert {len(v) for v in list(slates.values())[:-1]} == {3}


def test_synthetic_click_model_p_click_delays_and_oracle_auc() -> None:
    recs = list(SyntheticSource(small(impressions=20_000)).records())
    imps = {(r.request_id, r.item_id): r for r in recs if isinstance(r, Impression)}
    clicks = {
        (r.request_id, r.item_id): r for r in recs if isinstance(r, Action) and r.action == "click"
    }
    convs = [r for r in recs if isinstance(r, Action) and r.action == "conversion"]
    p = [r.p_click for r in imps.values()]
    assert all(x is not None and 0.0 <= x <= 1.0 for x in p)
    ctr = len(clicks) / len(imps)
    assert 0.01 < ctr < 0.15
    assert abs(ctr - sum(x or 0 for x in p) / len(p)) < 0.01  # clicks follow p_click
    assert all(c.event_time_ms > imps[k].event_time_ms for k, c in clicks.items())
    assert convs and all(
        c.event_time_ms > clicks[(c.request_id, c.item_id)].event_time_ms for c in convs
    )
    click_delays = sorted(c.event_time_ms - imps[k].event_time_ms for k, c in clicks.items())
    assert 5_000 < click_delays[len(click_delays) // 2] < 45_000  # median 15 s
    labels = [int(k in clicks) for k in imps]
    oracle = auc([r.p_click or 0 for r in imps.values()], labels)
    assert oracle > 0.7
    cfg = small(impressions=20_000)
    tally = Tally()
    for _ in replay_events(SyntheticSource(cfg), cfg, NOW, tally):
        pass
    assert tally.oracle_auc() == pytest.approx(oracle)  # what `fluxrec replay` prints


def test_synthetic_users_and_items_are_zipf_skewed() -> None:
    recs = [
        r for r in SyntheticSource(small(impressions=30_000)).records() if isinstance(r, Impression)
    ]
    items = Counter(r.item_id for r in recs)
    ranked = [n for _, n in items.most_common()]
    # bounded Zipf(1.1): rank 1 vs rank 10 is about 10^1.1 = 12.6
    assert 6 < ranked[0] / ranked[9] < 25
    top = sum(ranked[: len(ranked) // 100 or 1])
    assert top / len(recs) > 0.1  # the top 1% of items get far more than 1% of impressions
    assert items.most_common(1)[0][0] == "i-0"
    users = Counter(r.user_id for r in recs)
    assert users.most_common(1)[0][0] == "u-0"


# ------------------------------------------------------------- real-log sources, tiny inputs

OBD_HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
    "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1\n"
)


def write_obd(d: Path) -> Path:
    f = d / "bts_men.csv"
    f.write_text(
        OBD_HEADER
        + "0,2019-11-24 00:01:03.979311+00:00,1,2,0,0.04,a,b,c,d,0.0,0.5\n"
        + "1,2019-11-24 00:01:45.406608+00:00,0,1,1,0.05,a,b,c,e,0.25,0.0\n"
    )
    (d / "bts_men_item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
        "0,0,-0.5,f10,f20,f30\n1,1,0.75,f11,f21,f31\n"
    )
    return f


def test_obd_tiny_file_gives_exact_records(tmp_path: Path) -> None:
    """configs/obd.yaml: the table source with templates, a side table and file columns."""
    write_obd(tmp_path)
    src, _ = sample_source("obd", tmp_path, delays=DelaysConfig(click=ClickDelay(20.0, 0.0)))
    recs = list(src.records())
    t0, t1 = 1_574_553_663_979, 1_574_553_705_406
    u0, u1 = "abcd", "abce"  # the user profile: the four user features
    assert recs == [
        Impression(
            "obd-bts_men-0",
            "men-1",
            u0,
            t0,
            {
                "user_id": (u0,),
                "item_id": ("men-1",),
                "position": ("2",),
                "user_feature_0": ("a",),
                "user_feature_1": ("b",),
                "user_feature_2": ("c",),
                "user_feature_3": ("d",),
                "item_feature_1": ("f11",),
                "item_feature_2": ("f21",),
                "item_feature_3": ("f31",),
            },
            {"item_feature_0": 0.75, "affinity": 0.5},
        ),
        replace(
            recs[1],
            request_id="obd-bts_men-1",
            item_id="men-0",
            user_id=u1,
            event_time_ms=t1,
        ),
        Action("obd-bts_men-1", "men-0", u1, "click", t1 + 20_000),  # sigma 0: the median delay
    ]
    assert isinstance(recs[1], Impression)
    assert recs[1].dense == {"item_feature_0": -0.5, "affinity": 0.25}
    assert_conforms([to_event(r) for r in recs])


def test_obd_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(LogNotFound, match="no log file matches"):
        sample_source("obd", tmp_path)
    f = write_obd(tmp_path)
    f.write_text(f.read_text() + "2,yesterday,0,1,0,0.05,a,b,c,e,0.0,0.0\n")
    src, _ = sample_source("obd", tmp_path)
    assert sum(isinstance(r, Impression) for r in src.records()) == 2  # the bad row is skipped
    assert src.stats() == {"bad_time": 1}
    assert src.notes()["bad_time"].startswith(f"{f}:4: column 'timestamp': 'yesterday'")
    (tmp_path / "bts_men.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadLog, match=r"bts_men\.csv:1: no column 'user_feature_0' \(replay\.table"):
        list(sample_source("obd", tmp_path)[0].records())


def test_taobao_tiny_log_gives_exact_records(tmp_path: Path) -> None:
    (tmp_path / "UserBehavior.csv").write_text(
        "1,10,100,pv,1000\n"  # line 1
        "2,20,200,buy,1001\n"  # no pv of (2, 20) before: skipped
        "1,10,100,cart,1005\n"  # -> the pv of line 1
        "2,20,200,pv,1010\n"  # line 4
        "1,10,100,pv,1020\n"  # line 5: a later pv of (1, 10)
        "1,10,100,buy,1020\n"  # same second as line 5: attaches to line 5
        "2,20,200,fav,1030\n"  # not mapped below: skipped
    )
    cfg = replace(small(), taobao=TaobaoConfig({"cart": "click", "buy": "conversion"}))
    src = TaobaoSource(cfg, tmp_path)
    recs = list(src.records())

    def pv(line: int, user: str, item: str, cat: str, ts: int) -> Impression:
        sparse = {"user_id": (user,), "item_id": (item,), "category": (cat,)}
        return Impression(f"tb-{line}", item, user, ts * 1000, sparse)

    assert recs == [
        pv(1, "1", "10", "100", 1000),
        Action("tb-1", "10", "1", "click", 1_005_000),
        pv(4, "2", "20", "200", 1010),
        pv(5, "1", "10", "100", 1020),
        Action("tb-5", "10", "1", "conversion", 1_020_000),
    ]
    assert src.stats() == {"actions_without_pv": 1, "unmapped_fav": 1}
    assert_conforms([to_event(r) for r in recs])
    (tmp_path / "UserBehavior.csv").write_text("1,10,100,look,1000\n")
    with pytest.raises(BadLogRow, match=r"UserBehavior\.csv:1:"):
        list(TaobaoSource(cfg, tmp_path).records())


def test_tencent_tiny_log_with_side_tables_gives_exact_records(tmp_path: Path) -> None:
    """configs/tencent.yaml: DDHHMMSS times, a label with its time column, side tables."""
    (tmp_path / "train_small.csv").write_text(
        "instanceID,label,clickTime,conversionTime,creativeID,userID,positionID,"
        "connectionType,telecomsOperator\n"
        "7,1,22174355,23103048.0,4565,2497012,3150,1,2\n"
        "8,0,17000000,,72,1561246,2150,2,1\n"
        "9,1,18000000,17235959.0,72,1561246,2150,2,1\n"  # converts before its click: skipped
    )
    (tmp_path / "ad.csv").write_text(
        "creativeID,adID,camgaignID,advertiserID,appID,appPlatform\n4565,1,2,3,4,1\n"
    )
    (tmp_path / "position.csv").write_text("positionID,sitesetID,positionType\n")
    (tmp_path / "user.csv").write_text(
        "userID,age,gender,education,marriageStatus,haveBaby,hometown,residence\n"
        "1561246,25,2,2,3,1,301,302\n"
    )
    src, _ = sample_source("tencent", tmp_path)
    recs = list(src.records())
    base = {"position_id": ("2150",), "connection_type": ("2",), "telecoms_operator": ("1",)}
    user = {
        "age": ("25",),
        "gender": ("2",),
        "education": ("2",),
        "marriage_status": ("3",),
        "have_baby": ("1",),
        "hometown": ("301",),
        "residence": ("302",),
    }
    ad = {
        "ad_id": ("1",),
        "campaign_id": ("2",),
        "advertiser_id": ("3",),
        "app_id": ("4",),
        "app_platform": ("1",),
    }
    month = ("%Y-%m-%d%H%M%S", "2017-03-")
    t7 = parse_time_ms("22174355", *month)
    assert t7 == 1_490_204_635_000  # 2017-03-22T17:43:55Z
    assert recs == [
        Impression(
            "tc-8",
            "72",
            "1561246",
            1_489_708_800_000,  # 2017-03-17T00:00:00Z
            {"user_id": ("1561246",), "item_id": ("72",), **base, **user},
        ),
        Impression(
            "tc-9",
            "72",
            "1561246",
            1_489_795_200_000,
            {"user_id": ("1561246",), "item_id": ("72",), **base, **user},
        ),
        Impression(
            "tc-7",
            "4565",
            "2497012",
            t7,
            {
                "user_id": ("2497012",),
                "item_id": ("4565",),
                "position_id": ("3150",),
                "connection_type": ("1",),
                "telecoms_operator": ("2",),
                **ad,
            },
        ),
        Action("tc-7", "4565", "2497012", "conversion", parse_time_ms("23103048.0", *month)),
    ]
    assert src.stats() == {"action_before_impression": 1}
    assert_conforms([to_event(r) for r in recs])
    with pytest.raises(ValueError, match="not a time in"):
        parse_time_ms("22256000", *month)
    with pytest.raises(ValueError, match="not a time in"):
        parse_time_ms("30000000", "%Y-%m-%d%H%M%S", "2017-02-")


# --------------------------------------------------------------------------- the replay stream


def test_time_shift_now_none_live_keep_relative_times() -> None:
    cfg = small(impressions=300)
    src = SyntheticSource(cfg)
    raw = [e.event_time_ms for e in replay_events(src, cfg, NOW)]
    now = [e.event_time_ms for e in replay_events(src, replace(cfg, time_shift="now"), NOW)]
    live = [e.event_time_ms for e in replay_events(src, replace(cfg, time_shift="live"), NOW)]
    assert cfg.synthetic.start_ms < raw[0] < cfg.synthetic.start_ms + 1000  # log times
    assert now[-1] == NOW and max(now) == NOW
    assert live[0] == NOW
    assert [t - raw[0] for t in raw] == [t - now[0] for t in now] == [t - live[0] for t in live]


def test_limit_run_id_and_tally() -> None:
    cfg = replace(small(), limit=50, run_id="run7")
    tally = Tally()
    events = list(replay_events(SyntheticSource(cfg), cfg, NOW, tally))
    for ev in events:
        tally.count(ev)
    assert len(events) == 50 == tally.total
    assert all(e.key.startswith("run7-r-") for e in events)
    assert all(json.loads(e.payload)["request_id"] == e.key for e in events)
    assert tally.events[Stream.IMPRESSION] + tally.events[Stream.ACTION] == 50
    assert tally.first_ms == events[0].event_time_ms


def test_each_fault_kind_gets_its_dead_letter_reason() -> None:
    imp = to_event(Impression("r1", "i1", "u1", 5_000, {"user_id": ("u1",)}))
    act = to_event(Action("r1", "i1", "u1", "click", 6_000))
    cfg = JoinConfig()
    for ev in (imp, act):
        for fault in (
            Fault.MALFORMED_JSON,
            Fault.MISSING_FIELD,
            Fault.BAD_TYPE,
            Fault.UNSUPPORTED_VERSION,
        ):
            bad = spoil(ev, fault)
            assert bad.fault is fault and bad.key == ev.key
            assert validate(raw(bad), cfg) == (None, str(fault))
    unknown = spoil(act, Fault.UNKNOWN_ACTION)
    assert json.loads(unknown.payload)["action"] == UNKNOWN_ACTION
    assert validate(RawEvent("action", unknown.payload), cfg) == (None, "unknown_action")
    orphan = spoil(act, Fault.ORPHAN_ACTION)
    assert orphan.key == "r1.orphan" == json.loads(orphan.payload)["request_id"]
    out = run_reference([raw(e) for e in (imp, act, orphan)], cfg)
    assert [d.reason for d in out.dead_letters] == ["orphan_action"]


def test_injected_faults_reconcile_through_the_reference_join() -> None:
    """A replay with every kind of fault, run through the join's reference: each injected
    defect comes out as its dead-letter reason or as a duplicate, nothing else is lost."""
    cfg = replace(
        small(impressions=4000),
        faults=FaultsConfig(malformed=0.05, duplicate=0.05, orphan=0.2),
        delays=DelaysConfig(click=ClickDelay(10.0, 0.5)),
    )
    events = list(replay_events(SyntheticSource(cfg), cfg, NOW))
    injected = Counter(str(e.fault) for e in events if e.fault is not None)
    assert set(injected) == {str(f) for f in Fault}
    assert 150 < injected["duplicate"] < 300  # ~5% of ~4,400 events
    labels = JoinConfig().labels
    join = replace(
        JoinConfig(),
        bot_max_actions=10**6,  # Zipf's busiest users are no bots here
        labels=[labels[0], replace(labels[1], window_ms=10**9)],  # every conversion in time
    )
    out = run_reference([raw(e) for e in events], join)
    assert out.counts.balanced()
    assert out.counts.duplicates == injected["duplicate"]
    reasons = Counter(d.reason for d in out.dead_letters)
    assert reasons == Counter({k: v for k, v in injected.items() if k != "duplicate"})
    clean = [e for e in events if e.fault is None]
    assert out.counts.impression_samples == sum(e.stream is Stream.IMPRESSION for e in clean)


def test_no_faults_means_the_events_pass_through_unchanged() -> None:
    events = [to_event(Action("r", "i", "u", "click", t)) for t in range(5)]
    assert list(inject(events, FaultsConfig(), seed=1)) == events


# --------------------------------------------------------------------------- config


def test_check_names_the_key_of_an_unusable_value() -> None:
    cases: list[tuple[ReplayConfig, str]] = [
        (ReplayConfig(source="table"), "replay.path"),
        (ReplayConfig(source="table", path=Path("x")), "replay.table.time"),
        (ReplayConfig(rate=-1), "replay.rate"),
        (ReplayConfig(faults=FaultsConfig(duplicate=1.5)), "replay.faults.duplicate"),
        (ReplayConfig(delays=DelaysConfig(click=ClickDelay(0.0))), "replay.delays.click.median_s"),
        (
            ReplayConfig(synthetic=SyntheticConfig(slate_size=10, items=5)),
            "replay.synthetic.slate_size",
        ),
        (ReplayConfig(taobao=TaobaoConfig({"pv": "click"})), "replay.taobao.actions.pv"),
        (ReplayConfig(run_id="a|b"), "replay.run_id"),
        (ReplayConfig(time_shift="later"), "replay.time_shift"),  # type: ignore[arg-type]
    ]
    for cfg, key in cases:
        with pytest.raises(BadReplayConfig, match="^f.yaml: " + re.escape(key) + ": ") as e:
            check(cfg, "f.yaml")
        assert e.value.key == key
    check(ReplayConfig())  # the defaults are usable


def test_open_source_picks_the_source() -> None:
    assert open_source(ReplayConfig()).name == "synthetic"
    with pytest.raises(LogNotFound, match="taobao_userbehavior"):
        open_source(ReplayConfig(source="taobao", path=Path("/nonexistent/x")))


def test_records_are_frozen() -> None:
    rec = Action("r", "i", "u", "click", 1)
    with pytest.raises(AttributeError):
        rec.action = "conversion"  # type: ignore[misc]
