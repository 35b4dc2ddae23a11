"""``fluxrec join run | submit | reconcile``: the sample-join job (imports cheaply).

``run`` executes the job in a local MiniCluster inside this process and blocks (Ctrl-C or
SIGTERM cancels it cleanly; its last checkpoint is kept for ``--restore``); ``submit`` sends
the same job to a running Flink cluster and returns; ``reconcile`` checks the metrics topic.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _prepare(ns: argparse.Namespace) -> tuple[Any, Any]:
    from dataclasses import replace

    from fluxrec.config import load_config
    from fluxrec.topics import ensure_topics
    from pipelines.join_job import JoinTopics

    cfg = load_config(ns.config)
    if ns.parallelism:
        cfg = replace(cfg, flink=replace(cfg.flink, parallelism=ns.parallelism))
    topics = JoinTopics.from_config(cfg)
    ensure_topics(cfg.kafka.bootstrap, list(topics.__dict__.values()), cfg.kafka.partitions)
    return cfg, topics


def _cmd_run(ns: argparse.Namespace) -> int:
    import sys

    from fluxrec.signals import stop_on_signals
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import join_job

    cfg, topics = _prepare(ns)
    t_env = create_table_env(cfg, restore_from=ns.restore)
    result = join_job(t_env, cfg, topics, bounded=ns.bounded)
    client = result.get_job_client()
    job_id = client.get_job_id()
    print(
        f"fluxrec join: job {job_id} running in a local MiniCluster "
        f"(parallelism {cfg.flink.parallelism}); "
        f"{topics.impressions} + {topics.actions} -> {topics.samples}",
        flush=True,
    )
    # signals only set a flag: an exception raised inside a py4j call would leave noise
    stop = stop_on_signals()
    while not stop.wait(1.0):
        if client.get_job_status().result().name in ("FINISHED", "FAILED", "CANCELED"):
            result.wait()  # raises the job's failure, if it failed
            print(f"fluxrec join: job {job_id} finished", flush=True)
            return 0
    client.cancel().result()
    print(f"fluxrec join: job {job_id} cancelled", file=sys.stderr, flush=True)
    return 130


def _cmd_submit(ns: argparse.Namespace) -> int:
    from fluxrec.errors import FluxrecError
    from pipelines.flink_env import create_table_env
    from pipelines.join_job import join_job

    cfg, topics = _prepare(ns)
    jobmanager = ns.jobmanager or cfg.flink.jobmanager
    if not jobmanager:
        raise FluxrecError(
            "no Flink cluster given: pass --jobmanager HOST:PORT (the REST address) or set "
            "flink.jobmanager in the config"
        )
    t_env = create_table_env(cfg, jobmanager=jobmanager, restore_from=ns.restore)
    try:
        result = join_job(t_env, cfg, topics, bounded=ns.bounded)
    except Exception as e:  # py4j wraps the client's connection errors
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise FluxrecError(
            f"could not submit to the Flink cluster at {jobmanager}: {first}; check that its "
            "JobManager REST endpoint answers there (flink.jobmanager / --jobmanager)"
        ) from e
    client = result.get_job_client()
    job_id = client.get_job_id() if client is not None else "?"
    print(f"fluxrec join: submitted job {job_id} to http://{jobmanager}", flush=True)
    return 0


def _cmd_reconcile(ns: argparse.Namespace) -> int:
    from fluxrec.config import load_config
    from fluxrec.topics import read_topic
    from sample_join.reconcile import totals, windows

    cfg = load_config(ns.config)
    records = read_topic(cfg.kafka.bootstrap, cfg.kafka.topics.metrics, idle_s=ns.idle_s)
    rows = windows(totals(v for _, v in records))
    print(
        f"{'window_start_ms':>15} {'stream':10} {'in':>8} {'out':>8} {'balance':>8}  dead letters"
    )
    for w in rows:
        dead = ", ".join(f"{r} {n}" for r, n in sorted(w.dead_letters.items())) or "-"
        outs = w.counts.get("in", 0) - w.balance
        print(
            f"{w.window_start_ms:>15} {w.stream:10} {w.counts.get('in', 0):>8} {outs:>8} "
            f"{w.balance:>8}  {dead}"
        )
    off = [w for w in rows if w.balance]
    print(
        f"{len(rows)} windows, "
        + (f"{len(off)} not balanced (still in flight, or a bug)" if off else "all balanced")
    )
    return 1 if off else 0


def register(subs: Any, sub: Callable[..., Any], arg: Callable[..., Any]) -> None:
    """Add ``fluxrec join`` to the CLI."""
    join = subs.add_parser(
        "join", help="the sample-join Flink job: impressions + actions -> samples"
    )
    jsubs = join.add_subparsers(dest="join_command", metavar="ACTION", required=True)
    for name, handler, text in (
        ("run", _cmd_run, "run the join in a local MiniCluster until Ctrl-C (or the end)"),
        ("submit", _cmd_submit, "submit the join to a running Flink cluster and return"),
    ):
        p = sub(jsubs, name, handler, text)
        arg(
            p,
            "--bounded",
            env="FLUXREC_JOIN_BOUNDED",
            action="store_true",
            help="read the input topics up to their current end, then finish",
        )
        arg(
            p,
            "--parallelism",
            env="FLUXREC_JOIN_PARALLELISM",
            type=int,
            default=0,
            help="operator parallelism (0: flink.parallelism)",
        )
        arg(
            p,
            "--restore",
            env="FLUXREC_JOIN_RESTORE",
            default=None,
            help="start from this retained checkpoint or savepoint (a chk-N directory; with "
            "flink.state_changelog the job takes it over and deletes it once subsumed)",
        )
        if name == "submit":
            arg(
                p,
                "--jobmanager",
                env="FLUXREC_JOBMANAGER",
                default=None,
                help="REST HOST:PORT of the JobManager (default: flink.jobmanager)",
            )
    p = sub(
        jsubs,
        "reconcile",
        _cmd_reconcile,
        "check in = samples + labelled + duplicates + dead letters per window "
        "from the metrics topic; exit 1 when a window does not balance",
    )
    arg(
        p,
        "--idle-s",
        env="FLUXREC_RECONCILE_IDLE_S",
        type=float,
        default=3.0,
        help="stop reading the metrics topic after this long without a record",
    )
