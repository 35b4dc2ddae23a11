"""A small synthetic Sample stream with a known click model (for tests and demos).

Each user and item has a hidden scalar affinity; ``p_click = sigmoid(a_u + b_i + 0.8 *
price_z - 2.5)``. Users and items are drawn Zipf-like so popular ids repeat. One record::

    {"v": 1, "sample_id": "r-17|i-3|0", "request_id": "r-17", "item_id": "i-3",
     "user_id": "u-5", "event_time_ms": 1700000017000,
     "features": {"sparse": {"user_id": ["u-5"], "item_id": ["i-3"],
                             "category": ["c-1", "c-4"]}, "dense": {"price": 12.5}},
     "labels": {"click": 1, "conversion": 0},
     "label_time_ms": {"click": 1700000019000, "conversion": null},
     "strategy": "window", "correction": false, "p_click": 0.31}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["synthetic_samples"]


def synthetic_samples(
    n: int, *, seed: int = 0, users: int = 200, items: int = 100, start_ms: int = 1_700_000_000_000
) -> list[dict[str, Any]]:
    """``n`` window-strategy samples, one per second of event time."""
    rng = np.random.default_rng(seed)
    ua = np.random.default_rng(1000).normal(0, 1.2, users)
    ib = np.random.default_rng(2000).normal(0, 1.2, items)
    out: list[dict[str, Any]] = []
    for k in range(n):
        u = int(min(rng.zipf(1.3) - 1, users - 1))
        i = int(min(rng.zipf(1.3) - 1, items - 1))
        price = float(rng.lognormal(2.0, 0.5))
        z = (math.log(price) - 2.0) / 0.5
        p = 1.0 / (1.0 + math.exp(-(ua[u] + ib[i] + 0.8 * z - 2.5)))
        click = int(rng.random() < p)
        t = start_ms + k * 1000
        rid, iid = f"r-{k}", f"i-{i}"
        out.append(
            {
                "v": 1,
                "sample_id": f"{rid}|{iid}|0",
                "request_id": rid,
                "item_id": iid,
                "user_id": f"u-{u}",
                "event_time_ms": t,
                "features": {
                    "sparse": {
                        "user_id": [f"u-{u}"],
                        "item_id": [iid],
                        "category": [f"c-{i % 7}", f"c-{i % 3 + 7}"],
                    },
                    "dense": {"price": price},
                },
                "labels": {"click": click, "conversion": 0},
                "label_time_ms": {"click": t + 2000 if click else None, "conversion": None},
                "strategy": "window",
                "correction": False,
                "p_click": p,
            }
        )
    return out
