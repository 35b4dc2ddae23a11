"""``fluxrec train``: the continuous training daemon (imports torch only when it runs).

``fluxrec train --workers N`` starts N worker processes of one job on this machine
(``trainer.distributed.launch``); each runs ``python -m trainer``, which is this command
with the job's ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` in its
environment, as ``torchrun ... -m trainer`` gives them on several machines.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _flag(value: Any) -> bool | None:
    """A --flag/--no-flag value: None (not given), a bool, or a string from the env."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    from trainer.errors import TrainerError

    raise TrainerError(f"FLUXREC_TRAIN_EXPORT={value!r}: use 1/0, true/false, yes/no or on/off")


def _worker_args(ns: argparse.Namespace) -> list[str]:
    """The arguments of ``python -m trainer`` for the workers of this command."""
    out = []
    if ns.config is not None:
        out += ["--config", str(ns.config)]
    if ns.checkpoint_dir:
        out += ["--checkpoint-dir", str(ns.checkpoint_dir)]
    if ns.export is not None:
        out.append("--export" if _flag(ns.export) else "--no-export")
    if ns.trace:
        out += ["--trace", str(ns.trace)]
    if ns.until_caught_up:
        out.append("--until-caught-up")
    return out


def _train(ns: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from fluxrec.config import load_config
    from fluxrec.signals import stop_on_signals
    from trainer.errors import TrainerError

    world = os.environ.get("WORLD_SIZE")
    if ns.workers < 1:
        raise TrainerError(f"--workers {ns.workers}: need at least 1")
    if world is not None:  # a worker of a job (launched by --workers N or torchrun)
        if ns.workers not in (1, int(world)):
            raise TrainerError(
                f"--workers {ns.workers} under a launcher that set WORLD_SIZE={world}: "
                "leave --workers out (torchrun's --nproc-per-node and --nnodes size the job)"
            )
    elif ns.workers > 1:
        from trainer.distributed import launch

        load_config(ns.config)  # a bad config fails here, once, not in every worker
        return launch(ns.workers, _worker_args(ns), say=lambda line: print(line, flush=True))
    from trainer.daemon import serve

    cfg = load_config(ns.config)
    stop = stop_on_signals()
    serve(
        cfg,
        checkpoint_dir=Path(ns.checkpoint_dir) if ns.checkpoint_dir else None,
        export=_flag(ns.export),
        until_caught_up=ns.until_caught_up,
        stop=stop,
        say=lambda line: print(line, flush=True),
        trace=Path(ns.trace) if ns.trace else None,
    )
    return 0


def register(subs: Any, sub: Callable[..., Any], arg: Callable[..., Any]) -> None:
    """Add ``fluxrec train`` to the CLI."""
    p = sub(
        subs,
        "train",
        _train,
        "train continuously from the samples topic; SIGTERM or Ctrl-C stops it with a "
        "final checkpoint and export",
    )
    arg(
        p,
        "--checkpoint-dir",
        env="FLUXREC_TRAIN_CHECKPOINT_DIR",
        default=None,
        help="checkpoint directory (default: trainer.checkpoint_dir, else stack.state_dir/trainer)",
    )
    arg(
        p,
        "--export",
        env="FLUXREC_TRAIN_EXPORT",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the exporter in this process: cuts every exporter.interval_s to "
        "object_store.url, announced on redis.channel (default: trainer.export)",
    )
    arg(
        p,
        "--trace",
        env="FLUXREC_TRAIN_TRACE",
        default=None,
        help="append one JSON line per trained batch to this file: wall time, step, "
        "offsets, prequential scores and labels (the demo report reads it)",
    )
    arg(
        p,
        "--workers",
        env="FLUXREC_TRAIN_WORKERS",
        type=int,
        default=1,
        help="worker processes of one job on this machine (torch.distributed, gloo on CPU): "
        "embedding rows sharded by id, the dense model replicated, partition p read by "
        "worker p mod N; the samples topic needs at least N partitions",
    )
    arg(
        p,
        "--until-caught-up",
        env="FLUXREC_TRAIN_UNTIL_CAUGHT_UP",
        action="store_true",
        help="stop (with a final checkpoint) once the topic is fully consumed",
    )
