"""The numbers of a demo run, computed from what the run recorded (no service needed).

Inputs (``RUN/``): ``config.yaml``, ``run.json``, ``events.jsonl.gz`` (every event sent),
``samples.tsv.gz`` (every sample with the time it became visible), ``trainer_trace.jsonl``
(per batch: time, offsets, prequential scores), ``versions.jsonl`` and
``server_applied.jsonl`` (manifests, publication and apply times), ``progress.jsonl``,
``served.jsonl.gz`` (live scores), ``join.json``.

**Freshness** of a sample, per stage, all on the machine's wall clock (with the live replay
event time *is* wall-clock time):

==============  ==========================================================================
label final     ``window``: the time of the action that set a label 1, else the end of the
                label window (``event_time + window``): the join emits a sample when every
                label it does not have is final. ``fake_negative``: the impression's time
                for the negative sample, the action's time for a correction.
joined          the sample is visible to ``read_committed`` consumers (first seen by the
                demo's tracer or trained by the trainer, whichever came first)
trained         the trainer finished the batch that holds it (its offset is below the
                batch's next offset)
published       ``published_ms`` of the first version whose ``kafka_offsets`` cover it
applied         the scoring server applied that version (or a later one)
==============  ==========================================================================

Samples at the end of the stream are left out (counted as ``end_of_stream``): those whose
label became final after the last impression (the watermark then moves only with the
sparse clicks) or that the end-of-run drain emitted. The synthetic stream runs one label
window past ``--duration`` so that every impression of the requested duration is measured.

**Quality**: the trainer's prequential scores (each batch scored before training on it),
a one-pass offline training of the same model on the same samples in the same order in
fixed batches, the oracle (``p_click`` of the synthetic generator), the server's live
scores; and two offline comparisons on the run's impressions and labelled actions (read
off the join's samples, :func:`emissions`): ``window`` vs ``fake_negative``
(:func:`simulate`), and a model frozen after the first part of the log. Every offline
training takes its batches from the impressions featurized once (:class:`Impressions`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fluxrec.config import Config, load_config

__all__ = [
    "STRATEGIES",
    "Emissions",
    "Eval",
    "Impressions",
    "RunData",
    "auc",
    "emissions",
    "freshness",
    "impressions",
    "live_scores",
    "load_run",
    "logloss",
    "offline_one_pass",
    "offline_trainer",
    "simulate",
    "streaming_scores",
    "throughput",
]

Strategy = Literal["window", "fake_negative"]
STRATEGIES: tuple[Strategy, ...] = ("window", "fake_negative")
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def auc(pred: Any, label: Any) -> float:
    """Exact ROC AUC (average ranks for ties); NaN with one class."""
    from trainer.metrics import auc as _auc

    p, y = np.asarray(pred, np.float64), np.asarray(label, np.float64)
    return float(_auc(p, y)) if p.size else math.nan


def logloss(pred: Any, label: Any) -> float:
    p = np.clip(np.asarray(pred, np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(label, np.float64)
    if not p.size:
        return math.nan
    return float(-(y * np.log(p) + (1 - y) * np.log1p(-p)).mean())


_NONE = np.iinfo(np.int64).min  # "null" in an int64 column of :class:`Traced`


@dataclass
class Traced:
    """The run's samples as the tracer saw them, in columns: one row per line of
    ``samples.tsv.gz`` whose value is a JSON object, in the file's order.

    ``raw`` holds each sample's value as the samples topic carried it (what the trainer's
    featurizer reads); the other columns are the few fields the report needs, read in one
    pass by Arrow (:func:`_read_samples`): ``labels`` per label 0 or 1 (0 where absent),
    ``label_ms`` the time of each label (``_NONE`` where null), ``p_click`` NaN where
    absent, ``fake`` whether ``strategy`` is ``fake_negative``.
    """

    part: I64
    offset: I64
    seen_ms: I64
    raw: list[bytes]
    event_ms: I64
    request_id: Any  # pyarrow.StringArray
    item_id: Any  # pyarrow.StringArray
    fake: Bool
    correction: Bool
    labels: dict[str, I64]
    label_ms: dict[str, I64]
    p_click: F64

    @property
    def n(self) -> int:
        return int(self.part.size)

    def sample(self, i: int) -> dict[str, Any]:
        """Sample ``i`` decoded (for a look at one; the report works on the columns)."""
        doc: dict[str, Any] = json.loads(self.raw[i])
        return doc


@dataclass
class RunData:
    """Everything a run recorded (module doc), loaded."""

    dir: Path
    cfg: Config
    meta: dict[str, Any]
    traced: Traced
    batches: list[dict[str, Any]]
    versions: list[dict[str, Any]]
    applied: list[dict[str, Any]]
    progress: list[dict[str, Any]]
    join: dict[str, Any]
    replay: dict[str, Any]

    @property
    def label(self) -> str:
        return self.cfg.trainer.label

    @property
    def windows_ms(self) -> dict[str, int]:
        return {lb.name: lb.window_ms for lb in self.cfg.join.labels}

    def events(self) -> Iterator[dict[str, Any]]:
        path = self.dir / "events.jsonl.gz"
        if not path.exists():
            return
        with gzip.open(path, "rt") as f:
            for line in f:
                yield json.loads(line)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    with path.open() as f:
        for raw in f:
            text = raw.strip()
            if text:
                try:
                    out.append(json.loads(text))
                except ValueError:
                    continue  # a line cut by a kill: the rest is still good
    return out


def _json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _read_samples(path: Path, labels: Sequence[str]) -> Traced:
    """``samples.tsv.gz`` into columns (:class:`Traced`): the lines are split in C
    (``bytes.split``), the values read by Arrow's JSON reader in one pass against a schema
    of the few fields the report needs (the features are left to the featurizer). Lines
    cut short and values that are not JSON are left out, as a sample the run lost."""
    import io

    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    fields: list[list[bytes]] = []
    if path.exists():
        lines = gzip.decompress(path.read_bytes()).split(b"\n")  # one C call: 30% less
        fields = [x for x in (ln.split(b"\t", 3) for ln in lines) if len(x) == 4]
    raw = [x[3] for x in fields]
    lab = pa.struct([(name, pa.int64()) for name in labels])
    schema = pa.schema(
        [
            ("event_time_ms", pa.int64()),
            ("request_id", pa.string()),
            ("item_id", pa.string()),
            ("strategy", pa.string()),
            ("correction", pa.bool_()),
            ("p_click", pa.float64()),
            ("labels", lab),
            ("label_time_ms", lab),
        ]
    )
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")

    def read(values: list[bytes]) -> pa.Table:
        if not values:
            return schema.empty_table()
        buf = b"\n".join(values)
        ro = pj.ReadOptions(block_size=max(len(buf) + 1, 1 << 16))
        return pj.read_json(io.BytesIO(buf), read_options=ro, parse_options=opts)

    try:
        table = read(raw)
        if table.num_rows != len(raw):
            raise ValueError("a value holds more than one JSON document")
    except (pa.ArrowInvalid, ValueError):  # rare: a value that is not one JSON object
        good = [i for i, v in enumerate(raw) if _one_object(v)]
        fields, raw = [fields[i] for i in good], [raw[i] for i in good]
        table = read(raw)
    table = table.combine_chunks()
    for name in ("event_time_ms", "request_id", "item_id"):
        if (nulls := table.column(name).null_count) != 0:
            raise ValueError(f"{path}: {nulls} samples without {name!r} (sample_join/CONTRACTS.md)")

    def ints(k: int) -> I64:
        return np.array([x[k] for x in fields], dtype=np.bytes_).astype(np.int64)

    def col(name: str, null: Any) -> Any:
        return table.column(name).chunk(0).fill_null(null).to_numpy(zero_copy_only=False)

    fake = pc.equal(table.column("strategy").chunk(0), "fake_negative")

    def struct(name: str, null: int) -> dict[str, I64]:
        kids = table.column(name).chunk(0).flatten()  # null where the struct is null
        return {
            lb: a.fill_null(null).to_numpy(zero_copy_only=False).astype(np.int64)
            for lb, a in zip(labels, kids, strict=True)
        }

    if not fields:
        z = np.zeros(0, np.int64)
        part = offset = seen = z
    else:
        part, offset, seen = ints(0), ints(1), ints(2)
    return Traced(
        part,
        offset,
        seen,
        raw,
        col("event_time_ms", 0).astype(np.int64),
        table.column("request_id").chunk(0),
        table.column("item_id").chunk(0),
        fake.fill_null(False).to_numpy(zero_copy_only=False),
        col("correction", False).astype(bool),
        struct("labels", 0),
        struct("label_time_ms", int(_NONE)),
        col("p_click", math.nan).astype(np.float64),
    )


def _one_object(value: bytes) -> bool:
    try:
        return isinstance(json.loads(value), dict)
    except ValueError:
        return False


def load_run(run_dir: Path) -> RunData:
    """Read the files of ``run_dir``."""
    cfg = load_config(run_dir / "config.yaml")
    labels = list(dict.fromkeys([*(lb.name for lb in cfg.join.labels), cfg.trainer.label]))
    traced = _read_samples(run_dir / "samples.tsv.gz", labels)
    versions: dict[int, dict[str, Any]] = {}
    applied = _jsonl(run_dir / "server_applied.jsonl")
    for m in [*applied, *_jsonl(run_dir / "versions.jsonl")]:
        versions.setdefault(int(m["sequence"]), m)
    return RunData(
        dir=run_dir,
        cfg=cfg,
        meta=_json(run_dir / "run.json"),
        traced=traced,
        batches=_jsonl(run_dir / "trainer_trace.jsonl"),
        versions=[versions[k] for k in sorted(versions)],
        applied=applied,
        progress=[r for r in _jsonl(run_dir / "progress.jsonl") if "error" not in r],
        join=_json(run_dir / "join.json"),
        replay=_json(run_dir / "replay.json"),
    )


# --------------------------------------------------------------------------- freshness


def label_final_ms(s: dict[str, Any], windows: dict[str, int]) -> int:
    """When the sample's labels were final (module doc)."""
    times = s.get("label_time_ms") or {}
    labels = s.get("labels") or {}
    if s.get("correction"):
        return min(int(t) for k, t in times.items() if t is not None and labels.get(k) == 1)
    t_imp = int(s["event_time_ms"])
    if s.get("strategy") == "fake_negative":
        return t_imp
    out = t_imp
    for name, w in windows.items():
        t = times.get(name)
        out = max(out, int(t) if labels.get(name) == 1 and t is not None else t_imp + w)
    return out


