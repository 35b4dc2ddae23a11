"""``fluxrec replay`` without Kafka: dry runs, flags and their env fallbacks, config section,
and the pacing of the sender (on a fake clock)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from fluxrec.cli import build_parser, main
from fluxrec.config import iter_keys, load_config
from replay.cli import _OVERRIDES
from replay.produce import Pacer
from replay.settings import ReplayConfig

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / "configs" / "local.yaml"


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[dict[str, object]], str]:
    rc = main(["replay", "--config", str(LOCAL), "--dry-run", *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()], err


def test_dry_run_prints_events_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    lines, err = dry_run(capsys, "--impressions", "30", "--seed", "5", "--time-shift", "none")
    imps = [x for x in lines if x["stream"] == "impression"]
    assert len(imps) == 30
    first = json.loads(str(imps[0]["value"]))
    assert first["request_id"] == imps[0]["key"] and first["v"] == 1
    assert first["event_time_ms"] == imps[0]["event_time_ms"]
    assert re.search(r"impressions\s+30\b", err)
    assert "replay synthetic -> stdout (dry run)" in err
    assert "oracle AUC" in err
    again, _ = dry_run(capsys, "--impressions", "30", "--seed", "5", "--time-shift", "none")
    assert again == lines  # deterministic


def test_flags_fall_back_to_env_then_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLUXREC_REPLAY_IMPRESSIONS", "12")
    monkeypatch.setenv("FLUXREC_REPLAY_RUN_ID", "envrun")
    monkeypatch.setenv("FLUXREC_REPLAY_DUPLICATES", "1.0")
    lines, _ = dry_run(capsys)
    clean = [x for x in lines if x["fault"] is None and x["stream"] == "impression"]
    assert len(clean) == 12
    assert all(str(x["key"]).startswith("envrun-r-") for x in lines)
    assert sum(x["fault"] == "duplicate" for x in lines) == len(lines) // 2
    lines, _ = dry_run(capsys, "--impressions", "4", "--duplicates", "0")  # flags win
    assert len([x for x in lines if x["stream"] == "impression"]) == 4
    assert all(x["fault"] is None for x in lines)


def test_bad_values_exit_1_naming_the_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["replay", "--config", str(LOCAL), "--dry-run", "--orphans", "2"]) == 1
    assert "replay.faults.orphan: got 2.0 (use a fraction in [0, 1])" in capsys.readouterr().err
    assert main(["replay", "--config", str(LOCAL), "--dry-run", "--source", "table"]) == 1
    assert "replay.path: required for source table" in capsys.readouterr().err
    monkeypatch.setenv("FLUXREC_REPLAY_SOURCE", "kafka")  # env values skip argparse's choices
    assert main(["replay", "--config", str(LOCAL), "--dry-run"]) == 1
    assert "replay.source: got 'kafka'" in capsys.readouterr().err
    monkeypatch.delenv("FLUXREC_REPLAY_SOURCE")
    path = "/nonexistent/obd"
    obd = str(REPO / "configs" / "obd.yaml")
    assert main(["replay", "--config", obd, "--dry-run", "--path", path]) == 1
    assert "/nonexistent/obd: no such file or folder" in capsys.readouterr().err


def test_help_shows_every_flag_with_its_env_var_and_config_key() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(sub.choices, dict)
    replay = sub.choices["replay"]
    text = replay.format_help()
    for action in replay._actions:
        if action.option_strings and action.dest not in ("help", "config"):
            flag = action.option_strings[0]
            env = "FLUXREC_REPLAY_" + flag.lstrip("-").replace("-", "_").upper()
            assert env in text.replace("\n", " ").replace(" ", ""), flag
    keys = {k for k, _, _ in iter_keys()}
    for dest, key in _OVERRIDES.items():
        assert f"replay.{key}" in keys, dest
        assert any(a.dest == dest for a in replay._actions), dest
    assert "replay.synthetic.impressions, 100000" in text.replace("\n", " ").replace("  ", "")


def test_local_yaml_documents_every_replay_key_at_its_default() -> None:
    assert load_config(LOCAL).replay == ReplayConfig()
    doc = yaml.safe_load(LOCAL.read_text())["replay"]

    def flat(d: dict[str, object], prefix: str) -> set[str]:
        out: set[str] = set()
        for k, v in d.items():
            key = f"{prefix}.{k}"
            mapping = k in ("actions", "columns", "file_columns")  # dict-valued keys
            out |= flat(v, key) if isinstance(v, dict) and not mapping else {key}
        return out

    assert flat(doc, "replay") == {k for k, _, _ in iter_keys() if k.startswith("replay.")}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def test_pacer_holds_to_the_rate_and_live_to_event_time() -> None:
    clock = FakeClock()
    p = Pacer(100.0, live=False, monotonic=clock.now, wall=clock.now, sleep=clock.sleep)
    for _ in range(201):
        p.wait(0)
    assert clock.t == pytest.approx(1002.0)  # 200 intervals of 10 ms
    clock = FakeClock()
    p = Pacer(0.0, live=True, monotonic=clock.now, wall=clock.now, sleep=clock.sleep)
    p.wait(1_000_000)  # event time == wall clock: no wait
    p.wait(1_005_000)
    assert clock.slept == [5.0] and clock.t == 1005.0
    p.wait(900_000)  # in the past: at once
    assert clock.slept == [5.0]
    clock = FakeClock()
    p = Pacer(0.0, live=False, monotonic=clock.now, wall=clock.now, sleep=clock.sleep)
    for _ in range(1000):
        p.wait(10**15)
    assert clock.slept == []


def test_pacer_tick_sends_in_bursts_never_early() -> None:
    times = [1_000_000 + 2 * i for i in range(1000)]  # live: one event every 2 ms
    for tick_s, most_sleeps, most_late_ms in ((0.0, 999, 0.0), (0.005, 2000 // 5 + 1, 5.0)):
        clock = FakeClock()
        p = Pacer(
            0.0, live=True, monotonic=clock.now, wall=clock.now, sleep=clock.sleep, tick_s=tick_s
        )
        late = []
        for t in times:
            p.wait(t)
            late.append(clock.t * 1000 - t)
        assert len(clock.slept) == pytest.approx(most_sleeps, abs=2)  # one wake-up per tick
        assert min(late) > -1.001  # never more than 1 ms early
        assert max(late) <= most_late_ms + 1e-6  # and at most one tick late
