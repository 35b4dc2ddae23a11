"""Config section of the ``trainer`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainerConfig"]


@dataclass(frozen=True)
class TrainerConfig:
    """The training daemon: batching, tables, optimizer, checkpoints, metrics.

    Every field has a default so existing deployment files stay valid.
    """

    batch_size: int = 1024
    max_batch_wait_s: float = 1.0
    lr: float = 0.05
    dense_lr: float = 0.01
    admit_count: int = 1
    admit_prob: float = 1.0
    max_rows: int = 0
    max_idle_ms: int = 0
    max_tracked: int = 1_000_000
    evict_every: int = 100
    delayed_loss: str = "fnw"
    metrics_window_ms: int = 60_000
    checkpoint_dir: str = "./var/trainer/checkpoints"
    checkpoint_every_s: float = 60.0
    checkpoint_every_samples: int = 100_000
    checkpoint_keep: int = 3
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
