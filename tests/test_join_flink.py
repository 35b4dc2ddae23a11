"""The sample-join Flink job in a real MiniCluster (parallelism 2) against the reference.

Random streams (hypothesis) of impressions, duplicates, actions early / in the window / late /
beyond the horizon, orphans, bot users and invalid events go through the real job; samples,
dead letters and the metrics topic must equal :func:`run_reference`, record for record.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fluxrec.config import Config
from fluxrec.topics import read_topic
from sample_join.reference import RawEvent, ReferenceOutput, Stream, run_reference
from sample_join.settings import JoinConfig, LabelSpec
from sample_join.testing import Act, Request, build_stream, produce_events, schema_validator

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]

CLICK_W, CONV_W, HORIZON, OOO = 10_000, 30_000, 20_000, 2_000
JOIN = JoinConfig(
    labels=[LabelSpec("click", "click", CLICK_W), LabelSpec("conversion", "conversion", CONV_W)],
    late_horizon_ms=HORIZON,
    watermark_out_of_orderness_ms=OOO,
    bot_max_actions=3,
    bot_window_ms=5_000,
    metrics_window_ms=10_000,
    metrics_flush_ms=500,
    source_idleness_ms=0,  # bounded runs: finished partitions release the watermark anyway
)
SETTINGS = settings(
    max_examples=1,
    deadline=None,
    phases=[Phase.generate],
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _delay(rng: random.Random, window: int) -> int:
    """An action delay: on an edge, in the window, late, beyond the horizon, or early."""
    return rng.choice(
        [
            rng.choice([0, 1, window, window + 1, window + HORIZON, window + HORIZON + 1, -1]),
            rng.randint(0, window),
            rng.randint(window + 1, window + HORIZON),
            rng.randint(window + HORIZON + 1, window + HORIZON + 20_000),
            rng.randint(-OOO // 4, -1),
        ]
    )


def _every_case(t0: int) -> list[Request]:
    """One request per outcome, so that every path runs whatever hypothesis draws."""
    c, v = "click", "conversion"
    cases = [
        [Act(c, 0), Act(v, CONV_W)],  # both labels, on the window edges
        [Act(c, CLICK_W + 1, dup=True)],  # late click
        [Act(c, CLICK_W + HORIZON + 1)],  # beyond the horizon: orphan
        [Act(c, -1)],  # before the impression: orphan
        [Act(v, CONV_W + HORIZON)],  # late conversion, on the horizon edge
    ]
    out = [
        Request(f"e{n}", "i0", "solo", t0 + n * 3_000, dup=n == 0, p_click=0.5, actions=a)
        for n, a in enumerate(cases)
    ]
    out.append(Request("e-orphan", "i0", "solo2", t0, impression=False, actions=[Act(c, 10)]))
    out += [  # a bot: 5 clicks within 5 s
        Request(f"e-bot{n}", "i0", "bot", t0 + n * 500, actions=[Act(c, 100)]) for n in range(5)
    ]
    return out


@st.composite
def _requests(draw: st.DrawFn, t0: int, n: int) -> list[Request]:
    """``_every_case`` plus ``n`` random requests. The structure comes from a seeded
    ``random.Random`` drawn by hypothesis, so even its first example is a rich stream (each
    example costs a Flink job) and a failure reports the seed that reproduces it."""
    rng = draw(st.randoms(use_true_random=True))
    users = rng.randint(2, 12)
    out, t = _every_case(t0), t0
    for r in range(n):
        t += rng.randint(0, 2_000)
        acts = [
            Act(action, _delay(rng, window), dup=rng.random() < 0.5)
            for action, window in (("click", CLICK_W), ("conversion", CONV_W))
            if rng.random() < 0.5
        ]
        out.append(
            Request(
                request_id=f"r{r}",
                item_id=f"i{rng.randint(0, 3)}",
                user_id=f"u{rng.randint(0, users - 1)}",
                t_ms=t,
                impression=rng.random() < 0.9,
                dup=rng.random() < 0.2,
                p_click=rng.choice([None, rng.random(), 1, 0]),
                actions=acts,
            )
        )
    return out


def _run_job(cfg: Config, new_topic: Callable[..., str], events: list[RawEvent]) -> Any:
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import JoinTopics, join_job

    topics = JoinTopics(*(new_topic() for _ in range(5)))
    produce_events(cfg.kafka.bootstrap, topics.impressions, topics.actions, events)
    t_env = create_table_env(cfg, checkpoint_interval_ms=1000)
    join_job(t_env, cfg, topics, bounded=True).wait()
    return topics


def _check_against_reference(cfg: Config, topics: Any, ref: ReferenceOutput) -> None:
    bs = cfg.kafka.bootstrap
    schema = {n: schema_validator(n) for n in ("sample", "dead_letter", "metric")}
    records = read_topic(bs, topics.samples, expected=len(ref.samples))
    by_id = {s.sample_id: s for s in ref.samples}
    empty = [k for k, v in records if v is None]  # a null value is no sample
    assert not empty, [(k, by_id.get((k or b"").decode())) for k in empty]
    got = [json.loads(v) for _, v in records]
    for s in got:
        schema["sample"].validate(s)
    assert sorted(json.dumps(s, sort_keys=True) for s in got) == sorted(
        json.dumps(s.to_json(), sort_keys=True) for s in ref.samples
    )
    dead = [
        json.loads(v)
        for _, v in read_topic(bs, topics.dead_letters, expected=len(ref.dead_letters))
    ]
    for d in dead:
        schema["dead_letter"].validate(d)
    assert Counter((d["stream"], d["reason"], d["stage"], d["payload"]) for d in dead) == Counter(
        (d.stream, d.reason, d.stage, d.payload) for d in ref.dead_letters
    )
    totals: dict[tuple[int, str, str, str | None], int] = {}
    for _, v in read_topic(bs, topics.metrics, idle_s=3.0):  # the newest value per key wins
        m = json.loads(v)
        schema["metric"].validate(m)
        totals[(m["window_start_ms"], m["stream"], m["kind"], m["reason"])] = m["count"]
    sums = Counter(totals)
    assert +sums == +ref.counts.windows
    # the reconciliation identity, per window and stream, from the job's own metrics
    per: Counter[tuple[int, str]] = Counter()
    for (w, stream, kind, _), n in sums.items():
        if kind == "in":
            per[(w, stream)] += n
        elif kind in ("sample", "labelled", "duplicate", "dead_letter"):
            per[(w, stream)] -= n
    assert not +per and not -per


@SETTINGS
@given(data=st.data())
def test_window_strategy_equals_the_reference(
    data: st.DataObject, stack_config: Config, new_topic: Callable[..., str]
) -> None:
    t0 = int(time.time() * 1000) - 3_600_000
    reqs = data.draw(_requests(t0, 120), label="requests")
    events = build_stream(reqs, OOO, seed=data.draw(st.integers(0, 99)), bad_at_ms=t0 + 5_000)
    cfg = replace(stack_config, join=JOIN)
    ref = run_reference(events, JOIN, now_ms=int(time.time() * 1000))
    assert ref.counts.balanced()
    assert {d.reason for d in ref.dead_letters} >= {"orphan_action", "late_action", "bot"}
    topics = _run_job(cfg, new_topic, events)
    _check_against_reference(cfg, topics, ref)


@SETTINGS
@given(data=st.data())
def test_fake_negative_with_late_corrections_equals_the_reference(
    data: st.DataObject, stack_config: Config, new_topic: Callable[..., str]
) -> None:
    t0 = int(time.time() * 1000) - 3_600_000
    reqs = data.draw(_requests(t0, 120), label="requests")
    events = build_stream(reqs, OOO, seed=data.draw(st.integers(0, 99)), bad_at_ms=t0 + 5_000)
    jc = replace(JOIN, strategy="fake_negative", late_action_policy="correction")
    cfg = replace(stack_config, join=jc)
    ref = run_reference(events, jc, now_ms=int(time.time() * 1000))
    assert any(s.correction for s in ref.samples)
    topics = _run_job(cfg, new_topic, events)
    _check_against_reference(cfg, topics, ref)


@pytest.mark.parametrize("strategy", ["window", "fake_negative"])
def test_the_plan_has_one_operator_per_decision(stack_config: Config, strategy: str) -> None:
    """Each decision (action dedup, bot count, everything per (request_id, item_id)) is made by
    exactly one operator that all its consumers share, and each payload is parsed once, by its
    source's format (the watermark reads the parsed time): the optimizer must not split one
    into differing copies, and nothing stands between the impressions' source and the join's
    shuffle (an operator there would copy every payload)."""
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import JoinTopics, build_join

    cfg = replace(stack_config, join=replace(JOIN, strategy=strategy))  # type: ignore[arg-type]
    plan = build_join(create_table_env(cfg), cfg, JoinTopics(*"abcde")).explain()
    graph = plan[plan.index("== Optimized Execution Plan ==") :]
    assert graph.count("fluxrec_impression(") == graph.count("fluxrec_action(") == 0
    # the watermark's time is computed once per event, in each source (nothing downstream
    # reads the rowtime column), from the parsed time
    assert graph.count("fluxrec_event_time(t, ") == 2
    # the impressions' scan (or the mini-batch assigner over it) feeds the join's shuffle as
    # it is: its rows are the join's rows
    scan = re.search(
        r"\(reuse_id=\[(\d+)\]\)\n\+- TableSourceScan\(table=\[\[\w+, \w+, fj_imp,", graph
    )
    assert scan is not None, graph
    lines = graph.splitlines()
    uses = [
        i
        for i, line in enumerate(lines)
        if f"Reused(reference_id=[{scan[1]}])" in line and "fluxrec_join(" in _root(lines, i)
    ]
    assert len(uses) == 1 and _parent(lines, uses[0]).lstrip(" :+-").startswith("Union(")
    assert graph.count("ProcessTableFunction(invocation=[fluxrec_dedup_actions(") == 1
    assert graph.count("ProcessTableFunction(invocation=[fluxrec_bot_count(") == 1
    assert graph.count("ProcessTableFunction(invocation=[fluxrec_join(") == 1
    # the metrics: summed where the join emits them, then once per (window, code)
    assert graph.count("LocalGroupAggregate(") == graph.count("GlobalGroupAggregate(") == 1
    assert graph.count("TableSourceScan(") == 2


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" :+-"))


def _parent(lines: list[str], i: int) -> str:
    """The operator above line ``i`` of a plan tree (Flink's explain indents by 3)."""
    return next(lines[j] for j in range(i - 1, -1, -1) if _indent(lines[j]) < _indent(lines[i]))


def _root(lines: list[str], i: int) -> str:
    """The first line of the tree that line ``i`` belongs to."""
    return next(lines[j] for j in range(i, -1, -1) if _indent(lines[j]) == 0)


def test_pathological_payloads_reach_the_dead_letters_with_the_reference_reason(
    stack_config: Config, new_topic: Callable[..., str]
) -> None:
    """Payloads that make a JSON parser deep or slow, and bytes that are not UTF-8, go through
    the real job: each becomes the reference's dead letter (reason, and the original bytes
    back from its payload), and a large valid one its sample. (The 10 MB strings of
    ``tests/test_join_parse.py`` exceed Kafka's default record size; 600 kB here.)"""
    t0 = int(time.time() * 1000) - 3_600_000
    big = "x" * 600_000
    imp = {"v": 1, "request_id": "r1", "item_id": "i", "user_id": "u", "event_time_ms": t0}
    click = imp | {"action": "click", "event_time_ms": t0 + 100}
    not_utf8 = json.dumps(imp | {"request_id": "r2"}).encode().replace(b'"r2"', b'"r\xff\xc0"')
    raw: list[tuple[Stream, bytes]] = [
        ("impression", json.dumps(imp | {"features": {"s": big}}).encode()),
        ("action", json.dumps(click).encode()),
        ("impression", b"[" * 100_000),
        ("action", b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("impression", not_utf8),
        ("action", json.dumps(click).encode().replace(b'"click"', b'"click\xed\xa0\x80"')),
        ("impression", b'{"v":1,"request_id":"' + big.encode()),  # unterminated
    ]
    events = [RawEvent(s, b.decode("utf-8", "surrogateescape")) for s, b in raw]
    cfg = replace(stack_config, join=JOIN)
    ref = run_reference(events, JOIN, now_ms=int(time.time() * 1000))
    assert [d.reason for d in ref.dead_letters] == ["malformed_json"] * 5
    assert len(ref.samples) == 1
    topics = _run_job(cfg, new_topic, events)
    _check_against_reference(cfg, topics, ref)


def test_views_over_raw_payloads_give_the_samples_of_the_reference(stack_config: Config) -> None:
    """The path for tables of raw payloads that are not Kafka (``make bench-join``'s datagen
    job): the scalar parse functions (``JoinSql.raw_views``) give the rows the Kafka format
    gives, so the job's samples are the reference's."""
    from bench.join import _payload_table, _reference_samples
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import prepare_join
    from sample_join.sql import JoinSql

    n, t0 = 3_000, int(time.time() * 1000) - 3_600_000
    t_env = create_table_env(stack_config, checkpoint_interval_ms=1000)
    prepare_join(t_env, stack_config)
    t_env.execute_sql(_payload_table("rj_imp_raw", n, t0, False, stack_config))
    t_env.execute_sql(_payload_table("rj_act_raw", n, t0, True, stack_config))
    sql = JoinSql(stack_config.join, "rj")
    for name, query in sql.raw_views() + sql.views():
        t_env.create_temporary_view(name, t_env.sql_query(query))
    with t_env.sql_query(sql.records_select("s", "d")).execute().collect() as rows:
        records = [(r[0], r[2]) for r in rows]
    assert not [v for topic, v in records if topic == "d"]
    got = sorted(json.dumps(json.loads(v), sort_keys=True) for topic, v in records)
    assert got == _reference_samples(stack_config, n, t0)
