"""The exception tree of the ``sample_join`` package.

::

    SampleJoinError (FluxrecError)     root
    └── BadJoinConfig (ValueError)     a ``join.*`` setting cannot be used (names the key)
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = ["BadJoinConfig", "SampleJoinError"]


class SampleJoinError(FluxrecError):
    """Root of every error the sample-join package raises."""


class BadJoinConfig(SampleJoinError, ValueError):
    """A ``join.*`` setting cannot be used: empty or duplicate labels, a window <= 0, ..."""
