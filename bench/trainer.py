"""Benchmark: samples/s of the reference DeepFM train step (``make bench-trainer``).

Reference model: 26 sparse fields, dim 16, 13 dense, MLP 429-256-128-1, batch 4096, dense
Adagrad. Variants, same model code (:class:`trainer.model.CTRModel`) and batches, measured
in one run and interleaved (``--block`` steps of each in turn) so they share the
machine's noise:

- ``fluxrec``:  :meth:`trainer.core.Trainer.train_batch`, the daemon's own step: dynamic
  tables (hash-map ids, per-batch dedup, admission, row-wise Adagrad on the unique rows
  only, change tracking), prequential metrics, loss, eviction pass every 100 steps;
  sequential as in the daemon's default. ``--pipeline`` (``trainer.pipeline``) runs a
  step's backward pass and updates on a worker thread while the next step dedups and
  probes its ids; each block of steps then ends by waiting for the last update, inside
  the timing.
- ``baseline``: ``nn.Embedding(V, 16, sparse=True)`` per field + ``torch.optim.SparseAdam``
  (ids pre-mapped to ``[0, V)``: a fixed vocabulary, which is the baseline's advantage).
- ``mlp_bound``: the same model fed a constant embedding tensor: no lookups at all (and
  no gradient w.r.t. the embeddings); ``mlp_bound_with_emb_grad`` adds that gradient,
  which any model that trains embeddings must compute.

Batches are pre-featurized for the step variants. The input path is measured apart, on
the raw Kafka values (compact JSON bytes of v1 Sample records, as the broker returns them)
of the same shape: ``featurize_samples_per_s`` is :meth:`featurize.core.Featurizer.samples`
on one thread (warm hash cache, as in a running daemon; the cyclic GC off while timed,
as ``timeit`` does, for every variant), beside same-run anchors that
only decode the same bytes with plain libraries (``pyarrow.json.read_json`` into columns;
``json.loads`` and ``orjson.loads`` per value) and an ``orjson + numpy`` featurizer (the
other design, without validation); ``loop_samples_per_s`` is the daemon's loop body
``train_batch(to_batch(featurizer.samples(values)))`` with sequential steps, and
``loop_overlapped_samples_per_s`` the same with the featurizing of batch ``n + 1`` on a
thread while batch ``n`` trains (``trainer.prefetch``); ``loop_vs_step`` is the daemon's
loop (the mode its config selects) over the step alone on batches of the same kind
featurized beforehand, measured in turn with the loops (``loop_step_samples_per_s``). Ids
are Zipf(1.1) over ``--vocab`` values per field, fresh batches every
round. Each variant's figure is the batch size over its median step time across
``--rounds`` timed rounds of ``--steps`` steps (after one untimed warm-up round); the
median keeps bursts of load from other processes out. The last output line is one JSON
object.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import chain, repeat
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import numpy.typing as npt
import torch

from featurize.hashing import stable_hash
from trainer.core import Batch, SparseField, Trainer, to_batch
from trainer.model import CTRModel
from trainer.sparse import Jagged
from trainer.tables import TableParams

F, D, N_DENSE, MLP = 26, 16, 13, [256, 128]
Step = Callable[[int], None]


def make_batches(
    n: int, b: int, vocab: int, seed: int
) -> tuple[list[Batch], list[npt.NDArray[np.int64]]]:
    """``n`` batches for the trainer (field-salted int64 keys, as hashing gives) and the
    same ids in ``[0, vocab)`` for the baseline."""
    rng = np.random.default_rng(seed)
    ours, raw = [], []
    for k in range(n):
        ids = np.minimum(rng.zipf(1.1, size=(F, b)) - 1, vocab - 1).astype(np.int64)
        keys = (ids + 1) * np.int64(0x9E3779B1) + (np.arange(F, dtype=np.int64) << 48)[:, None]
        dense = torch.from_numpy(rng.lognormal(0, 1, (b, N_DENSE)).astype(np.float32))
        label = torch.from_numpy((rng.random(b) < 0.05).astype(np.float32))
        ev = np.full(b, 1_700_000_000_000 + k * 1000, dtype=np.int64)
        sparse: dict[str, Jagged] = {f"f{j}": (keys[j], None) for j in range(F)}
        ours.append(Batch(sparse, dense, label, ev, np.zeros(b, dtype=bool)))
        raw.append(ids)
    return ours, raw


def reference_trainer(**kw: Any) -> Trainer:
    """The reference DeepFM as a :class:`Trainer` (``kw``: more constructor arguments)."""
    return Trainer(
        [SparseField(f"f{j}", D) for j in range(F)],
        [f"d{j}" for j in range(N_DENSE)],
        arch="deepfm",
        mlp=MLP,
        table=TableParams(lr=0.05),
        dense_lr=0.01,
        **kw,
    )


def timed(
    steps: dict[str, Step], n: int, block: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per step of every variant, interleaved block by block: ``block`` steps of
    each variant, then the next ``block`` steps of each, so that load from other
    processes, which comes in bursts of seconds, falls on all variants alike. The
    trainer's steps are pipelined (the update of one overlaps the next one's start,
    as in the daemon): ``sync`` waits for its last update inside the timed block, so
    no variant's time holds another's work and each block pays one update that
    nothing overlaps."""
    out: dict[str, list[float]] = {k: [] for k in steps}
    for i in range(0, n, block):
        todo = range(i, min(i + block, n))
        for k, step in steps.items():
            t0 = time.perf_counter()
            for j in todo:
                step(j)
            if k == "ours":
                sync()
            out[k].append((time.perf_counter() - t0) / len(todo))
    return out