def _first_cover(ends: Sequence[int], times: Sequence[int], o: I64) -> I64:
    """For each offset in ``o``: the time of the first entry whose (running max) end > o,
    or -1. ``ends`` / ``times`` are in the order the entries happened."""
    if not len(ends):
        return np.full(o.shape, -1, np.int64)
    e = np.maximum.accumulate(np.asarray(ends, np.int64))
    k = np.searchsorted(e, o, side="right")
    t = np.append(np.asarray(times, np.int64), -1)
    return t[k]


def _batch_index(run: RunData) -> I64:
    """The trainer batch (index into ``run.batches``) of every traced sample, -1 if none."""
    tr = run.traced
    out = np.full(tr.part.shape, -1, np.int64)
    for p in np.unique(tr.part):
        ends = [int(b["offsets"].get(str(p), 0)) for b in run.batches]
        m = tr.part == p
        k = _first_cover(ends, list(range(len(ends))), tr.offset[m])
        out[m] = k
    return out


@dataclass
class StageStats:
    name: str
    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, name: str, ms: I64) -> StageStats:
        if not ms.size:
            return cls(name, 0, math.nan, math.nan, math.nan, math.nan, math.nan)
        s = ms.astype(np.float64) / 1000
        p50, p95, p99 = np.percentile(s, [50, 95, 99])
        return cls(name, int(s.size), p50, p95, p99, float(s.mean()), float(s.max()))


