"""Benchmark of the whole pipeline on the one-machine stack (``make bench-pipeline``).

For each rate (impressions per second of the synthetic stream, ``--rates``), one demo run
(:func:`demo.runner.run_demo`, the same driver as ``fluxrec demo``): the live replay ->
Kafka -> the Flink join -> the trainer and its exporter -> the example scoring server,
``--duration`` seconds of stream, live scoring off, no report. Everything runs on a
private stack (Kafka, Redis on free ports, state in a temporary folder:
:func:`fluxrec.testing.write_test_config`), started once and stopped at the end.

Measured per rate, from the run folder (:mod:`demo.analysis`):

* ``achieved``: impressions sent per second of wall-clock time (the replay is a stage
  too: the live replay gives each event its scheduled time, so one sent late shows here
  and in the ``replay`` lag);
* freshness p50 / p99 from the moment a label is final to applied in the server, and the
  p99 of every stage: ``replay`` (an event sent after its time), ``join`` (label final ->
  visible in the samples topic), ``trainer`` (-> trained), ``exporter`` (-> published),
  ``server`` (-> applied);
* ``bounded``: a stage's lag is bounded when its p90 over the last third of the run
  (by event time) is at most 1.5x its p90 over the middle third + 0.25 s: a stage that
  cannot keep up falls further behind as the run goes on;
* the CPU share of each process (CPU seconds over the replay / its wall time; 1.0 = one
  core): replay, join (PyFlink and its JVM), trainer (with its exporter), server, Kafka,
  Redis, and the demo's own tracer.

A rate is **sustained** when the replay achieves 95% of it, the p99 freshness is at most
2.4 s (the demo's goal) and every stage's lag is bounded; it **keeps up** when only the
first and the last hold (``max_rate_keeping_up_impressions_per_s``: the throughput the
pipeline sustains whatever its freshness). ``limiting_stage``: at the first
rate that is not sustained, ``replay`` if the replay fell short, else the stage with the
largest p99 among those that are not bounded (or, if all are, among all).

Anchor, measured first on the same stack: kafka-python (``KafkaProducer``, the replay's
settings) producing pre-built impression payloads as fast as it can, with nothing else
running: the ceiling of any replay through this client. The last line of output is one
JSON object with ``max_sustained_impressions_per_s`` and ``limiting_stage``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.analysis import freshness, load_run
from demo.runner import run_demo
from demo.settings import DemoOptions, parse_set
from fluxrec.config import load_config
from fluxrec.stack import Stack
from fluxrec.testing import unique_name, write_test_config
from fluxrec.topics import delete_topics, ensure_topics

GOAL_P99_S = 2.4
STAGES = ("replay", "join", "trainer", "exporter", "server")
PROCESSES = ("replay", "join", "trainer", "server", "kafka", "redis", "demo")


def producer_ceiling(bootstrap: str, n: int = 100_000) -> float:
    """Impressions/s kafka-python sends with the replay's producer settings (module doc)."""
    from replay.produce import new_producer
    from replay.settings import ReplayConfig, SyntheticConfig
    from replay.synthetic import SyntheticSource
    from replay.types import Impression, to_event

    rc = ReplayConfig(synthetic=SyntheticConfig(impressions=n))
    payloads = [
        (e.key.encode(), e.payload.encode())
        for e in (to_event(r) for r in SyntheticSource(rc).records() if isinstance(r, Impression))
    ]
    topic = unique_name("bench-anchor")
    ensure_topics(bootstrap, [topic], 2)
    kp = new_producer(bootstrap, replace(rc.producer, linger_ms=2, compression="lz4"))
    t0 = time.monotonic()
    for key, value in payloads:
        kp.send(topic, value=value, key=key)
    kp.flush()
    elapsed = time.monotonic() - t0
    kp.close()
    delete_topics(bootstrap, [topic])
    return len(payloads) / elapsed


def _p(a: Any, q: float) -> float:
    a = np.asarray(a, np.float64)
    return float(np.percentile(a, q)) if a.size else math.nan


def _thirds_p90(t: Any, v: Any) -> tuple[float, float]:
    """p90 of ``v`` over the middle and the last third of ``t``'s range."""
    t, v = np.asarray(t, np.float64), np.asarray(v, np.float64)
    if t.size < 30:
        return math.nan, math.nan
    a, b = np.percentile(t, [100 / 3, 200 / 3])
    return _p(v[(t >= a) & (t < b)], 90), _p(v[t >= b], 90)


