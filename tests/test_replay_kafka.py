"""``fluxrec replay`` into the real Kafka broker: what is read back is exactly what was
sent, keyed by request_id, in event-time order per key."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
from kafka import KafkaConsumer

from fluxrec.cli import main
from fluxrec.config import Config
from replay.run import run_replay
from replay.settings import FaultsConfig, SyntheticConfig
from replay.sources import open_source
from replay.stream import replay_events
from replay.types import Stream

pytestmark = [pytest.mark.kafka]

NOW = 1_900_000_000_000


def read_back(bootstrap: str, topic: str, expected: int) -> list[tuple[int, int, str, str]]:
    """``(partition, offset, key, value)`` of every record, until ``expected`` arrived."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    out: list[tuple[int, int, str, str]] = []
    try:
        for _ in range(120):
            for recs in consumer.poll(timeout_ms=500).values():
                out.extend((r.partition, r.offset, r.key.decode(), r.value.decode()) for r in recs)
            if len(out) >= expected:
                break
        for recs in consumer.poll(timeout_ms=500).values():  # anything extra is a bug
            out.extend((r.partition, r.offset, r.key.decode(), r.value.decode()) for r in recs)
    finally:
        consumer.close()
    return out


def test_replay_reads_back_exactly_what_was_sent_in_order_per_key(
    stack_config: Config, new_topic: Callable[..., str]
) -> None:
    topics = {Stream.IMPRESSION: new_topic(partitions=2), Stream.ACTION: new_topic(partitions=2)}
    rcfg = replace(
        stack_config.replay,
        synthetic=SyntheticConfig(impressions=2000, users=300, items=200),
        faults=FaultsConfig(malformed=0.02, duplicate=0.02, orphan=0.1),
        seed=11,
    )
    report = run_replay(stack_config, rcfg, topics=topics, now_ms=NOW)
    sent = list(replay_events(open_source(rcfg), rcfg, NOW))
    assert report.total == len(sent) and report.last_ms == NOW
    for stream, topic in topics.items():
        mine = [e for e in sent if e.stream is stream]
        assert report.events[stream] == len(mine)
        got = read_back(stack_config.kafka.bootstrap, topic, len(mine))
        assert Counter((k, v) for _, _, k, v in got) == Counter((e.key, e.payload) for e in mine)
        # one key, one partition; within it, the replay's (event-time) order
        by_key: dict[str, list[tuple[int, int, str]]] = {}
        for part, off, key, value in got:
            by_key.setdefault(key, []).append((part, off, value))
        for key, recs in by_key.items():
            assert len({p for p, _, _ in recs}) == 1, key
            in_kafka = [v for _, _, v in sorted(recs)]
            assert in_kafka == [e.payload for e in mine if e.key == key]
            time_of = {e.payload: e.event_time_ms for e in mine if e.key == key}
            times = [time_of[v] for v in in_kafka]
            assert times == sorted(times), key


def test_cli_replays_into_the_given_topics_and_nothing_is_in_the_future(
    stack_config: Config,
    stack_config_path: object,
    new_topic: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    imp, act = new_topic(partitions=2), new_topic(partitions=2)
    before_ms = int(time.time() * 1000)
    rc = main(
        [
            "replay",
            "--config",
            str(stack_config_path),
            "--impressions",
            "600",
            "--seed",
            "2",
            "--compression",
            "none",
            "--impressions-topic",
            imp,
            "--actions-topic",
            act,
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"-> {imp}" in out and f"-> {act}" in out and "(none)" in out
    got = read_back(stack_config.kafka.bootstrap, imp, 600)
    assert len(got) == 600
    values = [json.loads(v) for _, _, _, v in got]
    assert {v["request_id"] for v in values} == {k for _, _, k, _ in got}
    assert re.search(r"impressions\s+600 -> ", out)
    # --time-shift now (the config's default): the last event is at the start of the replay
    assert max(v["event_time_ms"] for v in values) <= before_ms + 60_000
    assert max(v["event_time_ms"] for v in values) >= before_ms - 3_600_000