@dataclass
class Freshness:
    """Per-stage and end-to-end freshness of the traced samples (module doc)."""

    stages: list[StageStats]
    cumulative: dict[str, I64]  # stage -> ms since label final, per measured sample
    counts: dict[str, int]
    by_kind: list[StageStats] = field(default_factory=list)
    final_ms: I64 = field(default_factory=lambda: np.zeros(0, np.int64))  # of each measured one


def _label_final(tr: Traced, windows: dict[str, int]) -> I64:
    """:func:`label_final_ms` of every traced sample, on the columns."""
    t_imp = tr.event_ms
    out = t_imp.copy()
    for name, w in windows.items():
        y, t = tr.labels.get(name), tr.label_ms.get(name)
        end = t_imp + w
        if y is not None and t is not None:
            end = np.where((y == 1) & (t != _NONE), t, end)
        out = np.maximum(out, end)
    out = np.where(tr.fake, t_imp, out)
    # a correction: its earliest positive label (one it has, by the contract)
    first = np.full(tr.n, np.iinfo(np.int64).max, np.int64)
    for name, y in tr.labels.items():
        t = tr.label_ms[name]
        m = (y == 1) & (t != _NONE)
        first[m] = np.minimum(first[m], t[m])
    fix = tr.correction & (first != np.iinfo(np.int64).max)
    return np.where(fix, first, out)


