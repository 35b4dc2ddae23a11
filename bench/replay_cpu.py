"""Benchmark of the demo's replay alone: CPU per event at a fixed rate into a real Kafka.

``.venv/bin/python bench/replay_cpu.py [--rate 5000] [--duration 30]``

On a private Kafka (free ports, state in a temporary folder, stopped at the end):

* **anchor**: kafka-python's ``KafkaProducer`` (the replay's producer settings with the
  demo's ``linger_ms``) sending ready impression payloads, paced at ``--rate`` events/s
  for ``--duration`` s in this process: the CPU per event of any replay through this
  client, with nothing to generate, encode or record;
* **replay**: ``python -m demo.replay`` (the demo's replay process, the config a
  ``fluxrec demo --rate R --duration D`` run gets) at ``--rate`` impressions/s for
  ``--duration`` s of stream, the label window ``--window`` after it.

For each: the CPU time of the sending process over the events it sent (microseconds per
event; ``/proc/PID/stat`` from the first event to the last, so the replay's start-up is
not counted), the cores it took, the broker's CPU per event over the same time, and the
p99 of how late events left (the replay sends each when the wall clock reaches its time).
The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from demo.settings import TUNING, DemoOptions, parse_set, run_config
from fluxrec.config import load_config
from fluxrec.stack import Stack
from fluxrec.testing import unique_name, write_test_config
from fluxrec.topics import delete_topics, ensure_topics

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of the threads of ``pid``, summed by name without digits (the
    JVM's ``C2 CompilerThre``, ``data-plane-kafka-``, ``GC Thread#``...)."""
    out: dict[str, float] = {}
    for entry in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{entry.path}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index(b"(") + 1 : raw.rindex(b")")].decode(errors="replace")
        name = "".join(c for c in name if not c.isdigit()).rstrip("-#_ ")
        fields = raw[raw.rindex(b")") + 2 :].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * _TICK_S
    return out


