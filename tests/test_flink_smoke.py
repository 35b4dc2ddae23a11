"""The Kafka -> Flink SQL -> Kafka smoke job in a real MiniCluster at parallelism 2."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from demo import consume_all, smoke_events
from fluxrec.config import Config

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]


def test_smoke_job_delivers_exactly_the_expected_records(
    stack_config: Config, new_topic: Callable[..., str]
) -> None:
    from pipelines.flink_env import create_table_env
    from pipelines.smoke import KEPT_KINDS, smoke_job

    assert stack_config.flink.parallelism == 2
    src, dst = new_topic(partitions=2), new_topic(partitions=2)
    payloads = smoke_events(600, seed=11)
    producer = KafkaProducer(bootstrap_servers=stack_config.kafka.bootstrap)
    for p in payloads:
        producer.send(src, p)
    producer.flush()
    producer.close()

    expected = []
    for p in payloads:
        try:
            rec = json.loads(p)
        except ValueError:
            continue
        if rec["kind"] in KEPT_KINDS:
            expected.append({**rec, "user_item": f"{rec['user_id']}|{rec['item_id']}"})
    assert 0 < len(expected) < len(payloads)  # the input has records the job must drop

    t_env = create_table_env(stack_config, checkpoint_interval_ms=0)
    smoke_job(t_env, stack_config, src, dst).wait()
    # PyFlink's JVM (the MiniCluster's) runs with $JVM_ARGS, which create_table_env sets
    # to flink.jvm_args unless it was set: G1 by default
    from pyflink.java_gateway import get_gateway

    mx = get_gateway().jvm.java.lang.management.ManagementFactory
    assert set(os.environ["JVM_ARGS"].split()) <= set(mx.getRuntimeMXBean().getInputArguments())
    if "-XX:+UseG1GC" in os.environ["JVM_ARGS"]:
        assert "G1 Young Generation" in {gc.getName() for gc in mx.getGarbageCollectorMXBeans()}

    got = [json.loads(v) for v in consume_all(stack_config.kafka.bootstrap, dst, len(expected))]
    key = lambda r: r["id"]  # noqa: E731
    assert sorted(got, key=key) == sorted(expected, key=key)
