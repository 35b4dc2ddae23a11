"""Config section of the ``exporter`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from fluxrec.errors import ConfigError

__all__ = ["ExporterConfig"]


@dataclass(frozen=True)
class ExporterConfig:
    """Delta export: interval, snapshots, retention, safety gate.

    Every field has a default so existing deployment files stay valid. Versions are
    written under ``object_store.url`` and announced on ``redis.channel``. The safety gate
    (rules in :mod:`exporter.exporter`) refuses NaN/Inf, and a table or dense tensor whose
    RMS grows past ``max_norm_jump`` x max(its RMS as last published, ``norm_floor``).
    """

    interval_s: float = 5.0  # take a cut from the trainer this often
    snapshot_every: int = 50  # a full snapshot after this many deltas
    retain_snapshots: int = 2  # keep this many snapshot chains (>= 1; the live one always)
    encoding: Literal["f32", "f16", "i8"] = "f32"  # row encoding of table objects
    max_norm_jump: float = 4.0  # gate: refuse an RMS above this factor x the last published
    norm_floor: float = 0.1  # gate: a reference RMS below this counts as this
    hmac_key_env: str = "FLUXREC_DELTA_HMAC_KEY"  # env var holding the signing key (if set)

    def __post_init__(self) -> None:
        if not self.max_norm_jump > 1:  # also catches NaN
            raise ConfigError(
                "exporter.max_norm_jump",
                "the exporter settings",
                f"{self.max_norm_jump!r} is not a factor above 1",
                "e.g. 4.0 refuses a table or tensor whose RMS more than quadruples "
                "between two versions; .inf turns the jump check off",
            )
        if not (self.norm_floor >= 0 and math.isfinite(self.norm_floor)):
            raise ConfigError(
                "exporter.norm_floor",
                "the exporter settings",
                f"{self.norm_floor!r} is not a finite RMS >= 0",
                "e.g. 0.1",
            )
