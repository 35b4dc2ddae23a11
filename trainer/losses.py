"""Losses for the join job's label strategies (Ktena et al. 2019, delayed feedback).

``window``: plain log loss on the logit.

``fake_negative``: every impression first arrives as a negative; a click re-sends it as a
positive (``correction=true``). The observed positive rate is biased: ``b = p / (1 + p)``.

- **FNW** (fake negative weighted) importance-weights the log loss with the model's own
  (detached) ``p``: positives by ``1 + p``, negatives by ``(1 - p)(1 + p)``; predict ``p``.
- **FNC** (fake negative calibration) trains plain log loss on the biased stream, giving
  ``b``, and predicts ``p = b / (1 - b)`` (clipped below 1).

Example: a logit of 0 under FNC gives b = 0.5 and a served p of 1.0 (clipped to 1-1e-6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["LOSSES", "loss_fn", "predict"]

LOSSES = ("logloss", "fnw", "fnc")


def loss_fn(kind: str, logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean loss of ``kind`` over the batch; ``label`` is float 0/1, shape like ``logit``."""
    if kind in ("logloss", "fnc"):
        return F.binary_cross_entropy_with_logits(logit, label)
    if kind == "fnw":
        p = torch.sigmoid(logit).detach()
        w = torch.where(label > 0.5, 1.0 + p, (1.0 - p) * (1.0 + p))
        return F.binary_cross_entropy_with_logits(logit, label, weight=w)
    raise ValueError(f"loss {kind!r}: use one of {LOSSES}")


def predict(kind: str, logit: torch.Tensor) -> torch.Tensor:
    """The calibrated click probability the model serves under ``kind``."""
    b = torch.sigmoid(logit)
    if kind == "fnc":
        return (b / (1.0 - b).clamp(min=1e-6)).clamp(max=1.0 - 1e-6)
    return b
