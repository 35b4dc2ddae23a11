"""Config section of the ``replay`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReplayConfig"]


@dataclass(frozen=True)
class ReplayConfig:
    """Event replay into Kafka: source, rate, generator settings.

    Every field has a default so existing deployment files stay valid.
    """