def freshness(run: RunData) -> Freshness:
    tr = run.traced
    n = tr.n
    topic = run.cfg.kafka.topics.samples
    windows = run.windows_ms
    final = _label_final(tr, windows)
    positive = tr.correction.copy()
    for y in tr.labels.values():
        positive |= y == 1
    trained = np.full(n, -1, np.int64)
    published = np.full(n, -1, np.int64)
    version = np.full(n, -1, np.int64)
    vs = [v for v in run.versions if v.get("published_ms") is not None]
    for p in np.unique(tr.part):
        m = tr.part == p
        ends = [int(b["offsets"].get(str(p), 0)) for b in run.batches]
        trained[m] = _first_cover(ends, [int(b["t"]) for b in run.batches], tr.offset[m])
        vends = [int((v.get("kafka_offsets") or {}).get(topic, {}).get(str(p), 0)) for v in vs]
        published[m] = _first_cover(vends, [int(v["published_ms"]) for v in vs], tr.offset[m])
        version[m] = _first_cover(vends, [int(v["sequence"]) for v in vs], tr.offset[m])
    # applied: the first apply of that version or a later one
    app = sorted(run.applied, key=lambda a: int(a["sequence"]))
    seqs = np.array([int(a["sequence"]) for a in app], np.int64)
    at = np.array([int(a["applied_ms"]) for a in app], np.int64)
    suffix_min = np.minimum.accumulate(at[::-1])[::-1] if at.size else at
    applied = np.full(n, -1, np.int64)
    ok_v = version >= 0
    if seqs.size:
        k = np.searchsorted(seqs, version[ok_v], side="left")
        got = k < seqs.size
        idx = np.flatnonzero(ok_v)
        applied[idx[got]] = suffix_min[k[got]]
    joined = np.where(trained >= 0, np.minimum(tr.seen_ms, trained), tr.seen_ms)
    # the end of the stream: samples emitted by the drain, or whose labels became final
    # after the last impression (the watermark then moves only with the sparse clicks)
    drain = int(run.meta.get("times", {}).get("drain_start_ms", 0) or 0)
    last_imp = int(run.replay.get("last_impression_ms") or 0)
    flushed = np.zeros(n, bool)
    if drain:
        flushed |= tr.seen_ms >= drain
    if last_imp:
        flushed |= final > last_imp
    done = (applied >= 0) & ~flushed
    counts = {
        "samples": n,
        "measured": int(done.sum()),
        "end_of_stream": int(flushed.sum()),
        "not_trained": int(((trained < 0) & ~flushed).sum()),
        "not_published": int(((trained >= 0) & (published < 0) & ~flushed).sum()),
        "not_applied": int(((published >= 0) & (applied < 0) & ~flushed).sum()),
    }
    d = done
    stages = [
        StageStats.of("label final -> joined (visible in the samples topic)", joined[d] - final[d]),
        StageStats.of("joined -> trained", trained[d] - joined[d]),
        StageStats.of("trained -> published (manifest)", published[d] - trained[d]),
        StageStats.of("published -> applied in the server", applied[d] - published[d]),
        StageStats.of("label final -> applied (end to end)", applied[d] - final[d]),
    ]
    by_kind = [
        StageStats.of("end to end, positive samples", (applied - final)[d & positive]),
        StageStats.of("end to end, negative samples", (applied - final)[d & ~positive]),
    ]
    cumulative = {
        "joined": joined[d] - final[d],
        "trained": trained[d] - final[d],
        "published": published[d] - final[d],
        "applied": applied[d] - final[d],
    }
    return Freshness(stages, cumulative, counts, by_kind, final[d])


# --------------------------------------------------------------------------- throughput


def throughput(run: RunData, smooth_s: int = 5) -> dict[str, tuple[F64, F64]]:
    """Per stage: (seconds since the first progress sample, records or versions per second)."""
    rows = run.progress
    if len(rows) < 2:
        return {}
    t = np.array([r["w"] for r in rows], np.float64) / 1000
    out = {}
    for key, name in (
        ("events", "events into Kafka"),
        ("samples", "samples joined"),
        ("trained", "samples trained"),
        ("published", "versions published"),
        ("applied", "versions applied"),
        ("scored", "impressions scored"),
    ):
        c = np.array([r.get(key, 0) for r in rows], np.float64)
        rate = np.diff(c) / np.maximum(np.diff(t), 1e-3)
        k = max(1, smooth_s)
        if rate.size >= k:
            rate = np.convolve(rate, np.ones(k) / k, mode="same")
        out[name] = (t[1:] - t[0], rate)
    return out