def make_values(batch: int, seed: int, vocab: int = 100_000) -> list[bytes]:
    """Raw Kafka values (compact JSON of v1 Sample records) of the reference shape."""
    rng = np.random.default_rng(seed)
    out: list[bytes] = []
    for k in range(batch):
        vals = np.minimum(rng.zipf(1.1, F) - 1, vocab - 1)
        rec = {
            "v": 1,
            "sample_id": f"r-{seed}-{k}|i-{vals[1]}|0",
            "request_id": f"r-{seed}-{k}",
            "event_time_ms": 1_700_000_000_000 + k,
            "features": {
                "sparse": {f"f{j}": [f"v{vals[j]}"] for j in range(F)},
                "dense": {
                    f"d{j}": round(float(x), 4) for j, x in enumerate(rng.lognormal(0, 1, N_DENSE))
                },
            },
            "labels": {"click": int(k % 20 == 0)},
            "label_time_ms": {"click": None},
            "strategy": "window",
            "correction": False,
        }
        out.append(json.dumps(rec, separators=(",", ":")).encode())
    return out


def _orjson_numpy(values: list[bytes], names: list[str], dense: list[str]) -> object:
    """The other design: orjson per value, then numpy per field (no validation at all,
    which favours it): ids from a warm value -> id cache like the featurizer's."""
    import orjson

    docs = [orjson.loads(v) for v in values]
    feats = [d["features"] for d in docs]
    sp = [f.get("sparse") or {} for f in feats]
    out = {}
    for name in names:
        lists = [s.get(name) or () for s in sp]
        lengths = np.fromiter(map(len, lists), np.int64, len(lists))
        flat = list(chain.from_iterable(lists))
        cache = _ORJSON_CACHE.setdefault(name, {})
        ids = np.fromiter(map(cache.get, flat, repeat(-1)), np.int64, len(flat))
        for k in np.flatnonzero(ids == -1).tolist():
            ids[k] = cache[flat[k]] = stable_hash(name, flat[k])
        out[name] = (ids, lengths)
    dn = [f.get("dense") or {} for f in feats]
    d = np.array([[x.get(n, 0.0) for n in dense] for x in dn], dtype=np.float32)
    y = np.array([doc["labels"]["click"] for doc in docs], dtype=np.float32)
    return out, d, y


_ORJSON_CACHE: dict[str, dict[str, int]] = {}


def featurize_rates(t: Trainer, batch: int, rounds: int) -> dict[str, float]:
    """Samples/s of the featurizer on raw values, and of the anchors (module doc), each
    the median over ``rounds`` fresh batches (every variant on the same batch in turn)."""
    import orjson
    import pyarrow.json as pj

    fz = t.featurizer
    names = [f.name for f in fz.spec.sparse]
    dense = list(fz.spec.dense)
    ro = pj.ReadOptions(use_threads=False, block_size=64 << 20)

    def arrow_only(values: list[bytes]) -> None:
        pj.read_json(io.BytesIO(b"\n".join(values)), read_options=ro)

    variants: dict[str, Callable[[list[bytes]], object]] = {
        "featurize": fz.samples,
        "read_json": arrow_only,
        "json_loads": lambda vs: [json.loads(v) for v in vs],
        "orjson_loads": lambda vs: [orjson.loads(v) for v in vs],
        "orjson_numpy": lambda vs: _orjson_numpy(vs, names, dense),
    }
    took: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds + 1):
        values = make_values(batch, seed=500 + r)
        for k, fn in variants.items():
            fn(values)  # warm: the hash caches hold this batch's values, as in a daemon
            # as timeit does: the cyclic GC, set off by the ~300k objects that decoding
            # to Python makes per batch, would otherwise cost the per-value decoders 3-8x
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                fn(values)
                dt = time.perf_counter() - t0
            finally:
                gc.enable()
            if r:
                took[k].append(dt)
    return {k: batch / float(np.median(v)) for k, v in took.items()}