def _bounded(mid: float, last: float) -> bool:
    return bool(not (math.isfinite(mid) and math.isfinite(last)) or last <= 1.5 * mid + 250)


def _sends(run_dir: Path) -> tuple[Any, Any, float]:
    """Event time and send delay (ms) of every event the replay sent, and the impressions
    it sent per second of wall-clock time (first to last impression)."""
    t, lag, sent = [], [], []
    with gzip.open(run_dir / "events.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            t.append(rec["t"])
            lag.append(rec["w"] - rec["t"])
            if rec["s"] == "impression" and rec.get("f") is None:
                sent.append(rec["w"])
    span_s = (max(sent) - min(sent)) / 1000 if len(sent) > 1 else math.inf
    return np.array(t, np.int64), np.array(lag, np.int64), len(sent) / span_s


def _cpu_shares(run_dir: Path, start_ms: int, end_ms: int) -> dict[str, float]:
    """CPU seconds / wall seconds of each process between the replay's start and end."""
    rows = []
    with (run_dir / "progress.jsonl").open() as f:
        for line in f:
            rec = json.loads(line)
            if "cpu" in rec:
                rows.append(rec)
    inside = [r for r in rows if start_ms <= r["w"] <= end_ms] or rows
    if len(inside) < 2:
        return {}
    a, b = inside[0], inside[-1]
    wall = (b["w"] - a["w"]) / 1000
    return {k: round((b["cpu"].get(k, 0) - a["cpu"].get(k, 0)) / wall, 3) for k in b["cpu"]}


def measure(run_dir: Path, rate: float) -> dict[str, Any]:
    """The figures of one run (module doc)."""
    run = load_run(run_dir)
    fr = freshness(run)
    t_ev, send, achieved = _sends(run_dir)
    cum, final = fr.cumulative, fr.final_ms
    stage_ms = {
        "join": cum["joined"],
        "trainer": cum["trained"] - cum["joined"],
        "exporter": cum["published"] - cum["trained"],
        "server": cum["applied"] - cum["published"],
    }
    lags: dict[str, dict[str, Any]] = {}
    for name, t, v in (("replay", t_ev, send), *((k, final, v) for k, v in stage_ms.items())):
        mid, last = _thirds_p90(t, v)
        lags[name] = {
            "p50_s": round(_p(v, 50) / 1000, 3),
            "p99_s": round(_p(v, 99) / 1000, 3),
            "p90_mid_s": round(mid / 1000, 3),
            "p90_last_s": round(last / 1000, 3),
            "bounded": _bounded(mid, last),
        }
    times = run.meta.get("times", {})
    e2e = fr.stages[-1]
    p99 = e2e.p99 if e2e.n else math.inf
    keeps_up = bool(achieved >= 0.95 * rate and all(x["bounded"] for x in lags.values()))
    sustained = bool(keeps_up and p99 <= GOAL_P99_S and not run.meta.get("problems"))
    return {
        "rate": rate,
        "achieved_impressions_per_s": round(achieved, 1),
        "samples": fr.counts["samples"],
        "measured": fr.counts["measured"],
        "freshness_p50_s": round(e2e.p50, 3),
        "freshness_p99_s": round(e2e.p99, 3),
        "lags": lags,
        "cpu": _cpu_shares(
            run_dir, int(times.get("replay_start_ms", 0)), int(times.get("replay_end_ms", 0))
        ),
        "problems": run.meta.get("problems", []),
        "keeps_up": keeps_up,
        "sustained": sustained,
    }


def limiting(m: dict[str, Any]) -> str:
    """The stage that limits a run that was not sustained (module doc)."""
    lags = m["lags"]
    if m["achieved_impressions_per_s"] < 0.95 * m["rate"] or not lags["replay"]["bounded"]:
        return "replay"
    pool = [s for s in STAGES[1:] if not lags[s]["bounded"]] or list(STAGES[1:])
    return max(pool, key=lambda s: lags[s]["p99_s"] if math.isfinite(lags[s]["p99_s"]) else 0)


def row(m: dict[str, Any]) -> str:
    lag = " ".join(
        f"{s} {m['lags'][s]['p99_s']:.2f}{'' if m['lags'][s]['bounded'] else '!'}" for s in STAGES
    )
    cpu = " ".join(f"{k} {m['cpu'].get(k, 0):.2f}" for k in PROCESSES)
    return (
        f"{m['rate']:>7,.0f}/s  achieved {m['achieved_impressions_per_s']:>7,.0f}  "
        f"freshness p50 {m['freshness_p50_s']:.2f} p99 {m['freshness_p99_s']:.2f} s  "
        f"p99 lags [{lag}]  cpu [{cpu}]  {'sustained' if m['sustained'] else 'NOT sustained'}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="500,1000,2000,4000,8000", help="impressions/s, ascending")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of stream per rate")
    p.add_argument("--window", type=float, default=5.0, help="label window, seconds")
    p.add_argument("--all", action="store_true", help="run every rate (default: stop at the "
                   "first rate that is not sustained)")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key of every run (as fluxrec demo --set), e.g. "
                   "--set flink.checkpoint_interval_ms=500")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs") / "bench-pipeline")
    p.add_argument("--from-runs", action="store_true", help="measure the rate-* folders "
                   "already in --out again (no stack, no runs, no anchor)")  # fmt: skip
    ns = p.parse_args(argv)
    if ns.from_runs:
        return _remeasure(ns.out, ns.duration, ns.window)
    rates = [float(r) for r in ns.rates.split(",")]
    overrides = parse_set(ns.set)
    # the stack's config stays in --out (the runs' configs extend it: --from-runs reads
    # them again); its state (Kafka, Redis data) in a temporary folder, deleted at the end
    tmp = Path(tempfile.mkdtemp(prefix="fluxrec-bench-pipeline-"))
    ns.out.mkdir(parents=True, exist_ok=True)
    cfg_path = write_test_config(tmp, s3_server=False)
    cfg_path = Path(shutil.copy(cfg_path, ns.out / "stack.yaml")).resolve()
    stack = Stack(load_config(cfg_path))
    results: list[dict[str, Any]] = []
    ceiling = math.nan
    try:
        print(f"== private stack under {tmp}", flush=True)
        stack.up()
        ceiling = producer_ceiling(load_config(cfg_path).kafka.bootstrap)
        print(f"== anchor: kafka-python sends {ceiling:,.0f} impressions/s alone", flush=True)
        for rate in rates:
            run_dir = (ns.out / f"rate-{int(rate)}").resolve()
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"== rate {rate:,.0f} impressions/s for {ns.duration:g} s", flush=True)
            opts = DemoOptions(
                config=cfg_path,
                rate=rate,
                duration_s=ns.duration,
                window_s=ns.window,
                live_scoring=False,
                report=False,
                keep_stack=True,
                run_dir=run_dir,
                progress_every_s=15.0,
                drain_timeout_s=180.0,
                overrides=overrides,
            )
            res = run_demo(opts, say=lambda line: print("   " + line, flush=True))
            m = measure(res.run_dir, rate)
            m["problems"] = sorted(set(m["problems"]) | set(res.problems))
            m["sustained"] = m["sustained"] and not res.problems
            results.append(m)
            print(row(m), flush=True)
            if not m["sustained"] and not ns.all:
                break
    finally:
        stack.down(purge=True)
        shutil.rmtree(tmp, ignore_errors=True)
    summary = _summary(results, ceiling, ns.duration, ns.window)
    print(json.dumps(summary))
    return 0


def _summary(
    results: list[dict[str, Any]], ceiling: float, duration_s: float, window_s: float
) -> dict[str, Any]:
    ok = [m["rate"] for m in results if m["sustained"]]
    best = max(ok) if ok else 0.0
    up = [m["rate"] for m in results if m["keeps_up"]]
    failed = [m for m in results if not m["sustained"]]
    return {
        "max_sustained_impressions_per_s": best,
        "limiting_stage": limiting(failed[0]) if failed else None,
        "max_rate_keeping_up_impressions_per_s": max(up) if up else 0.0,
        "producer_ceiling_impressions_per_s": round(ceiling, 1),
        "vs_producer_ceiling": round(best / ceiling, 3) if ceiling > 0 else None,
        "duration_s": duration_s,
        "window_s": window_s,
        "cores": os.cpu_count(),
        "rates": results,
    }


def _remeasure(out: Path, duration_s: float, window_s: float) -> int:
    results = []
    for run_dir in sorted(out.glob("rate-*"), key=lambda p: int(p.name.split("-")[1])):
        m = measure(run_dir, float(run_dir.name.split("-")[1]))
        results.append(m)
        print(row(m), flush=True)
    print(json.dumps(_summary(results, math.nan, duration_s, window_s)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