# --------------------------------------------------------------------------- quality


@dataclass
class Eval:
    """Scores against labels, with their event times."""

    name: str
    pred: F64
    label: F64
    ev: I64

    @property
    def n(self) -> int:
        return int(self.pred.size)

    @functools.cached_property
    def auc(self) -> float:  # the report reads each one several times: computed once
        return auc(self.pred, self.label)

    @functools.cached_property
    def logloss(self) -> float:
        return logloss(self.pred, self.label)

    def since(self, t_ms: int) -> Eval:
        m = self.ev >= t_ms
        return Eval(self.name, self.pred[m], self.label[m], self.ev[m])

    def windows(self, window_ms: int) -> tuple[I64, F64, F64, I64]:
        """Per event-time window: (start ms, AUC, log loss, n)."""
        if not self.n:
            e = np.zeros(0)
            return e.astype(np.int64), e, e, e.astype(np.int64)
        start = self.ev - self.ev % window_ms
        ws = np.unique(start)
        a, ll, nn = [], [], []
        for w in ws:
            m = start == w
            a.append(auc(self.pred[m], self.label[m]))
            ll.append(logloss(self.pred[m], self.label[m]))
            nn.append(int(m.sum()))
        return ws, np.array(a), np.array(ll), np.array(nn, np.int64)


def streaming_scores(run: RunData) -> Eval:
    """The trainer's prequential scores, from its trace."""
    pred = [x for b in run.batches for x in b.get("pred", [])]
    label = [y for b in run.batches for y in b.get("label", [])]
    ev = [e for b in run.batches for e in b.get("ev", [])]
    return Eval(
        "streaming (prequential)",
        np.array(pred, np.float64),
        np.array(label, np.float64),
        np.array(ev, np.int64),
    )


def offline_trainer(cfg: Config, strategy: Strategy | None = None) -> Any:
    """A fresh in-process trainer of ``cfg`` (for the join's ``strategy``, default the
    run's) whose prequential scores are kept.

    Build trainers on one thread: each seeds its model from torch's global generator (under
    ``fork_rng``). Trained, they are independent: separate trainers may train on separate
    threads (:func:`demo.report.write_report` does), with the same results."""
    from trainer.core import Trainer
    from trainer.metrics import PrequentialMetrics

    class Keep(PrequentialMetrics):
        def __init__(self, window_ms: int) -> None:
            super().__init__(window_ms)
            self.kept: list[tuple[F64, F64, I64]] = []

        def add(self, pred: F64, label: F64, event_ms: I64) -> None:
            self.kept.append((pred.copy(), label.copy(), event_ms.copy()))
            super().add(pred, label, event_ms)

    if strategy is not None:
        cfg = dataclasses.replace(cfg, join=dataclasses.replace(cfg.join, strategy=strategy))
    t = Trainer.from_config(cfg)
    t.metrics = Keep(cfg.trainer.metrics_window_ms)
    return t


def _kept(name: str, t: Any) -> Eval:
    kept = t.metrics.kept
    if not kept:
        z = np.zeros(0)
        return Eval(name, z, z, z.astype(np.int64))
    return Eval(
        name,
        np.concatenate([k[0] for k in kept]),
        np.concatenate([k[1] for k in kept]),
        np.concatenate([k[2] for k in kept]).astype(np.int64),
    )


# --------------------------------------------------------------------------- offline trainings


@dataclass
class Impressions:
    """The run's unique impressions (the join's samples that are not corrections), in
    event-time order, featurized once: every offline training and scoring below takes its
    batches from these rows (:meth:`batch`) instead of decoding samples again.

    ``sample``: the traced sample of each row (the first of its ``(request_id, item_id)``);
    ``sample_row``: the row of every traced sample's impression (-1: none);
    ``label``: the final label (the ``window`` strategy's: an action within the window);
    ``actions``: every labelled action as ``(row, label name, time)``, late ones included.
    """

    sample: I64
    sample_row: I64
    t_imp: I64
    label: F64
    p_click: F64  # NaN where the log has none
    actions: list[tuple[int, str, int]]
    features: Any  # trainer.core.Batch of every row
    starts: dict[str, I64]  # per multi-valued sparse field: first id of each row (+ the end)

    @property
    def n(self) -> int:
        return int(self.t_imp.size)

    def batch(self, rows: I64, label: F64, fake: npt.NDArray[np.bool_]) -> Any:
        """A trainer batch of ``rows`` with these labels and fake-negative flags."""
        import torch

        from trainer.core import Batch

        sparse: dict[str, tuple[I64, I64 | None]] = {}
        for name, (ids, seg) in self.features.sparse.items():
            if seg is None:
                sparse[name] = (ids[rows], None)
                continue
            st = self.starts[name]
            begin, lens = st[rows], st[rows + 1] - st[rows]
            first = np.cumsum(lens) - lens
            pos = np.arange(int(lens.sum())) - np.repeat(first - begin, lens)
            sparse[name] = (ids[pos], np.repeat(np.arange(rows.size), lens))
        return Batch(
            sparse,
            self.features.dense[torch.from_numpy(rows)],
            torch.from_numpy(label.astype(np.float32)),
            self.t_imp[rows],
            fake,
        )


