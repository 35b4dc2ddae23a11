"""Real logs through the real join: Open Bandit (clicks drawn after each impression) and
Taobao UserBehavior (page views joined with their real cart / fav / buy times), replayed
into Kafka and joined by the Flink job at parallelism 2, must equal the reference
record for record, and the job's own metrics must reconcile. Skips without ../shared/data.
"""

from __future__ import annotations

import heapq
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from fluxrec.config import Config
from fluxrec.topics import read_topic
from replay.stream import replay_events
from replay.types import Stream
from sample_join.reconcile import totals, windows
from sample_join.reference import RawEvent, run_reference
from sample_join.settings import JoinConfig
from sample_join.testing import produce_events
from tests.test_replay_sources import sample_source

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow, pytest.mark.data]


def test_obd_and_taobao_replays_equal_the_reference(
    shared_data: Path, stack_config: Config, new_topic: Callable[..., str]
) -> None:
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import JoinTopics, join_job

    now = int(time.time() * 1000) - 60_000
    streams = []
    for source, path, limit in (
        ("obd", shared_data / "obd" / "bts_men.csv", 0),
        ("taobao", shared_data / "taobao_userbehavior", 20_000),
    ):
        src, rc = sample_source(source, path, limit=limit, run_id=source, time_shift="now")
        streams.append(replay_events(src, rc, now))
    merged = heapq.merge(*streams, key=lambda e: e.event_time_ms)  # both end at `now`
    events = [
        RawEvent("impression" if e.stream is Stream.IMPRESSION else "action", e.payload)
        for e in merged
    ]
    jc = replace(JoinConfig(), source_idleness_ms=0, metrics_flush_ms=500)
    ref = run_reference(events, jc, now_ms=int(time.time() * 1000))
    assert ref.counts.actions_labelled > 80 and ref.counts.balanced()

    cfg = replace(stack_config, join=jc)
    topics = JoinTopics(*(new_topic() for _ in range(5)))
    produce_events(cfg.kafka.bootstrap, topics.impressions, topics.actions, events)
    join_job(create_table_env(cfg, checkpoint_interval_ms=1000), cfg, topics, bounded=True).wait()

    bs = cfg.kafka.bootstrap
    got = read_topic(bs, topics.samples, expected=len(ref.samples), timeout_s=120)
    assert sorted(json.dumps(json.loads(v), sort_keys=True) for _, v in got) == sorted(
        json.dumps(s.to_json(), sort_keys=True) for s in ref.samples
    )
    dead = read_topic(bs, topics.dead_letters, expected=len(ref.dead_letters))
    assert Counter((json.loads(v)["reason"], json.loads(v)["payload"]) for _, v in dead) == Counter(
        (d.reason, d.payload) for d in ref.dead_letters
    )
    metric = totals(v for _, v in read_topic(bs, topics.metrics, idle_s=3))
    assert +Counter(metric) == +ref.counts.windows
    assert all(w.balance == 0 for w in windows(metric))