def thread_shares(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """Microseconds per event of each thread name between two :func:`thread_cpu_s`, the
    largest first (those above 1 us)."""
    d = {k: (v - before.get(k, 0.0)) / n * 1e6 for k, v in after.items()}
    return {k: round(v, 1) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v >= 1}


class CpuSampler(threading.Thread):
    """``(wall s, CPU s)`` of some processes every ``every_s`` until stopped."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s = pids, every_s
        self.rows: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            row = {}
            for name, pid in self.pids.items():
                try:
                    row[name] = proc_cpu_s(pid)
                except OSError:
                    continue
            self.rows.append((time.time(), row))
            self.stop.wait(self.every_s)

    def between(self, name: str, t0: float, t1: float) -> tuple[float, float]:
        """(CPU s, wall s) of ``name`` from the first sample at or after ``t0`` to the last
        at or before ``t1``."""
        rows = [(w, r[name]) for w, r in self.rows if t0 <= w <= t1 and name in r]
        if len(rows) < 2:
            return float("nan"), float("nan")
        return rows[-1][1] - rows[0][1], rows[-1][0] - rows[0][0]


def _payloads(n: int) -> list[tuple[bytes, bytes]]:
    from replay.settings import ReplayConfig, SyntheticConfig
    from replay.synthetic import SyntheticSource
    from replay.types import Impression, to_event

    rc = ReplayConfig(synthetic=SyntheticConfig(impressions=n))
    return [
        (e.key.encode(), e.payload.encode())
        for e in (to_event(r) for r in SyntheticSource(rc).records() if isinstance(r, Impression))
    ]


def anchor(
    bootstrap: str, rate: float, duration_s: float, kafka_pid: int, linger_ms: int
) -> dict[str, Any]:
    """kafka-python sending ready payloads at ``rate``/s (module doc)."""
    from replay.produce import new_producer
    from replay.settings import ProducerConfig

    n = int(rate * duration_s)
    payloads = _payloads(n)
    topic = unique_name("bench-replay-anchor")
    ensure_topics(bootstrap, [topic], 2)
    kp = new_producer(bootstrap, ProducerConfig(linger_ms=linger_ms))
    kp.send(topic, value=b"{}", key=b"warm-up").get(timeout=30)
    sampler = CpuSampler({"kafka": kafka_pid})
    sampler.start()
    threads0 = thread_cpu_s(kafka_pid)
    late: list[float] = []
    t0 = time.monotonic()
    w0 = time.time()
    c0 = time.process_time()
    for i, (key, value) in enumerate(payloads):
        due = t0 + i / rate
        ahead = due - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
        else:
            late.append(-ahead)
        kp.send(topic, value=value, key=key)
    kp.flush()
    cpu = time.process_time() - c0
    threads1 = thread_cpu_s(kafka_pid)
    wall = time.monotonic() - t0
    w1 = time.time()
    sampler.stop.set()
    sampler.join()
    kp.close()
    delete_topics(bootstrap, [topic])
    k_cpu, _ = sampler.between("kafka", w0, w1)
    return {
        "events": n,
        "cpu_us_per_event": round(cpu / n * 1e6, 1),
        "cores": round(cpu / wall, 3),
        "kafka_cpu_us_per_event": round(k_cpu / n * 1e6, 1),
        "late_p99_ms": round(float(np.percentile(late, 99)) * 1000, 1) if late else 0.0,
        "kafka_threads_us_per_event": thread_shares(threads0, threads1, n),
    }


def replay(
    cfg_path: Path,
    run_dir: Path,
    *,
    rate: float,
    duration_s: float,
    window_s: float,
    kafka_pid: int,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """The demo's replay process at ``rate`` impressions/s (module doc)."""
    base = load_config(cfg_path)
    opts = DemoOptions(
        config=cfg_path, rate=rate, duration_s=duration_s, window_s=window_s, overrides=overrides
    )
    run_id = unique_name("r")
    doc = run_config(
        base, cfg_path, opts, run_id=run_id, run_dir=run_dir, ports={"trainer": 0, "server": 0}
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "config.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    tail_ms = int(window_s * 1000) + 2000
    argv = [sys.executable, "-m", "demo.replay", "--config", str(config), "--out", str(run_dir)]
    argv += ["--duration-s", str(duration_s), "--tail-ms", str(tail_ms)]
    proc = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1])
    sampler = CpuSampler({"replay": proc.pid, "kafka": kafka_pid})
    sampler.start()
    threads0 = thread_cpu_s(kafka_pid)  # includes the replay's start-up (a few requests)
    rc = proc.wait()
    threads1 = thread_cpu_s(kafka_pid)
    sampler.stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"the replay failed (exit {rc})")
    sent, late, imps = [], [], []
    with gzip.open(run_dir / "events.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            sent.append(rec["w"] / 1000)
            late.append(rec["w"] - rec["t"])
            if rec["s"] == "impression":
                imps.append(rec["w"] / 1000)
    w0, w1 = min(sent), max(sent)
    r_cpu, r_wall = sampler.between("replay", w0, w1)
    k_cpu, _ = sampler.between("kafka", w0, w1)
    a, b = np.searchsorted(np.sort(sent), [w1 - r_wall, w1])
    n = int(b - a) or len(sent)
    summary = json.loads((run_dir / "replay.json").read_text())
    return {
        "events": len(sent),
        "impressions": summary["events"].get("impression", 0),
        "cpu_us_per_event": round(r_cpu / n * 1e6, 1),
        "cores": round(r_cpu / r_wall, 3),
        "kafka_cpu_us_per_event": round(k_cpu / n * 1e6, 1),
        "late_p99_ms": round(float(np.percentile(late, 99)), 1),
        "achieved_impressions_per_s": round(len(imps) / (max(imps) - min(imps)), 1),
        "kafka_threads_us_per_event": thread_shares(threads0, threads1, len(sent)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=5000.0, help="impressions/s")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of stream")
    p.add_argument("--window", type=float, default=5.0, help="label window, seconds")
    p.add_argument("--repeats", type=int, default=1, help="anchor and replay this many times")
    p.add_argument("--linger-ms", type=int, default=None, help="the producer's linger_ms "
                   "(anchor and replay; default: the demo's)")  # fmt: skip
    p.add_argument("--only", choices=("anchor", "replay"), default=None)
    p.add_argument("--kafka-jvm-args", default=None, help="kafka.jvm_args of the private "
                   "broker (default: the config's)")  # fmt: skip
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a config key of the replay's run (as fluxrec demo "
                   "--set)")  # fmt: skip
    ns = p.parse_args(argv)
    overrides = parse_set(ns.set)
    if ns.linger_ms is not None:
        overrides["replay.producer.linger_ms"] = ns.linger_ms
    linger_ms = int({**TUNING, **overrides}["replay.producer.linger_ms"])
    tmp = Path(tempfile.mkdtemp(prefix="fluxrec-bench-replay-"))
    kafka = {} if ns.kafka_jvm_args is None else {"jvm_args": ns.kafka_jvm_args}
    cfg_path = write_test_config(tmp, s3_server=False, kafka=kafka)
    stack = Stack(load_config(cfg_path))
    out: dict[str, Any] = {"rate": ns.rate, "duration_s": ns.duration, "anchor": [], "replay": []}
    out["kafka_jvm_args"] = stack.cfg.kafka.jvm_args
    try:
        stack.up(only=["kafka"])
        kafka_pid = stack.services[0].proc.pid()
        if kafka_pid is None:
            raise SystemExit("the private Kafka has no pid")
        bootstrap = load_config(cfg_path).kafka.bootstrap
        for i in range(ns.repeats):
            if ns.only != "replay":
                a = anchor(bootstrap, ns.rate, ns.duration, kafka_pid, linger_ms)
                print(f"anchor  {json.dumps(a)}", flush=True)
                out["anchor"].append(a)
            if ns.only != "anchor":
                run_dir = tmp / f"run-{i}"
                r = replay(
                    cfg_path,
                    run_dir,
                    rate=ns.rate,
                    duration_s=ns.duration,
                    window_s=ns.window,
                    kafka_pid=kafka_pid,
                    overrides=overrides,
                )
                print(f"replay  {json.dumps(r)}", flush=True)
                out["replay"].append(r)
    finally:
        stack.down(purge=True)
        shutil.rmtree(tmp, ignore_errors=True)
    out["load_avg"] = os.getloadavg()
    out["linger_ms"] = linger_ms
    if out["anchor"] and out["replay"]:
        out["replay_vs_anchor_cpu"] = round(
            float(np.median([r["cpu_us_per_event"] for r in out["replay"]]))
            / float(np.median([a["cpu_us_per_event"] for a in out["anchor"]])),
            2,
        )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