def _key_codes(tr: Traced) -> I64:
    """A code per traced sample for its ``(request_id, item_id)``: equal iff the pair is."""
    import pyarrow.compute as pc

    if not tr.n:
        return np.zeros(0, np.int64)
    r, i = pc.dictionary_encode(tr.request_id), pc.dictionary_encode(tr.item_id)
    code = r.indices.to_numpy().astype(np.int64) * len(i.dictionary) + i.indices.to_numpy()
    inverse: I64 = np.unique(code, return_inverse=True)[1].astype(np.int64).reshape(-1)
    return inverse


def impressions(run: RunData, t: Any) -> Impressions:
    """The run's impressions (class doc), featurized by trainer ``t``: each one's raw
    sample is what the featurizer reads."""
    import pyarrow as pa
    import pyarrow.compute as pc

    tr, windows, name = run.traced, run.windows_ms, run.label
    # the samples that are not corrections, by (event time, request_id, item_id) (a
    # stable sort); the first of each (request_id, item_id) is its impression's row
    base = np.flatnonzero(~tr.correction)
    by = pa.table(
        {
            "t": tr.event_ms[base],
            "r": tr.request_id.take(pa.array(base)),
            "i": tr.item_id.take(pa.array(base)),
        }
    )
    keys = [("t", "ascending"), ("r", "ascending"), ("i", "ascending")]
    ordered = base[pc.sort_indices(by, sort_keys=keys).to_numpy()]
    code = _key_codes(tr)
    first = np.unique(code[ordered], return_index=True)[1] if ordered.size else ordered
    sample = ordered[np.sort(first)]  # the traced sample of each row
    n = int(sample.size)
    row_of = np.full(int(code.max()) + 1 if code.size else 0, -1, np.int64)
    row_of[code[sample]] = np.arange(n)
    rows = row_of[code] if code.size else code  # each traced sample's row (-1: none)
    t_imp = tr.event_ms[sample]
    # labelled actions: of every sample of a row, except the negatives of fake_negative
    found: set[tuple[int, str, int]] = set()
    take = (rows >= 0) & ~(tr.fake & ~tr.correction)
    for lb, y in tr.labels.items():
        at = tr.label_ms[lb]
        m = take & (y == 1) & (at != _NONE)
        found.update(zip(rows[m].tolist(), [lb] * int(m.sum()), at[m].tolist(), strict=True))
    actions = sorted(found)
    label = np.zeros(n, np.float64)
    w = windows.get(name, 0)
    for row, lb, at_ms in actions:
        if lb == name and at_ms <= t_imp[row] + w:
            label[row] = 1.0
    feats = _featurize(t, [tr.raw[i] for i in sample.tolist()])
    starts = {}
    for f, (_, seg) in feats.sparse.items():
        if seg is not None:
            starts[f] = np.searchsorted(seg, np.arange(n + 1)).astype(np.int64)
    return Impressions(sample, rows, t_imp, label, tr.p_click[sample], actions, feats, starts)


def _featurize(t: Any, raw: list[bytes]) -> Any:
    """The trainer batch of impression samples' raw values, featured as the trainer does.

    The rows are scored and trained with their own labels and flags (:meth:`Impressions.batch`)
    and the features are all the featurizer reads of them, so the raw values are featurized
    as they are. Should the featurizer refuse or skip one, they are featurized once more as
    the window strategy's samples (``correction`` false, ``strategy`` window), which names
    the record at fault (:class:`trainer.errors.BadSample`)."""
    from trainer.core import to_batch

    s = t.featurizer.samples(raw)
    if not s.bad and not s.skipped and s.index.size == len(raw):
        return to_batch(s)
    docs = [json.loads(v) for v in raw]
    return t.featurize([{**d, "correction": False, "strategy": "window"} for d in docs])


