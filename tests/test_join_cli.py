"""``fluxrec join run | submit | reconcile`` and ``flink run --python`` as a user runs them.

``run`` is a subprocess with a local MiniCluster; ``submit`` and ``flink run`` go to a real
Flink session cluster (JobManager + TaskManager from the apache-flink distribution, started
by the stack with ``flink.cluster.enabled``).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from fluxrec.config import Config, load_config
from fluxrec.testing import SLOW_START_S, checkpoint_done, free_port, wait_until
from fluxrec.topics import read_topic
from pipelines.join_job import JoinTopics
from sample_join.reference import run_reference
from sample_join.testing import build_stream, produce_events
from tests.test_join_flink import JOIN, OOO, _every_case
from tests.test_join_streaming import _flush

pytestmark = [pytest.mark.flink, pytest.mark.kafka, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
FLUXREC = str(Path(sys.executable).with_name("fluxrec"))
JOIN_YAML = {
    "labels": [{"name": s.name, "action": s.action, "window_ms": s.window_ms} for s in JOIN.labels],
    "strategy": "fake_negative",
    "late_action_policy": "correction",
    "late_horizon_ms": JOIN.late_horizon_ms,
    "watermark_out_of_orderness_ms": OOO,
    "bot_max_actions": 0,  # no bot count: an action is decided as soon as it arrives
    "bot_window_ms": JOIN.bot_window_ms,
    "metrics_window_ms": JOIN.metrics_window_ms,
    "metrics_flush_ms": 500,
    "source_idleness_ms": 0,
}


def _config_file(
    base: Path, tmp: Path, new_topic: Callable[..., str], **sections: dict[str, Any]
) -> Path:
    """The session stack's YAML with new topics, the join above and ``sections`` merged in."""
    doc = yaml.safe_load(base.read_text())
    names = ("impressions", "actions", "samples", "dead_letters", "metrics")
    doc["kafka"]["topics"] = {n: new_topic() for n in names}
    doc["join"] = dict(JOIN_YAML, group_id=f"g-{doc['kafka']['topics']['samples']}")
    for name, body in sections.items():
        doc[name] = {**doc.get(name, {}), **body}
    path = tmp / "fluxrec.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _events_and_reference(cfg: Config, t0: int) -> tuple[Any, Any]:
    events = build_stream(_every_case(t0), OOO, seed=5, bad_at_ms=t0 + 1_000)
    produce_events(
        cfg.kafka.bootstrap, cfg.kafka.topics.impressions, cfg.kafka.topics.actions, events
    )
    return events, run_reference(events, cfg.join, now_ms=int(time.time() * 1000))


def _sample_ids(cfg: Config, expected: int, timeout_s: float = 120.0) -> list[str]:
    got = read_topic(
        cfg.kafka.bootstrap, cfg.kafka.topics.samples, expected=expected, timeout_s=timeout_s
    )
    return sorted(json.loads(v)["sample_id"] for _, v in got)


class _Lines(threading.Thread):
    """Collects a process's stdout lines as they come (so the test can wait on them)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def exited(self) -> str | None:
        """Why waiting is pointless: the process exited (with its stderr's end)."""
        if self.proc.poll() is None:
            return None
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return f"the process exited with {self.proc.returncode}: {err[-2000:]}"


def _children(pid: int) -> set[int]:
    """Pids whose parent is ``pid``."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.add(int(stat.parent.name))
    return out


def test_run_reconcile_and_ctrl_c(
    stack_config_path: Path, tmp_path: Path, new_topic: Callable[..., str]
) -> None:
    path = _config_file(stack_config_path, tmp_path, new_topic)
    cfg = load_config(path)
    t0 = int(time.time() * 1000) - 3_600_000
    _, ref = _events_and_reference(cfg, t0)
    proc = subprocess.Popen(
        [FLUXREC, "join", "run", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = _Lines(proc)
    try:
        # on a loaded machine the JVM and the job take long to start: wait for the job to
        # run and to complete its first checkpoint (samples become visible at checkpoints),
        # then give every later wait ten times what that took (at least two minutes)
        started = wait_until("the job to run", lambda: "running in" in out.text, alive=out.exited)
        job_id = out.text.split("job ", 1)[1].split()[0]
        ckdir = cfg.stack.state_dir / "flink" / "checkpoints"
        started += wait_until(
            "the job's first checkpoint", lambda: checkpoint_done(ckdir, job_id), alive=out.exited
        )
        wait_s = max(120.0, 10 * started)
        # fake_negative: every impression's sample and every correction comes at once
        n = sum(not s.correction for s in ref.samples)
        assert len(_sample_ids(cfg, n, wait_s)) >= n
        kids = _children(proc.pid)
        assert kids, "the PyFlink gateway JVM runs as a child"
        # move the watermark past everything, so that orphans and bots are decided too
        _flush(cfg.kafka.bootstrap, JoinTopics.from_config(cfg), t0 + 600_000)
        got = _sample_ids(cfg, len(ref.samples) + 4, wait_s)
        assert [i for i in got if not i.startswith("flush")] == sorted(
            s.sample_id for s in ref.samples
        )
        deadline = time.monotonic() + wait_s
        while True:  # the metrics topic is flushed every 500 ms; poll until it reconciles
            rec = subprocess.run(
                [FLUXREC, "join", "reconcile", "--config", str(path), "--idle-s", "1"],
                capture_output=True,
                text=True,
                check=False,
            )
            if rec.returncode == 0 or time.monotonic() > deadline:
                break
        assert rec.returncode == 0, rec.stdout + rec.stderr
        assert "all balanced" in rec.stdout
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=wait_s)
        out.join(timeout=30)
        err = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "running in a local MiniCluster" in out.text and "cancelled" in err
    wait_until(
        "the JVM to exit after Ctrl-C",
        lambda: not {k for k in kids if Path(f"/proc/{k}").exists()},
        timeout_s=wait_s,
        every_s=0.5,
    )
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def flink_cluster(
    stack_config_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A real session cluster on free ports (its own state dir, the session's Kafka)."""
    from fluxrec.stack import Stack

    state = tmp_path_factory.mktemp("flink-cluster")
    rest = free_port()
    sections = {
        "stack": {"state_dir": str(state)},
        "flink": {
            "jobmanager": f"127.0.0.1:{rest}",
            "cluster": {"enabled": True, "rest_port": rest, "rpc_port": free_port()},
        },
    }
    doc = yaml.safe_load(stack_config_path.read_text())
    for name, body in sections.items():
        doc[name] = {**doc.get(name, {}), **body}
    cfg_path = state / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(doc))
    stack = Stack(load_config(cfg_path))
    try:
        assert stack.up(only=["flink"]) == ["flink-jm", "flink-tm"]
        yield sections
    finally:
        stack.down()


