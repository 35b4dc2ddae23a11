"""The exception tree of the ``serving`` package (the example scoring server).

::

    ServingError (FluxrecError)        root
    ├── BadRequest (ValueError)        a score request that does not follow the contract
    ├── NotReady                       no parameter version applied yet
    └── ModelMismatch                  the applied version does not fit the configured model

Every message is one line that names the value and the fix.
"""

from __future__ import annotations

from fluxrec.errors import FluxrecError

__all__ = ["BadRequest", "ModelMismatch", "NotReady", "ServingError"]


class ServingError(FluxrecError):
    """Root of every error raised by the ``serving`` package."""


class BadRequest(ServingError, ValueError):
    """A score request is not valid JSON of the documented shape (HTTP 400)."""


class NotReady(ServingError):
    """No parameter version has been applied yet (HTTP 503)."""


class ModelMismatch(ServingError):
    """The dense tensors of the applied version do not fit ``model.arch`` and ``features``
    of the config (HTTP 500): the server and the trainer disagree on the model."""
