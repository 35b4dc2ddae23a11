"""The oracle AUC: how well the true click probability ``p_click`` of the synthetic source
ranks the clicks it generated. No model can do better in expectation, so it is the
ceiling a trainer's AUC is compared with.

>>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["auc"]


def auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney U; tied scores count one half).

    Returns ``nan`` when the labels are all 0 or all 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape:
        raise ValueError(f"{s.shape[0]} scores but {y.shape[0]} labels: pass one label per score")
    pos = int(y.sum())
    neg = y.shape[0] - pos
    if pos == 0 or neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average 1-based rank of each distinct score
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    rank_sum = float(avg_rank[inverse][y == 1].sum())
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))
