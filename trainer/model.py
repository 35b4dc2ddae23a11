"""The dense part of the CTR models: DeepFM, wide&deep and DLRM over pooled embeddings.

The sparse part lives in :mod:`trainer.tables`; a model receives, per batch of ``B``::

    emb   : (B, F, D)  float32   pooled embedding of each of the F sparse fields
    dense : (B, N)     float32   raw dense features (normalised inside the model)

and returns one logit per sample, shape ``(B,)``. For the reference DeepFM (26 fields,
D=16, 13 dense) the deep input is ``26*16 + 13 = 429`` wide, then the MLP 256-128-1.

- ``deepfm``:    logit = w·x + FM(emb) + MLP(x),  x = [flatten(emb), norm(dense)]
- ``wide_deep``: logit = w·x + MLP(x)
- ``dlrm``:      z = bottom(norm(dense)) in R^D; logit = top([z, pairwise dots of {z, emb}])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CTRModel", "DenseNorm", "build_mlp"]


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

    Statistics are buffers (exported with the dense parameters) updated in training mode
    with an exponential moving average (``momentum``), never by gradients.
    """

    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, n: int, momentum: float = 0.01, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] > 1 and x.shape[1] > 0:
            with torch.no_grad():
                self.mean.lerp_(x.mean(0), self.momentum)
                self.var.lerp_(x.var(0, unbiased=False), self.momentum)
        return (x - self.mean) / (self.var + self.eps).sqrt()


class CTRModel(nn.Module):
    """One of ``deepfm`` / ``wide_deep`` / ``dlrm`` over F fields of dim D and N dense."""

    iu: torch.Tensor

    def __init__(self, arch: str, n_fields: int, dim: int, n_dense: int, mlp: list[int]) -> None:
        super().__init__()
        if arch not in ("deepfm", "wide_deep", "dlrm"):
            raise ValueError(f"model.arch {arch!r}: use deepfm, wide_deep or dlrm")
        self.arch = arch
        self.norm = DenseNorm(n_dense)
        width = n_fields * dim + n_dense
        if arch == "dlrm":
            self.bottom = build_mlp([n_dense, dim]) if n_dense else None
            n_vec = n_fields + (1 if n_dense else 0)
            self.top = build_mlp([(dim if n_dense else 0) + n_vec * (n_vec - 1) // 2, *mlp, 1])
            iu = torch.triu_indices(n_vec, n_vec, offset=1)
            self.register_buffer("iu", iu, persistent=False)
        else:
            self.linear = nn.Linear(width, 1)
            self.mlp = build_mlp([width, *mlp, 1])

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        d = self.norm(dense)
        if self.arch == "dlrm":
            vecs = [emb]
            parts = []
            if self.bottom is not None:
                z = self.bottom(d)
                vecs.insert(0, z.unsqueeze(1))
                parts.append(z)
            v = torch.cat(vecs, dim=1)
            dots = torch.bmm(v, v.transpose(1, 2))[:, self.iu[0], self.iu[1]]
            parts.append(dots)
            return self.top(torch.cat(parts, dim=1)).squeeze(1)  # type: ignore[no-any-return]
        x = torch.cat([emb.flatten(1), d], dim=1)
        logit = self.linear(x).squeeze(1) + self.mlp(x).squeeze(1)
        if self.arch == "deepfm":
            s = emb.sum(1)
            logit = logit + 0.5 * (s * s - (emb * emb).sum(1)).sum(1)
        return logit  # type: ignore[no-any-return]
