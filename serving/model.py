"""The trainer's CTR models (``trainer/model.py``) re-implemented in numpy, for serving.

A server holds the parameters of one version (the SDK's tables, one per sparse field, and
the dense tensors by name) and computes the click probability the trainer would serve
for the same version (``Trainer.score``), without torch. The layout follows the trainer:

* Sparse fields are grouped as the trainer stores them: the hashed fields of one dim form
  one group, in the order their dim first appears in ``features.sparse``; each raw-id
  field (``ids: raw``) is a group of its own, after those. Field ids are
  ``trainer.hashing.stable_hash(field, value)`` (or the decimal value for raw ids).
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
    p = score(spec, view, [{"sparse": {"user_id": ["u-3"], "item_id": ["i-9"]},
                            "dense": {"price": 12.5}}])      # array([0.031...])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from serving.errors import BadRequest, ModelMismatch
from trainer.hashing import stable_hash

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = [
    "FieldSpec",
    "GroupSpec",
    "Inputs",
    "ModelSpec",
    "ParamView",
    "featurize",
    "forward",
    "predict",
    "score",
]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
ARCHS = ("deepfm", "wide_deep", "dlrm")
_EPS = 1e-5  # DenseNorm.eps
_RESERVED = (-(2**63), -(2**63) + 1)  # the trainer's table sentinels: never a raw id


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

    def ids(self, values: Sequence[Any]) -> list[int]:
        out = []
        for v in values:
            if not isinstance(v, str):
                raise BadRequest(f"features.sparse.{self.name}: value {v!r} is not a string")
            if self.raw:
                try:
                    h = int(v)
                except ValueError:
                    raise BadRequest(
                        f"features.sparse.{self.name}: {v!r} is not a decimal int64 (ids: raw)"
                    ) from None
                if not -(2**63) <= h < 2**63 or h in _RESERVED:
                    raise BadRequest(f"features.sparse.{self.name}: raw id {v} is out of range")
                out.append(h)
            else:
                out.append(stable_hash(self.name, v))
        return out


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

    @property
    def fields(self) -> list[FieldSpec]:
        return [f for g in self.groups for f in g.fields]

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
        return cls(arch, groups, tuple(dense), inter_dim, fnc)

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


@dataclass(frozen=True)
class Inputs:
    """A featurized request: per field ``(ids, sample of each id)``, and dense ``(B, N)``."""

    n: int
    sparse: dict[str, tuple[I64, I64]]
    dense: F32


def featurize(spec: ModelSpec, instances: Sequence[Any]) -> Inputs:
    """Turn ``instances`` (each ``{"sparse": {name: [str, ...]}, "dense": {name: num}}``)
    into :class:`Inputs`; raises :class:`BadRequest` naming the first bad value."""
    fields = spec.fields
    ids: dict[str, list[int]] = {f.name: [] for f in fields}
    seg: dict[str, list[int]] = {f.name: [] for f in fields}
    dense = np.zeros((len(instances), len(spec.dense)), dtype=np.float32)
    for i, inst in enumerate(instances):
        if not isinstance(inst, Mapping):
            raise BadRequest(f"instance {i}: expected a features object, got {type(inst).__name__}")
        sp = inst.get("sparse", {})
        dn = inst.get("dense", {})
        if not isinstance(sp, Mapping) or not isinstance(dn, Mapping):
            raise BadRequest(f"instance {i}: 'sparse' and 'dense' must be objects")
        for f in fields:
            vals = sp.get(f.name, [])
            if not isinstance(vals, list):
                raise BadRequest(f"instance {i}: features.sparse.{f.name} must be a list")
            got = f.ids(vals)
            ids[f.name] += got
            seg[f.name] += [i] * len(got)
        for j, name in enumerate(spec.dense):
            x = dn.get(name, 0.0)
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                raise BadRequest(f"instance {i}: features.dense.{name} {x!r} is not a number")
            dense[i, j] = x
    return Inputs(
        len(instances),
        {
            f.name: (np.array(ids[f.name], dtype=np.int64), np.array(seg[f.name], dtype=np.int64))
            for f in fields
        },
        dense,
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


def _pool(view: ParamView, f: FieldSpec, ids: I64, seg: I64, n: int) -> F32:
    """Mean of the rows of each sample's values: ``(n, dim)``."""
    if ids.size == 0:
        return np.zeros((n, f.dim), dtype=np.float32)
    rows = np.asarray(view.lookup(f.name, ids), dtype=np.float32)
    if rows.shape != (ids.size, f.dim):
        raise ModelMismatch(
            f"table {f.name} has rows of shape {rows.shape[1:]}, dim {f.dim} expected"
        )
    if ids.size == n and np.array_equal(seg, np.arange(n)):
        return rows  # exactly one value per sample
    out = np.zeros((n, f.dim), dtype=np.float32)
    np.add.at(out, seg, rows)
    counts = np.bincount(seg, minlength=n).astype(np.float32)
    out /= np.maximum(counts, 1.0)[:, None]
    return out


def forward(spec: ModelSpec, view: ParamView, x: Inputs) -> npt.NDArray[np.float64]:
    """Logits ``(B,)`` of ``x`` under the parameters of ``view``."""
    dense = view.dense
    n = x.n
    embs = [
        np.stack([_pool(view, f, *x.sparse[f.name], n) for f in g.fields], axis=1)
        for g in spec.groups
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


def score(spec: ModelSpec, view: ParamView, instances: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Served click probabilities of ``instances`` (module doc)."""
    x = featurize(spec, instances)
    if x.n == 0:
        return np.zeros(0, dtype=np.float64)
    return predict(spec, forward(spec, view, x))
