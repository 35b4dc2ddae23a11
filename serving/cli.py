"""``fluxrec serve``: the example scoring server (imports neither torch nor pyflink)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _serve(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from fluxrec.config import load_config
    from fluxrec.signals import stop_on_signals
    from serving.server import serve

    cfg = load_config(ns.config)
    stop = stop_on_signals()
    serve(
        cfg,
        host=ns.host,
        port=ns.port,
        backend=ns.backend,
        poll_interval_s=ns.poll_interval_s,
        apply_log=Path(ns.apply_log) if ns.apply_log else None,
        stop=stop,
        say=lambda line: print(line, flush=True),
    )
    return 0


def register(subs: Any, sub: Callable[..., Any], arg: Callable[..., Any]) -> None:
    """Add ``fluxrec serve`` to the CLI."""
    p = sub(
        subs,
        "serve",
        _serve,
        "the example scoring server: follows the parameter versions in object_store.url "
        "(delta consumer SDK, Redis notices on redis.channel) and answers POST /score with "
        "the newest applied version; GET /healthz, /version, /metrics (Prometheus); "
        "SIGTERM or Ctrl-C stops it",
    )
    arg(p, "--host", env="FLUXREC_SERVE_HOST", default="127.0.0.1", help="address to bind")
    arg(
        p,
        "--port",
        env="FLUXREC_SERVE_PORT",
        type=int,
        default=8000,
        help="port to listen on (0: any free port; the first line printed names it)",
    )
    arg(
        p,
        "--backend",
        env="FLUXREC_SERVE_BACKEND",
        default="inplace",
        choices=["inplace", "memory"],
        help="serving tables: inplace (rows updated in place, ~1.1x memory) or memory "
        "(copy-on-write per version, ~2x during an apply)",
    )
    arg(
        p,
        "--poll-interval-s",
        env="FLUXREC_SERVE_POLL_INTERVAL_S",
        type=float,
        default=1.0,
        help="poll LATEST.json this often besides the Redis notices",
    )
    arg(
        p,
        "--apply-log",
        env="FLUXREC_SERVE_APPLY_LOG",
        default=None,
        help="append one JSON line per applied version (sequence, offsets, times, applied_ms)",
    )
