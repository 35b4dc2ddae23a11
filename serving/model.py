"""The trainer's CTR models (``trainer/model.py``) re-implemented in numpy, for serving.

A server holds the parameters of one version (the SDK's tables, one per sparse field, and
the dense tensors by name) and computes the click probability the trainer would serve
for the same version (``Trainer.score``), without torch. The layout follows the trainer:

* Sparse fields are grouped as the trainer stores them: the hashed fields of one dim form
  one group, in the order their dim first appears in ``features.sparse``; each raw-id
  field (``ids: raw``) is a group of its own, after those. Requests are featurized by
  :class:`featurize.core.Featurizer`, the trainer's own featurizer (the same ids).
* A field's vector is the mean of the rows of its values (a value without a row counts as
  zeros, a field without values is zeros): ``(B, F_g, D_g)`` per group.
* Dense features are standardised with the exported running statistics:
  ``d = (x - norm.mean) / sqrt(norm.var + 1e-5)``; a missing value is 0.

With ``e`` the concatenation of every group's ``(B, F_g * D_g)`` and ``v`` the field
vectors in the interaction dim ``K`` (``model.embedding_dim``; groups of another dim go
through ``proj.{g}.weight``), for a batch of ``B``::

    deepfm:    logit = wide(e) + wide_dense(d) + deep(relu(first(e) + first_dense(d)))
                       + 0.5 * (|sum_i v_i|^2 - sum_i |v_i|^2)
    wide_deep: the same without the FM term
    dlrm:      z = bottom(d); logit = top([z, pairwise dots of (z, v_1, ..., v_F)])

``p = sigmoid(logit)``; for ``fake_negative`` samples trained with ``trainer.delayed_loss:
fnc`` the model estimates ``b = p / (1 + p)`` and serves ``b / (1 - b)`` (clipped), as the
trainer does. Dense tensor names are the trainer's ``state_dict`` keys (``wide.weight``,
``deep.0.weight``, ...); a version whose tensors do not fit raises
:class:`~serving.errors.ModelMismatch`.

Example (one impression, features as in ``sample_join/CONTRACTS.md`` 1.1)::

    spec = ModelSpec.from_config(cfg)
    x, _, _ = Featurizer(spec.features).request(
        b'{"features": {"sparse": {"user_id": ["u-3"]}, "dense": {"price": 12.5}}}')
    p = predict(spec, forward(spec, view, x))      # array([0.031...])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from featurize.types import Features, FeatureSpec, SparseSpec
from serving.errors import ModelMismatch

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = [
    "FieldSpec",
    "GroupSpec",
    "Inputs",
    "ModelSpec",
    "ParamView",
    "forward",
    "predict",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ARCHS = ("deepfm", "wide_deep", "dlrm")
_EPS = 1e-5  # DenseNorm.eps
Inputs = Features  # a featurized request (featurize.types.Features)


class ParamView(Protocol):
    """One consistent parameter version: rows by field, dense tensors by name."""

    def lookup(self, table: str, ids: I64) -> F32:
        """Rows of ``ids`` in ``table``, ``(len(ids), dim)``; zeros for unknown ids."""
        ...

    @property
    def dense(self) -> Mapping[str, F32]: ...


@dataclass(frozen=True)
class FieldSpec:
    """A sparse field: its name (= its table in the exported versions), dim, id kind."""

    name: str
    dim: int
    raw: bool = False


@dataclass(frozen=True)
class GroupSpec:
    """Fields the trainer stores in one table, in the model's input order."""

    dim: int
    fields: tuple[FieldSpec, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What the server needs to know about the trainer's model (all from the config)."""

    arch: str
    groups: tuple[GroupSpec, ...]
    dense: tuple[str, ...]
    inter_dim: int
    fnc: bool = False  # serve b / (1 - b): fake_negative samples trained with FNC
    sparse: tuple[FieldSpec, ...] = ()  # the fields in config order (default: group order)

    @property
    def fields(self) -> list[FieldSpec]:
        return [f for g in self.groups for f in g.fields]

    @property
    def features(self) -> FeatureSpec:
        """What the featurizer reads for this model."""
        fields = self.sparse or tuple(self.fields)
        return FeatureSpec(tuple(SparseSpec(f.name, f.raw) for f in fields), self.dense)

    @classmethod
    def build(
        cls,
        arch: str,
        sparse: Sequence[FieldSpec],
        dense: Sequence[str],
        inter_dim: int,
        fnc: bool = False,
    ) -> ModelSpec:
        """Group ``sparse`` as the trainer does (module doc)."""
        if arch not in ARCHS:
            raise ModelMismatch(f"model.arch {arch!r}: the server knows {', '.join(ARCHS)}")
        by_dim: dict[int, list[FieldSpec]] = {}
        raw: list[GroupSpec] = []
        for f in sparse:
            if f.raw:
                raw.append(GroupSpec(f.dim, (f,)))
            else:
                by_dim.setdefault(f.dim, []).append(f)
        groups = tuple(GroupSpec(d, tuple(fs)) for d, fs in by_dim.items()) + tuple(raw)
        return cls(arch, groups, tuple(dense), inter_dim, fnc, tuple(sparse))

    @classmethod
    def from_config(cls, cfg: Config) -> ModelSpec:
        """The model of ``cfg.model`` over ``cfg.features``, served as the trainer serves."""
        dim = cfg.model.embedding_dim
        sparse = [FieldSpec(f.name, f.dim or dim, f.ids == "raw") for f in cfg.features.sparse]
        if not sparse:
            raise ModelMismatch("features.sparse is empty: the trainer needs at least one field")
        fnc = cfg.join.strategy == "fake_negative" and cfg.trainer.delayed_loss == "fnc"
        return cls.build(
            str(cfg.model.arch), sparse, [f.name for f in cfg.features.dense], dim, fnc
        )


def _tensor(dense: Mapping[str, F32], name: str, shape: tuple[int, ...] | None = None) -> F32:
    t = dense.get(name)
    if t is None:
        raise ModelMismatch(
            f"dense tensor {name!r} is not in the applied version (it has "
            f"{', '.join(sorted(dense)) or 'none'}): is the trainer's model.arch or "
            "features the same as the server's?"
        )
    a = np.asarray(t, dtype=np.float32)
    if shape is not None and a.shape != shape:
        raise ModelMismatch(
            f"dense tensor {name!r} has shape {a.shape}, the config implies {shape}"
        )
    return a


def _linear(dense: Mapping[str, F32], name: str, x: F32, bias: bool = True) -> F32:
    w = _tensor(dense, f"{name}.weight")
    if w.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ModelMismatch(f"{name}.weight has shape {w.shape}, the input has width {x.shape[1]}")
    y: F32 = x @ w.T
    if bias:
        y = y + _tensor(dense, f"{name}.bias", (w.shape[0],))
    return y


def _mlp(dense: Mapping[str, F32], prefix: str, x: F32) -> F32:
    """``build_mlp`` of the trainer: Linear layers ``prefix.{i}``, ReLU between them."""
    idx = sorted(
        int(k.split(".")[1])
        for k in dense
        if k.startswith(prefix + ".") and k.endswith(".weight") and k.count(".") == 2
    )
    if not idx:
        raise ModelMismatch(f"no {prefix}.N.weight tensors in the applied version")
    for n, i in enumerate(idx):
        x = _linear(dense, f"{prefix}.{i}", x)
        if n < len(idx) - 1:
            x = np.maximum(x, 0.0)
    return x


def _pool(view: ParamView, f: FieldSpec, x: Features) -> F32:
    """Mean of the rows of each sample's values: ``(n, dim)``."""
    n = x.n
    ids, offsets = x.sparse[f.name]
    if ids.size == 0:
        return np.zeros((n, f.dim), dtype=np.float32)
    rows = np.asarray(view.lookup(f.name, ids), dtype=np.float32)
    if rows.shape != (ids.size, f.dim):
        raise ModelMismatch(
            f"table {f.name} has rows of shape {rows.shape[1:]}, dim {f.dim} expected"
        )
    seg = x.segment(f.name)
    if seg is None:
        return rows  # exactly one value per sample
    out = np.zeros((n, f.dim), dtype=np.float32)
    np.add.at(out, seg, rows)
    counts = np.diff(offsets).astype(np.float32)
    out /= np.maximum(counts, 1.0)[:, None]
    return out


def forward(spec: ModelSpec, view: ParamView, x: Features) -> npt.NDArray[np.float64]:
    """Logits ``(B,)`` of ``x`` under the parameters of ``view``."""
    dense = view.dense
    n = x.n
    embs = [
        np.stack([_pool(view, f, x) for f in g.fields], axis=1) for g in spec.groups
    ]  # each (n, F_g, D_g)
    n_dense = len(spec.dense)
    mean = _tensor(dense, "norm.mean", (n_dense,))
    var = _tensor(dense, "norm.var", (n_dense,))
    d = (x.dense - mean) / np.sqrt(var + _EPS)
    k = spec.inter_dim

    def vectors() -> F32:
        vs = []
        for g, e in enumerate(embs):
            if spec.groups[g].dim != k:
                w = _tensor(dense, f"proj.{g}.weight", (k, spec.groups[g].dim))
                vs.append(e @ w.T)
            else:
                vs.append(e)
        return np.concatenate(vs, axis=1)

    if spec.arch == "dlrm":
        v = vectors()
        parts = []
        if n_dense:
            z = _mlp(dense, "bottom", d)
            v = np.concatenate([z[:, None, :], v], axis=1)
            parts.append(z)
        iu = np.triu_indices(v.shape[1], k=1)
        dots = np.einsum("bik,bjk->bij", v, v)[:, iu[0], iu[1]]
        parts.append(dots)
        out = _mlp(dense, "top", np.concatenate(parts, axis=1).astype(np.float32))
        return out[:, 0].astype(np.float64)
    e = np.concatenate([t.reshape(n, -1) for t in embs], axis=1)
    h = _linear(dense, "first", e)
    wide = _linear(dense, "wide", e)
    if n_dense:
        h = h + _linear(dense, "first_dense", d, bias=False)
        wide = wide + _linear(dense, "wide_dense", d, bias=False)
    logit = wide[:, 0].astype(np.float64)
    if any(k_.startswith("deep.") for k_ in dense):
        logit += _mlp(dense, "deep", np.maximum(h, 0.0))[:, 0]
    else:
        logit += h[:, 0]
    if spec.arch == "deepfm":
        v = vectors().astype(np.float64)
        s = v.sum(axis=1)
        logit += 0.5 * ((s * s).sum(axis=1) - (v * v).sum(axis=(1, 2)))
    return logit


def predict(spec: ModelSpec, logit: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The click probability served for ``logit``: ``sigmoid``, or ``b / (1 - b)`` under FNC."""
    b: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logit))
    if spec.fnc:
        p: npt.NDArray[np.float64] = np.minimum(b / np.maximum(1.0 - b, 1e-6), 1.0 - 1e-6)
        return p
    return b
