"""Benchmark: scaling of the trainer over workers (``make bench-trainer``, second part).

The reference DeepFM of ``bench/trainer.py`` (26 sparse fields of dim 16 in one shared
dynamic table, 13 dense, MLP 429-256-128-1, batches of ``--batch`` per worker, Zipf(1.1)
ids over ``--vocab`` values per field, fresh batches every round) trained by:

- 1 worker of ``--threads`` threads (no process group: the N = 1 case of the same code);
- 2 workers of ``--threads`` threads each, one ``torch.distributed`` job (gloo over
  localhost): rows sharded by id, ids and vectors exchanged with ``all_to_all``, dense
  gradients averaged; worker 0 trains the same batches as the single worker, worker 1
  batches of its own (another seed).

Each job is fresh processes (``--worker``); every round of ``--steps`` steps starts and
ends with a barrier, and a job's rate is ``world x batch x steps`` over its median round
time (``--rounds`` rounds after an untimed warm-up round). The jobs alternate
``--repeats`` times, so load from other processes falls on all alike::

    scaling_efficiency = samples/s(2 workers) / (2 x samples/s(1 worker))
    machine_ceiling    = samples/s(2 independent 1-worker jobs at once) / (2 x samples/s(1 worker))

are taken per repeat (the anchor, 1 worker, measured beside them) and reported as medians.
The ceiling is what this machine gives two processes of this work with no exchange at all
(cores, caches and memory bandwidth shared with each other and with whatever else runs);
``vs_ceiling`` = scaling_efficiency / machine_ceiling is what the exchange costs. Apart
from the clock, every worker counts its CPU seconds (all its threads, gloo's included)::

    cpu_efficiency = CPU s per sample(1 worker) / CPU s per sample(2 workers, both counted)

the work the distribution adds (exchange, ownership, collectives), whatever share of
the CPUs the machine gives the job; on dedicated cores the clock would follow it, less
the time a worker waits for the other at each collective.

Every worker process runs in a session of its own. Linux's autogroup scheduling (on
here) shares the CPUs between sessions, not processes: two workers in one session would
split that one session's share of a busy machine (two independent one-worker processes
in one session ran at 0.43 of twice one while other sessions loaded the machine), and
the figure would measure the scheduler's policy rather than the trainer. With a session
each, every worker gets the share a separate user would; the load from other sessions
falls on every job alike.

``--prefetch`` measures ``trainer.prefetch`` instead: the daemon's loop body over raw
Kafka values (compact JSON of v1 Samples of the reference shape, ``bench/trainer.py``'s
``make_values``), ``train_batch(to_batch(featurizer.samples(values)))``, sequential and
with the next batch featurized on a thread while one trains (as ``daemon.run`` does),
the two modes in turn within one job (each round starts and ends with a barrier), for 1
worker and for 2 workers::

    prefetch_gain = samples/s(overlapped) / samples/s(sequential)     # same job, same run

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concurrent.futures import ThreadPoolExecutor

import torch

from bench.trainer import loop_body, make_batches, make_values, reference_trainer
from trainer.distributed import connect
from trainer.settings import TrainerConfig


def worker(a: argparse.Namespace) -> None:
    """One worker of a job (RANK / WORLD_SIZE / MASTER_* from the environment)."""
    torch.set_num_threads(a.threads)
    comm = connect(TrainerConfig(init_timeout_s=600))
    t = reference_trainer(nominal_batch=a.batch, comm=comm)
    rounds = [
        make_batches(a.steps, a.batch, a.vocab, seed=1000 * (comm.rank + a.seed) + r)[0]
        for r in range(a.rounds + 1)
    ]
    took, sent, cpu = [], [], []
    for r, batches in enumerate(rounds):
        comm.all_true(True)  # start together
        b0, t0, c0 = comm.bytes_sent, time.perf_counter(), _cpu_s()
        for b in batches:
            t.train_batch(b)
        b1, c1 = comm.bytes_sent, _cpu_s()
        comm.all_true(True)  # the round ends when every worker is done
        if r:  # round 0 warms up
            took.append(time.perf_counter() - t0)
            sent.append((b1 - b0) / len(batches))
            cpu.append(c1 - c0)
    rows = len(t.tables["shared_d16"])
    got = comm.gather_json({"took": took, "sent": sent, "cpu": cpu, "rows": rows})
    comm.close()
    if got is not None:
        print(json.dumps({"world": comm.world, "workers": got}), flush=True)


def prefetch_worker(a: argparse.Namespace) -> None:
    """One worker of a ``--prefetch`` job: the loop body sequential and overlapped, in
    turn, ``--rounds`` timed rounds each after a warm-up round."""
    torch.set_num_threads(a.threads)
    comm = connect(TrainerConfig(init_timeout_s=600))
    t = reference_trainer(nominal_batch=a.batch, comm=comm)
    modes = ("sequential", "overlapped")
    data = [
        [make_values(a.batch, seed=1000 * comm.rank + 100 * r + 10 * m + k) for k in range(a.steps)]
        for r in range(a.rounds + 1)
        for m in range(len(modes))
    ]
    pool = ThreadPoolExecutor(1)
    took: dict[str, list[float]] = {m: [] for m in modes}
    for i, chunk in enumerate(data):
        r, mode = divmod(i, len(modes))
        comm.all_true(True)  # start together
        t0 = time.perf_counter()
        loop_body(t, chunk, pool if modes[mode] == "overlapped" else None)
        comm.all_true(True)  # the round ends when every worker is done
        if r:
            took[modes[mode]].append(time.perf_counter() - t0)
    pool.shutdown()
    got = comm.gather_json(took)
    comm.close()
    if got is not None:
        print(json.dumps({"world": comm.world, "workers": got}), flush=True)


def _cpu_s() -> float:
    """CPU seconds of this process so far, every thread (gloo's included)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(world: int, argv: list[str], apart: bool = False) -> list[dict[str, Any]]:
    """Run ``world`` worker processes (one job, or ``apart``: independent one-worker
    jobs); what each worker reported, in rank order."""
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env["WORLD_SIZE"] = "1" if apart else str(world)
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", *argv, f"--seed={r if apart else 0}"],
            env={**env, "RANK": "0" if apart else str(r), "LOCAL_RANK": "0" if apart else str(r)},
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a session each: see the module docstring
        )
        for r in range(world)
    ]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a worker failed: {[p.returncode for p in procs]}")
    lines = [json.loads(o.splitlines()[-1]) for o in outs[: world if apart else 1]]
    return [w for line in lines for w in line["workers"]]


