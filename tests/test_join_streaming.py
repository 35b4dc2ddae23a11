"""The join as a long-running job: too-late events, and exactly-once across cancel + restore.

Unbounded jobs in a real MiniCluster (parallelism 2). Time advances by "flush" events sent to
every partition of both topics (no source idleness), so the watermark moves deterministically.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from fluxrec.config import Config
from fluxrec.testing import checkpoint_done, wait_until
from fluxrec.topics import read_topic
from sample_join.reference import RawEvent, run_reference
from sample_join.testing import Act, Request, build_stream, produce_events
from tests.test_join_flink import JOIN, OOO, _every_case

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]

STREAM_JOIN = replace(JOIN, source_idleness_ms=0)
PARTITIONS = 2


def _send_to_every_partition(bootstrap: str, topic: str, payloads: list[str]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for p in range(PARTITIONS):
            for text in payloads:
                producer.send(topic, text.replace("@P", str(p)).encode(), partition=p)
        producer.flush()
    finally:
        producer.close()


def _flush(bootstrap: str, topics: Any, t: int) -> None:
    """Move every partition's watermark to ``t - out_of_orderness``: an impression and its
    click at ``t`` on every partition (keys ``flush<partition>-<t>``)."""
    imp = (
        f'{{"v":1,"request_id":"flush@P-{t}","item_id":"f","user_id":"flush","event_time_ms":{t},'
        '"features":{}}'
    )
    act = (  # and its click (decided at once when bot counting is off)
        f'{{"v":1,"request_id":"flush@P-{t}","item_id":"f","user_id":"flush@P",'
        f'"action":"click","event_time_ms":{t}}}'
    )
    _send_to_every_partition(bootstrap, topics.impressions, [imp])
    _send_to_every_partition(bootstrap, topics.actions, [act])


@pytest.fixture
def running(stack_config: Config, new_topic: Callable[..., str]) -> Iterator[Callable[..., Any]]:
    """``start(cfg, topics, restore_from=None)`` runs the join unbounded; cancelled at teardown."""
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import join_job

    started: list[Any] = []

    def start(cfg: Config, topics: Any, restore_from: str | None = None) -> Any:
        t_env = create_table_env(cfg, checkpoint_interval_ms=500, restore_from=restore_from)
        result = join_job(t_env, cfg, topics)
        client = result.get_job_client()
        started.append(client)
        # running: every task is up once a checkpoint completes (however loaded the machine)
        ckdir = cfg.stack.state_dir / "flink" / "checkpoints"
        job = str(client.get_job_id())
        wait_until(f"job {job}'s first checkpoint", lambda: checkpoint_done(ckdir, job))
        return client

    yield start
    for client in started:
        with contextlib.suppress(Exception):  # already cancelled or finished
            client.cancel().result()


def _topics(new_topic: Callable[..., str]) -> Any:
    from pipelines.join_job import JoinTopics

    return JoinTopics(*(new_topic(partitions=PARTITIONS) for _ in range(5)))


def test_events_behind_the_watermark_are_too_late_and_counted(
    stack_config: Config, new_topic: Callable[..., str], running: Callable[..., Any]
) -> None:
    cfg = replace(stack_config, join=STREAM_JOIN)
    bs, topics = cfg.kafka.bootstrap, _topics(new_topic)
    t0 = int(time.time() * 1000) - 3_600_000
    first = build_stream([Request("a", "i", "ua", t0), Request("b", "i", "ub", t0 + 1)], OOO)
    produce_events(bs, topics.impressions, topics.actions, first)
    running(cfg, topics)
    _flush(bs, topics, t0 + 100_000)  # watermark -> t0 + 98 s: both windows of "a" closed
    samples = read_topic(bs, topics.samples, expected=2, timeout_s=120)
    assert sorted(json.loads(v)["sample_id"] for _, v in samples) == ["a|i|0", "b|i|0"]
    late = build_stream([Request("a", "i", "ua", t0, impression=False, actions=[Act("click", 5)]),
                         Request("c", "i", "uc", t0 + 2_000)], OOO)  # fmt: skip
    produce_events(bs, topics.impressions, topics.actions, late)
    dead = read_topic(bs, topics.dead_letters, expected=2, timeout_s=120)
    got = sorted((json.loads(v)["reason"], json.loads(v)["stream"]) for _, v in dead)
    assert got == [("too_late", "action"), ("too_late", "impression")]
    assert {json.loads(v)["payload"] for _, v in dead} == {e.payload for e in late}
    samples = read_topic(bs, topics.samples, idle_s=2)
    assert len(samples) == 2 and all(json.loads(v)["labels"]["click"] == 0 for _, v in samples)


def _latest_checkpoint(root: Path, job_id: str) -> Path:
    done = [p for p in (root / job_id).glob("chk-*") if (p / "_metadata").is_file()]
    assert done, f"no completed checkpoint under {root / job_id}"
    return max(done, key=lambda p: int(p.name.split("-")[1]))


def test_cancel_and_restore_from_a_checkpoint_loses_and_repeats_nothing(
    stack_config: Config, new_topic: Callable[..., str], running: Callable[..., Any]
) -> None:
    jc = replace(STREAM_JOIN, strategy="fake_negative", late_action_policy="correction")
    cfg = replace(stack_config, join=jc)
    bs, topics = cfg.kafka.bootstrap, _topics(new_topic)
    t0 = int(time.time() * 1000) - 3_600_000
    reqs = _every_case(t0)
    reqs += [
        Request(f"r{n}", f"i{n % 3}", f"u{n % 17}", t0 + 200 * n, dup=n % 7 == 0,
                actions=[Act("click", 50 * (n % 11))] if n % 3 == 0 else [])
        for n in range(600)
    ]  # fmt: skip
    events = build_stream(reqs, OOO, seed=3)
    half = len(events) // 2
    produce_events(bs, topics.impressions, topics.actions, events[:half])
    first = running(cfg, topics)
    committed = read_topic(bs, topics.samples, expected=half // 4, timeout_s=120, idle_s=1)
    assert len(committed) >= half // 4  # the first run made progress before it was cancelled
    first.cancel().result()
    chk = _latest_checkpoint(cfg.stack.state_dir / "flink" / "checkpoints", str(first.get_job_id()))
    # the checkpoint holds the state's changelog (flink.state_changelog), which the restore reads
    changelog = cfg.stack.state_dir / "flink" / "checkpoints" / "changelog"
    assert any(p.is_file() for p in changelog.rglob("*")), f"no changelog under {changelog}"

    produce_events(bs, topics.impressions, topics.actions, events[half:])
    end = max(r.t_ms for r in reqs) + 200_000
    running(cfg, topics, restore_from=str(chk))
    _flush(bs, topics, end)
    ref = run_reference(events, jc, now_ms=int(time.time() * 1000))
    got = read_topic(
        bs, topics.samples, expected=len(ref.samples) + PARTITIONS, idle_s=5, timeout_s=180
    )
    ids = Counter(json.loads(v)["sample_id"] for _, v in got)
    flush = {i for i in ids if i.startswith("flush")}
    assert len(flush) == PARTITIONS  # their negatives; their clicks wait in the bot count
    for i in flush:
        del ids[i]
    assert ids == Counter(s.sample_id for s in ref.samples)  # each exactly once
    dead = read_topic(
        bs, topics.dead_letters, expected=len(ref.dead_letters), idle_s=3, timeout_s=180
    )
    assert Counter(json.loads(v)["payload"] for _, v in dead) == Counter(
        d.payload for d in ref.dead_letters
    )


def test_raw_events_helper_covers_every_outcome() -> None:
    """The stream above exercises corrections, late corrections, orphans and bots."""
    t0 = 1_700_000_000_000
    events: list[RawEvent] = build_stream(_every_case(t0), OOO, seed=3)
    jc = replace(STREAM_JOIN, strategy="fake_negative", late_action_policy="correction")
    out = run_reference(events, jc)
    assert out.counts.corrections >= 3 and out.counts.late_actions >= 2
    assert {d.reason for d in out.dead_letters} == {"orphan_action", "bot"}
