"""Config section of the ``sample_join`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JoinConfig"]


@dataclass(frozen=True)
class JoinConfig:
    """The sample-join job: labels, windows, validation, dedup, dead letters.

    Every field has a default so existing deployment files stay valid.
    """