def prefetch_main(a: argparse.Namespace, argv: list[str]) -> None:
    """``--prefetch``: overlapped over sequential loop bodies, 1 and 2 workers."""
    gains: dict[int, list[float]] = {1: [], 2: []}
    rates: dict[int, list[list[float]]] = {1: [], 2: []}
    load = [os.getloadavg()[0]]
    for k in range(a.repeats):
        for world in (1, 2):
            ws = _spawn(world, [*argv, "--prefetch"])
            per = {  # a round of the job ends when its slowest worker is done
                m: statistics.median(max(w[m][i] for w in ws) for i in range(a.rounds))
                for m in ("sequential", "overlapped")
            }
            seq, ovl = (world * a.batch * a.steps / per[m] for m in ("sequential", "overlapped"))
            gains[world].append(ovl / seq)
            rates[world].append([round(seq), round(ovl)])
            load.append(os.getloadavg()[0])
            print(
                f"repeat {k + 1}, {world} worker(s): sequential {seq:7.0f} samples/s, "
                f"overlapped {ovl:7.0f}: prefetch gain {ovl / seq:.3f} (load {load[-1]:.1f})",
                flush=True,
            )
    print(
        json.dumps(
            {
                "prefetch_gain_1_worker": round(statistics.median(gains[1]), 3),
                "prefetch_gain_2_workers": round(statistics.median(gains[2]), 3),
                "prefetch_gain_runs": {w: [round(g, 3) for g in gains[w]] for w in (1, 2)},
                "samples_per_s_sequential_overlapped": rates,
                "batch_per_worker": a.batch,
                "threads_per_worker": a.threads,
                "steps": a.steps,
                "rounds": a.rounds,
                "load_average_1min": [round(x, 1) for x in load],
            }
        )
    )


