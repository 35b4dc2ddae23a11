"""Crash test of ``fluxrec train`` (a real subprocess on a real topic, exporter on):

1. ``kill -9`` it while it holds trained samples that no checkpoint has yet;
2. restart it and stop it with SIGTERM: exit 0 with a final checkpoint and export;
3. restart it until caught up: every sample was trained exactly once (count and XOR of
   sample ids in the checkpoint), and a server reading the published versions with the
   delta consumer SDK holds exactly the trainer's final tables and dense parameters.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from exporter.errors import ObjectNotFound
from exporter.sdk import DeltaConsumer, open_store
from featurize.hashing import stable_hash
from fluxrec.testing import free_port
from trainer.synthetic import synthetic_samples

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

N = 4000
EVERY = 1000  # checkpoint every this many samples


def _newest(ck: Path) -> Path | None:
    """The newest complete checkpoint (its meta.json is written last)."""
    found = sorted(d for d in ck.glob("ckpt-*") if (d / "meta.json").is_file())
    return found[-1] if found else None


def _newest_meta(ck: Path) -> dict[str, Any] | None:
    path = _newest(ck)
    return json.loads((path / "meta.json").read_text()) if path else None


def _assert_exactly_once(
    ck: Path, topic: str, samples: list[dict[str, Any]], n_skipped: int
) -> dict[str, Any]:
    """The newest checkpoint trained every sample once: count and XOR of the sample ids
    (a sample trained twice or never would change the XOR); returns its meta."""
    meta = _newest_meta(ck)
    assert meta is not None
    want = 0
    for s in samples:
        want ^= stable_hash("sample_id", s["sample_id"])
    assert (meta["samples"], meta["skipped"]) == (N, n_skipped)
    assert meta["id_xor"] == want
    assert sum(meta["offsets"][topic].values()) >= N + n_skipped + 1  # + control records
    return meta


def _assert_served_is_checkpointed(objects: str, ck: Path, topic: str) -> None:
    """A server reading the published versions holds exactly the newest checkpoint's
    tables (the union of every worker's part) and dense parameters."""
    path, meta = _newest(ck), _newest_meta(ck)
    assert path is not None and meta is not None
    last = _manifests(objects)[-1]
    assert last["samples"] == meta["samples"]
    assert last["kafka_offsets"][topic] == meta["offsets"][topic]
    consumer = DeltaConsumer(open_store(objects))
    assert consumer.sync() >= 1 and consumer.version == last["sequence"]
    state = consumer.state
    parts = [np.load(path / p / "tensors.npz", allow_pickle=False) for p in meta["parts"]]
    for tname, fields in meta["tables"].items():
        ids, fld, weight = (
            np.concatenate([z[f"table/{tname}/{k}"] for z in parts])
            for k in ("ids", "field", "weight")
        )
        for k, field in enumerate(fields):
            mine = fld == k
            served = state.tables[field]
            assert np.array_equal(served.ids, np.sort(ids[mine]))  # no stale, no missing
            order = np.argsort(ids[mine])
            assert np.array_equal(served.values, weight[mine][order])
    for name, value in state.dense.items():
        assert np.array_equal(value, parts[0][f"model/{name}"]), name


def _trained(port: int) -> int | None:
    """``fluxrec_trainer_samples_total`` from the daemon's /metrics (None: not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
    except OSError:
        return None
    m = re.search(r"^fluxrec_trainer_samples_total (\d+)$", body, re.M)
    return int(m.group(1)) if m else None


def _wait(what: str, cond: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while not cond():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"daemon exited ({proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _manifests(url: str) -> list[dict[str, Any]]:
    store = open_store(url)
    keys = sorted(k for k in store.list("versions/") if k.endswith("/manifest.json"))
    docs = []
    for k in keys:
        try:
            docs.append(json.loads(store.get(k)))
        except ObjectNotFound:  # pruned by the exporter between the listing and the read
            continue
    return docs


def _produce(bootstrap: str, topic: str) -> tuple[list[dict[str, Any]], int]:
    """N samples, 1 undecodable record and a conversion correction every 100 samples
    (the click model skips it) in one transaction; returns (samples, corrections)."""
    from kafka import KafkaProducer

    samples = synthetic_samples(N, seed=5)
    prod = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-tx")
    prod.init_transactions()
    prod.begin_transaction()
    skipped = 0
    for k, s in enumerate(samples):
        prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(s).encode())
        if k % 100 == 7:
            corr = s | {
                "sample_id": s["sample_id"] + "|conversion",
                "labels": {"click": 0, "conversion": 1},
                "correction": True,
            }
            prod.send(topic, key=s["sample_id"].encode(), value=json.dumps(corr).encode())
            skipped += 1
    prod.send(topic, key=b"junk", value=b"{not json")
    prod.commit_transaction()
    prod.close()
    return samples, skipped


def _config(stack_config_path: Path, tmp_path: Path, topic: str, port: int) -> Path:
    """The trainer's config: a small DeepFM, checkpoints every EVERY samples, /metrics on
    ``port`` (worker r on port + r), the exporter every 0.3 s into tmp_path/objects."""
    doc = yaml.safe_load(stack_config_path.read_text())
    doc["kafka"].setdefault("topics", {})["samples"] = topic
    doc["object_store"]["url"] = f"file://{tmp_path / 'objects'}"
    doc["model"] = {"arch": "deepfm", "embedding_dim": 8, "mlp": [16]}
    doc["features"] = {
        "sparse": [{"name": "user_id"}, {"name": "item_id", "dim": 4}, {"name": "category"}],
        "dense": [{"name": "price"}],
    }
    doc["trainer"] = {
        "batch_size": 20,
        "max_batch_wait_s": 0.2,
        "checkpoint_every_samples": EVERY,
        "checkpoint_every_s": 3600,
        "max_rows": 120,  # fewer rows than users: LFU eviction, tombstones in the deltas
        "evict_every": 10,
        "metrics_port": port,
        "threads": 1,
    }
    doc["exporter"] = {"interval_s": 0.3, "snapshot_every": 5}
    cfg = tmp_path / "fluxrec.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def test_kill_9_sigterm_and_restart_train_every_sample_exactly_once(
    bootstrap: str, new_topic: Callable[..., str], stack_config_path: Path, tmp_path: Path
) -> None:
    topic = new_topic(partitions=2)
    samples, n_skipped = _produce(bootstrap, topic)
    port = free_port()
    objects = f"file://{tmp_path / 'objects'}"
    cfg = _config(stack_config_path, tmp_path, topic, port)
    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "fluxrec.cli", "train", "--config", str(cfg)]
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "FLUXREC_TRAIN_CHECKPOINT_DIR": str(ck),
    }

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    # 1. kill -9 with trained samples that are in no checkpoint yet
    first = start()
    try:

        def ahead_of_checkpoint() -> bool:
            meta, n = _newest_meta(ck), _trained(port)
            return bool(meta and n and meta["samples"] >= EVERY and n >= meta["samples"] + 200)

        _wait("training ahead of a checkpoint", ahead_of_checkpoint, first)
        _wait("a published version", lambda: bool(_manifests(objects)), first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(timeout=30)
    killed_at = _newest_meta(ck)
    assert killed_at is not None and EVERY <= killed_at["samples"] < N, killed_at
    published_before = len(_manifests(objects))

    # 2. restart, then SIGTERM: a clean stop with a final checkpoint and export
    second = start()
    try:
        _wait(
            "training after the restart",
            lambda: (_trained(port) or 0) >= killed_at["samples"] + 300,
            second,
        )
        seen = _trained(port)
        second.send_signal(signal.SIGTERM)
        out, _ = second.communicate(timeout=120)
    finally:
        if second.poll() is None:
            second.kill()
    text = out.decode()
    assert second.returncode == 0, text
    assert f"resumed from {ck / 'ckpt-'}" in text and "stopped after" in text, text
    stopped = _newest_meta(ck)
    assert stopped is not None and seen is not None and stopped["samples"] >= seen
    versions = _manifests(objects)
    # the restored trainer's first export is a snapshot: deltas since the checkpoint
    # would not apply to what the killed process had published after it
    assert versions[published_before]["kind"] == "snapshot"
    assert versions[published_before]["trainer_step"] >= killed_at["step"]
    assert versions[-1]["samples"] == stopped["samples"]  # the final export

    # 3. until caught up: every sample exactly once
    done = subprocess.run(
        [*cmd, "--until-caught-up"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_exactly_once(ck, topic, samples, n_skipped)
    assert (ck / "metrics.jsonl").read_text().count('"auc"') >= 1

    # what servers see is exactly the trainer's final state
    _assert_served_is_checkpointed(objects, ck, topic)
    deltas = [v for v in _manifests(objects) if v["kind"] == "delta"]
    assert any(o["tombstones"] for v in deltas for o in v["objects"] if o["kind"] == "table")
