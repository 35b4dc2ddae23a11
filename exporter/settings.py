"""Config section of the ``exporter`` package (read by :mod:`fluxrec.config`)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ExporterConfig"]


@dataclass(frozen=True)
class ExporterConfig:
    """Delta export: interval, snapshots, retention, safety gate.

    Every field has a default so existing deployment files stay valid.
    """
