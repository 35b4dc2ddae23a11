"""A broker outage under a running job of 2 workers (a private broker, stopped mid-run):
the job ends by itself after ``trainer.broker_timeout_s`` with one line naming the cause
and the fix, writes its final checkpoint, and every version it published is whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.manifest import manifest_objects, parse_manifest
from exporter.sdk import DeltaConsumer
from exporter.store import open_store
from fluxrec.config import load_config
from fluxrec.testing import free_port, unique_name, write_test_config
from tests.test_trainer_crash import N, _config, _manifests, _newest_meta, _produce, _wait

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_a_broker_outage_ends_the_job_with_one_line_and_no_partial_version(
    tmp_path: Path,
) -> None:
    from fluxrec.stack import Stack
    from fluxrec.topics import ensure_topics

    stack = Stack(load_config(write_test_config(tmp_path / "stack", s3_server=False)))
    assert stack.up(only=["kafka"]) == ["kafka"]  # a broker of its own: it is stopped below
    job: subprocess.Popen[bytes] | None = None
    try:
        bootstrap = stack.cfg.kafka.bootstrap
        topic = unique_name("outage")
        ensure_topics(bootstrap, [topic], 2)
        _produce(bootstrap, topic)
        cfg = _config(tmp_path / "stack" / "fluxrec.yaml", tmp_path, topic, free_port())
        doc = yaml.safe_load(cfg.read_text())
        doc["trainer"] |= {"broker_timeout_s": 3, "metrics_port": 0}
        cfg.write_text(yaml.safe_dump(doc))
        ck = tmp_path / "ck"
        job = subprocess.Popen(
            [sys.executable, "-m", "fluxrec.cli", "train", "--config", str(cfg), "--workers", "2"],
            env={**os.environ, "PYTHONPATH": str(ROOT), "FLUXREC_TRAIN_CHECKPOINT_DIR": str(ck)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: the cleanup kills every worker
        )
        objects = f"file://{tmp_path / 'objects'}"
        _wait(
            "every sample trained and published",
            lambda: any(v["samples"] == N for v in _manifests(objects)),
            job,
        )
        assert stack.down() == ["kafka"]  # the outage
        out, err = job.communicate(timeout=300)  # ends by itself
    finally:
        if job is not None and job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate(timeout=120)
        stack.down(purge=True)
    text = out.decode() + err.decode()
    assert job.returncode == 1, text
    errors = [line for line in err.decode().splitlines() if line.startswith("fluxrec: error:")]
    assert errors, text  # each worker's last word: one line each
    assert any(
        f"no Kafka broker answered at {bootstrap} (kafka.bootstrap) for 3 s "
        "(trainer.broker_timeout_s)"
        in line
        and "`fluxrec stack up`" in line
        and "resumes from its last checkpoint" in line
        for line in errors
    ), errors
    meta = _newest_meta(ck)  # the final checkpoint, written after the outage
    assert meta is not None and meta["samples"] == N and meta["world"] == 2
    store = open_store(objects)
    for v in _manifests(objects):  # whole versions only, each part's objects all there
        doc = parse_manifest(store.get(f"versions/{v['sequence']:012d}/manifest.json"))
        assert doc["format"] == 2 and len(doc["parts"]) == 2
        for obj in manifest_objects(doc):
            assert len(store.get(obj["key"])) == obj["bytes"], obj["key"]
    consumer = DeltaConsumer(store)
    assert consumer.sync() >= 1 and consumer.version == _manifests(objects)[-1]["sequence"]
