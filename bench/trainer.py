"""Benchmark: samples/s of the reference DeepFM train step (``make bench-trainer``).

Reference model: 26 sparse fields, dim 16, 13 dense, MLP 429-256-128-1, batch 4096, dense
Adagrad. Three variants, same model and batches, measured in one run:

- ``fluxrec``:  trainer.tables.DynamicTable per field (hash-map ids, per-batch dedup,
  admission bookkeeping, row-wise Adagrad on the unique rows only), mean pooling.
- ``baseline``: ``nn.Embedding(V, 16, sparse=True)`` per field + ``torch.optim.SparseAdam``
  (ids pre-mapped to ``[0, V)``: a fixed vocabulary, which is the baseline's advantage).
- ``mlp_bound``: the same model fed a constant embedding tensor: no lookups at all.

Ids are Zipf(1.1) over a vocabulary of ``--vocab`` per field. The last output line is one
JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from trainer.model import CTRModel
from trainer.sparse import FusedLookup
from trainer.tables import DynamicTable, TableParams

F, D, N_DENSE, MLP = 26, 16, 13, [256, 128]


def batches(
    n: int, b: int, vocab: int, seed: int
) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.minimum(rng.zipf(1.1, size=(F, b)) - 1, vocab - 1).astype(np.int64)
        dense = torch.from_numpy(rng.lognormal(0, 1, (b, N_DENSE)).astype(np.float32))
        label = torch.from_numpy((rng.random(b) < 0.05).astype(np.float32))
        out.append((ids, dense, label))
    return out


def run(
    step: Callable[[np.ndarray, torch.Tensor, torch.Tensor], None],
    data: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]],
    warmup: int,
) -> float:
    for ids, dense, label in data[:warmup]:
        step(ids, dense, label)
    t0 = time.perf_counter()
    for ids, dense, label in data[warmup:]:
        step(ids, dense, label)
    dt = time.perf_counter() - t0
    return (len(data) - warmup) * data[0][1].shape[0] / dt


def main() -> None:  # noqa: PLR0915 - one linear script: three variants side by side
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = batches(a.steps + a.warmup, a.batch, a.vocab, seed=0)
    bce = torch.nn.functional.binary_cross_entropy_with_logits

    # fluxrec tables
    torch.manual_seed(0)
    model = CTRModel("deepfm", F, D, N_DENSE, MLP)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    tables = [DynamicTable("shared", TableParams(dim=D))]
    # field-distinct ids, as the stable hash (salted with the field name) gives them
    salt = (np.arange(F, dtype=np.int64) * 0x5BD1E995)[:, None] << np.int64(20)

    def ours(ids: np.ndarray, dense: torch.Tensor, label: torch.Tensor) -> None:
        salted = ids + salt
        lk = FusedLookup(tables[0], [(salted[k], None) for k in range(F)], ids.shape[1])
        loss = bce(model(lk.pooled(), dense), label)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        lk.step()

    # baseline: nn.Embedding(sparse=True) + SparseAdam
    torch.manual_seed(0)
    bmodel = CTRModel("deepfm", F, D, N_DENSE, MLP)
    bopt = torch.optim.Adagrad(bmodel.parameters(), lr=0.01)
    embs = torch.nn.ModuleList([torch.nn.Embedding(a.vocab, D, sparse=True) for _ in range(F)])
    sopt = torch.optim.SparseAdam(list(embs.parameters()), lr=0.01)

    def base(ids: np.ndarray, dense: torch.Tensor, label: torch.Tensor) -> None:
        t = torch.from_numpy(ids)
        emb = torch.stack([embs[k](t[k]) for k in range(F)], dim=1)
        loss = bce(bmodel(emb, dense), label)
        bopt.zero_grad(set_to_none=True)
        sopt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        bopt.step()
        sopt.step()

    # compute bound: no lookups
    torch.manual_seed(0)
    mmodel = CTRModel("deepfm", F, D, N_DENSE, MLP)
    mopt = torch.optim.Adagrad(mmodel.parameters(), lr=0.01)
    const = torch.randn(a.batch, F, D) * 0.01

    def bound(ids: np.ndarray, dense: torch.Tensor, label: torch.Tensor) -> None:
        loss = bce(mmodel(const, dense), label)
        mopt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        mopt.step()

    # compute bound that still back-propagates into the (constant) embedding input: the
    # gradient w.r.t. the 429-wide input is work any embedding-training model must do
    gmodel = CTRModel("deepfm", F, D, N_DENSE, MLP)
    gopt = torch.optim.Adagrad(gmodel.parameters(), lr=0.01)

    def bound_grad(ids: np.ndarray, dense: torch.Tensor, label: torch.Tensor) -> None:
        c = const.clone().requires_grad_(True)
        loss = bce(gmodel(c, dense), label)
        gopt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        gopt.step()

    # interleave the three to share whatever noise the machine has
    res: dict[str, list[float]] = {"ours": [], "base": [], "bound": [], "bound_grad": []}
    for _ in range(2):
        res["bound"].append(run(bound, data, a.warmup))
        res["bound_grad"].append(run(bound_grad, data, a.warmup))
        res["base"].append(run(base, data, a.warmup))
        res["ours"].append(run(ours, data, a.warmup))
    ours_s, base_s, bound_s = (max(res[k]) for k in ("ours", "base", "bound"))
    rows = sum(len(t) for t in tables)
    print(
        f"fluxrec   {ours_s:10.0f} samples/s  ({rows} live rows, {tables[0].bytes_per_row()} B/row)"
    )
    print(f"baseline  {base_s:10.0f} samples/s  (nn.Embedding sparse + SparseAdam)")
    grad_s = max(res["bound_grad"])
    print(f"mlp bound {bound_s:10.0f} samples/s")
    print(f"mlp bound {grad_s:10.0f} samples/s  (with the gradient w.r.t. the embeddings)")
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
                "batch": a.batch,
                "threads": a.threads,
                "fields": F,
                "dim": D,
                "vocab": a.vocab,
                "steps": a.steps,
                "live_rows": rows,
                "bytes_per_row": tables[0].bytes_per_row(),
            }
        )
    )


if __name__ == "__main__":
    main()
