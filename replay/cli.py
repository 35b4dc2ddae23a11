"""``fluxrec replay``: produce impression and action events to Kafka (imports cheaply).

Every flag overrides one ``replay.*`` config key and falls back to an environment
variable; unset, the config file decides (``configs/local.yaml``, section ``replay:``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

__all__ = ["register"]

#: flag dest -> the ``replay.*`` key it overrides (dotted: a nested section)
_OVERRIDES = {
    "source": "source",
    "path": "path",
    "rate": "rate",
    "limit": "limit",
    "seed": "seed",
    "time_shift": "time_shift",
    "run_id": "run_id",
    "impressions": "synthetic.impressions",
    "malformed": "faults.malformed",
    "duplicates": "faults.duplicate",
    "orphans": "faults.orphan",
    "compression": "producer.compression",
    "linger_ms": "producer.linger_ms",
}


def _with_overrides(rcfg: Any, ns: argparse.Namespace) -> Any:
    """``rcfg`` with each flag (or env var) that was given replacing its config key."""
    import dataclasses

    for dest, key in _OVERRIDES.items():
        if not hasattr(ns, dest):
            continue
        value = getattr(ns, dest)
        if "." in key:
            section, name = key.split(".")
            sub = dataclasses.replace(getattr(rcfg, section), **{name: value})
            rcfg = dataclasses.replace(rcfg, **{section: sub})
        else:
            rcfg = dataclasses.replace(rcfg, **{key: value})
    return rcfg


def _cmd_replay(ns: argparse.Namespace) -> int:
    import os
    import sys

    from fluxrec.config import load_config
    from replay.run import run_replay
    from replay.types import Stream

    cfg = load_config(ns.config)
    rcfg = _with_overrides(cfg.replay, ns)
    topics = {
        Stream.IMPRESSION: getattr(ns, "impressions_topic", cfg.kafka.topics.impressions),
        Stream.ACTION: getattr(ns, "actions_topic", cfg.kafka.topics.actions),
    }
    try:
        report = run_replay(cfg, rcfg, topics=topics, dry_run=sys.stdout if ns.dry_run else None)
    except BrokenPipeError:  # `fluxrec replay --dry-run | head`: the reader has had enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    out = sys.stderr if ns.dry_run else sys.stdout
    for line in report.lines():
        print(line, file=out)
    return 130 if report.interrupted else 0


def register(
    subs: Any, sub: Callable[..., argparse.ArgumentParser], arg: Callable[..., None]
) -> None:
    """Add ``fluxrec replay`` (see :mod:`fluxrec.cli` for ``sub`` and ``arg``)."""
    p = sub(
        subs,
        "replay",
        _cmd_replay,
        "produce impression and action events (sample_join/CONTRACTS.md v1) to Kafka in "
        "event-time order, from the synthetic click model or a real log in shared/data; "
        "prints events per stream and the rate achieved",
    )
    from replay.settings import Compression, ReplayConfig, SourceName, TimeShift

    d = ReplayConfig()  # the defaults, for --help
    unset = argparse.SUPPRESS  # unset flags leave the config key alone
    arg(
        p,
        "--source",
        env="FLUXREC_REPLAY_SOURCE",
        default=unset,
        choices=get_args(SourceName),
        help=f"event source (default: replay.source, {d.source})",
    )
    arg(
        p,
        "--path",
        env="FLUXREC_REPLAY_PATH",
        default=unset,
        type=Path,
        help="folder or file of the real log, e.g. ../shared/data/obd (default: replay.path)",
    )
    arg(
        p,
        "--rate",
        env="FLUXREC_REPLAY_RATE",
        default=unset,
        type=float,
        help=f"events/s to Kafka, 0 = as fast as possible (default: replay.rate, {d.rate:g})",
    )
    arg(
        p,
        "--limit",
        env="FLUXREC_REPLAY_LIMIT",
        default=unset,
        type=int,
        help="replay at most this many source events, 0 = all; injected faults come on top "
        f"(default: replay.limit, {d.limit})",
    )
    arg(
        p,
        "--seed",
        env="FLUXREC_REPLAY_SEED",
        default=unset,
        type=int,
        help="random seed of the generator, simulated delays and faults "
        f"(default: replay.seed, {d.seed})",
    )
    arg(
        p,
        "--time-shift",
        env="FLUXREC_REPLAY_TIME_SHIFT",
        default=unset,
        choices=get_args(TimeShift),
        help="now: the last event is at the wall clock, relative times kept; none: log "
        "times; live: the first event is now and each is sent when its time comes "
        f"(default: replay.time_shift, {d.time_shift})",
    )
    arg(
        p,
        "--run-id",
        env="FLUXREC_REPLAY_RUN_ID",
        default=unset,
        help="prefix of every request_id, to replay the same events again into topics the "
        "join has seen (it would count them as duplicates) (default: replay.run_id)",
    )
    arg(
        p,
        "--impressions",
        env="FLUXREC_REPLAY_IMPRESSIONS",
        default=unset,
        type=int,
        help="synthetic: impressions to generate "
        f"(default: replay.synthetic.impressions, {d.synthetic.impressions})",
    )
    arg(
        p,
        "--malformed",
        env="FLUXREC_REPLAY_MALFORMED",
        default=unset,
        type=float,
        help="fraction of events followed by a broken copy (default: replay.faults.malformed)",
    )
    arg(
        p,
        "--duplicates",
        env="FLUXREC_REPLAY_DUPLICATES",
        default=unset,
        type=float,
        help="fraction of events sent twice (default: replay.faults.duplicate)",
    )
    arg(
        p,
        "--orphans",
        env="FLUXREC_REPLAY_ORPHANS",
        default=unset,
        type=float,
        help="fraction of actions followed by one for a request without impression "
        "(default: replay.faults.orphan)",
    )
    arg(
        p,
        "--compression",
        env="FLUXREC_REPLAY_COMPRESSION",
        default=unset,
        choices=get_args(Compression),
        help="Kafka producer compression "
        f"(default: replay.producer.compression, {d.producer.compression})",
    )
    arg(
        p,
        "--linger-ms",
        env="FLUXREC_REPLAY_LINGER_MS",
        default=unset,
        type=int,
        help="Kafka producer linger.ms "
        f"(default: replay.producer.linger_ms, {d.producer.linger_ms})",
    )
    arg(
        p,
        "--impressions-topic",
        env="FLUXREC_REPLAY_IMPRESSIONS_TOPIC",
        default=unset,
        help="topic for impressions (default: kafka.topics.impressions)",
    )
    arg(
        p,
        "--actions-topic",
        env="FLUXREC_REPLAY_ACTIONS_TOPIC",
        default=unset,
        help="topic for actions (default: kafka.topics.actions)",
    )
    arg(
        p,
        "--dry-run",
        env="FLUXREC_REPLAY_DRY_RUN",
        action="store_true",
        help="print the events as JSON lines on stdout instead of producing them "
        "(the summary goes to stderr)",
    )
