"""``fluxrec demo``, ``fluxrec report`` and ``fluxrec smoke``: the application on top of the
stages. Registered by ``fluxrec.cli`` like every stage's commands; this module imports
cheaply (the runner, the analysis, torch and pyflink are imported on use).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fluxrec.errors import FluxrecError

__all__ = ["register"]


def _cmd_smoke(ns: argparse.Namespace) -> int:
    from demo import run_smoke
    from fluxrec.config import load_config

    report = run_smoke(load_config(ns.config), events=ns.events, keep_stack=True, start_stack=False)
    return 0 if report.ok else 1


def _cmd_demo(ns: argparse.Namespace) -> int:
    from demo.runner import run_demo
    from demo.settings import DemoOptions, parse_set

    opts = DemoOptions(
        config=ns.config,
        data=Path(ns.data) if ns.data else None,
        strategy=ns.strategy,
        duration_s=ns.duration,
        rate=ns.rate,
        window_s=ns.window,
        speed=ns.speed,
        limit=ns.limit,
        until_interrupted=ns.until_interrupted,
        keep_stack=ns.keep_stack,
        keep_topics=ns.keep_topics,
        run_dir=Path(ns.run_dir) if ns.run_dir else None,
        report=not ns.no_report,
        live_scoring=not ns.no_live_scoring,
        faults=ns.faults,
        overrides=parse_set(ns.set or []),
    )
    result = run_demo(opts, say=lambda line: print(line, flush=True))
    for problem in result.problems:
        print(f"fluxrec demo: {problem}", file=sys.stderr)
    print(f"run folder: {result.run_dir}")
    return 0 if result.ok else 1


def _cmd_report(ns: argparse.Namespace) -> int:
    from demo.report import write_report

    run_dir = Path(ns.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FluxrecError(f"{run_dir} is not a demo run folder (no config.yaml): pass runs/ID")
    summary = write_report(
        run_dir, say=lambda line: print(line, flush=True), comparisons=not ns.no_comparisons
    )
    return 1 if summary.get("problems") else 0


def _demo_parser(subs: Any, _sub: Callable[..., Any], _arg: Callable[..., Any]) -> None:
    p = _sub(
        subs,
        "demo",
        _cmd_demo,
        "the whole pipeline on one machine: brings the stack up, replays a stream live "
        "(synthetic, or a real log with --data) through the Flink join, the trainer with its "
        "exporter and the example scoring server, shows progress, drains and stops "
        "everything, then writes a freshness and quality report into runs/ID",
    )
    _arg(
        p,
        "--data",
        env="FLUXREC_DEMO_DATA",
        default=None,
        help="a log to replay: the one your --config describes (replay.table), or a public "
        "log of shared/data (e.g. ../shared/data/obd: its sample config in configs/ is used); "
        "default: replay.path of --config, else the synthetic stream",
    )
    _arg(
        p,
        "--strategy",
        env="FLUXREC_DEMO_STRATEGY",
        default="window",
        choices=["window", "fake_negative"],
        help="the join's label strategy",
    )
    _arg(
        p,
        "--duration",
        env="FLUXREC_DEMO_DURATION",
        type=float,
        default=120.0,
        help="seconds of stream: synthetic event time, or a log fitted into it",
    )
    _arg(
        p,
        "--rate",
        env="FLUXREC_DEMO_RATE",
        type=float,
        default=300.0,
        help="synthetic impressions per second",
    )
    _arg(
        p,
        "--window",
        env="FLUXREC_DEMO_WINDOW",
        type=float,
        default=20.0,
        help="label window in seconds (clicks later than this are late)",
    )
    _arg(
        p,
        "--speed",
        env="FLUXREC_DEMO_SPEED",
        type=float,
        default=0.0,
        help="log seconds per wall-clock second for --data (0: fit into --duration)",
    )
    _arg(
        p,
        "--limit",
        env="FLUXREC_DEMO_LIMIT",
        type=int,
        default=0,
        help="replay at most this many source records (0: all)",
    )
    _arg(
        p,
        "--faults",
        env="FLUXREC_DEMO_FAULTS",
        type=float,
        default=0.0,
        help="fraction of malformed, duplicate and orphan copies (dead-letter paths)",
    )
    _arg(
        p,
        "--until-interrupted",
        env="FLUXREC_DEMO_UNTIL_INTERRUPTED",
        action="store_true",
        help="run until Ctrl-C (synthetic: an endless stream) instead of ending after the replay",
    )
    _arg(
        p,
        "--keep-stack",
        env="FLUXREC_KEEP_STACK",
        action="store_true",
        help="leave the stack running afterwards (a stack that ran before is always kept)",
    )
    _arg(
        p,
        "--keep-topics",
        env="FLUXREC_DEMO_KEEP_TOPICS",
        action="store_true",
        help="keep the run's Kafka topics (deleted by default)",
    )
    _arg(
        p,
        "--run-dir",
        env="FLUXREC_DEMO_RUN_DIR",
        default=None,
        help="folder of the run's records and report (default: runs/ID)",
    )
    _arg(
        p,
        "--no-report",
        env="FLUXREC_DEMO_NO_REPORT",
        action="store_true",
        help="do not write the report (make it later with `fluxrec report RUN_DIR`)",
    )
    _arg(
        p,
        "--no-live-scoring",
        env="FLUXREC_DEMO_NO_LIVE_SCORING",
        action="store_true",
        help="do not score each impression with the server while replaying",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key of the run, e.g. --set "
                   "flink.checkpoint_interval_ms=500 (repeatable; the run's defaults are in "
                   "demo/settings.py)")  # fmt: skip


def register(subs: Any, _sub: Callable[..., Any], _arg: Callable[..., Any]) -> None:
    """Add ``fluxrec smoke``, ``fluxrec demo`` and ``fluxrec report`` to the CLI."""
    p = _sub(
        subs,
        "smoke",
        _cmd_smoke,
        "send events through Kafka and the Flink SQL smoke job on a running stack",
    )
    _arg(
        p,
        "--events",
        env="FLUXREC_SMOKE_EVENTS",
        type=int,
        default=5000,
        help="how many events to send",
    )

    _demo_parser(subs, _sub, _arg)
    p = _sub(
        subs,
        "report",
        _cmd_report,
        "write report.md, summary.json and plots/ of a demo run folder (again)",
        config=False,
    )
    p.add_argument(
        "run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/20261124-101500-ab12"
    )
    _arg(
        p,
        "--no-comparisons",
        env="FLUXREC_REPORT_NO_COMPARISONS",
        action="store_true",
        help="skip the offline window vs fake_negative and frozen-model trainings",
    )
