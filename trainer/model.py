"""The dense part of the CTR models: DeepFM, wide&deep and DLRM over pooled embeddings.

The sparse part lives in :mod:`trainer.tables`. Fields are looked up in groups (one
table per group, every field of a group has the group's dim); a model receives, per
batch of ``B``::

    embs  : [(B, F_g, D_g) float32, ...]   pooled embeddings of each group's F_g fields
    dense : (B, N)         float32         raw dense features (normalised inside the model)

and returns one logit per sample, shape ``(B,)``. For the reference DeepFM (one group of
26 fields, D=16, 13 dense) the deep input is ``26*16 + 13 = 429`` wide, then the MLP
256-128-1. With ``e = concat(flatten(embs))`` and ``d = norm(dense)``:

- ``deepfm``:    logit = w·[e, d] + FM(v) + MLP([e, d])
- ``wide_deep``: logit = w·[e, d] + MLP([e, d])
- ``dlrm``:      z = bottom(d) in R^K; logit = top([z, pairwise dots of {z, v}])

``v`` are the field vectors in the interaction dim ``K`` (``model.embedding_dim``): a
group whose dim differs from ``K`` is projected by a learned ``Linear(D_g, K)`` shared by
its fields, so fields may have their own dims in every architecture. The linear layers
that read ``[e, d]`` (the wide term, the MLP's first layer) are split into an ``e`` part
and a ``d`` part (``first`` + ``first_dense``): same function, no concatenated copy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["ARCHS", "CTRModel", "DenseNorm", "build_mlp"]

ARCHS = ("deepfm", "wide_deep", "dlrm")


def build_mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of ``sizes`` (first = input), ReLU between them, none after the last."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseNorm(nn.Module):
    """Running standardisation of dense features: ``(x - mean) / sqrt(var + eps)``.

    ``mean`` and ``var`` are buffers (exported with the dense parameters), never moved by
    gradients: :meth:`observe` folds in each training batch's statistics (the trainer
    passes those of the whole step, over every worker), the average of the batch
    statistics over the first ``1/momentum`` batches, then an exponential moving average
    with ``momentum``. ``seen`` (batches so far) is checkpointed by the trainer, not
    exported.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, n: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps, self.seen = momentum, eps, 0
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("var", torch.ones(n))

    def observe(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Fold in one training batch's per-feature mean and (biased) variance."""
        self.seen += 1
        w = max(self.momentum, 1.0 / self.seen)
        with torch.no_grad():
            self.mean.lerp_(mean.to(self.mean), w)
            self.var.lerp_(var.to(self.var), w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.var + self.eps).sqrt()


class CTRModel(nn.Module):
    """One of ``deepfm`` / ``wide_deep`` / ``dlrm``.

    ``groups`` is ``[(n_fields, dim), ...]`` in the order of the ``embs`` list;
    ``inter_dim`` is the interaction dim ``K`` (default: the first group's dim).
    """

    iu: torch.Tensor

    def __init__(
        self,
        arch: str,
        groups: Sequence[tuple[int, int]],
        n_dense: int,
        mlp: Sequence[int],
        inter_dim: int | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"model.arch {arch!r}: use one of {', '.join(ARCHS)}")
        if not groups or any(f <= 0 or d <= 0 for f, d in groups):
            raise ValueError(f"embedding groups {list(groups)}: need fields > 0 and dim > 0")
        self.arch = arch
        self.groups = [(int(f), int(d)) for f, d in groups]
        self.n_dense = n_dense
        k = inter_dim or self.groups[0][1]
        self.proj = nn.ModuleDict(
            {
                str(g): nn.Linear(d, k, bias=False)
                for g, (_, d) in enumerate(groups)
                if d != k and arch != "wide_deep"  # wide&deep has no interactions
            }
        )
        self.norm = DenseNorm(n_dense)
        n_fields = sum(f for f, _ in self.groups)
        width = sum(f * d for f, d in self.groups)
        if arch == "dlrm":
            self.bottom = build_mlp([n_dense, k]) if n_dense else None
            n_vec = n_fields + (1 if n_dense else 0)
            self.top = build_mlp([(k if n_dense else 0) + n_vec * (n_vec - 1) // 2, *mlp, 1])
            iu = torch.triu_indices(n_vec, n_vec, offset=1)
            self.register_buffer("iu", iu, persistent=False)
            return
        # the wide term and the MLP's first layer, each split into an embedding part
        # and a dense part: no concatenated copy of the input, and the gradient is only
        # computed for the embeddings (the dense features are inputs, not parameters)
        self.wide = nn.Linear(width, 1)
        self.wide_dense = nn.Linear(n_dense, 1, bias=False) if n_dense else None
        h = mlp[0] if mlp else 1
        self.first = nn.Linear(width, h)
        self.first_dense = nn.Linear(n_dense, h, bias=False) if n_dense else None
        self.deep = build_mlp([*mlp, 1]) if mlp else None

    def init_bias(self, ctr: float) -> None:
        """Start the output at the observed rate: ``logit = log(ctr / (1 - ctr))``.

        With rare positives (CTR 0.5%) an output that starts at p = 0.5 costs the
        optimizer thousands of steps of badly calibrated predictions; this is the usual
        prior initialisation of the final bias.
        """
        ctr = min(max(ctr, 1e-4), 1.0 - 1e-4)
        last = self.top[-1] if self.arch == "dlrm" else self.wide
        if not isinstance(last, nn.Linear):
            raise TypeError(f"the output layer of {self.arch} is {type(last).__name__}")
        with torch.no_grad():
            last.bias.fill_(math.log(ctr / (1.0 - ctr)))

    def _vectors(self, embs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Every field's vector in the interaction dim: ``(B, F, K)``."""
        vs = [self.proj[str(g)](e) if str(g) in self.proj else e for g, e in enumerate(embs)]
        return vs[0] if len(vs) == 1 else torch.cat(vs, dim=1)

    def forward(self, embs: Sequence[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        d = self.norm(dense)
        if self.arch == "dlrm":
            v = self._vectors(embs)
            parts = []
            if self.bottom is not None:
                z = self.bottom(d)
                v = torch.cat([z.unsqueeze(1), v], dim=1)
                parts.append(z)
            dots = torch.bmm(v, v.transpose(1, 2))[:, self.iu[0], self.iu[1]]
            parts.append(dots)
            return self.top(torch.cat(parts, dim=1)).squeeze(1)  # type: ignore[no-any-return]
        fused_fm = self.arch == "deepfm" and not self.proj
        if len(embs) == 1:
            x = embs[0]
        else:  # fields of one dim and no projection: FM runs on the concatenation
            x = torch.cat(list(embs), 1) if fused_fm else torch.cat([e.flatten(1) for e in embs], 1)
        h: torch.Tensor
        logit: torch.Tensor
        h, logit = _DeepInput.apply(
            x.flatten(1),  # (B, W); B may be 0 on a worker without data
            d,
            self.first.weight,
            self.first.bias,
            None if self.first_dense is None else self.first_dense.weight,
            self.wide.weight,
            self.wide.bias,
            None if self.wide_dense is None else self.wide_dense.weight,
            x.shape[1] if fused_fm else 0,
        )
        if self.deep is not None:
            logit = logit + self.deep(torch.relu(h)).squeeze(1)
        else:
            logit = logit + h.squeeze(1)
        if self.arch == "deepfm" and not fused_fm:  # projected fields: FM on their vectors
            logit = logit + _FMInteraction.apply(self._vectors(embs))
        return logit


class _DeepInput(torch.autograd.Function):
    """Every layer that reads the embeddings ``e`` (B, W) and dense features ``d``, fused:

    - ``h = e W1^T + b1 + d Wd^T``: the MLP's first layer (``first``, ``first_dense``);
    - ``y = e w^T + b + d wd^T + FM(e)``: the wide term, plus FM's pairwise term when
      ``fm_fields`` > 0 (``e`` read as (B, fm_fields, K) field vectors).

    The gradient w.r.t. ``e`` is one GEMM (``g_h W1``) into which the wide and FM terms
    are added in place (``g_y (sum_j v_j - v_i + w_i)``): autograd's graph of the same
    layers allocates and sums three (B, W) gradients, and turns the wide term's into a
    rank-1 matrix product. Parameters keep their layers (and state_dict names).
    """

    @staticmethod
    def forward(  # noqa: PLR0917 (Function.apply takes positional arguments only)
        ctx: Any,
        e: torch.Tensor,
        d: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        wd1: torch.Tensor | None,
        w: torch.Tensor,
        b: torch.Tensor,
        wd: torch.Tensor | None,
        fm_fields: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.addmm(b1, e, w1.t())
        y = torch.addmv(b.expand(e.shape[0]), e, w.view(-1))  # B may be 0
        dense = wd1 is not None and wd is not None and d.shape[1] > 0
        if dense:
            h.addmm_(d, wd1.t())  # type: ignore[union-attr]
            y.addmv_(d, wd.view(-1))  # type: ignore[union-attr]
        s = None
        if fm_fields:
            s = e.view(e.shape[0], fm_fields, e.shape[1] // fm_fields).sum(1)
            # |sum_i v_i|^2 - sum_i |v_i|^2, as one-pass norms (no (B, W) temporary)
            sq = torch.linalg.vector_norm(e, dim=1).square_()
            y.add_(torch.linalg.vector_norm(s, dim=1).square_().sub_(sq), alpha=0.5)
        ctx.fm_fields, ctx.dense = fm_fields, dense
        ctx.save_for_backward(e, d, w1, w, s)
        return h, y

    @staticmethod
    def backward(ctx: Any, g_h: torch.Tensor, g_y: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        e, d, w1, w, s = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_e = g_d1 = g_w1 = g_b1 = g_w = g_b = g_wd = None
        if need[0]:
            g_e = g_h.mm(w1)
            if ctx.fm_fields:  # FM: (sum_j v_j - v_i) g_y; wide: w g_y; in place
                v = e.view(e.shape[0], ctx.fm_fields, e.shape[1] // ctx.fm_fields)
                g = g_e.view_as(v)
                gy = g_y.view(-1, 1, 1)
                g.add_((s * g_y.unsqueeze(1)).unsqueeze(1))
                g.addcmul_(v, gy, value=-1.0)
                g.addcmul_(gy, w.view(1, ctx.fm_fields, -1))
            else:
                g_e.addcmul_(g_y.unsqueeze(1), w)
        if need[2]:
            g_w1 = g_h.t().mm(e)
        if need[3]:
            g_b1 = g_h.sum(0)
        if need[5]:
            g_w = g_y.unsqueeze(0).mm(e)
        if need[6]:
            g_b = g_y.sum().view(1)
        if ctx.dense:
            if need[4]:
                g_d1 = d.t().mm(g_h).t()  # K = B, N = 13: faster this way round
            if need[7]:
                g_wd = g_y.unsqueeze(0).mm(d)
        return g_e, None, g_w1, g_b1, g_d1, g_w, g_b, g_wd, None


class _FMInteraction(torch.autograd.Function):
    """FM's pairwise term ``sum_{i<j} <v_i, v_j> = (|sum_i v_i|^2 - sum_i |v_i|^2) / 2``
    of ``v`` (B, F, K), with the hand-written gradient ``(sum_j v_j - v_i) * g``: two
    passes over ``v`` where autograd's graph of the same formula makes four."""

    @staticmethod
    def forward(ctx: Any, v: torch.Tensor) -> torch.Tensor:
        s = v.sum(1)
        ctx.save_for_backward(v, s)
        return 0.5 * (s.square().sum(1) - v.square().sum((1, 2)))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:
        v, s = ctx.saved_tensors
        grad: torch.Tensor = (s.unsqueeze(1) - v).mul_(g.view(-1, 1, 1))
        return grad
