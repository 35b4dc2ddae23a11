"""The trainer's in-process core: samples -> batch -> prequential score -> update -> cut.

:class:`Trainer` owns the dynamic tables, the dense model and its optimizer. The daemon
feeds it decoded Sample records (the v1 wire contract in the project brief); the exporter
calls :meth:`Trainer.take_cut` from another thread. Every public method holds one lock,
so a cut always falls between two training steps::

    t = Trainer.from_config(cfg)
    t.train_samples([{"sample_id": "r-1|i-9|0", "features": {...}, "labels": {"click": 1},
                      "event_time_ms": 1700000000000, "strategy": "window", ...}, ...])
    cut = t.take_cut()          # exporter.types.Cut

A batch in tensor form (:class:`Batch`), for B samples and fields ``user_id``, ``category``::

    sparse  = {"user_id": (ids int64 (B,), None),             # exactly one value each
               "category": (ids int64 (K,), segment int64 (K,))}  # K values, sample of each
    dense   = float32 (B, N);  label = float32 (B,);  event_ms = int64 (B,)
    fake    = bool (B,)        # strategy == "fake_negative"
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from exporter.types import Cut
from trainer.errors import TrainerError
from trainer.hashing import stable_hash
from trainer.losses import loss_fn, predict
from trainer.metrics import PrequentialMetrics
from trainer.model import CTRModel
from trainer.sparse import SparseLookup, take_cut
from trainer.tables import DynamicTable, TableParams

__all__ = ["BadSample", "Batch", "Trainer", "featurize"]


class BadSample(TrainerError, ValueError):
    """A sample record does not follow the v1 Sample contract."""


@dataclass(frozen=True)
class Batch:
    """A micro-batch in tensor form (layout in the module docstring)."""

    sparse: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64] | None]]
    dense: torch.Tensor
    label: torch.Tensor
    event_ms: npt.NDArray[np.int64]
    fake: npt.NDArray[np.bool_]
    sample_ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.label.shape[0])


def featurize(
    samples: Sequence[Mapping[str, Any]], sparse: Sequence[str], dense: Sequence[str]
) -> Batch:
    """Decode Sample records into a :class:`Batch`; raises :class:`BadSample` naming the id.

    Sparse values are strings hashed with :func:`trainer.hashing.stable_hash` (the field name
    is part of the hash). A missing sparse field is an empty list; a missing dense value is 0.
    """
    b = len(samples)
    ids: dict[str, list[int]] = {f: [] for f in sparse}
    seg: dict[str, list[int]] = {f: [] for f in sparse}
    single = dict.fromkeys(sparse, True)
    dense_v = np.zeros((b, len(dense)), dtype=np.float32)
    label = np.zeros(b, dtype=np.float32)
    ev = np.zeros(b, dtype=np.int64)
    fake = np.zeros(b, dtype=bool)
    sids: list[str] = []
    for i, s in enumerate(samples):
        sid = str(s.get("sample_id", f"<#{i}>"))
        try:
            feats = s["features"]
            sp, dn = feats.get("sparse", {}), feats.get("dense", {})
            for f in sparse:
                vals = sp.get(f, [])
                if len(vals) != 1:
                    single[f] = False
                for v in vals:
                    ids[f].append(stable_hash(f, str(v)))
                    seg[f].append(i)
            for j, f in enumerate(dense):
                dense_v[i, j] = float(dn.get(f, 0.0))
            label[i] = float(int(s["labels"]["click"]))
            ev[i] = int(s["event_time_ms"])
            strategy = s.get("strategy", "window")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadSample(
                f"sample {sid}: {type(e).__name__}: {e}; see the v1 Sample contract"
            ) from e
        if strategy not in ("window", "fake_negative"):
            raise BadSample(f"sample {sid}: strategy {strategy!r}: use window or fake_negative")
        fake[i] = strategy == "fake_negative"
        sids.append(sid)
    out: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64] | None]] = {}
    for f in sparse:
        a = np.array(ids[f], dtype=np.int64)
        out[f] = (a, None if single[f] else np.array(seg[f], dtype=np.int64))
    return Batch(out, torch.from_numpy(dense_v), torch.from_numpy(label), ev, fake, sids)


class Trainer:
    """Tables + model + optimizer + metrics, guarded by one lock."""

    def __init__(
        self,
        sparse: Sequence[tuple[str, int]],
        dense: Sequence[str],
        *,
        arch: str = "deepfm",
        mlp: Sequence[int] = (256, 128),
        table: TableParams | None = None,
        dense_lr: float = 0.01,
        delayed_loss: str = "fnw",
        evict_every: int = 100,
        metrics: PrequentialMetrics | None = None,
        seed: int = 0,
    ) -> None:
        dims = {d for _, d in sparse}
        if len(dims) != 1:
            raise TrainerError(
                f"features.sparse dims {sorted(dims)}: every field needs the same dim "
                "(set model.embedding_dim and drop per-field dim overrides)"
            )
        if delayed_loss not in ("fnw", "fnc"):
            raise TrainerError(f"trainer.delayed_loss {delayed_loss!r}: use fnw or fnc")
        dim = dims.pop()
        torch.manual_seed(seed)
        base = table or TableParams(dim=dim)
        self.tables = {
            n: DynamicTable(n, TableParams(**{**base.__dict__, "dim": d}), seed=seed + i)
            for i, (n, d) in enumerate(sparse)
        }
        self.sparse_names = [n for n, _ in sparse]
        self.dense_names = list(dense)
        self.model = CTRModel(arch, len(sparse), dim, len(dense), list(mlp))
        self.opt = torch.optim.Adagrad(self.model.parameters(), lr=dense_lr)
        self.delayed_loss = delayed_loss
        self.evict_every = evict_every
        self.metrics = metrics or PrequentialMetrics()
        self.lock = threading.Lock()
        self.step = 0
        self.samples = 0
        self.watermark_ms = 0
        self.offsets: dict[str, dict[int, int]] = {}
        self.id_xor = 0  # XOR of stable_hash("sample_id", id) over every trained sample

    def _forward(self, batch: Batch, train: bool) -> tuple[torch.Tensor, list[SparseLookup]]:
        lks = [
            SparseLookup(self.tables[f], ids, seg, len(batch), now=self.watermark_ms, train=train)
            for f, (ids, seg) in batch.sparse.items()
        ]
        emb = torch.stack([lk.pooled() for lk in lks], dim=1)
        return self.model(emb, batch.dense), lks

    def _predict(self, logit: torch.Tensor, fake: npt.NDArray[np.bool_]) -> torch.Tensor:
        p = predict("logloss", logit)
        if fake.any() and self.delayed_loss == "fnc":
            m = torch.from_numpy(fake)
            p = torch.where(m, predict("fnc", logit), p)
        return p

    def train_batch(
        self, batch: Batch, offsets: Mapping[str, Mapping[int, int]] | None = None
    ) -> float:
        """Score ``batch`` (prequential), then train on it; returns the loss.

        ``offsets`` (topic -> partition -> next offset) are recorded atomically with the step.
        """
        if len(batch) == 0:
            return 0.0
        with self.lock:
            self.model.train()
            self.watermark_ms = max(self.watermark_ms, int(batch.event_ms.max()))
            logit, lks = self._forward(batch, train=True)
            with torch.no_grad():
                p = self._predict(logit, batch.fake).double().numpy()
            self.metrics.add(p, batch.label.double().numpy(), batch.event_ms)
            fake = torch.from_numpy(batch.fake)
            n = len(batch)
            loss = torch.zeros(())
            if (~fake).any():
                loss = loss + loss_fn("logloss", logit[~fake], batch.label[~fake]) * (
                    int((~fake).sum()) / n
                )
            if fake.any():
                loss = loss + loss_fn(self.delayed_loss, logit[fake], batch.label[fake]) * (
                    int(fake.sum()) / n
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            self.opt.step()
            for lk in lks:
                lk.step()
            self.step += 1
            self.samples += n
            for sid in batch.sample_ids:
                self.id_xor ^= stable_hash("sample_id", sid)
            if self.evict_every and self.step % self.evict_every == 0:
                for t in self.tables.values():
                    t.evict(self.watermark_ms)
            if offsets:
                for topic, parts in offsets.items():
                    self.offsets.setdefault(topic, {}).update(parts)
            self.metrics.advance(self.watermark_ms - self.metrics.window_ms)
            return float(loss.item())

    def train_samples(self, samples: Sequence[Mapping[str, Any]]) -> float:
        """Featurize and train one micro-batch of decoded Sample records."""
        return self.train_batch(featurize(samples, self.sparse_names, self.dense_names))

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Predicted click probabilities without training or admitting ids."""
        with self.lock, torch.no_grad():
            self.model.eval()
            logit, _ = self._forward(batch, train=False)
            return self._predict(logit, batch.fake).double().numpy()

    def dense_state(self) -> dict[str, torch.Tensor]:
        """Every dense parameter and persistent buffer, by name."""
        return dict(self.model.state_dict())

    def take_cut(self) -> Cut:
        """A consistent :class:`~exporter.types.Cut` (thread-safe; between two steps)."""
        with self.lock:
            return take_cut(
                self.tables,
                self.dense_state(),
                step=self.step,
                samples=self.samples,
                watermark_ms=self.watermark_ms,
                offsets=self.offsets,
            )
