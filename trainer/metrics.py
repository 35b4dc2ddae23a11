"""Prequential metrics: each batch is scored before it is trained on.

Predictions are grouped by event-time window (``window_ms``); a window is closed and
emitted once the watermark passes its end. The prediction compared with a record's label
is the model's probability that the *observed* stream holds a positive: ``p`` for the
``window`` strategy, ``p / (1 + p)`` for ``fake_negative`` (whose stream repeats every
click as an extra positive), so calibration is 1.0 for a well-calibrated model under both.
One emitted record (also a JSONL line)::

    {"window_start_ms": 1700000000000, "window_end_ms": 1700000060000, "n": 4096,
     "auc": 0.71, "logloss": 0.43, "pred_ctr": 0.051, "obs_ctr": 0.049,
     "calibration": 1.04}

:func:`prometheus_text` renders the latest window and running counters in the Prometheus
text exposition format.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["PrequentialMetrics", "WindowMetrics", "auc", "prometheus_text"]

F64 = npt.NDArray[np.float64]


def auc(pred: F64, label: F64) -> float:
    """Area under the ROC curve (ties get average ranks); NaN with one class only."""
    pos = label > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(pred, kind="stable")
    s = pred[order]
    ranks = np.empty(s.size, dtype=np.float64)
    _, first, counts = np.unique(s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass(frozen=True)
class WindowMetrics:
    """Metrics of one event-time window."""

    window_start_ms: int
    window_end_ms: int
    n: int
    auc: float
    logloss: float
    pred_ctr: float
    obs_ctr: float
    calibration: float


_BINS = 8192
_LOGIT_RANGE = 16.0


class _Window:
    """Sufficient statistics of one window in O(bins) memory, whatever its size.

    AUC comes from histograms of the logit of the prediction (``_BINS`` bins over
    [-16, 16], i.e. 0.004 wide): predictions in one bin count as ties, so it differs
    from the exact AUC only for pairs closer than that.
    """

    def __init__(self) -> None:
        self.pos = np.zeros(_BINS, dtype=np.int64)
        self.neg = np.zeros(_BINS, dtype=np.int64)
        self.n = 0
        self.sum_ll = 0.0
        self.sum_p = 0.0
        self.sum_y = 0.0

    def add(self, p: F64, y: F64, ll: F64) -> None:
        z = np.log(p) - np.log1p(-p)
        b = ((z + _LOGIT_RANGE) * (_BINS / (2 * _LOGIT_RANGE))).astype(np.int64)
        b = np.clip(b, 0, _BINS - 1)
        pos = y > 0.5
        self.pos += np.bincount(b[pos], minlength=_BINS)
        self.neg += np.bincount(b[~pos], minlength=_BINS)
        self.n += int(p.size)
        self.sum_ll += float(ll.sum())
        self.sum_p += float(p.sum())
        self.sum_y += float(y.sum())

    def auc(self) -> float:
        n_pos, n_neg = int(self.pos.sum()), int(self.neg.sum())
        if n_pos == 0 or n_neg == 0:
            return float("nan")
        below = np.cumsum(self.neg) - self.neg  # negatives in lower bins
        wins = float((self.pos * below).sum() + 0.5 * (self.pos * self.neg).sum())
        return wins / (n_pos * n_neg)


class PrequentialMetrics:
    """Accumulates (prediction, label, event time) per window; emits closed windows.

    Memory is O(open windows x bins): predictions are binned, not kept.
    """

    def __init__(self, window_ms: int = 60_000, jsonl: Path | None = None) -> None:
        self.window_ms = window_ms
        self.jsonl = jsonl
        self._open: dict[int, _Window] = {}
        self.latest: WindowMetrics | None = None
        self.emitted = 0
        self.samples = 0
        self.sum_logloss = 0.0

    def add(self, pred: F64, label: F64, event_ms: npt.NDArray[np.int64]) -> None:
        p = np.clip(pred, 1e-7, 1 - 1e-7)
        ll = -(label * np.log(p) + (1 - label) * np.log1p(-p))
        self.samples += int(p.size)
        self.sum_logloss += float(ll.sum())
        starts = event_ms - event_ms % self.window_ms
        first = int(starts[0]) if starts.size else 0
        if starts.size and (starts == first).all():  # the common case: one window
            self._open.setdefault(first, _Window()).add(p, label, ll)
            return
        for s in np.unique(starts).tolist():
            m = starts == s
            self._open.setdefault(int(s), _Window()).add(p[m], label[m], ll[m])

    def advance(self, watermark_ms: int, flush: bool = False) -> list[WindowMetrics]:
        """Close every window that ends at or before ``watermark_ms`` (all with ``flush``)."""
        out: list[WindowMetrics] = []
        for s in sorted(self._open):
            if not flush and s + self.window_ms > watermark_ms:
                continue
            w = self._open.pop(s)
            pred, obs = w.sum_p / w.n, w.sum_y / w.n
            out.append(
                WindowMetrics(
                    s,
                    s + self.window_ms,
                    w.n,
                    w.auc(),
                    w.sum_ll / w.n,
                    pred,
                    obs,
                    pred / obs if obs > 0 else float("nan"),
                )
            )
        if out:
            self.latest = out[-1]
            self.emitted += len(out)
            if self.jsonl is not None:
                with self.jsonl.open("a") as f:
                    for wm in out:
                        rec = {
                            k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in asdict(wm).items()
                        }
                        f.write(json.dumps(rec) + "\n")
        return out


def prometheus_text(
    m: PrequentialMetrics, gauges: Mapping[str, float | Mapping[str, float]]
) -> str:
    """Prometheus text format: the latest window, counters, and extra ``gauges``.

    A gauge whose value is a mapping becomes one series per key, labelled ``name``
    (``fluxrec_trainer_table_rows{name="item_id"} 812``); a name ending in ``_total``
    is typed as a counter.
    """
    lines = [
        "# TYPE fluxrec_trainer_prequential_samples_total counter",
        f"fluxrec_trainer_prequential_samples_total {m.samples}",
    ]
    if m.latest is not None:
        for k in ("auc", "logloss", "pred_ctr", "obs_ctr", "calibration"):
            v = getattr(m.latest, k)
            lines += [
                f"# TYPE fluxrec_trainer_window_{k} gauge",
                f"fluxrec_trainer_window_{k} {'NaN' if math.isnan(v) else v}",
            ]
    for k, v in sorted(gauges.items()):
        kind = "counter" if k.endswith("_total") else "gauge"
        lines.append(f"# TYPE fluxrec_trainer_{k} {kind}")
        if isinstance(v, Mapping):
            lines += [f'fluxrec_trainer_{k}{{name="{n}"}} {x}' for n, x in sorted(v.items())]
        else:
            lines.append(f"fluxrec_trainer_{k} {v}")
    return "\n".join(lines) + "\n"
