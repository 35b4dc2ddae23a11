"""The trainer's in-process core: samples -> batch -> prequential score -> update -> cut.

:class:`Trainer` owns the dynamic tables, the dense model and its optimizer. The daemon
feeds it the raw Kafka values of Sample records (``sample_join/CONTRACTS.md``, section 2)
through its featurizer (:mod:`featurize`, ``Trainer.featurizer``); the exporter
calls :meth:`Trainer.take_cut` from another thread. Every public method holds one lock,
so a cut always falls between two training steps::

    t = Trainer.from_config(cfg)
    t.train_samples([{"v": 1, "sample_id": "r-1|i-9|0", "features": {...},
                      "labels": {"click": 1}, "event_time_ms": 1700000000000,
                      "strategy": "window", "correction": False}, ...])
    cut = t.take_cut(full=False)   # exporter.types.Cut, or None when nothing changed

A batch in tensor form (:class:`Batch`), for B samples and fields ``user_id``, ``category``::

    sparse  = {"user_id": (ids int64 (B,), None),             # exactly one value each
               "category": (ids int64 (K,), segment int64 (K,))}  # K values, sample of each
    dense   = float32 (B, N);  label = float32 (B,);  event_ms = int64 (B,)
    fake    = bool (B,)        # strategy == "fake_negative"

Fields are stored in groups: all hashed fields of one dim share one
:class:`~trainer.tables.DynamicTable` (one dedup, probe and update per batch for all of
them), each raw-id field has its own. Cuts and checkpoints still name every field.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from exporter.types import Cut
from featurize.core import Featurizer
from featurize.types import FeatureSpec, Samples
from trainer.errors import TrainerError
from trainer.losses import fnw_weights, predict, stream_prob
from trainer.metrics import PrequentialMetrics
from trainer.model import CTRModel
from trainer.sparse import FusedLookup, Jagged, take_cut
from trainer.tables import DynamicTable, TableParams

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = ["BadSample", "Batch", "SparseField", "Trainer", "featurize", "to_batch"]

log = logging.getLogger(__name__)


class BadSample(TrainerError, ValueError):
    """A sample record does not follow the v1 Sample contract."""


@dataclass(frozen=True)
class SparseField:
    """One categorical input: its name, embedding dim, and whether values are raw ids."""

    name: str
    dim: int
    raw: bool = False


@dataclass(frozen=True)
class Batch:
    """A micro-batch in tensor form (layout in the module docstring).

    ``id_xor`` is the XOR of ``stable_hash("sample_id", id)`` over the batch's samples
    (the trainer folds it into its exactly-once checksum); ``skipped`` counts records
    left out on purpose (corrections of another label).
    """

    sparse: dict[str, Jagged]
    dense: torch.Tensor
    label: torch.Tensor
    event_ms: npt.NDArray[np.int64]
    fake: npt.NDArray[np.bool_]
    id_xor: int = 0
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.label.shape[0])


def to_batch(s: Samples) -> Batch:
    """The trainer's :class:`Batch` of featurized samples (:mod:`featurize`)."""
    f = s.features
    return Batch(
        {name: (ids, f.segment(name)) for name, (ids, _) in f.sparse.items()},
        torch.from_numpy(f.dense),
        torch.from_numpy(s.label),
        s.event_ms,
        s.fake,
        s.id_xor,
        s.skipped,
    )


def _encode(records: Sequence[Any]) -> list[bytes]:
    """Decoded records as the JSON the samples topic carries."""
    return [json.dumps(r, separators=(",", ":")).encode() for r in records]


def _raise_bad(s: Samples, records: Sequence[Any]) -> None:
    if not s.bad:
        return
    b = s.bad[0]
    rec = records[b.index]
    sid = rec.get("sample_id") if isinstance(rec, Mapping) else None
    where = sid if isinstance(sid, str) else f"#{b.index}"
    raise BadSample(
        f"sample {where}: {b.reason}: {b.detail}; see sample_join/CONTRACTS.md section 2"
    )