def loop_body(t: Trainer, chunk: list[list[bytes]], pool: ThreadPoolExecutor | None) -> None:
    """The daemon's loop body over batches of raw values: sequential, or (``pool``) with
    batch ``k + 1`` featurized on the pool's thread while batch ``k`` trains."""
    if pool is None:
        for values in chunk:
            t.train_batch(to_batch(t.featurizer.samples(values)))
        return
    nxt = pool.submit(t.featurizer.samples, chunk[0])
    for k in range(len(chunk)):
        s = nxt.result()
        if k + 1 < len(chunk):
            nxt = pool.submit(t.featurizer.samples, chunk[k + 1])
        t.train_batch(to_batch(s))


def loop_rates(t: Trainer, batch: int, n: int, rounds: int) -> dict[str, float]:
    """Samples/s of the daemon's loop body over raw values, sequential and overlapped
    (the next batch featurized on a thread while this one trains), and of the step
    alone on the same kind of batches featurized beforehand (``step``: the anchor of
    ``loop_vs_step``, measured in turn with the loops so that all three share the
    machine's load). ``n`` batches per mode in turn, ``rounds`` times, fresh values
    every batch; the median per-batch time."""
    modes = ("step", "sequential", "overlapped")
    data = [make_values(batch, seed=1000 + k) for k in range(n * len(modes) * rounds)]
    took: dict[str, list[float]] = {m: [] for m in modes}
    pool = ThreadPoolExecutor(1)
    for r in range(rounds):
        for m, mode in enumerate(modes):
            t.sync()
            chunk = data[(len(modes) * r + m) * n : (len(modes) * r + m + 1) * n]
            ready = [to_batch(t.featurizer.samples(v)) for v in chunk] if mode == "step" else []
            t0 = time.perf_counter()
            if mode == "step":
                for b in ready:
                    t.train_batch(b)
            else:
                loop_body(t, chunk, pool if mode == "overlapped" else None)
            t.sync()
            took[mode].append((time.perf_counter() - t0) / n)
    pool.shutdown()
    return {k: batch / float(np.median(v)) for k, v in took.items()}


