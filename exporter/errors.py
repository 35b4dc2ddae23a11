"""The exception tree of the ``exporter`` package (object stores, deltas, the consumer SDK).

::

    ExporterError                       root
    └── StoreError                      an object store request failed
        ├── ObjectNotFound (KeyError)   the key does not exist
        ├── StoreUnavailable            transient failures outlasted the retries
        └── BadKey (ValueError)         a key that could escape its prefix
"""

from __future__ import annotations

__all__ = ["BadKey", "ExporterError", "ObjectNotFound", "StoreError", "StoreUnavailable"]


class ExporterError(Exception):
    """Root of every error raised by the ``exporter`` package."""


class StoreError(ExporterError):
    """An object store request failed."""


class ObjectNotFound(StoreError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else "object not found"


class StoreUnavailable(StoreError):
    """The store kept failing with transient errors after all retries."""


class BadKey(StoreError, ValueError):
    """A key that is empty, absolute, or contains '..' or backslashes."""
