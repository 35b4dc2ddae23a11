"""Replay sources on the real public logs in ../shared/data (skipped where absent).

Expected figures are computed here from the CSV files themselves, independently of the
sources' code, and the README's published counts are checked too.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from replay.settings import ReplayConfig
from replay.stream import replay_events
from replay.table import parse_time_ms
from replay.taobao import TaobaoSource
from replay.types import Action, Impression, Record, Stream, to_event
from tests.test_replay_sources import sample_source

pytestmark = [pytest.mark.data]

REPO = Path(__file__).resolve().parents[1]


def in_order(recs: list[Record]) -> bool:
    keys = [(r.event_time_ms, isinstance(r, Action)) for r in recs]
    return keys == sorted(keys)


def conform(recs: list[Record]) -> None:
    for stream in Stream:
        schema = json.loads(
            (REPO / "sample_join" / "schemas" / f"{stream}.schema.json").read_text()
        )
        v = jsonschema.Draft202012Validator(schema)
        for r in recs:
            if r.stream is stream:
                v.validate(json.loads(to_event(r).payload))


def test_obd_counts_match_the_csv_files(shared_data: Path) -> None:
    folder = shared_data / "obd"
    src, _ = sample_source("obd", folder)
    recs = list(src.records())
    expected_clicks: Counter[str] = Counter()
    rows: Counter[str] = Counter()
    for f in sorted(folder.glob("*.csv")):
        if f.name.endswith("_item_context.csv"):
            continue
        with f.open(newline="") as fh:
            for row in csv.DictReader(fh):
                rows[f.stem] += 1
                expected_clicks[f.stem] += row["click"] == "1"
    assert expected_clicks == {"bts_men": 69, "bts_women": 46, "random_men": 46, "random_women": 46}
    imps = [r for r in recs if isinstance(r, Impression)]
    clicks = [r for r in recs if isinstance(r, Action)]
    assert Counter(r.request_id.split("-")[1] for r in imps) == rows
    assert Counter(r.request_id.split("-")[1] for r in clicks) == expected_clicks
    assert {c.action for c in clicks} == {"click"}
    assert in_order(recs)
    by_id = {(r.request_id, r.item_id): r for r in imps}
    assert all(c.event_time_ms > by_id[(c.request_id, c.item_id)].event_time_ms for c in clicks)
    assert all("affinity" in r.dense and "item_feature_0" in r.dense for r in imps)
    conform([*recs[:2000], *clicks])


def test_taobao_actions_only_after_a_pv_of_the_same_user_and_item(shared_data: Path) -> None:
    folder = shared_data / "taobao_userbehavior"
    src = TaobaoSource(ReplayConfig(source="taobao", path=folder), folder)
    recs = list(src.records())
    pv_times: dict[tuple[str, str], list[int]] = {}
    behaviors: Counter[str] = Counter()
    with (folder / "UserBehavior.csv").open(newline="") as fh:
        for user, item, _cat, behavior, ts in csv.reader(fh):
            behaviors[behavior] += 1
            if behavior == "pv":
                pv_times.setdefault((user, item), []).append(int(ts) * 1000)
    assert behaviors == {"pv": 98_361, "cart": 6_063, "fav": 3_383, "buy": 2_493}
    imps = {r.request_id: r for r in recs if isinstance(r, Impression)}
    actions = [r for r in recs if isinstance(r, Action)]
    assert len(imps) == behaviors["pv"]
    assert Counter(a.action for a in actions) == {"click": 111, "conversion": 128}  # 239 in all
    for a in actions:
        imp = imps[a.request_id]
        assert imp.item_id == a.item_id
        assert imp.event_time_ms <= a.event_time_ms
        # the latest pv of this user and item at or before the action
        earlier = [t for t in pv_times[(imp.user_id, imp.item_id)] if t <= a.event_time_ms]
        assert imp.event_time_ms == max(earlier)
    skipped = behaviors["cart"] + behaviors["fav"] + behaviors["buy"] - len(actions)
    assert src.stats() == {"actions_without_pv": skipped}
    assert in_order(recs)
    conform([*recs[:2000], *actions])


def test_tencent_conversions_keep_their_real_times(shared_data: Path) -> None:
    folder = shared_data / "tencent_pcvr"
    src, _ = sample_source("tencent", folder)
    recs = list(src.records())
    with (folder / "train_small.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    conversions = {
        f"tc-{r['instanceID']}": parse_time_ms(r["conversionTime"], "%Y-%m-%d%H%M%S", "2017-03-")
        for r in rows
        if r["label"] == "1"
    }
    assert len(rows) == 1000 and len(conversions) == 31
    actions = {a.request_id: a.event_time_ms for a in recs if isinstance(a, Action)}
    assert actions == conversions
    imps = [r for r in recs if isinstance(r, Impression)]
    assert len(imps) == 1000
    assert all("ad_id" in r.sparse and "age" in r.sparse for r in imps)  # side tables joined
    assert in_order(recs)
    conform(recs)


def test_time_shift_now_ends_a_real_log_at_now(shared_data: Path) -> None:
    src, cfg = sample_source("tencent", shared_data / "tencent_pcvr", limit=500, time_shift="now")
    now = 1_800_000_000_000
    raw = list(itertools.islice(src.records(), 500))
    shifted = list(replay_events(src, cfg, now))
    assert len(shifted) == 500
    assert shifted[-1].event_time_ms == now
    offset = now - raw[-1].event_time_ms
    assert [e.event_time_ms - offset for e in shifted] == [r.event_time_ms for r in raw]
    none = list(replay_events(src, replace(cfg, time_shift="none"), now))
    assert [e.event_time_ms for e in none] == [r.event_time_ms for r in raw]


def test_real_replays_pass_the_joins_reference(shared_data: Path) -> None:
    """OBD and Taobao replays, through the join's reference semantics: every event is valid
    and in time, every OBD click labels its impression (or is late), every Taobao action is
    accounted."""
    from sample_join.reference import RawEvent, run_reference
    from sample_join.settings import JoinConfig

    now = 1_800_000_000_000
    validation = {"malformed_json", "missing_field", "bad_type", "unsupported_version"}
    for source, path, limit in (
        ("obd", shared_data / "obd" / "bts_men.csv", 0),
        ("taobao", shared_data / "taobao_userbehavior", 40_000),
    ):
        src, cfg = sample_source(source, path, limit=limit, time_shift="now")
        events = list(replay_events(src, cfg, now))
        raw = [
            RawEvent("impression" if e.stream is Stream.IMPRESSION else "action", e.payload)
            for e in events
        ]
        out = run_reference(raw, JoinConfig(), now_ms=now)
        actions = sum(e.stream is Stream.ACTION for e in events)
        assert actions > 50 and out.counts.balanced(), source
        assert out.counts.actions_in == actions
        reasons = Counter(d.reason for d in out.dead_letters)
        assert not set(reasons) & (validation | {"unknown_action", "future_event", "too_late"})
        assert out.counts.actions_labelled + sum(reasons.values()) == actions
        if source == "obd":  # a drawn delay may pass the 5 min window: a late action
            assert len(out.samples) == 10_000 and set(reasons) <= {"late_action"}
            labelled = sum(s.labels["click"] for s in out.samples)
            assert labelled + reasons["late_action"] == actions == 69


SAMPLES = {  # sample config -> (its log in shared/data, impressions, actions by type)
    "obd": ("obd", 40_000, {"click": 207}),
    "taobao": ("taobao_userbehavior", 98_361, {"click": 111, "conversion": 128}),
    "tencent": ("tencent_pcvr", 1_000, {"conversion": 31}),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_config_replays_its_log(
    shared_data: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """`fluxrec replay --config configs/NAME.yaml` on the log of shared/data it describes."""
    from fluxrec.cli import main

    folder, impressions, actions = SAMPLES[name]
    cfg = str(REPO / "configs" / f"{name}.yaml")
    path = str(shared_data / folder)
    assert main(["replay", "--config", cfg, "--path", path, "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert re.search(rf"impressions\s+{impressions:,}\n", err)
    sent = Counter(json.loads(line)["stream"] for line in out.splitlines())
    assert sent == {"impression": impressions, "action": sum(actions.values())}
    by_type = ", ".join(f"{k} {v}" for k, v in sorted(actions.items()))
    assert re.search(rf"actions by type\s+{by_type}\n", err)
