"""The trainer loop on a real Kafka topic (transactional producer, read_committed)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from trainer.core import Trainer, featurize
from trainer.daemon import run
from trainer.metrics import auc
from trainer.synthetic import synthetic_samples

pytestmark = pytest.mark.kafka

FIELDS = [("user_id", 8), ("item_id", 8), ("category", 8)]


def test_trains_from_a_committed_topic_and_auc_rises(
    bootstrap: str, new_topic: Callable[..., str]
) -> None:
    from kafka import KafkaProducer

    topic = new_topic(partitions=2)
    samples = synthetic_samples(5000, seed=2)
    train, held = samples[:4000], samples[4000:]
    prod = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    prod.init_transactions()
    prod.begin_transaction()
    for s in train:
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
    prod.send(topic, key=b"bad", value=b"not json")  # counted, never trained
    v2 = {**train[0], "v": 2, "sample_id": "r-v2|i-1|0"}  # a version it cannot read
    prod.send(topic, key=b"v2", value=json.dumps(v2).encode())
    conv = {**train[1], "sample_id": train[1]["sample_id"] + "|conversion", "correction": True}
    conv["labels"] = {"click": 0, "conversion": 1}  # not a click sample: skipped
    prod.send(topic, key=b"conv", value=json.dumps(conv).encode())
    prod.commit_transaction()
    prod.begin_transaction()  # aborted: read_committed must never see these
    for s in held[:50]:
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
    prod.abort_transaction()
    prod.close()

    t = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[32], dense_lr=0.05)
    stop = threading.Event()
    timer = threading.Timer(120.0, stop.set)  # a guard, not an assertion
    timer.start()
    try:
        st = run(
            t, bootstrap, topic, stop=stop, batch_size=200, max_wait_s=0.5, until_caught_up=True
        )
    finally:
        timer.cancel()
    assert not stop.is_set()  # ended by catching up, not by the guard
    assert st.samples == 4000 and t.samples == 4000  # the aborted 50 were never seen
    assert st.lag == 0
    assert st.bad == 2 and st.bad_reasons == {"malformed_json": 1, "unsupported_version": 1}
    assert st.skipped == 1 and t.skipped == 1
    # the C fast path read the 4,000 samples; the three others went to the Arrow path
    assert t.featurizer.native and t.featurizer.slow_values == 3
    assert sum(t.offsets[topic].values()) >= 4003  # includes the control/bad records
    p = t.score(featurize(held, [f for f, _ in FIELDS], ["price"]))
    y = np.array([s["labels"]["click"] for s in held], dtype=np.float64)
    got, oracle = auc(p, y), auc(np.array([s["p_click"] for s in held]), y)
    assert got > 0.68, (got, oracle)
    cut = t.take_cut()
    assert cut is not None and cut.full
    assert cut.offsets == t.offsets and cut.samples == 4000


def test_a_partition_count_change_ends_the_loop_with_the_fix(
    bootstrap: str, new_topic: Callable[..., str]
) -> None:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewPartitions

    topic = new_topic(partitions=1)
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    for s in synthetic_samples(100, seed=3):
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
    prod.flush()
    prod.close()
    t = Trainer(FIELDS, ["price"], mlp=[8])
    stop = threading.Event()
    result: list[Any] = []

    def loop() -> None:
        result.append(
            run(
                t,
                bootstrap,
                topic,
                stop=stop,
                batch_size=100,
                max_wait_s=0.2,
                metadata_max_age_ms=2000,
            )
        )

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        deadline = time.monotonic() + 300
        while t.samples < 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        admin.create_partitions({topic: NewPartitions(total_count=2)})
        admin.close()
        worker.join(timeout=280)
        ended = not worker.is_alive()  # by itself: stop is only set below
    finally:
        stop.set()
        worker.join()
    (st,) = result
    assert ended, "the loop did not end after the partition change"
    assert t.samples == 100
    assert f"topic {topic!r} went from 1 to 2 partitions" in st.fatal
    assert "restart the trainer" in st.fatal


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_poll_of_bad_values_only_moves_the_offsets_past_them(
    bootstrap: str, new_topic: Callable[..., str], prefetch: bool
) -> None:
    from kafka import KafkaProducer

    topic = new_topic(partitions=1)
    prod = KafkaProducer(bootstrap_servers=bootstrap)
    for value in (b"not json", b"{}", b'{"v": 2}', b""):
        prod.send(topic, value=value)
    prod.flush()
    prod.close()
    t = Trainer(FIELDS, ["price"], arch="deepfm", mlp=[8])
    stop = threading.Event()
    timer = threading.Timer(60.0, stop.set)  # a guard, not an assertion
    timer.start()
    try:
        st = run(
            t,
            bootstrap,
            topic,
            stop=stop,
            batch_size=16,
            max_wait_s=0.2,
            until_caught_up=True,
            prefetch=prefetch,
        )
    finally:
        timer.cancel()
    assert not stop.is_set()
    assert st.samples == 0 and t.samples == 0 and t.step == 0  # nothing trained
    assert st.bad == 4 and st.bad_reasons == {"malformed_json": 2, "missing_field": 1,
                                              "unsupported_version": 1}  # fmt: skip
    assert t.offsets[topic] == {0: 4}  # past the bad values, never past an untrained one
