"""The synthetic source: impressions and actions from a known click model (the default).

World (fixed by ``seed``): ``users`` users and ``items`` items, ranked by popularity and
drawn from bounded Zipf laws (``p(rank k) ~ k^-exponent``); each item has a category
(``categories``) and a list price. Hidden parameters: a bias per user, item and category
and a 4-dimensional taste vector per user and per item.

Stream: requests arrive as a Poisson process (``requests_per_s`` of event time); each shows
``slate_size`` distinct items to one user at positions 1..slate_size, at a price of 70-100%
of the item's list price. The true click probability of one impression is::

    p_click = sigmoid(logit(base_ctr) + b_user + b_item + b_category + <taste_user, taste_item>
                      - 0.7 * ln(position) - 0.3 * (ln(price) - 3) / 0.8)

A click happens with probability ``p_click`` after a log-normal delay (``delays.click``);
a click converts with probability ``sigmoid(logit(conversion_rate) + c_item)`` after a
further log-normal delay (``delays.conversion``). One request yields, e.g.::

    Impression(request_id="r-7", item_id="i-12", user_id="u-301", event_time_ms=1700000000140,
               sparse={"user_id": ("u-301",), "item_id": ("i-12",), "category": ("c-4",),
                       "position": ("1",)},
               dense={"price": 17.42}, p_click=0.0412)
    Action(request_id="r-7", item_id="i-12", user_id="u-301", action="click",
           event_time_ms=1700000011873)

The generator is deterministic for a given config (seed included); the trainer never
reads ``p_click``, which makes :func:`replay.oracle.auc` of ``p_click`` against the
generated clicks the ceiling of any model's AUC.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from replay.settings import DelayConfig, ReplayConfig, SyntheticConfig
from replay.types import Action, Impression, Record, order_key

__all__ = ["SyntheticSource", "World"]

_F = npt.NDArray[np.float64]
_I = npt.NDArray[np.int64]
_TASTE_DIM = 4
_CHUNK = 1024  # requests generated per vectorised step


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _zipf_cdf(n: int, exponent: float) -> _F:
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf: _F = np.cumsum(w)
    cdf /= cdf[-1]  # ends at exactly 1.0, so searchsorted of u < 1 stays below n
    return cdf


@dataclass(frozen=True)
class World:
    """The hidden parameters of the click model (arrays indexed by user / item id)."""

    user_cdf: _F
    item_cdf: _F
    user_bias: _F
    item_bias: _F
    category_bias: _F
    user_taste: _F  # (users, 4)
    item_taste: _F  # (items, 4)
    item_category: _I
    item_price: _F
    item_conversion: _F

    @classmethod
    def build(cls, s: SyntheticConfig, seed: int) -> World:
        rng = np.random.default_rng([seed, 0])
        scale = 0.5  # per taste component: <taste_user, taste_item> has std 0.5
        return cls(
            user_cdf=_zipf_cdf(s.users, s.user_zipf),
            item_cdf=_zipf_cdf(s.items, s.item_zipf),
            user_bias=rng.normal(0.0, 0.5, s.users),
            item_bias=rng.normal(0.0, 0.8, s.items),
            category_bias=rng.normal(0.0, 0.5, s.categories),
            user_taste=rng.normal(0.0, scale, (s.users, _TASTE_DIM)),
            item_taste=rng.normal(0.0, scale, (s.items, _TASTE_DIM)),
            item_category=rng.integers(0, s.categories, s.items),
            item_price=np.round(rng.lognormal(3.0, 0.8, s.items), 2),
            item_conversion=rng.normal(0.0, 0.7, s.items),
        )


class SyntheticSource:
    """Impressions and actions of the click model above, in event-time order."""

    name = "synthetic"

    def __init__(self, cfg: ReplayConfig) -> None:
        self.cfg = cfg
        self.world = World.build(cfg.synthetic, cfg.seed)

    def stats(self) -> dict[str, int]:
        return {}

    def notes(self) -> dict[str, str]:
        return {}

    def records(self) -> Iterator[Record]:
        """Every impression, click and conversion, in event-time order."""
        s = self.cfg.synthetic
        rng = np.random.default_rng([self.cfg.seed, 1])
        pending: list[tuple[tuple[int, int, int], Action]] = []
        seq = 0
        request = 0
        t = float(s.start_ms)
        left = s.impressions
        while left > 0:
            for imp, actions in self._chunk(rng, request, t):
                if left == 0:
                    break
                while pending and pending[0][0] < order_key(imp, 0):
                    yield heapq.heappop(pending)[1]
                yield imp
                left -= 1
                for a in actions:
                    seq += 1
                    heapq.heappush(pending, (order_key(a, seq), a))
                t = float(imp.event_time_ms)
            request += _CHUNK
        while pending:
            yield heapq.heappop(pending)[1]

    def _chunk(
        self, rng: np.random.Generator, first: int, t0: float
    ) -> Iterator[tuple[Impression, list[Action]]]:
        """``_CHUNK`` requests from request number ``first``, starting after time ``t0``."""
        s, w, cfg = self.cfg.synthetic, self.world, self.cfg
        n, k = _CHUNK, s.slate_size
        times = t0 + np.cumsum(rng.exponential(1000.0 / s.requests_per_s, n))
        users = np.searchsorted(w.user_cdf, rng.random(n), side="right")
        items = self._slates(rng, n, k)
        price = np.round(w.item_price[items] * rng.uniform(0.7, 1.0, (n, k)), 2)
        position = np.arange(1, k + 1)
        logit = (
            _logit(s.base_ctr)
            + w.user_bias[users][:, None]
            + w.item_bias[items]
            + w.category_bias[w.item_category[items]]
            + np.einsum("nd,nkd->nk", w.user_taste[users], w.item_taste[items])
            - 0.7 * np.log(position)[None, :]
            - 0.3 * (np.log(np.maximum(price, 0.01)) - 3.0) / 0.8
        )
        p_click = 1.0 / (1.0 + np.exp(-logit))
        clicked = rng.random((n, k)) < p_click
        click_delay = _delays_ms(rng, cfg.delays.click, (n, k))
        p_conv = 1.0 / (1.0 + np.exp(-(_logit(s.conversion_rate) + w.item_conversion[items])))
        converted = clicked & (rng.random((n, k)) < p_conv)
        conv_delay = _delays_ms(rng, cfg.delays.conversion, (n, k))
        # Python lists once per chunk: indexing numpy arrays element by element costs more
        # than everything else the loop does (same values: tolist() makes the same floats)
        times_ms = np.round(times).astype(np.int64).tolist()
        user_l, items_l, price_l = users.tolist(), items.tolist(), price.tolist()
        p_l, clicked_l, converted_l = p_click.tolist(), clicked.tolist(), converted.tolist()
        click_l, conv_l = click_delay.tolist(), conv_delay.tolist()
        category = w.item_category.tolist()
        positions = [(str(j + 1),) for j in range(k)]
        click, conversion = cfg.click_action, cfg.conversion_action
        for r in range(n):
            rid = f"r-{first + r}"
            t = times_ms[r]
            uid = f"u-{user_l[r]}"
            uids = (uid,)
            for j, i in enumerate(items_l[r]):
                iid = f"i-{i}"
                imp = Impression(
                    request_id=rid,
                    item_id=iid,
                    user_id=uid,
                    event_time_ms=t,
                    sparse={
                        "user_id": uids,
                        "item_id": (iid,),
                        "category": (f"c-{category[i]}",),
                        "position": positions[j],
                    },
                    dense={"price": price_l[r][j]},
                    p_click=p_l[r][j],
                )
                actions = []
                if clicked_l[r][j]:
                    tc = t + click_l[r][j]
                    actions.append(Action(rid, iid, uid, click, tc))
                    if converted_l[r][j]:
                        actions.append(Action(rid, iid, uid, conversion, tc + conv_l[r][j]))
                yield imp, actions

    def _slates(self, rng: np.random.Generator, n: int, k: int) -> _I:
        """``(n, k)`` item ids, distinct within each row."""
        cdf = self.world.item_cdf
        items: _I = np.searchsorted(cdf, rng.random((n, k)), side="right")
        for row in items:
            seen: set[int] = set()
            for j in range(k):
                while int(row[j]) in seen:
                    row[j] = np.searchsorted(cdf, rng.random(), side="right")
                seen.add(int(row[j]))
        return items


def _delays_ms(rng: np.random.Generator, d: DelayConfig, shape: tuple[int, int]) -> _I:
    """Log-normal delays in whole milliseconds, at least 1."""
    sec = rng.lognormal(math.log(d.median_s), d.sigma, shape)
    out: _I = np.maximum(1, np.round(sec * 1000.0)).astype(np.int64)
    return out
