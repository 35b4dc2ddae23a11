"""The demo's pieces that need no service: the run's config, the freshness arithmetic on a
hand-made run folder, the report files, and stopping a process group."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from demo.analysis import freshness, impressions, label_final_ms, load_run, offline_trainer
from demo.report import write_report
from demo.runner import Child
from demo.settings import DemoError, DemoOptions, detect_log, parse_set, run_config
from fluxrec.config import load_config

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "local.yaml"


def _run_config(tmp_path: Path, **opts: Any) -> Path:
    base = load_config(BASE)
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = run_config(
        base,
        BASE,
        DemoOptions(**opts),
        run_id="t1",
        run_dir=run_dir,
        ports={"trainer": 1234, "server": 1235},
    )
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_a_run_has_its_own_names_and_absolute_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXREC_S3_SECRET_KEY", "do-not-copy-me")
    path = _run_config(tmp_path, window_s=7, strategy="fake_negative", rate=100, duration_s=10)
    text = path.read_text()
    assert "do-not-copy-me" not in text  # credentials stay in the base file's ${VAR}
    cfg, base = load_config(path), load_config(BASE)
    for key, topic in cfg.kafka.topics.all().items():
        assert topic == f"{base.kafka.topics.all()[key]}.demo-t1"
    assert cfg.join.group_id == "fluxrec-demo-t1"
    assert cfg.redis.channel == f"{base.redis.channel}.demo-t1"
    assert cfg.object_store.url == (tmp_path / "run" / "objects").resolve().as_uri()
    assert cfg.kafka.bootstrap == base.kafka.bootstrap  # endpoints come from the base
    assert cfg.stack.state_dir == base.stack.state_dir  # not resolved against runs/ID
    assert cfg.trainer.checkpoint_dir == (tmp_path / "run" / "trainer").resolve()
    assert [(lb.name, lb.window_ms) for lb in cfg.join.labels] == [("click", 7000)]
    assert cfg.join.strategy == "fake_negative" and cfg.join.bot_max_actions == 0
    assert cfg.flink.parallelism == 1 and cfg.flink.checkpoint_interval_ms == 200  # TUNING
    assert cfg.trainer.metrics_port == 1234
    assert [f.name for f in cfg.features.sparse] == ["user_id", "item_id", "category", "position"]
    # the synthetic stream runs one label window (and 2 s) past the duration
    assert cfg.replay.synthetic.impressions == (10 + 7 + 2) * 100


def test_overrides_and_sources(tmp_path: Path) -> None:
    assert parse_set(["trainer.batch_size=512", "join.strategy=window"]) == {
        "trainer.batch_size": 512,
        "join.strategy": "window",
    }
    with pytest.raises(DemoError, match="KEY=VALUE"):
        parse_set(["batch_size"])
    path = _run_config(
        tmp_path, overrides={"flink.checkpoint_interval_ms": 777, "flink.parallelism": 2}
    )
    cfg = load_config(path)
    assert cfg.flink.checkpoint_interval_ms == 777 and cfg.flink.parallelism == 2
    for name, sample in (
        ("obd", "obd.yaml"),
        ("taobao_userbehavior", "taobao.yaml"),
        ("tencent_pcvr", "tencent.yaml"),
    ):
        (tmp_path / name).mkdir()
        assert detect_log(tmp_path / name) == REPO / "configs" / sample
    (tmp_path / "mystery").mkdir()
    with pytest.raises(DemoError, match="describe it in your config"):
        detect_log(tmp_path / "mystery")


def test_when_a_label_is_final() -> None:
    w = {"click": 10_000}
    imp = {"event_time_ms": 1000, "strategy": "window", "correction": False}
    neg = {**imp, "labels": {"click": 0}, "label_time_ms": {"click": None}}
    pos = {**imp, "labels": {"click": 1}, "label_time_ms": {"click": 4000}}
    assert label_final_ms(neg, w) == 11_000  # the window closes
    assert label_final_ms(pos, w) == 4000  # the click makes it final
    fake = {**neg, "strategy": "fake_negative"}
    fix = {**pos, "strategy": "fake_negative", "correction": True}
    assert label_final_ms(fake, w) == 1000  # emitted as a negative at once
    assert label_final_ms(fix, w) == 4000  # the correction: the click


def _gz_lines(path: Path, lines: list[str]) -> None:
    with gzip.open(path, "wt") as f:
        f.writelines(line + "\n" for line in lines)


def _fake_run(tmp_path: Path) -> Path:
    """Three samples of partition 0 whose every stage time is known (ms)."""
    path = _run_config(tmp_path, window_s=10)
    run = path.parent
    topic = load_config(path).kafka.topics.samples
    t0 = 1_800_000_000_000
    samples = []
    for i, (label, click) in enumerate(((0, None), (1, t0 + 3000), (0, None))):
        s = {"v": 1, "sample_id": f"r{i}|i|0", "request_id": f"r{i}", "item_id": "i",
             "user_id": "u", "event_time_ms": t0 + i, "features": {"sparse": {}, "dense": {}},
             "labels": {"click": label}, "label_time_ms": {"click": click},
             "strategy": "window", "correction": False, "p_click": 0.1}  # fmt: skip
        samples.append(s)
    final = [t0 + 10_000, t0 + 3000, t0 + 10_002]
    seen = [f + 500 for f in final]
    # sample 1 (offset 1) is emitted first: offsets follow emission
    order = [1, 0, 2]
    _gz_lines(
        run / "samples.tsv.gz",
        [f"0\t{k}\t{seen[i]}\t{json.dumps(samples[i])}" for k, i in enumerate(order)],
    )
    batches = [  # offsets are "next offset" after the batch
        {"t": seen[1] + 100, "step": 1, "n": 1, "lag": 0, "offsets": {"0": 1},
         "pred": [0.4], "label": [1], "ev": [t0 + 1]},
        {"t": seen[2] + 200, "step": 2, "n": 2, "lag": 0, "offsets": {"0": 3},
         "pred": [0.1, 0.2], "label": [0, 0], "ev": [t0, t0 + 2]},
    ]  # fmt: skip
    (run / "trainer_trace.jsonl").write_text("".join(json.dumps(b) + "\n" for b in batches))
    versions = [
        {"sequence": 0, "kind": "snapshot", "kafka_offsets": {topic: {"0": 1}},
         "created_ms": seen[1] + 150, "published_ms": seen[1] + 300, "watermark_ms": t0,
         "trainer_step": 1, "samples": 1, "applied_ms": seen[1] + 350},
        {"sequence": 1, "kind": "delta", "kafka_offsets": {topic: {"0": 3}},
         "created_ms": seen[2] + 250, "published_ms": seen[2] + 400, "watermark_ms": t0,
         "trainer_step": 2, "samples": 3, "applied_ms": seen[2] + 420},
    ]  # fmt: skip
    (run / "server_applied.jsonl").write_text("".join(json.dumps(v) + "\n" for v in versions))
    (run / "run.json").write_text(json.dumps({"run_id": "t1", "times": {"replay_start_ms": t0}}))
    (run / "replay.json").write_text(
        json.dumps({"events": {"impression": 3, "action": 1}, "last_impression_ms": t0 + 60_000})
    )
    (run / "progress.jsonl").write_text(
        "".join(
            json.dumps({"w": t0 + 1000 * k, "events": 2 * k, "samples": k, "trained": k,
                        "published": k, "applied": k, "scored": 0}) + "\n"
            for k in range(4)
        )
    )  # fmt: skip
    return run


def test_freshness_per_stage_on_a_known_run(tmp_path: Path) -> None:
    fr = freshness(load_run(_fake_run(tmp_path)))
    assert fr.counts["measured"] == 3 and fr.counts["end_of_stream"] == 0
    by = {s.name.split(" (")[0]: s for s in fr.stages}
    assert by["label final -> joined"].max == pytest.approx(0.5)
    assert by["joined -> trained"].p50 == pytest.approx(0.2)  # 0.1, 0.2, 0.2
    # sample 0 (offset 1) and 2 (offset 2) were trained in batch 2; sample 1 in batch 1
    end_to_end = sorted(fr.cumulative["applied"].tolist())
    assert end_to_end == [850, 920, 922]  # 500+350, then 500+420 (sample 2), 502+420


def test_report_files_from_a_run_folder(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    summary = write_report(run, say=lambda _: None, comparisons=False)
    for key in ("freshness_p50_s", "freshness_p99_s", "prequential_auc", "offline_auc", "samples"):
        assert key in summary
    assert summary["samples"] == 3
    assert summary["prequential_auc"] == pytest.approx(1.0)  # 0.4 for the positive, below
    md = (run / "report.md").read_text()
    assert "| label final -> applied (end to end) | 3 |" in md
    assert "## Quality" in md and "| streaming (prequential) | 3 |" in md
    for name in ("throughput", "freshness", "quality"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = json.loads((run / "summary.json").read_text())
    assert again["freshness_p50_s"] == summary["freshness_p50_s"]


def _sample(rid: str, iid: str, t: int, **kw: Any) -> dict[str, Any]:
    s = {"v": 1, "sample_id": f"{rid}|{iid}|0", "request_id": rid, "item_id": iid,
         "user_id": f"u-{rid}", "event_time_ms": t,
         "features": {"sparse": {"user_id": [f"u-{rid}"], "item_id": [iid],
                                 "category": ["c-1", f"c-{t % 3}"], "position": ["1"]},
                      "dense": {"price": 1.5 + t % 7}},
         "labels": {"click": 0}, "label_time_ms": {"click": None},
         "strategy": "window", "correction": False, "p_click": 0.25}  # fmt: skip
    return {**s, **kw}


def test_samples_are_read_in_columns_and_bad_lines_left_out(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    t0 = 1_800_000_000_000
    fix = _sample("r9", "i", t0, labels={"click": 1}, label_time_ms={"click": t0 + 30_000},
                  strategy="fake_negative", correction=True)  # fmt: skip
    fix.pop("p_click")
    lines = [
        f"1\t7\t{t0 + 31_000}\t{json.dumps(fix)}",
        f"1\t8\t{t0}\tnot json",  # a value the run could not have trained on
        "1\t9",  # a line cut short
        f"0\t5\t{t0}\t{json.dumps(_sample('r8', 'i', t0 + 5))}",
    ]
    with gzip.open(run / "samples.tsv.gz", "at") as f:
        f.writelines(line + "\n" for line in lines)
    tr = load_run(run).traced
    assert tr.n == 5
    assert tr.part.tolist() == [0, 0, 0, 1, 0] and tr.offset.tolist() == [0, 1, 2, 7, 5]
    assert tr.request_id.to_pylist() == ["r1", "r0", "r2", "r9", "r8"]
    assert tr.labels["click"].tolist() == [1, 0, 0, 1, 0]
    assert tr.label_ms["click"][[0, 3]].tolist() == [t0 + 3000, t0 + 30_000]
    assert tr.fake.tolist() == [False, False, False, True, False]
    assert tr.correction.tolist() == [False, False, False, True, False]
    assert np.isnan(tr.p_click[3]) and tr.p_click[4] == 0.25
    assert tr.sample(3) == fix  # the raw value, as the samples topic carried it
    # the correction is final at its click; the window samples as test_when_a_label_is_final
    fr = freshness(load_run(run))
    assert fr.counts["samples"] == 5


def test_impressions_featurize_the_raw_samples_as_decoded_ones(tmp_path: Path) -> None:
    """The impressions' features are the featurizer's of each one's raw value, the same as
    the trainer's of the decoded sample as the window strategy's (what the report fed it
    before); a value the featurizer refuses raw still gets them, through that path."""
    run = _fake_run(tmp_path)
    t0 = 1_800_000_000_000
    samples = [
        _sample("r2", "i1", t0 + 20),
        _sample("r1", "i2", t0 + 10, strategy="fake_negative"),
        _sample("r1", "i1", t0 + 10, strategy="fake_negative", p_click=None),
        _sample("r1", "i1", t0 + 10, labels={"click": 1}, label_time_ms={"click": t0 + 900},
                strategy="fake_negative", correction=True),
        _sample("r0", "i9", t0 + 10, strategy="bogus"),  # refused by the featurizer raw
        _sample("r2", "i1", t0 + 30),  # the same impression later: not a row of its own
        _sample("r3", "i3", t0 + 40, labels={"click": 1}, label_time_ms={"click": t0 + 99}),
    ]  # fmt: skip
    _gz_lines(
        run / "samples.tsv.gz",
        [f"0\t{k}\t{t0 + 5000}\t{json.dumps(s)}" for k, s in enumerate(samples)],
    )
    data = load_run(run)
    t = offline_trainer(data.cfg)
    imps = impressions(data, t)
    assert imps.sample.tolist() == [4, 2, 1, 0, 6]  # by (time, request_id, item_id)
    assert imps.sample_row.tolist() == [3, 2, 1, 1, 0, 3, 4]
    assert imps.t_imp.tolist() == [t0 + 10, t0 + 10, t0 + 10, t0 + 20, t0 + 40]
    assert imps.label.tolist() == [0, 1, 0, 0, 1]
    assert imps.actions == [(1, "click", t0 + 900), (4, "click", t0 + 99)]
    assert np.isnan(imps.p_click[1]) and imps.p_click[0] == 0.25
    want = t.featurize(
        [{**samples[i], "correction": False, "strategy": "window"} for i in imps.sample]
    )
    for name, (ids, seg) in want.sparse.items():
        got_ids, got_seg = imps.features.sparse[name]
        assert np.array_equal(got_ids, ids) and np.array_equal(got_seg, seg), name
    assert np.array_equal(imps.features.dense.numpy(), want.dense.numpy())
    # without the refused one the raw values are featurized as they are: the same features
    _gz_lines(
        run / "samples.tsv.gz",
        [f"0\t{k}\t{t0 + 5000}\t{json.dumps(s)}" for k, s in enumerate(samples) if k != 4],
    )
    raw = impressions(load_run(run), t)
    assert np.array_equal(raw.features.dense.numpy(), want.dense.numpy()[1:])


def test_a_child_is_stopped_with_its_process_group(tmp_path: Path) -> None:
    # the child starts a grandchild in its group (like PyFlink's JVM) and ignores SIGTERM
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        "print('up', flush=True); time.sleep(600)\n"
    )
    c = Child("sleeper", [sys.executable, "-c", code], tmp_path / "sleeper.log").start()
    deadline = time.monotonic() + 30
    while "up" not in c.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.alive() and c.group_alive()
    c.stop(signal.SIGTERM, timeout_s=1)
    assert not c.alive() and not c.group_alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(c.pid, 0)
    assert subprocess.run(["true"], check=False).returncode == 0


def test_a_public_log_brings_its_sample_config_and_labels(tmp_path: Path) -> None:
    """`--data shared/data/NAME` with a config that replays the synthetic stream: the run
    replays the log as its sample config describes it, one join label per action type."""
    for name, source, label, sparse in (
        ("obd", "table", "click", 10),
        ("tencent_pcvr", "table", "conversion", 19),
        ("taobao_userbehavior", "taobao", "click", 3),
    ):
        data = tmp_path / "data" / name
        data.mkdir(parents=True)
        cfg = load_config(_run_config(tmp_path / name, data=data))
        assert cfg.replay.source == source and cfg.replay.path == data.resolve()
        assert cfg.trainer.label == label == cfg.join.labels[0].action
        assert len(cfg.features.sparse) == sparse
    taobao = load_config(tmp_path / "taobao_userbehavior" / "run" / "config.yaml")
    assert [lb.action for lb in taobao.join.labels] == ["click", "conversion"]
