"""The real Kafka 4 broker of the stack: roundtrips, transactions, topics, restart."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from demo import consume_all
from fluxrec.config import Config
from fluxrec.topics import delete_topics, ensure_topics, list_topics

pytestmark = [pytest.mark.kafka]


def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for v in values:
        p.send(topic, v)
    p.flush()
    p.close()


def test_produce_consume_roundtrip(bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    values = [f"v{i}".encode() for i in range(500)]
    _produce(bootstrap, topic, values)
    got = consume_all(bootstrap, topic, expected=len(values))
    assert sorted(got) == sorted(values)


def test_transactions_read_committed_sees_only_committed(
    bootstrap: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(partitions=2)
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{uuid.uuid4()}")
    producer.init_transactions()

    producer.begin_transaction()
    for i in range(50):
        producer.send(topic, f"committed-{i}".encode())
    producer.commit_transaction()

    producer.begin_transaction()
    for i in range(30):
        producer.send(topic, f"aborted-{i}".encode())
    producer.flush()
    producer.abort_transaction()

    producer.begin_transaction()
    producer.send(topic, b"committed-last")
    producer.commit_transaction()
    producer.close()

    committed = consume_all(bootstrap, topic, expected=51, read_committed=True)
    assert sorted(committed) == sorted(
        [f"committed-{i}".encode() for i in range(50)] + [b"committed-last"]
    )
    # a read_uncommitted reader does see the aborted records: the filter is the broker's
    everything = consume_all(bootstrap, topic, expected=81)
    assert sum(v.startswith(b"aborted-") for v in everything) == 30


def test_topic_create_and_delete(bootstrap: str) -> None:
    name = f"t-create-{uuid.uuid4().hex[:8]}"
    assert ensure_topics(bootstrap, [name], partitions=3) == [name]
    assert name in list_topics(bootstrap)
    assert ensure_topics(bootstrap, [name], partitions=3) == []  # idempotent
    delete_topics(bootstrap, [name])
    import time

    deadline = time.monotonic() + 120
    while name in list_topics(bootstrap) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert name not in list_topics(bootstrap)


def test_configured_topics_exist(stack_config: Config) -> None:
    assert set(stack_config.kafka.topics.all().values()) <= list_topics(
        stack_config.kafka.bootstrap
    )


@pytest.mark.slow
def test_broker_restart_keeps_data(stack_config: Config, new_topic: Callable[..., str]) -> None:
    from fluxrec.stack import Stack

    bootstrap = stack_config.kafka.bootstrap
    topic = new_topic(partitions=2)
    values = [f"durable-{i}".encode() for i in range(200)]
    _produce(bootstrap, topic, values)

    stack = Stack(stack_config)
    kafka = stack.service("kafka")
    old_pid = kafka.proc.pid()
    assert kafka.proc.stop()
    assert kafka.proc.pid() is None
    assert stack.up(only=["kafka"]) == ["kafka"]
    assert kafka.proc.pid() not in (None, old_pid)

    got = consume_all(bootstrap, topic, expected=len(values))
    assert sorted(got) == sorted(values)