def job(
    world: int, a: argparse.Namespace, argv: list[str], apart: bool = False
) -> dict[str, float]:
    """Run a job of ``world`` worker processes; its samples/s and bytes sent per step.
    ``apart``: ``world`` independent one-worker jobs at once instead (no exchange: what
    the machine gives two processes), their samples/s added."""
    ws = _spawn(world, argv, apart)
    rounds = [[w["took"][i] for w in ws] for i in range(a.rounds)]
    samples = world * a.batch * a.steps  # per round
    if apart:  # each process's own rate, added
        rate = sum(a.batch * a.steps / statistics.median(w["took"]) for w in ws)
    else:  # a round of the job ends when its slowest worker is done
        rate = world * a.batch * a.steps / statistics.median(max(r) for r in rounds)
    return {
        "samples_per_s": rate,
        "bytes_per_step": sum(statistics.median(w["sent"]) for w in ws),
        "rows": sum(w["rows"] for w in ws),
        # CPU seconds per sample, all processes of the job
        "cpu_per_sample": sum(statistics.median(w["cpu"]) for w in ws) / samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096, help="samples per step and worker")
    ap.add_argument("--steps", type=int, default=10, help="steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up")
    ap.add_argument("--repeats", type=int, default=3, help="1-worker / 2-worker pairs")
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument(
        "--prefetch",
        action="store_true",
        help="measure trainer.prefetch (loop over raw values, overlapped / sequential)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        (prefetch_worker if a.prefetch else worker)(a)
        return
    argv = [
        f"--batch={a.batch}",
        f"--steps={a.steps}",
        f"--rounds={a.rounds}",
        f"--vocab={a.vocab}",
        f"--threads={a.threads}",
    ]
    if a.prefetch:
        prefetch_main(a, argv)
        return
    load = [os.getloadavg()[0]]
    runs = []
    for k in range(a.repeats):
        one, two, apart = job(1, a, argv), job(2, a, argv), job(2, a, argv, apart=True)
        eff = two["samples_per_s"] / (2 * one["samples_per_s"])
        ceiling = apart["samples_per_s"] / (2 * one["samples_per_s"])
        cpu_eff = one["cpu_per_sample"] / two["cpu_per_sample"]
        runs.append(
            {"one": one, "two": two, "apart": apart, "efficiency": eff, "ceiling": ceiling}
            | {"cpu_efficiency": cpu_eff}
        )
        load.append(os.getloadavg()[0])
        print(
            f"repeat {k + 1}: 1 worker {one['samples_per_s']:7.0f} samples/s, 2 workers "
            f"{two['samples_per_s']:7.0f}, 2 independent 1-worker jobs "
            f"{apart['samples_per_s']:7.0f}: efficiency {eff:.3f} (machine ceiling "
            f"{ceiling:.3f}; CPU per sample {cpu_eff:.3f}), "
            f"{two['bytes_per_step'] / 1e6:.2f} MB exchanged per step "
            f"(load {load[-1]:.1f})",
            flush=True,
        )
    effs = [r["efficiency"] for r in runs]
    ceilings = [r["ceiling"] for r in runs]
    vs = [e / c for e, c in zip(effs, ceilings, strict=True)]
    per_step = statistics.median(r["two"]["bytes_per_step"] for r in runs)
    print(
        json.dumps(
            {
                "scaling_efficiency": round(statistics.median(effs), 3),
                "efficiency_runs": [round(e, 3) for e in effs],
                "machine_ceiling": round(statistics.median(ceilings), 3),
                "machine_ceiling_runs": [round(c, 3) for c in ceilings],
                "vs_ceiling": round(statistics.median(vs), 3),
                "cpu_efficiency": round(statistics.median(r["cpu_efficiency"] for r in runs), 3),
                "cpu_efficiency_runs": [round(r["cpu_efficiency"], 3) for r in runs],
                "cpu_us_per_sample_1_worker": [
                    round(r["one"]["cpu_per_sample"] * 1e6, 2) for r in runs
                ],
                "cpu_us_per_sample_2_workers": [
                    round(r["two"]["cpu_per_sample"] * 1e6, 2) for r in runs
                ],
                "samples_per_s_1_worker": [round(r["one"]["samples_per_s"]) for r in runs],
                "samples_per_s_2_workers": [round(r["two"]["samples_per_s"]) for r in runs],
                "samples_per_s_2_independent": [round(r["apart"]["samples_per_s"]) for r in runs],
                "bytes_per_step": round(per_step),
                "bytes_per_step_per_worker": round(per_step / 2),
                "live_rows_1_worker": runs[-1]["one"]["rows"],
                "live_rows_2_workers": runs[-1]["two"]["rows"],
                "batch_per_worker": a.batch,
                "threads_per_worker": a.threads,
                "steps": a.steps,
                "rounds": a.rounds,
                "vocab": a.vocab,
                "load_average_1min": [round(x, 1) for x in load],
            }
        )
    )


if __name__ == "__main__":
    main()
