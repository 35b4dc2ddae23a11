"""``fluxrec train``: the continuous training daemon (imports torch only when it runs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["register"]


def _train(ns: argparse.Namespace) -> int:
    import signal
    import threading
    import time
    from pathlib import Path

    from fluxrec.config import load_config
    from trainer.checkpoint import load_latest, save
    from trainer.core import Trainer
    from trainer.daemon import LoopStats, run
    from trainer.http import serve_metrics
    from trainer.metrics import PrequentialMetrics, prometheus_text
    from trainer.tables import TableParams

    cfg = load_config(ns.config)
    tc = cfg.trainer
    dim = cfg.model.embedding_dim
    ckdir = Path(ns.checkpoint_dir or tc.checkpoint_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    t = Trainer(
        [(f.name, f.dim or dim) for f in cfg.features.sparse],
        [f.name for f in cfg.features.dense],
        arch=str(cfg.model.arch),
        mlp=cfg.model.mlp,
        table=TableParams(
            dim=dim,
            lr=tc.lr,
            admit_count=tc.admit_count,
            admit_prob=tc.admit_prob,
            max_rows=tc.max_rows,
            max_idle=tc.max_idle_ms,
            max_tracked=tc.max_tracked,
        ),
        dense_lr=tc.dense_lr,
        delayed_loss=tc.delayed_loss,
        evict_every=tc.evict_every,
        metrics=PrequentialMetrics(tc.metrics_window_ms, jsonl=ckdir / "metrics.jsonl"),
    )
    resumed = load_latest(t, ckdir)
    print(
        f"fluxrec train: {'resumed from ' + str(resumed) if resumed else 'fresh start'}", flush=True
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    last = {"t": time.monotonic(), "n": t.samples}
    stats = LoopStats()
    srv = None
    if tc.metrics_port:
        srv = serve_metrics(
            tc.metrics_host,
            tc.metrics_port,
            lambda: prometheus_text(
                t.metrics,
                {
                    "lag": stats.lag,
                    "samples_total": t.samples,
                    "bad_total": stats.bad,
                    "step": t.step,
                    "watermark_ms": t.watermark_ms,
                },
            ),
        )

    def maybe_checkpoint() -> None:
        if (
            time.monotonic() - last["t"] >= tc.checkpoint_every_s
            or t.samples - last["n"] >= tc.checkpoint_every_samples
        ):
            save(t, ckdir, keep=tc.checkpoint_keep)
            last["t"], last["n"] = time.monotonic(), t.samples

    st = run(
        t,
        cfg.kafka.bootstrap,
        cfg.kafka.topics.samples,
        stop=stop,
        batch_size=tc.batch_size,
        max_wait_s=tc.max_batch_wait_s,
        until_caught_up=ns.until_caught_up,
        on_batch=maybe_checkpoint,
        stats=stats,
    )
    if srv is not None:
        srv.shutdown()
    path = save(t, ckdir, keep=tc.checkpoint_keep)
    print(
        f"fluxrec train: stopped after {st.samples} samples ({st.bad} bad), "
        f"total {t.samples}, checkpoint {path}",
        flush=True,
    )
    return 0


def register(subs: Any, sub: Callable[..., Any], arg: Callable[..., Any]) -> None:
    """Add ``fluxrec train`` to the CLI."""
    p = sub(subs, "train", _train, "train continuously from the samples topic")
    arg(
        p,
        "--checkpoint-dir",
        env="FLUXREC_TRAIN_CHECKPOINT_DIR",
        default=None,
        help="checkpoint directory (default: trainer.checkpoint_dir)",
    )
    arg(
        p,
        "--until-caught-up",
        env="FLUXREC_TRAIN_UNTIL_CAUGHT_UP",
        action="store_true",
        help="stop (with a final checkpoint) once the topic is fully consumed",
    )
