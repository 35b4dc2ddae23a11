"""Prequential metrics: each batch is scored before it is trained on.

Predictions are grouped by event-time window (``window_ms``); a window is closed and
emitted once the watermark passes its end. One emitted record (also a JSONL line)::

    {"window_start_ms": 1700000000000, "window_end_ms": 1700000060000, "n": 4096,
     "auc": 0.71, "logloss": 0.43, "pred_ctr": 0.051, "obs_ctr": 0.049,
     "calibration": 1.04}

:func:`prometheus_text` renders the latest window and running counters in the Prometheus
text exposition format.
"""

from __future__ import annotations

import json
import math
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


class PrequentialMetrics:
    """Accumulates (prediction, label, event time) per window; emits closed windows."""

    def __init__(self, window_ms: int = 60_000, jsonl: Path | None = None) -> None:
        self.window_ms = window_ms
        self.jsonl = jsonl
        self._open: dict[int, tuple[list[F64], list[F64]]] = {}
        self.latest: WindowMetrics | None = None
        self.emitted = 0
        self.samples = 0
        self.sum_logloss = 0.0

    def add(self, pred: F64, label: F64, event_ms: npt.NDArray[np.int64]) -> None:
        p = np.clip(pred, 1e-7, 1 - 1e-7)
        ll = -(label * np.log(p) + (1 - label) * np.log(1 - p))
        self.samples += int(p.size)
        self.sum_logloss += float(ll.sum())
        starts = event_ms - event_ms % self.window_ms
        for s in np.unique(starts).tolist():
            m = starts == s
            ps, ls = self._open.setdefault(int(s), ([], []))
            ps.append(p[m])
            ls.append(label[m])

    def advance(self, watermark_ms: int, flush: bool = False) -> list[WindowMetrics]:
        """Close every window that ends at or before ``watermark_ms`` (all with ``flush``)."""
        out: list[WindowMetrics] = []
        for s in sorted(self._open):
            if not flush and s + self.window_ms > watermark_ms:
                continue
            ps, ls = self._open.pop(s)
            p, y = np.concatenate(ps), np.concatenate(ls)
            ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
            obs = float(y.mean())
            w = WindowMetrics(
                s,
                s + self.window_ms,
                int(p.size),
                auc(p, y),
                ll,
                float(p.mean()),
                obs,
                float(p.mean() / obs) if obs > 0 else float("nan"),
            )
            out.append(w)
        if out:
            self.latest = out[-1]
            self.emitted += len(out)
            if self.jsonl is not None:
                with self.jsonl.open("a") as f:
                    for w in out:
                        rec = {
                            k: (None if isinstance(v, float) and math.isnan(v) else v)
                            for k, v in asdict(w).items()
                        }
                        f.write(json.dumps(rec) + "\n")
        return out


def prometheus_text(m: PrequentialMetrics, gauges: dict[str, float]) -> str:
    """Prometheus text format: the latest window, counters, and extra ``gauges``."""
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
        lines += [f"# TYPE fluxrec_trainer_{k} gauge", f"fluxrec_trainer_{k} {v}"]
    return "\n".join(lines) + "\n"
