"""``fluxrec train``: the continuous training daemon (imports torch only when it runs)."""

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


def _train(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from fluxrec.config import load_config
    from fluxrec.signals import stop_on_signals
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
        "--until-caught-up",
        env="FLUXREC_TRAIN_UNTIL_CAUGHT_UP",
        action="store_true",
        help="stop (with a final checkpoint) once the topic is fully consumed",
    )
