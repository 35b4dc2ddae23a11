"""The trainer's in-process core: samples -> batch -> prequential score -> update -> cut.

:class:`Trainer` owns the dynamic tables, the dense model and its optimizer. The daemon
feeds it the raw Kafka values of Sample records (``sample_join/CONTRACTS.md``, section 2)
through its featurizer (:mod:`featurize`, ``Trainer.featurizer``) and takes the
exporter's cuts (:meth:`Trainer.take_cut`) between steps. Every public method holds one
lock, so a cut, from whatever thread, always falls between two training steps::

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

A trainer is one worker of a job of ``comm.world`` workers (:mod:`trainer.distributed`;
one worker by default): its tables hold the rows it owns (:mod:`trainer.sharded`), the
dense model is replicated, and ``train_batch``, ``score`` and ``take_cut`` are collective:
every worker calls them at the same point, a worker without data with an empty batch.
A step of N workers is the step of one worker on the union of their batches: the batch
statistics (sample count, positives, dense-feature moments) are combined first, the
dense gradients averaged, the row gradients summed by their owners and divided by N.
``step``, ``samples`` and ``watermark_ms`` are the job's (equal on every worker);
``offsets``, ``skipped`` and ``id_xor`` are this worker's.
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
from trainer.distributed import Comm
from trainer.errors import TrainerError
from trainer.losses import fnw_weights, predict, stream_prob
from trainer.metrics import PrequentialMetrics
from trainer.model import CTRModel
from trainer.sharded import ShardedLookup
from trainer.sparse import Jagged, take_cut
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
class _StepStats:
    """A step's statistics over every worker (:meth:`Trainer._agree`)."""

    n: int  # samples of the step, all workers
    sizes: list[int]  # samples of each worker
    pos: float  # positives among them
    watermark: int  # the job's watermark after the step
    local_watermark: int  # this worker's
    mean: torch.Tensor  # dense features: mean and biased variance over the step (float64)
    var: torch.Tensor
    recv: npt.NDArray[np.int64]  # (world, tables): ids each worker sends this one


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
        comm: Comm | None = None,
    ) -> None:
        self.comm = comm or Comm.local()
        self.device = self.comm.device
        if pipeline and self.comm.world > 1:
            raise TrainerError(
                f"trainer.pipeline runs with one worker only ({self.comm.world} here: the "
                "update thread's exchange would interleave with the next step's): set it false"
            )
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
        rank_seed = seed + 7919 * self.comm.rank  # owners draw their own rows' values
        self.groups = [
            _Group(
                DynamicTable(tn, TableParams(**{**base.__dict__, "dim": d}), rank_seed + i, fs), fs
            )
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
            ).to(self.device)
        self.opt = torch.optim.Adagrad(self.model.parameters(), lr=dense_lr)
        self.delayed_loss = delayed_loss
        self.evict_every = evict_every
        self.metrics = metrics or PrequentialMetrics()
        self.pipeline = pipeline
        self.nominal_batch = nominal_batch
        self.lock = _StepLock(self._sync)
        self._pending: Future[bool] | None = None
        self._failed: BaseException | None = None
        self._worker: ThreadPoolExecutor | None = None
        self.step = 0
        self.samples = 0
        self.skipped = 0  # corrections of other labels, never trained
        self.nonfinite = 0  # batches with non-finite predictions: not trained, not scored
        self.watermark_ms = 0  # the job's: the least of the workers' (that trained)
        self.local_watermark_ms = 0  # the largest event time this worker trained
        self.offsets: dict[str, dict[int, int]] = {}
        self.id_xor = 0  # XOR of stable_hash("sample_id", id) over every trained sample
        self._cut_step = -1  # step of the last cut (-1: none yet)
        self._cut_offsets: dict[str, dict[int, int]] = {}  # offsets of the last cut

    @classmethod
    def from_config(
        cls, cfg: Config, metrics_jsonl: Path | None = None, comm: Comm | None = None
    ) -> Trainer:
        """A trainer for ``cfg.features``, ``cfg.model`` and ``cfg.trainer`` (one worker of
        ``comm``'s job)."""
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
            comm=comm,
        )

    # ------------------------------------------------------------------ training

    def featurize(self, samples: Sequence[Mapping[str, Any]]) -> Batch:
        """Decoded Sample records -> :class:`Batch` for this trainer's fields and label;
        raises :class:`BadSample` naming the first bad record. (The daemon featurizes
        the raw values instead: ``trainer.featurizer.samples(values)``.)"""
        s = self.featurizer.samples(_encode(samples))
        _raise_bad(s, samples)
        return to_batch(s)

    def _lookup(self, batch: Batch, train: bool) -> ShardedLookup:
        """Every table's lookup of ``batch``, before any exchange (:class:`ShardedLookup`)."""
        return ShardedLookup(
            self.comm,
            [g.table for g in self.groups],
            [[batch.sparse[f] for f in g.fields] for g in self.groups],
            len(batch),
            now=self.watermark_ms,
            train=train,
            device=self.device,
        )

    def _delayed(self, batch: Batch) -> torch.Tensor | None:
        """Mask of the fake-negative samples (None when the batch has none)."""
        return torch.from_numpy(batch.fake).to(self.device) if batch.fake.any() else None

    def _agree(self, batch: Batch, counts: npt.NDArray[np.int64]) -> _StepStats:
        """The step's statistics over every worker (one ``all_gather``): sample count,
        positives, watermark, dense moments (merged as in Chan et al.: stable for any
        offset of the features), and how many ids of each table every worker sends every
        owner (``counts``, ``(world, tables)``: :attr:`ShardedLookup.counts`)."""
        n = len(batch)
        local_wm = self.local_watermark_ms
        x = batch.dense.double()
        mean = x.mean(0) if n else torch.zeros(x.shape[1], dtype=torch.float64)
        m2 = (x - mean).square_().sum(0)
        if n:
            local_wm = max(local_wm, int(batch.event_ms.max()))
        head = torch.tensor([n, float(batch.label.sum()), local_wm], dtype=torch.float64)
        ids = torch.from_numpy(counts.reshape(-1)).double()
        rows = self.comm.all_gather(torch.cat([head, mean, m2, ids]))  # (world, 3 + 2D + w G)
        sizes = rows[:, 0]
        total = int(sizes.sum())
        d = x.shape[1]
        g_mean = (sizes[:, None] * rows[:, 3 : 3 + d]).sum(0) / max(total, 1)
        dev = (rows[:, 3 : 3 + d] - g_mean).square_()
        g_var = (rows[:, 3 + d : 3 + 2 * d] + sizes[:, None] * dev).sum(0) / max(total, 1)
        wms = rows[:, 2][rows[:, 2] > 0]  # workers that never trained do not hold it back
        wm = max(self.watermark_ms, int(wms.min())) if wms.numel() else self.watermark_ms
        w, g = counts.shape
        sent = rows[:, 3 + 2 * d :].reshape(w, w, g)  # [sender, owner, table]
        recv = sent[:, self.comm.rank, :].long().numpy()
        return _StepStats(
            total,
            [int(k) for k in sizes.tolist()],
            float(rows[:, 1].sum()),
            wm,
            local_wm,
            g_mean,
            g_var,
            recv,
        )

    def _scores(
        self, batch: Batch, logit: torch.Tensor, sizes: list[int]
    ) -> Callable[[bool], None]:
        """Prequential scores (before the update) for the metrics of rank 0, which sees
        every worker's: the ``all_gather`` starts here and runs while the step goes on;
        the returned function waits for it and adds the scores when the step trains."""
        fake = self._delayed(batch)
        with torch.no_grad():
            seen = stream_prob("logloss", logit)
            if fake is not None:
                seen = torch.where(fake, stream_prob(self.delayed_loss, logit), seen)
        if self.comm.world == 1:

            def add(ok: bool) -> None:
                if ok:
                    pred = seen.double().cpu().numpy()
                    self.metrics.add(pred, batch.label.double().numpy(), batch.event_ms)

            return add
        n, top = len(batch), max(sizes)
        row = torch.zeros(3 * top, dtype=torch.float64)  # pred, label, event time
        row[:n] = seen.double().cpu()
        row[top : top + n] = batch.label.double()
        row[2 * top : 2 * top + n] = torch.from_numpy(batch.event_ms).double()
        gathered = self.comm.all_gather_start(row)

        def finish(ok: bool) -> None:
            rows = gathered()  # every worker waits: the collective completes everywhere
            if ok and self.comm.rank == 0:
                cols = [rows[r].view(3, top)[:, : sizes[r]] for r in range(self.comm.world)]
                pred, label, ev = (torch.cat([c[i] for c in cols]).numpy() for i in range(3))
                self.metrics.add(pred, label, ev.astype(np.int64))

        return finish

    def _loss(
        self, batch: Batch, logit: torch.Tensor, label: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss: (sum, sum / nominal batch)."""
        fake = self._delayed(batch)
        w = None
        if fake is not None and self.delayed_loss == "fnw":
            w = torch.where(fake, fnw_weights(logit, label), 1.0)
        # every sample weighs 1 / nominal_batch however the stream cuts the batches
        total = F.binary_cross_entropy_with_logits(logit, label, weight=w, reduction="sum")
        return total, total / (self.nominal_batch or max(len(batch), 1))

    def _average_dense_grads(self, finite: bool) -> Callable[[], bool]:
        """Start averaging the dense gradients over the workers (one ``all_reduce``, which
        runs while the row gradients go to their owners), with one more element: 1 from a
        worker whose predictions were not ``finite``. The returned function waits, and
        returns False when a worker's were not (then nothing is written back: no update
        anywhere), else writes the averages back so the replicas take the same step."""
        if self.comm.world == 1:
            return lambda: finite
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        flag = torch.tensor([0.0 if finite else 1.0], device=grads[0].device)
        summed = self.comm.all_reduce_start_(torch.cat([*(g.reshape(-1) for g in grads), flag]))

        def finish() -> bool:
            total = summed()
            if float(total[-1]) > 0:
                return False
            flat = total[:-1].div_(self.comm.world)
            at = 0
            for g in grads:
                g.copy_(flat[at : at + g.numel()].view_as(g))
                at += g.numel()
            return True

        return finish

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

    def _update(self, loss: torch.Tensor, lk: ShardedLookup, finite: bool) -> bool:
        """The second half of a step: backward, then (when every worker's predictions
        were ``finite``, which the dense all_reduce tells) row-wise Adagrad and the dense
        optimizer; False when the step trained nothing."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        averaged = self._average_dense_grads(finite)
        lk.send_grads()
        if not averaged():
            return False
        lk.apply_grads()
        self.opt.step()
        return True

    def _launch(self, loss: torch.Tensor, lk: ShardedLookup, finite: bool) -> bool:
        """Run the step's second half: on the worker thread (pipeline: one worker, whose
        ``finite`` is the job's), or here when it is off or this step evicts (eviction
        rewrites the id maps and rows); whether the step trains."""
        evict = self.evict_every and (self.step + 1) % self.evict_every == 0
        if self.pipeline and not evict:
            if self._worker is None:
                self._worker = ThreadPoolExecutor(1, thread_name_prefix="fluxrec-update")
            self._pending = self._worker.submit(self._update, loss, lk, finite)
            return finite
        ok = self._update(loss, lk, finite)
        if ok and evict:
            for t in self.tables.values():
                t.evict(self.watermark_ms)
        return ok

    def train_batch(
        self, batch: Batch, offsets: Mapping[str, Mapping[int, int]] | None = None
    ) -> float:
        """Score ``batch`` (prequential), then train on it; returns the loss (this
        worker's samples' mean).

        ``offsets`` (topic -> partition -> next offset) are recorded atomically with the
        step, also when every record of the batch was skipped.

        Collective: every worker of the job calls it for the same step, one without data
        with an empty batch; the step trains the union of the workers' batches (nothing,
        on every worker, when all are empty). Its collectives, in order: the step's
        statistics with the id counts (``all_gather``), ids to owners and vectors back
        (two ``all_to_all``), then, overlapped: the prequential scores to rank 0
        (``all_gather``, started after the forward pass, waited for at the end), the
        dense gradients summed with each worker's finite flag (``all_reduce``, started
        after backward) while the row gradients go to their owners (``all_to_all``).
        Four of them block: the statistics, the two lookups, the row gradients. The
        updates wait for the flags: when a worker's predictions were not finite no
        worker updates anything.

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
            lk = self._lookup(batch, True)
            stats = self._agree(batch, lk.counts)
            if stats.n == 0:  # on every worker: nothing to train anywhere
                return 0.0
            # the id half of the lookups overlaps the previous step's update; the
            # admitted rows are written after it (commit) whatever happens
            try:
                if self._failed is None:
                    lk.exchange(stats.recv)
            finally:
                try:
                    self._sync()
                finally:  # admitted rows get their values, whatever failed
                    lk.commit()
            lk.gather()
            self.model.train()
            if self.step == 0:  # a fresh model: start from the first batch's positive rate
                # smoothed: a first batch without positives is no proof of 0
                self.model.init_bias((stats.pos + 0.5) / (stats.n + 1.0))
            norm = self.model.norm
            saved = (norm.mean.clone(), norm.var.clone(), norm.seen)
            marks = (self.watermark_ms, self.local_watermark_ms)
            if stats.n > 1 and stats.mean.numel():
                norm.observe(stats.mean, stats.var)
            self.watermark_ms, self.local_watermark_ms = stats.watermark, stats.local_watermark
            dense, label = batch.dense.to(self.device), batch.label.to(self.device)
            logit = self.model(lk.pooled(), dense)
            finite = bool(torch.isfinite(logit).all())
            scored = self._scores(batch, logit, stats.sizes)
            total, loss = self._loss(batch, logit, label)
            # one worker knows at once whether its step is finite (then no backward pass);
            # a job learns it in the dense all_reduce, before any worker updates anything
            alone = self.comm.world == 1
            ok = self._launch(loss, lk, finite) if finite or not alone else False
            scored(ok)
            if not ok:
                # never let one batch turn every parameter into NaN: no update at all
                norm.mean.copy_(saved[0])
                norm.var.copy_(saved[1])
                norm.seen = saved[2]
                self.watermark_ms, self.local_watermark_ms = marks
                self.nonfinite += 1
                log.warning(
                    "trainer: step %d: non-finite predictions, batch not trained", self.step
                )
                return float("nan")
            self.step += 1
            self.samples += stats.n
            self.id_xor ^= batch.id_xor
            self.metrics.advance(self.watermark_ms - self.metrics.window_ms)
            return float(total.detach()) / max(len(batch), 1)

    def train_samples(
        self,
        samples: Sequence[Mapping[str, Any]],
        offsets: Mapping[str, Mapping[int, int]] | None = None,
    ) -> float:
        """Featurize and train one micro-batch of decoded Sample records."""
        return self.train_batch(self.featurize(samples), offsets)

    def score(self, batch: Batch) -> npt.NDArray[np.float64]:
        """Served click probabilities, without training or admitting ids (collective)."""
        with self.lock, torch.no_grad():
            self.model.eval()
            lk = self._lookup(batch, train=False).exchange()
            lk.finish()
            logit = self.model(lk.pooled(), batch.dense.to(self.device))
            p = predict("logloss", logit)
            fake = self._delayed(batch)
            if fake is not None:
                p = torch.where(fake, predict(self.delayed_loss, logit), p)
            return p.double().cpu().numpy()

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

        Collective: the cut is full when any worker asks for it or overflowed, and taken
        when any worker's offsets moved (one ``all_gather`` decides both, so every worker
        cuts or none does). Each worker's cut is its part: the rows it owns, its
        partitions' offsets, and on rank 0 the dense tensors (replicated, so one part
        carries them); with one worker the part is the whole cut. One version of all the
        parts: :class:`trainer.publish.Publisher`.
        """
        with self.lock:
            mine = full or any(t.overflow for t in self.tables.values())
            moved = self.offsets != self._cut_offsets  # past values that trained nothing
            due, moved = self.comm.any_of(mine, moved)
            if self.step == 0 or (not due and self.step == self._cut_step and not moved):
                return None  # an untrained model is not worth serving
            self._cut_step = self.step
            self._cut_offsets = {t: dict(p) for t, p in self.offsets.items()}
            return take_cut(
                self.tables,
                self._dense_state() if self.comm.rank == 0 else {},
                full=due,
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
