"""Losses for the join job's label strategies (Ktena et al. 2019, delayed feedback).

``window``: plain log loss on the logit.

``fake_negative``: every impression first arrives at once as a negative
(``correction=false``); a click re-sends it as a positive duplicate (``correction=true``,
sample id suffix ``|click``) that is trained as an *additional* positive. The stream's
positive rate is biased: ``b = p / (1 + p)`` for a true click probability ``p``.

- **FNW** (fake negative weighted) importance-weights the log loss with the model's own
  detached ``p = sigmoid(logit)``: positives by ``p / b = 1 + p``, negatives by
  ``(1 - p) / (1 - b) = (1 - p)(1 + p)``; the model serves ``p``.
- **FNC** (fake negative calibration) trains plain log loss on the biased stream, so
  ``sigmoid(logit)`` estimates ``b``, and serves ``p = b / (1 - b)`` (clipped below 1).

Example: at logit 0 FNW weighs a positive 1.5 and a negative 0.75; FNC serves a logit of
0 (b = 0.5) as p = 1.0 (clipped to 1 - 1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "fnw_weights", "loss_fn", "predict", "stream_prob", "weights"]

LOSSES = ("logloss", "fnw", "fnc")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss {kind!r}: use one of {LOSSES}")


def fnw_weights(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """FNW importance weights from the model's own detached ``p``: ``1 + p`` for a
    positive, ``(1 - p)(1 + p)`` for a negative."""
    p = torch.sigmoid(logit.detach())
    return torch.where(label > 0.5, 1.0 + p, (1.0 - p) * (1.0 + p))


def weights(kind: str, logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor | None:
    """Per-sample importance weights of ``kind`` (None: all 1), detached from the graph."""
    _check(kind)
    return fnw_weights(logit, label) if kind == "fnw" else None


def loss_fn(kind: str, logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean loss of ``kind`` over the batch; ``label`` is float 0/1, shape like ``logit``."""
    w = weights(kind, logit, label)
    return F.binary_cross_entropy_with_logits(logit, label, weight=w)


def predict(kind: str, logit: torch.Tensor) -> torch.Tensor:
    """The calibrated click probability the model serves under ``kind``."""
    _check(kind)
    b = torch.sigmoid(logit)
    if kind == "fnc":
        return (b / (1.0 - b).clamp(min=1e-6)).clamp(max=1.0 - 1e-6)
    return b


def stream_prob(kind: str, logit: torch.Tensor) -> torch.Tensor:
    """The model's probability that a record of the *observed* stream is a positive.

    This is what prequential metrics compare with the observed labels: ``p`` for the
    ``window`` strategy, ``b = p / (1 + p)`` for ``fake_negative`` (under FNC the
    model's raw output is ``b`` already).
    """
    _check(kind)
    p = torch.sigmoid(logit)
    return p / (1.0 + p) if kind == "fnw" else p
