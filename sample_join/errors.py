"""The exception tree of the ``sample_join`` package.

::

    SampleJoinError (FluxrecError)     root
    └── BadLabelConfig (ValueError)    ``join.labels`` is inconsistent (empty, duplicate names)
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = ["BadLabelConfig", "SampleJoinError"]


class SampleJoinError(FluxrecError):
    """Root of every error the sample-join package raises."""


class BadLabelConfig(SampleJoinError, ValueError):
    """The configured label specs cannot be used (empty, duplicate name, window <= 0)."""
