"""Config section of the ``trainer`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["TrainerConfig"]


@dataclass(frozen=True)
class TrainerConfig:
    """The training daemon: batching, tables, optimizer, checkpoints, metrics, export.

    Every field has a default so existing deployment files stay valid. The features
    come from ``features``, the architecture from ``model``.
    """

    label: str = "click"  # the join label (join.labels[].name) the model learns
    batch_size: int = 1024
    max_batch_wait_s: float = 1.0
    fetch_max_bytes: int = 16 << 20  # bound on what the consumer buffers per fetch
    threads: int = 0  # torch intra-op threads (0: torch's default, one per core)
    lr: float = 0.05
    dense_lr: float = 0.01
    admit_count: int = 1
    admit_prob: float = 1.0
    max_rows: int = 0
    max_idle_ms: int = 0
    max_tracked: int = 1_000_000
    evict_every: int = 100
    delayed_loss: Literal["fnw", "fnc"] = "fnw"
    hash_cache: int = 1_000_000  # feature value -> id hashes kept (reset when full)
    pipeline: bool = False  # backward + updates on a worker thread (Trainer.train_batch)
    prefetch: bool = True  # featurize the next batch while one trains (one worker only)
    metrics_window_ms: int = 60_000
    checkpoint_dir: Path | None = None  # None: stack.state_dir / "trainer"
    checkpoint_every_s: float = 60.0
    checkpoint_every_samples: int = 100_000
    checkpoint_keep: int = 3
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    export: bool = True  # run the exporter (exporter.*) in the trainer process
    broker_timeout_s: float = 60.0  # no broker answering this long ends the job (one line)
    # workers (fluxrec train --workers N, or torchrun): trainer/distributed.py
    device: Literal["cpu", "cuda", "auto"] = "cpu"  # auto: cuda where every worker has one
    init_timeout_s: float = 120.0  # to form the process group (every worker started)
    collective_timeout_s: float = 600.0  # a worker silent this long ends the job
