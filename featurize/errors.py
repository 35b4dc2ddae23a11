"""The exception tree of the ``featurize`` package.

::

    FeaturizeError (FluxrecError)      root
    └── BadInput (ValueError)          input that does not follow the contract; ``field``
                                       names where (``instances[3].sparse.user_id``)

Every message is one line that names the value and the fix.
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = ["BadInput", "FeaturizeError"]


class FeaturizeError(FluxrecError):
    """Root of every error raised by the ``featurize`` package."""


class BadInput(FeaturizeError, ValueError):
    """Input that does not follow the contract; ``field`` is the JSON path at fault."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field