def offline_one_pass(
    run: RunData, imps: Impressions, batch_size: int | None = None, trainer: Any = None
) -> Eval:
    """The same model trained once over the same samples, in the order the streaming
    trainer consumed them, in fixed batches, scored before each batch (prequential).
    ``trainer``: a fresh :func:`offline_trainer` to train (it may have featurized the
    impressions: featurizing changes nothing it trains); default: a new one."""
    tr = run.traced
    k = _batch_index(run)
    order = np.lexsort((tr.offset, tr.part, k))
    order = order[k[order] >= 0]
    t = trainer if trainer is not None else offline_trainer(run.cfg)
    b = batch_size or run.cfg.trainer.batch_size
    y = tr.labels.get(run.label, np.zeros(tr.n, np.int64))[order]
    r = imps.sample_row[order]
    f_ = tr.fake[order]
    y_ = y.astype(np.float64)
    m = ~(tr.correction[order] & (y != 1)) & (r >= 0)  # as the trainer skips them
    for i in range(0, r.size, b):
        sel = np.flatnonzero(m[i : i + b]) + i  # a chunk of b samples, minus skipped ones
        if sel.size:
            t.train_batch(imps.batch(r[sel], y_[sel], f_[sel]))
    return _kept(f"offline one pass (batches of {b})", t)


def oracle(run: RunData) -> Eval | None:
    """``p_click`` of the synthetic generator against the traced samples' labels (the
    impressions' samples; None without ``p_click``)."""
    tr = run.traced
    m = ~np.isnan(tr.p_click) & ~tr.correction
    if not m.any():
        return None
    y = tr.labels.get(run.label, np.zeros(tr.n, np.int64))
    return Eval("oracle (true p_click)", tr.p_click[m], y[m].astype(np.float64), tr.event_ms[m])


# --------------------------------------------------------------------------- strategies


@dataclass
class Emissions:
    """What a strategy emits for the trained label, in emission order: the time each
    sample's label is final (:func:`label_final_ms`), its impression row, label and flag."""

    final_ms: I64
    rows: I64
    label: F64
    fake: npt.NDArray[np.bool_]


def emissions(run: RunData, imps: Impressions, strategy: Strategy) -> Emissions:
    """The samples ``strategy`` emits for the run's impressions and labelled actions, as
    the join defines them (``sample_join/CONTRACTS.md`` section 4), derived from the join's
    own samples: ``window`` emits one sample per impression when its labels are final (an
    action within the window sets a label 1) and a correction for each later action;
    ``fake_negative`` a negative at the impression and a correction for every action.
    Corrections of other labels are left out, as the trainer skips them."""
    windows, name = run.windows_ms, run.label
    fake = strategy == "fake_negative"
    label = np.zeros(imps.n)
    extra: list[tuple[int, int]] = []  # corrections: (time, row)
    for row, lb, at in imps.actions:
        if lb != name:
            continue
        if fake or at > imps.t_imp[row] + windows.get(lb, 0):
            extra.append((at, row))
        else:
            label[row] = 1.0
    final = imps.t_imp.copy() if fake else _window_final(imps, windows)
    rows = np.concatenate([np.arange(imps.n), np.array([r for _, r in extra], np.int64)])
    times = np.concatenate([final, np.array([t for t, _ in extra], np.int64)])
    labels = np.concatenate([label, np.ones(len(extra))])
    order = np.argsort(times, kind="stable")
    return Emissions(times[order], rows[order], labels[order], np.full(rows.size, fake))


def _window_final(imps: Impressions, windows: dict[str, int]) -> I64:
    """When the window sample of each impression is final: per label, its action's time
    if it came within the window, else the window's end; the latest of those."""
    per: dict[str, I64] = {lb: imps.t_imp + w for lb, w in windows.items()}
    for row, lb, at in imps.actions:
        if lb in per and at <= imps.t_imp[row] + windows[lb]:
            per[lb][row] = at
    return np.maximum.reduce(list(per.values())) if per else imps.t_imp.copy()