def _wait_finished(jobmanager: str, job_id: str, timeout_s: float = SLOW_START_S) -> str:
    host, port = jobmanager.split(":")
    deadline, state = time.monotonic() + timeout_s, "?"
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", f"/jobs/{job_id}")
            state = json.loads(conn.getresponse().read()).get("state", "?")
        finally:
            conn.close()
        if state in ("FINISHED", "FAILED", "CANCELED"):
            return str(state)
        time.sleep(1)
    return str(state)


def test_submit_to_a_flink_cluster(
    flink_cluster: dict[str, Any],
    stack_config_path: Path,
    tmp_path: Path,
    new_topic: Callable[..., str],
) -> None:
    path = _config_file(stack_config_path, tmp_path, new_topic, **flink_cluster)
    cfg = load_config(path)
    _, ref = _events_and_reference(cfg, int(time.time() * 1000) - 3_600_000)
    r = subprocess.run(
        [FLUXREC, "join", "submit", "--config", str(path), "--bounded"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    job_id = r.stdout.split("submitted job ")[1].split()[0]
    assert _wait_finished(cfg.flink.jobmanager or "", job_id) == "FINISHED"
    assert _sample_ids(cfg, len(ref.samples)) == sorted(s.sample_id for s in ref.samples)


def test_flink_run_python_runs_the_same_job_file(
    flink_cluster: dict[str, Any],
    stack_config_path: Path,
    tmp_path: Path,
    new_topic: Callable[..., str],
) -> None:
    from fluxrec.stack.flink import flink_home

    path = _config_file(stack_config_path, tmp_path, new_topic, **flink_cluster)
    cfg = load_config(path)
    _, ref = _events_and_reference(cfg, int(time.time() * 1000) - 3_600_000)
    env = {
        **os.environ,
        "FLINK_CONF_DIR": str(Path(flink_cluster["stack"]["state_dir"]) / "flink" / "conf"),
    }
    r = subprocess.run(
        [
            str(flink_home() / "bin" / "flink"),
            "run",
            "-m",
            cfg.flink.jobmanager or "",
            "-pyclientexec",
            sys.executable,
            "--python",
            str(REPO / "pipelines" / "join_job.py"),
            "--config",
            str(path),
            "--bounded",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "Job has been submitted" in r.stdout + r.stderr
    assert _sample_ids(cfg, len(ref.samples)) == sorted(s.sample_id for s in ref.samples)


def test_submit_without_a_cluster_fails_with_one_line(
    stack_config_path: Path, tmp_path: Path, new_topic: Callable[..., str]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    path = _config_file(stack_config_path, tmp_path, new_topic, flink={"jobmanager": dead})
    r = subprocess.run(
        [FLUXREC, "join", "submit", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("fluxrec: error: could not submit") and dead in last


def test_replace_keeps_the_join_yaml_in_sync() -> None:
    """JOIN_YAML above mirrors the JoinConfig of the Flink tests."""
    from fluxrec.config import parse_config

    base = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    base["join"] = JOIN_YAML
    cfg = parse_config(base)
    assert cfg.join == replace(
        JOIN,
        strategy="fake_negative",
        late_action_policy="correction",
        source_idleness_ms=0,
        bot_max_actions=0,
    )
