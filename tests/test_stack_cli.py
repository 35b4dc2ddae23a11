"""`fluxrec stack up|down|status` and `fluxrec setup` as a user runs them (subprocesses),
including every bad-input case: each ends with one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fluxrec.testing import write_test_config

pytestmark = [pytest.mark.stack]


def fluxrec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _pids(state: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line mentions ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(int(d.name))
    return found


@pytest.mark.kafka
@pytest.mark.redis
@pytest.mark.s3
@pytest.mark.slow
def test_up_twice_is_harmless_and_down_leaves_nothing(tmp_path: Path) -> None:
    cfg = str(write_test_config(tmp_path, s3_server=True))
    state = tmp_path / "state"
    try:
        first = fluxrec("stack", "up", "--config", cfg)
        assert first.returncode == 0, first.stderr
        assert first.stdout.count("(started)") == 3
        pids = _pids(state)
        assert set(pids) == {"kafka", "redis", "s3proxy"}

        second = fluxrec("stack", "up", "--config", cfg)
        assert second.returncode == 0, second.stderr
        assert second.stdout.count("(already running)") == 3
        assert _pids(state) == pids

        status = fluxrec("stack", "status", "--config", cfg)
        assert status.returncode == 0
        assert status.stdout.count("healthy") == 3
    finally:
        down = fluxrec("stack", "down", "--config", cfg)
    assert down.returncode == 0, down.stderr
    assert "kafka" in down.stdout and "redis" in down.stdout and "s3proxy" in down.stdout
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or _processes_mentioning(str(state)) == []
    # the java services carry the state dir on their command line; redis was its child
    assert _processes_mentioning(str(state)) == []
    assert not list((state / "run").glob("*.pid"))
    after = fluxrec("stack", "status", "--config", cfg)
    assert after.returncode == 3
    assert after.stdout.count("stopped") == 3


def test_down_never_signals_a_process_it_did_not_start(tmp_path: Path) -> None:
    cfg = str(write_test_config(tmp_path, s3_server=False))
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "state" / "run"
        run.mkdir(parents=True)
        # a stale pid file whose pid now belongs to someone else (start time differs)
        (run / "kafka.pid").write_text(json.dumps({"pid": stranger.pid, "start": 1, "argv0": "x"}))
        result = fluxrec("stack", "down", "--config", cfg)
        assert result.returncode == 0
        assert "nothing was running" in result.stdout
        assert stranger.poll() is None  # still alive
        assert not (run / "kafka.pid").exists()  # the stale file is cleaned up
    finally:
        stranger.kill()
        stranger.wait()


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fluxrec: error: ")
    return lines[0]


def test_port_taken_is_one_clear_line(tmp_path: Path) -> None:
    path = write_test_config(tmp_path, s3_server=False)
    from fluxrec.config import load_config

    port = load_config(path).redis.port
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        line = _one_line_error(fluxrec("stack", "up", "--config", str(path)))
    assert f"port {port} (redis.url in {path}) is in use" in line
    assert "change redis.url" in line
    assert not list((tmp_path / "state" / "run").glob("*.pid"))  # nothing was started


def test_java_missing_is_one_clear_line(tmp_path: Path) -> None:
    cfg = str(write_test_config(tmp_path, s3_server=False))
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"} | {"PATH": str(empty)}
    line = _one_line_error(fluxrec("stack", "up", "--config", cfg, env=env))
    assert "java not found" in line and "apt-get install openjdk-17-jre-headless" in line


def test_maven_unable_to_resolve_is_one_clear_line(tmp_path: Path) -> None:
    cfg = str(write_test_config(tmp_path, stack={"jars_dir": str(tmp_path / "jars")}))
    env = dict(os.environ)
    # offline, with an empty local repository: nothing can be resolved
    env["FLUXREC_MAVEN_FLAGS"] = f"-o -Dmaven.repo.local={tmp_path / 'empty-m2'}"
    line = _one_line_error(fluxrec("setup", "--no-apt", "--config", cfg, env=env))
    assert "Maven could not resolve kafka.xml" in line
    assert "Maven Central" in line
    assert not (tmp_path / "jars" / "kafka").exists()  # no half-resolved folder


@pytest.mark.parametrize("damage", ["garbage-meta", "no-meta"])
def test_corrupt_kafka_state_is_one_clear_line(tmp_path: Path, damage: str) -> None:
    cfg = str(write_test_config(tmp_path, s3_server=False))
    data = tmp_path / "state" / "kafka" / "data"
    data.mkdir(parents=True)
    if damage == "garbage-meta":
        (data / "meta.properties").write_bytes(b"\x00\xffnot properties at all")
    else:
        (data / "some-topic-0").mkdir()
    line = _one_line_error(fluxrec("stack", "up", "--config", cfg))
    assert "Kafka state" in line and "fluxrec stack down --purge" in line
    assert not list((tmp_path / "state" / "run").glob("*.pid"))


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "stack: {state_dir: s}\nkafka: {bootstrap: 'x:1', partitons: 2}\n"
        "redis: {url: 'redis://x'}\nobject_store: {url: 'file:///tmp/x'}\n"
    )
    line = _one_line_error(fluxrec("stack", "status", "--config", str(bad)))
    assert f"{bad}: kafka.partitons: unknown key (did you mean 'partitions'?)" in line


def test_help_shows_defaults_and_env_fallbacks() -> None:
    out = " ".join(fluxrec("smoke", "--help").stdout.split())  # argparse wraps lines
    assert "[env FLUXREC_SMOKE_EVENTS]" in out and "(default: 5000)" in out
    assert "FLUXREC_CONFIG" in out


def test_cluster_ids_never_start_with_a_dash() -> None:
    """The storage tool reads an id that starts with ``-`` as an option (1 in 64 random ids)."""
    import base64

    from fluxrec.stack.services import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert not [i for i in ids if i.startswith("-")]
    assert len(set(ids)) == len(ids)
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
