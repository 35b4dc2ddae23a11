"""Config section of the ``exporter`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ExporterConfig"]


@dataclass(frozen=True)
class ExporterConfig:
    """Delta export: interval, snapshots, retention, safety gate.

    Every field has a default so existing deployment files stay valid. Versions are
    written under ``object_store.url`` and announced on ``redis.channel``.
    """

    interval_s: float = 5.0  # take a cut from the trainer this often
    snapshot_every: int = 50  # a full snapshot after this many deltas
    retain_snapshots: int = 2  # keep this many snapshot chains (>= 1; the live one always)
    encoding: Literal["f32", "f16", "i8"] = "f32"  # row encoding of table objects
    max_norm_jump: float = 1.0  # refuse when a tensor's L2 norm changes by more than this x
    hmac_key_env: str = "FLUXREC_DELTA_HMAC_KEY"  # env var holding the signing key (if set)