def simulate(
    run: RunData,
    imps: Impressions,
    strategy: Strategy,
    *,
    freeze_at_ms: int | None = None,
    tick_ms: int = 1000,
    chunk: int = 16384,
    trainer: Any = None,
) -> tuple[Eval, Eval | None]:
    """Serve-time evaluation of ``strategy``: every impression is scored by the model as it
    was at the start of its ``tick_ms`` tick (trained on what the strategy had emitted by
    then), against its final label; the model trains on the strategy's samples in emission
    order, one batch per tick. With ``freeze_at_ms``, also a model frozen at the first tick
    from then on (it scores every later impression as the online one stood at that tick;
    before it, both are the same model). ``trainer``: a fresh
    ``offline_trainer(run.cfg, strategy)`` to train; default: a new one."""
    em = emissions(run, imps, strategy)
    t = trainer if trainer is not None else offline_trainer(run.cfg, strategy)
    preds = np.full(imps.n, math.nan)
    frozen = np.full(imps.n, math.nan) if freeze_at_ms is not None else None
    if not imps.n:
        return Eval(strategy, preds, imps.label, imps.t_imp), None
    serve_fake = np.full(imps.n, strategy == "fake_negative")  # FNC serves b / (1 - b)

    def score(a: int, b: int, out: F64) -> None:
        for i in range(a, b, chunk):
            rows = np.arange(i, min(b, i + chunk), dtype=np.int64)
            out[rows] = t.score(imps.batch(rows, imps.label[rows], serve_fake[rows]))

    start = int(imps.t_imp.min()) - int(imps.t_imp.min()) % tick_ms
    stop = max(int(imps.t_imp.max()), int(em.final_ms.max()) if em.final_ms.size else 0)
    i_imp = i_em = 0
    for tick in range(start, stop + tick_ms, tick_ms):
        if frozen is not None and freeze_at_ms is not None and tick >= freeze_at_ms:
            frozen[:i_imp] = preds[:i_imp]
            score(i_imp, imps.n, frozen)  # the frozen model: this one, from now on
            freeze_at_ms = None
        j = int(np.searchsorted(imps.t_imp, tick + tick_ms, side="left"))
        if j > i_imp:  # also before any training: a fresh model serves too
            score(i_imp, j, preds)
            i_imp = j
        k = int(np.searchsorted(em.final_ms, tick + tick_ms, side="left"))
        if k > i_em:
            sl = slice(i_em, k)
            t.train_batch(imps.batch(em.rows[sl], em.label[sl], em.fake[sl]))
            i_em = k
    online = Eval(strategy, preds, imps.label, imps.t_imp)
    if frozen is None:
        return online, None
    return online, Eval(f"{strategy} (frozen)", frozen, imps.label, imps.t_imp)


def live_scores(run: RunData, imps: Impressions) -> Eval | None:
    """The scoring server's answers during the run (``served.jsonl.gz``) against the final
    labels; None when the run did not score live."""
    path = run.dir / "served.jsonl.gz"
    if not path.exists():
        return None
    want: dict[int, float] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("p") is None:
                continue
            want.update(zip(rec["n"], rec["p"], strict=True))
    if not want:
        return None
    tr = run.traced
    keys = dict(
        zip(
            zip(
                tr.request_id.take(imps.sample).to_pylist(),
                tr.item_id.take(imps.sample).to_pylist(),
                strict=True,
            ),
            range(imps.n),
            strict=True,
        )
    )
    pred, label, ev = [], [], []
    for n, (rid, iid) in _impression_keys(run.dir / "events.jsonl.gz", set(want)):
        i = keys.get((rid, iid))
        if i is None:
            continue
        pred.append(want[n])
        label.append(imps.label[i])
        ev.append(int(imps.t_imp[i]))
    if not pred:
        return None
    return Eval("live server", np.array(pred), np.array(label), np.array(ev, np.int64))


def _impression_keys(path: Path, wanted: set[int]) -> Iterator[tuple[int, tuple[str, str]]]:
    """``(event index, (request_id, item_id))`` of the clean impressions among ``wanted``
    in the recorded events (``events.jsonl.gz``), parsed column-wise with pyarrow."""
    import io

    import pyarrow.json as pj

    if not path.exists():
        return
    table = pj.read_json(str(path))
    stream = table.column("s").to_pylist()
    fault = table.column("f").to_pylist() if "f" in table.column_names else [None] * len(stream)
    payload = table.column("p").to_pylist()
    idx = [n for n in sorted(wanted) if n < len(stream) and stream[n] == "impression"
           and fault[n] is None]  # fmt: skip
    if not idx:
        return
    body = "\n".join(payload[n] for n in idx).encode()
    keys = pj.read_json(io.BytesIO(body)).select(["request_id", "item_id"])
    yield from zip(idx, zip(*(c.to_pylist() for c in keys.columns), strict=True), strict=True)
