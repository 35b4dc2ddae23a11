"""A shortened ``fluxrec demo`` on the session's stack: every stage processes records, the
server applies deltas and its scores change with them, the report has its freshness and
AUC tables, and nothing is left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.sdk import DeltaConsumer
from exporter.store import open_store
from fluxrec.config import load_config
from fluxrec.topics import list_topics
from serving.model import ModelSpec
from serving.server import ScoringService, ServingTables

pytestmark = [pytest.mark.kafka, pytest.mark.redis, pytest.mark.flink, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]


def _processes_mentioning(text: str) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmd and int(pid) != os.getpid():
            out.append(f"{pid}: {cmd[:200]}")
    return out


def test_a_short_demo_runs_every_stage_and_leaves_nothing_running(
    tmp_path: Path, stack_config_path: Path
) -> None:
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", "demo", "--config", str(stack_config_path),
         "--duration", "12", "--rate", "100", "--window", "3", "--run-dir", str(run),
         "--set", "flink.parallelism=2"],  # the demo's own is 1: the other test runs it
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "== replay" in out and "== report" in out

    summary = json.loads((run / "summary.json").read_text())
    processed = summary["processed"]
    assert all(n > 0 for n in processed.values()), processed
    assert summary["samples"] == processed["samples"] >= 1000
    assert processed["trained"] == processed["samples"]
    assert (
        summary["freshness_p50_s"] > 0 and summary["freshness_p99_s"] >= summary["freshness_p50_s"]
    )
    assert 0.5 < summary["prequential_auc"] <= 1 and 0.5 < summary["offline_auc"] <= 1
    assert summary["oracle_auc"] is not None and summary["problems"] == []

    # the server applied deltas, and the same requests score differently after them
    applied = [json.loads(x) for x in (run / "server_applied.jsonl").read_text().splitlines()]
    assert any(a["kind"] == "delta" for a in applied)
    cfg = load_config(run / "config.yaml")
    tables = ServingTables()
    consumer = DeltaConsumer(open_store(cfg.object_store.url, cfg.object_store), tables)
    service = ScoringService(ModelSpec.from_config(cfg), tables, consumer)
    first = min(a["sequence"] for a in applied)
    consumer.rollback(first)
    probe = [
        {"sparse": {"user_id": [f"u-{k}"], "item_id": [f"i-{k}"], "category": ["c-1"],
                    "position": ["1"]}, "dense": {"price": 20.0}}
        for k in range(20)
    ]  # fmt: skip
    v0, p0 = service.score(probe)
    consumer.resume()
    v1, p1 = service.score(probe)
    assert (v0, v1) == (first, max(a["sequence"] for a in applied)) and v1 > v0
    assert (p0 != p1).any()

    # the report: freshness and AUC tables, plots
    md = (run / "report.md").read_text()
    assert "## Freshness" in md and "| label final -> applied (end to end) |" in md
    assert "## Quality" in md and "| streaming (prequential) |" in md
    assert "| offline one pass" in md and "| window |" in md and "| fake_negative |" in md
    for name in ("throughput", "freshness", "quality", "strategies", "frozen"):
        assert (run / "plots" / f"{name}.png").stat().st_size > 1000, name

    # nothing left running, the run's topics are gone
    meta = json.loads((run / "run.json").read_text())
    assert meta["left_running"] == []
    assert _processes_mentioning(str(run)) == []
    assert not set(meta["topics"]) & list_topics(cfg.kafka.bootstrap)


def test_a_new_log_described_in_a_config_goes_through_the_demo(
    tmp_path: Path, stack_config_path: Path
) -> None:
    """A log the repo has no module for (a TSV exposure log with three 0/1 feedback
    columns), described only in a config, goes through `fluxrec demo --data` (what
    `make demo DATA=... CONFIG=...` runs): every stage processes it, one join label per
    feedback column, the first one trained."""
    from tests.test_replay_table import log_config, rows, write

    log = write(tmp_path / "exposures.tsv", rows(3000))  # 3,000 s of log time
    cfg = log_config(tmp_path / "mylog.yaml", log, base=stack_config_path)
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fluxrec.cli", "demo", "--config", str(cfg), "--data", str(log),
         "--duration", "10", "--window", "3", "--no-live-scoring", "--run-dir", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["source"] == "table" and summary["label"] == "click"
    # every impression reached the join; on a loaded machine some are too late for its
    # watermark (dead letters, counted): the demo's watermark settings favour freshness
    assert summary["join"]["totals"]["impression"]["in"] == 3000
    assert summary["samples"] == summary["processed"]["trained"] > 1000
    assert all(n > 0 for n in summary["processed"].values()), summary["processed"]
    assert summary["problems"] == []
    cfg_run = load_config(run / "config.yaml")
    assert [lb.action for lb in cfg_run.join.labels] == ["click", "long_view", "follow"]
    replayed = json.loads((run / "replay.json").read_text())
    assert replayed["actions"] == {"click": 1000, "long_view": 750, "follow": 1}
