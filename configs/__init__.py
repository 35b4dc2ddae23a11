"""Deployment files shipped with fluxrec. ``local.yaml`` is the one-machine stack.

The schema of these files lives in :mod:`fluxrec.config`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path"]


def path(name: str) -> Path:
    """The path of a shipped deployment file, e.g. ``path("local.yaml")``."""
    return Path(__file__).with_name(name)
