"""The example scoring server (``fluxrec serve``): the delta consumer SDK plus the trainer's
models in numpy. Light like the SDK: no torch, no pyflink.

* :mod:`serving.model`: ``ModelSpec`` (from the config) and the numpy forward pass that
  equals ``trainer.core.Trainer.score`` for the same parameter version;
* :mod:`serving.server`: the HTTP server (``POST /score``, ``GET /healthz``, ``/version``,
  ``/metrics``) and :func:`serving.server.serve`.

Nothing is imported here: ``import serving`` stays cheap.
"""

__all__: list[str] = []
