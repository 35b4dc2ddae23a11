"""Crash test of a job of several workers on a real topic of 4 partitions (gloo, exporter
on, ``fluxrec train --workers N`` and ``torchrun -m trainer``):

1. 2 workers; ``kill -9`` one of them while the job holds trained samples that no
   checkpoint has: the other stops by itself, without a checkpoint, and the launcher
   fails; every version published is whole (both workers' partitions in it);
2. restart the 2 workers, then ``kill -9`` all of them (and the launcher) at once;
3. restart as 3 workers under ``torchrun`` until caught up: the checkpoint of 2 is
   re-bucketed; every sample was trained exactly once (count and XOR of the sample ids),
   and a server reading the published versions holds exactly the final checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fluxrec.testing import free_port
from tests.test_trainer_crash import (
    EVERY,
    N,
    _assert_exactly_once,
    _assert_served_is_checkpointed,
    _config,
    _manifests,
    _newest_meta,
    _produce,
    _trained,
    _wait,
)

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def _ports(n: int) -> int:
    """A port p with p .. p + n - 1 all free (worker r serves /metrics on p + r)."""
    while True:
        p = free_port()
        if all(free_port_at(p + k) for k in range(1, n)):
            return p


def free_port_at(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _assert_nothing_dangles(root: Path) -> None:
    """Every version a reader can see is whole: each object its manifest names exists
    with the size the manifest says (a worker killed mid-write leaves at most objects
    that no manifest names)."""
    from exporter.manifest import manifest_objects

    for path in sorted(root.glob("versions/*/manifest.json")):
        for obj in manifest_objects(json.loads(path.read_text())):
            assert (root / obj["key"]).stat().st_size == obj["bytes"], obj["key"]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_kill_one_kill_all_and_resize_train_every_sample_exactly_once(
    bootstrap: str, new_topic: Callable[..., str], stack_config_path: Path, tmp_path: Path
) -> None:
    topic = new_topic(partitions=4)
    samples, n_skipped = _produce(bootstrap, topic)
    port = _ports(3)
    objects = f"file://{tmp_path / 'objects'}"
    cfg = _config(stack_config_path, tmp_path, topic, port)
    ck = tmp_path / "ck"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FLUXREC_TRAIN_CHECKPOINT_DIR": str(ck)}
    train = [sys.executable, "-m", "fluxrec.cli", "train", "--config", str(cfg)]

    def start(workers: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*train, "--workers", str(workers)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 of the whole job
        )

    def workers_of(launcher: subprocess.Popen[bytes], n: int) -> list[int]:
        _wait(f"{n} workers", lambda: len(_children(launcher.pid)) == n, launcher)
        return _children(launcher.pid)

    # 1. kill -9 one worker with trained samples that are in no checkpoint yet
    first = start(2)
    try:
        (_, second_worker) = workers_of(first, 2)

        def ahead_of_checkpoint() -> bool:
            meta, n = _newest_meta(ck), _trained(port)
            return bool(meta and n and meta["samples"] >= EVERY and n >= meta["samples"] + 200)

        _wait("training ahead of a checkpoint", ahead_of_checkpoint, first)
        _wait("a published version", lambda: bool(_manifests(objects)), first)
        os.kill(second_worker, signal.SIGKILL)
        out, _ = first.communicate(timeout=180)  # the other worker stops by itself
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    text = out.decode()
    assert first.returncode == 1, text
    assert "worker 1" in text and "killed by signal 9" in text, text
    assert "another worker stopped or is unreachable" in text, text  # worker 0's one line
    killed_at = _newest_meta(ck)
    assert killed_at is not None and EVERY <= killed_at["samples"] < N, killed_at
    assert killed_at["world"] == 2
    for v in _manifests(objects):  # whole versions only: every record before the offsets
        # of all 4 partitions was trained, skipped or bad (or is a transaction marker); a
        # version of one worker's rows would hold the offsets of its 2 partitions only
        consumed = sum(v["kafka_offsets"][topic].values())
        assert v["samples"] <= consumed <= v["samples"] + n_skipped + 1 + 4, v
        assert v["format"] == 2 and [p["index"] for p in v["parts"]] == [0, 1], v
    _assert_nothing_dangles(tmp_path / "objects")

    # 2. restart, then kill -9 every process of the job at once
    again = start(2)
    try:
        _wait(
            "training after the restart",
            lambda: (_trained(port) or 0) >= killed_at["samples"] + 100,
            again,
        )
    finally:
        os.killpg(again.pid, signal.SIGKILL)
        again.wait()
    assert (_newest_meta(ck) or {}).get("samples", 0) >= killed_at["samples"]

    # 3. resize: 3 workers under torchrun, until caught up
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    done = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "3",
            "-m",
            "trainer",
            "--config",
            str(cfg),
            "--until-caught-up",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert _assert_exactly_once(ck, topic, samples, n_skipped)["world"] == 3
    _assert_served_is_checkpointed(objects, ck, topic)  # the union of the 3 parts
    assert len(_manifests(objects)[-1]["parts"]) == 3
