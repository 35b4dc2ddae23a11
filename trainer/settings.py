"""Config section of the ``trainer`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainerConfig"]


@dataclass(frozen=True)
class TrainerConfig:
    """The training daemon: batching, tables, optimizer, checkpoints, metrics.

    Every field has a default so existing deployment files stay valid.
    """