def variants(
    a: argparse.Namespace, batches: list[Batch], raw_t: list[torch.Tensor]
) -> tuple[Trainer, dict[str, Step]]:
    """The trainer and the step function of every variant (reading the current batches)."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    t = reference_trainer(pipeline=a.pipeline)  # fluxrec: the trainer's own step

    def model_step(model: CTRModel, opts: list[torch.optim.Optimizer]) -> Callable[..., None]:
        def step(emb: torch.Tensor, i: int) -> None:
            loss = bce(model([emb], batches[i].dense), batches[i].label)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            for o in opts:
                o.step()

        return step

    # baseline: nn.Embedding(sparse=True) + SparseAdam, same dense model and optimizer
    torch.manual_seed(0)
    bmodel = CTRModel("deepfm", [(F, D)], N_DENSE, MLP)
    embs = torch.nn.ModuleList([torch.nn.Embedding(a.vocab, D, sparse=True) for _ in range(F)])
    bstep = model_step(
        bmodel,
        [
            torch.optim.Adagrad(bmodel.parameters(), lr=0.01),
            torch.optim.SparseAdam(list(embs.parameters()), lr=0.01),
        ],
    )
    # compute bounds: the same model on a constant embedding tensor (no lookups)
    const = torch.randn(a.batch, F, D) * 0.01
    mmodel = CTRModel("deepfm", [(F, D)], N_DENSE, MLP)
    mstep = model_step(mmodel, [torch.optim.Adagrad(mmodel.parameters(), lr=0.01)])

    def ours(i: int) -> None:
        t.train_batch(batches[i])

    return t, {
        "ours": ours,
        "base": lambda i: bstep(torch.stack([embs[k](raw_t[i][k]) for k in range(F)], 1), i),
        "bound": lambda i: mstep(const, i),
        # a new leaf over the same storage each step: no copy (the gradient lands in
        # the leaf's .grad, const itself never changes)
        "bound_grad": lambda i: mstep(const.detach().requires_grad_(True), i),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds, after one warm-up")
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--block", type=int, default=5, help="steps per variant in turn")
    ap.add_argument(
        "--pipeline", action="store_true", help="the trainer's pipelined step (trainer.pipeline)"
    )
    ap.add_argument(
        "--prefetch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="loop_samples_per_s is the overlapped loop (trainer.prefetch)",
    )
    ap.add_argument(
        "--input-only",
        action="store_true",
        help="only the input path: featurize and its anchors on raw values (seconds)",
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.input_only:
        t = Trainer([SparseField(f"f{j}", D) for j in range(F)], [f"d{j}" for j in range(N_DENSE)])
        feat = featurize_rates(t, a.batch, rounds=a.rounds)
        for k, v in feat.items():
            print(f"{k:13} {v:10.0f} samples/s")
        print(json.dumps({f"{k}_samples_per_s": round(v) for k, v in feat.items()}))
        return
    # fresh batches every round (the Zipf tail keeps bringing new ids to admit, as a live
    # stream does); round 0 warms every variant up and is not counted
    data = [make_batches(a.steps, a.batch, a.vocab, seed=r) for r in range(a.rounds + 1)]
    batches: list[Batch] = []
    raw_t: list[torch.Tensor] = []
    t, steps = variants(a, batches, raw_t)
    res: dict[str, list[float]] = {k: [] for k in steps}
    for r, (ours_b, raw) in enumerate(data):
        batches[:] = ours_b
        raw_t[:] = [torch.from_numpy(x) for x in raw]
        took = timed(steps, a.steps, a.block, t.sync)
        for k in steps:
            if r:
                res[k] += took[k]
    # samples/s at the median step time: robust to bursts of load from other processes
    rate = {k: a.batch / float(np.median(v)) for k, v in res.items()}
    ours_s, base_s, bound_s, grad_s = (rate[k] for k in ("ours", "base", "bound", "bound_grad"))
    mem = t.memory()
    rows = sum(mem["rows"].values())
    (bpr,) = mem["bytes_per_row"].values()
    feat = featurize_rates(t, a.batch, rounds=3)
    loop = loop_rates(t, a.batch, n=4, rounds=5)
    loop_s = loop["overlapped" if a.prefetch else "sequential"]
    print(f"fluxrec   {ours_s:10.0f} samples/s  ({rows} live rows, {bpr} B/row)")
    print(f"baseline  {base_s:10.0f} samples/s  (nn.Embedding sparse + SparseAdam)")
    print(f"mlp bound {bound_s:10.0f} samples/s  (no lookups)")
    print(f"mlp bound {grad_s:10.0f} samples/s  (no lookups, with the gradient w.r.t. them)")
    print(f"featurize {feat['featurize']:10.0f} samples/s  (raw values -> arrays, one thread)")
    for k in ("read_json", "json_loads", "orjson_loads", "orjson_numpy"):
        print(f"  anchor  {feat[k]:10.0f} samples/s  ({k} of the same values)")
    print(
        f"loop      {loop['sequential']:10.0f} samples/s  (train_batch(featurize(values)); "
        f"{loop['overlapped']:.0f} with the next batch featurized on a thread; "
        f"the step alone {loop['step']:.0f} in turn with them)"
    )
    print(
        json.dumps(
            {
                "samples_per_s": round(ours_s),
                "baseline_samples_per_s": round(base_s),
                "mlp_bound_samples_per_s": round(bound_s),
                "vs_baseline": round(ours_s / base_s, 3),
                "vs_bound": round(ours_s / bound_s, 3),
                "mlp_bound_with_emb_grad_samples_per_s": round(grad_s),
                "vs_bound_with_emb_grad": round(ours_s / grad_s, 3),
                "featurize_samples_per_s": round(feat["featurize"]),
                "featurize_vs_read_json": round(feat["featurize"] / feat["read_json"], 3),
                "featurize_vs_json_loads": round(feat["featurize"] / feat["json_loads"], 3),
                "anchor_samples_per_s": {k: round(v) for k, v in feat.items() if k != "featurize"},
                "loop_samples_per_s": round(loop_s),
                "loop_vs_step": round(loop_s / loop["step"], 3),
                "loop_step_samples_per_s": round(loop["step"]),
                "loop_sequential_samples_per_s": round(loop["sequential"]),
                "loop_overlapped_samples_per_s": round(loop["overlapped"]),
                "prefetch": a.prefetch,
                "pipeline": a.pipeline,
                "p25_p75_samples_per_s": {
                    k: [round(a.batch / float(np.percentile(v, q))) for q in (75, 25)]
                    for k, v in res.items()
                },
                "batch": a.batch,
                "threads": a.threads,
                "fields": F,
                "dim": D,
                "vocab": a.vocab,
                "steps": a.steps,
                "live_rows": rows,
                "bytes_per_row": bpr,
                "table_bytes": sum(mem["bytes"].values()),
            }
        )
    )


if __name__ == "__main__":
    main()