def featurize(
    samples: Sequence[Mapping[str, Any]],
    sparse: Sequence[SparseField | str],
    dense: Sequence[str],
    label: str = "click",
) -> Batch:
    """Decoded Sample records -> :class:`Batch` with a one-off :class:`Featurizer`;
    raises :class:`BadSample` naming the first bad record."""
    fz = Featurizer(FeatureSpec.of(sparse, dense, label))
    s = fz.samples(_encode(samples))
    _raise_bad(s, samples)
    return to_batch(s)


@dataclass(frozen=True)
class _Group:
    """One table and the fields it holds, in the model's input order."""

    table: DynamicTable
    fields: list[str]


class _StepLock:
    """The trainer's lock. Entering it also waits for the background half of the
    previous step (:meth:`Trainer.train_batch`), so whoever holds it (the exporter's
    cut, a checkpoint) sees the trainer between two whole steps. ``raw`` is the plain
    lock, for the step itself."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.raw = threading.Lock()
        self._sync = sync

    def __enter__(self) -> _StepLock:
        self.raw.acquire()
        try:
            self._sync()
        except BaseException:
            self.raw.release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.release()


class Trainer:
    """Tables + model + optimizer + metrics, guarded by one lock.

    ``sparse`` lists the fields as :class:`SparseField` or ``(name, dim)``; ``inter_dim``
    is the dim field vectors are projected to for FM/DLRM interactions when the fields'
    dims differ (default: the first field's dim). ``pipeline``: run each step's backward
    pass and updates on a worker thread (see :meth:`train_batch`); off by default
    (``trainer.pipeline`` in :meth:`from_config`). Code that reads ``model`` or ``tables``
    directly after a pipelined step holds ``lock`` (or calls :meth:`sync`) first.
    ``nominal_batch`` (``trainer.batch_size`` in :meth:`from_config`): a step's loss is
    the sum over its samples divided by this, so each sample weighs the same whatever
    size the stream cut its micro-batch to (with the mean, a click that arrives alone
    would weigh as much as a whole batch); None: the mean over the batch.
    """

    def __init__(
        self,
        sparse: Sequence[SparseField | tuple[str, int]],
        dense: Sequence[str],
        *,
        arch: str = "deepfm",
        mlp: Sequence[int] = (256, 128),
        table: TableParams | None = None,
        inter_dim: int | None = None,
        dense_lr: float = 0.01,
        delayed_loss: str = "fnw",
        label: str = "click",
        evict_every: int = 100,
        metrics: PrequentialMetrics | None = None,
        hash_cache: int = 1_000_000,
        seed: int = 0,
        pipeline: bool = False,
        nominal_batch: int | None = None,
    ) -> None:
        fields = [f if isinstance(f, SparseField) else SparseField(*f) for f in sparse]
        names = [f.name for f in fields]
        if not fields or len(set(names)) != len(names) or any(f.dim <= 0 for f in fields):
            raise TrainerError(
                f"features.sparse {names}: need at least one field, unique names, dims > 0"
            )
        if delayed_loss not in ("fnw", "fnc"):
            raise TrainerError(f"trainer.delayed_loss {delayed_loss!r}: use fnw or fnc")
        base = table or TableParams()
        by_dim: dict[int, list[str]] = {}
        layout: list[tuple[str, int, list[str]]] = []  # (table name, dim, fields)
        for f in fields:
            if f.raw:  # raw ids of two fields may be equal: a table of their own
                layout.append((f.name, f.dim, [f.name]))
            else:
                by_dim.setdefault(f.dim, []).append(f.name)
        layout[:0] = [
            (fs[0] if len(fs) == 1 else f"shared_d{d}", d, fs) for d, fs in by_dim.items()
        ]
        self.groups = [
            _Group(DynamicTable(tn, TableParams(**{**base.__dict__, "dim": d}), seed + i, fs), fs)
            for i, (tn, d, fs) in enumerate(layout)
        ]
        self.tables = {g.table.name: g.table for g in self.groups}
        self.featurizer = Featurizer(FeatureSpec.of(fields, dense, label), cache_size=hash_cache)
        self.sparse_fields = fields
        self.dense_names = list(dense)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model = CTRModel(
                arch,
                [(len(g.fields), g.table.p.dim) for g in self.groups],
                len(dense),
                list(mlp),
                inter_dim or fields[0].dim,
            )
        self.opt = torch.optim.Adagrad(self.model.parameters(), lr=dense_lr)
        self.delayed_loss = delayed_loss
        self.evict_every = evict_every
        self.metrics = metrics or PrequentialMetrics()
        self.pipeline = pipeline
        self.nominal_batch = nominal_batch
        self.lock = _StepLock(self._sync)
        self._pending: Future[None] | None = None
        self._failed: BaseException | None = None
        self._worker: ThreadPoolExecutor | None = None
        self.step = 0
        self.samples = 0
        self.skipped = 0  # corrections of other labels, never trained
        self.nonfinite = 0  # batches with non-finite predictions: not trained, not scored
        self.watermark_ms = 0
        self.offsets: dict[str, dict[int, int]] = {}
        self.id_xor = 0  # XOR of stable_hash("sample_id", id) over every trained sample
        self._cut_step = -1  # step of the last cut (-1: none yet)
        self._cut_offsets: dict[str, dict[int, int]] = {}  # offsets of the last cut

    @classmethod
    def from_config(cls, cfg: Config, metrics_jsonl: Path | None = None) -> Trainer:
        """A trainer for ``cfg.features``, ``cfg.model`` and ``cfg.trainer``."""
        tc, dim = cfg.trainer, cfg.model.embedding_dim
        labels = [lb.name for lb in cfg.join.labels]
        if labels and tc.label not in labels:
            raise TrainerError(
                f"trainer.label {tc.label!r} is not a join label: use one of {labels}"
            )
        return cls(
            [SparseField(f.name, f.dim or dim, f.ids == "raw") for f in cfg.features.sparse],
            [f.name for f in cfg.features.dense],
            arch=str(cfg.model.arch),
            mlp=cfg.model.mlp,
            table=TableParams(
                lr=tc.lr,
                admit_count=tc.admit_count,
                admit_prob=tc.admit_prob,
                max_rows=tc.max_rows,
                max_idle=tc.max_idle_ms,
                max_tracked=tc.max_tracked,
            ),
            inter_dim=dim,
            dense_lr=tc.dense_lr,
            delayed_loss=tc.delayed_loss,
            label=tc.label,
            evict_every=tc.evict_every,
            metrics=PrequentialMetrics(tc.metrics_window_ms, jsonl=metrics_jsonl),
            hash_cache=tc.hash_cache,
            pipeline=tc.pipeline,
            nominal_batch=tc.batch_size,
        )

    # ------------------------------------------------------------------ training

    def featurize(self, samples: Sequence[Mapping[str, Any]]) -> Batch:
        """Decoded Sample records -> :class:`Batch` for this trainer's fields and label;
        raises :class:`BadSample` naming the first bad record. (The daemon featurizes
        the raw values instead: ``trainer.featurizer.samples(values)``.)"""
        s = self.featurizer.samples(_encode(samples))
        _raise_bad(s, samples)
        return to_batch(s)

    def _lookups(
        self, batch: Batch, train: bool, out: list[FusedLookup] | None = None
    ) -> list[FusedLookup]:
        """The id half of every group's lookup (see :meth:`FusedLookup.finish`),
        appended to ``out`` one by one (a caller that sees an error finishes those)."""
        out = [] if out is None else out
        for g in self.groups:
            out.append(
                FusedLookup(
                    g.table,
                    [batch.sparse[f] for f in g.fields],
                    len(batch),
                    now=self.watermark_ms,
                    train=train,
                    defer=True,
                )
            )
        return out

    def _forward(
        self, batch: Batch, train: bool, lks: list[FusedLookup] | None = None
    ) -> tuple[torch.Tensor, list[FusedLookup]]:
        lks = self._lookups(batch, train) if lks is None else lks
        for lk in lks:
            lk.finish()
        return self.model([lk.pooled() for lk in lks], batch.dense), lks

    def _delayed(self, batch: Batch) -> torch.Tensor | None:
        """Mask of the fake-negative samples (None when the batch has none)."""
        return torch.from_numpy(batch.fake) if batch.fake.any() else None

    def _sync(self) -> None:
        """Wait for the background half of the previous step; re-raise its failure
        (then and at every later call: a trainer whose update failed is broken)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except BaseException as e:
                self._failed = e
        if self._failed is not None:
            raise TrainerError(
                f"trainer: the update of step {self.step} failed: {self._failed!r}"
            ) from self._failed

    def _update(self, loss: torch.Tensor, lks: list[FusedLookup]) -> None:
        """The second half of a step: backward, dense optimizer, row-wise Adagrad."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        self.opt.step()
        for lk in lks:
            lk.step()

    def _launch(self, loss: torch.Tensor, lks: list[FusedLookup]) -> None:
        """Run the step's second half: on the worker thread (pipeline), or here when
        it is off or this step evicts (eviction rewrites the id maps and rows)."""
        evict = self.evict_every and self.step % self.evict_every == 0
        if self.pipeline and not evict:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="fluxrec-update")
            self._pending = self._worker.submit(self._update, loss, lks)
            return
        self._update(loss, lks)
        if evict:
            for t in self.tables.values():
                t.evict(self.watermark_ms)

    def train_batch(
        self, batch: Batch, offsets: Mapping[str, Mapping[int, int]] | None = None
    ) -> float:
        """Score ``batch`` (prequential), then train on it; returns the loss.

        ``offsets`` (topic -> partition -> next offset) are recorded atomically with the
        step, also when every record of the batch was skipped.

        With ``pipeline`` (``trainer.pipeline``) the step's
        second half (backward pass, optimizer
        updates of the model and the tables) runs on a worker thread after this returns,
        overlapping what the caller does next (decoding the next batch) and the id work
        of the next step (dedup, probe, admission); every other use of the trainer
        (``lock``, ``take_cut``, ``score``, checkpoints) waits for it first, so nothing
        observes a half-trained step. The result is the same as a sequential step.
        """
        with self.lock.raw:
            self.skipped += batch.skipped
            for topic, parts in (offsets or {}).items():
                self.offsets.setdefault(topic, {}).update(parts)
            if len(batch) == 0:
                return 0.0
            # the id half of the lookups overlaps the previous step's update; the
            # admitted rows are written after it (finish) whatever happens
            lks: list[FusedLookup] = []
            try:
                if self._failed is None:
                    self._lookups(batch, True, lks)
            finally:
                try:
                    self._sync()
                finally:  # admitted rows get their values, whatever failed
                    for lk in lks:
                        lk.finish()
            self.model.train()
            if self.step == 0:  # a fresh model: start from the first batch's positive rate
                n = len(batch)  # smoothed: a first batch without positives is no proof of 0
                self.model.init_bias((float(batch.label.sum()) + 0.5) / (n + 1.0))
            norm = self.model.norm
            saved = (norm.mean.clone(), norm.var.clone(), norm.seen, self.watermark_ms)
            self.watermark_ms = max(self.watermark_ms, int(batch.event_ms.max()))
            logit, lks = self._forward(batch, train=True, lks=lks)
            if not bool(torch.isfinite(logit).all()):
                # never let one batch turn every parameter into NaN: no update at all
                norm.mean.copy_(saved[0])
                norm.var.copy_(saved[1])
                norm.seen, self.watermark_ms = saved[2], saved[3]
                self.nonfinite += 1
                log.warning(
                    "trainer: step %d: non-finite predictions, batch not trained", self.step
                )
                return float("nan")
            fake = self._delayed(batch)
            with torch.no_grad():  # prequential: scored before the update
                seen = stream_prob("logloss", logit)
                if fake is not None:
                    seen = torch.where(fake, stream_prob(self.delayed_loss, logit), seen)
            self.metrics.add(seen.double().numpy(), batch.label.double().numpy(), batch.event_ms)
            w = None
            if fake is not None and self.delayed_loss == "fnw":
                w = torch.where(fake, fnw_weights(logit, batch.label), 1.0)
            # every sample weighs 1 / nominal_batch however the stream cuts the batches
            total = F.binary_cross_entropy_with_logits(
                logit, batch.label, weight=w, reduction="sum"
            )
            loss = total / (self.nominal_batch or len(batch))
            self.step += 1
            self.samples += len(batch)
            self.id_xor ^= batch.id_xor
            value = float(total.detach()) / len(batch)
            self._launch(loss, lks)
            self.metrics.advance(self.watermark_ms - self.metrics.window_ms)
            return value

    def train_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        offsets: Mapping[str, Mapping[int, int]] | None = None,
    ) -> float:
        """Featurize and train one micro-batch of decoded Sample records."""
        return self.train_batch(self.featurize(samples), offsets)

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Served click probabilities, without training or admitting ids."""
        with self.lock, torch.no_grad():
            self.model.eval()
            logit, _ = self._forward(batch, train=False)
            p = predict("logloss", logit)
            fake = self._delayed(batch)
            if fake is not None:
                p = torch.where(fake, predict(self.delayed_loss, logit), p)
            return p.double().numpy()

    # ------------------------------------------------------------------ export

    def sync(self) -> None:
        """Wait until the last step is wholly applied (see ``pipeline``)."""
        with self.lock:
            pass

    def dense_state(self) -> dict[str, torch.Tensor]:
        """Every dense parameter and persistent buffer, by name."""
        with self.lock:
            return self._dense_state()

    def _dense_state(self) -> dict[str, torch.Tensor]:
        return dict(self.model.state_dict())

    def take_cut(self, full: bool = False) -> Cut | None:
        """What changed since the previous cut, as an :class:`~exporter.types.Cut`.

        Thread-safe; the cut falls between two steps. ``full=True`` asks for a snapshot
        of every live row. The cut is full anyway when it is the first one, the first
        after a restore, or change tracking overflowed. Returns None before the first
        step, and when nothing changed (no step and no offset moved since the previous
        cut: a batch of bad values only moves the offsets) and no full cut is due.
        """
        with self.lock:
            due = full or any(t.overflow for t in self.tables.values())
            moved = self.offsets != self._cut_offsets  # past values that trained nothing
            if self.step == 0 or (not due and self.step == self._cut_step and not moved):
                return None  # an untrained model is not worth serving
            self._cut_step = self.step
            self._cut_offsets = {t: dict(p) for t, p in self.offsets.items()}
            return take_cut(
                self.tables,
                self._dense_state(),
                full=full,
                step=self.step,
                samples=self.samples,
                watermark_ms=self.watermark_ms,
                offsets=self.offsets,
                statistics=frozenset(n for n, _ in self.model.named_buffers()),
            )

    def mark_full(self) -> None:
        """Make the next cut a full snapshot (a cut that was taken never reached a store)."""
        with self.lock:
            for t in self.tables.values():
                t.mark_full()

    def memory(self) -> dict[str, dict[str, int]]:
        """Per field: live rows; per table: bytes held and bytes per live row."""
        with self.lock:
            out: dict[str, dict[str, int]] = {"rows": {}, "bytes": {}, "bytes_per_row": {}}
            for name, t in self.tables.items():
                out["rows"].update(t.rows_per_field())
                out["bytes"][name] = t.nbytes()
                out["bytes_per_row"][name] = t.bytes_per_row()
            return out
