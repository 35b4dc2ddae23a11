"""Crash test: ``kill -9`` the ``fluxrec train`` daemon mid-stream, restart, and check that
every sample was trained exactly once (sample-id checksum and count in the checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from trainer.hashing import stable_hash
from trainer.synthetic import synthetic_samples

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

N = 3000


def _newest_meta(ck: Path) -> dict[str, int] | None:
    found = sorted(ck.glob("ckpt-*"))
    return json.loads((found[-1] / "meta.json").read_text()) if found else None


def test_kill_9_and_restart_trains_every_sample_exactly_once(
    bootstrap: str, new_topic: Callable[..., str], stack_config_path: Path, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    topic = new_topic(partitions=2)
    samples = synthetic_samples(N, seed=5)
    prod = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    prod.init_transactions()
    prod.begin_transaction()
    for s in samples:
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
    prod.commit_transaction()
    prod.close()

    doc = yaml.safe_load(stack_config_path.read_text())
    doc.setdefault("kafka", {}).setdefault("topics", {})["samples"] = topic
    doc["model"] = {"arch": "deepfm", "embedding_dim": 8, "mlp": [16]}
    doc["features"] = {
        "sparse": [{"name": "user_id"}, {"name": "item_id"}, {"name": "category"}],
        "dense": [{"name": "price"}],
    }
    ck = tmp_path / "ck"
    doc["trainer"] = {
        "batch_size": 50,
        "max_batch_wait_s": 0.2,
        "checkpoint_every_samples": 300,
        "checkpoint_every_s": 3600,
    }
    cfg = tmp_path / "fluxrec.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    cmd = [
        sys.executable,
        "-m",
        "fluxrec.cli",
        "train",
        "--config",
        str(cfg),
        "--checkpoint-dir",
        str(ck),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            meta = _newest_meta(ck)
            if meta and meta["samples"] >= 600:
                break
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    killed_at = _newest_meta(ck)
    assert killed_at is not None and 0 < killed_at["samples"] < N, killed_at

    done = subprocess.run(
        [*cmd, "--until-caught-up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout
    meta = _newest_meta(ck)
    assert meta is not None
    want = 0
    for s in samples:
        want ^= stable_hash("sample_id", s["sample_id"])
    assert meta["samples"] == N
    assert meta["id_xor"] == want  # a sample trained twice or never would change the XOR
    assert sum(int(o) for o in meta["offsets"][topic].values()) >= N
    assert (ck / "metrics.jsonl").exists()
