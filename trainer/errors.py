"""The exception tree of the ``trainer`` package.

::

    TrainerError (FluxrecError)       root: every error the trainer raises on purpose
    └── TableError (ValueError)       bad ids, shapes or table parameters

Every message is one line that names the value and the fix.
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = ["TableError", "TrainerError"]


class TrainerError(FluxrecError):
    """Root of every error raised by the ``trainer`` package."""


class TableError(TrainerError, ValueError):
    """An embedding-table operation got bad input (ids, shapes, parameters)."""
