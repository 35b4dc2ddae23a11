"""The records of the ``featurize`` package: what it reads (:class:`FeatureSpec`) and what
it returns (:class:`Features`, :class:`Samples`, :class:`BadRecord`).

A batch of ``n`` records with a single-valued field ``user_id`` and a multi-valued field
``category`` (sample 0 has two categories, sample 1 none, sample 2 one)::

    sparse["user_id"]  = (ids [h(u-3), h(u-7), h(u-3)],  offsets [0, 1, 2, 3])
    sparse["category"] = (ids [h(c-1), h(c-7), h(c-1)],  offsets [0, 2, 2, 3])
    dense              = float32 (n, len(spec.dense))    # a missing value is 0
    h(v) = featurize.hashing.stable_hash(field, v); raw-id fields keep their int64 value

``ids`` of sample ``i`` are ``ids[offsets[i]:offsets[i + 1]]`` (Arrow's list layout);
:meth:`Features.segment` gives the sample of every id instead (torchrec's jagged layout).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from fluxrec.config import Config

__all__ = ["BadRecord", "FeatureSpec", "Features", "Samples", "SparseSpec"]

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SparseSpec:
    """A categorical field: values are strings, hashed (default) or decimal int64 ids (raw)."""

    name: str
    raw: bool = False


@dataclass(frozen=True)
class FeatureSpec:
    """The features a model reads (config ``features:``) and the label it learns
    (``trainer.label``)."""

    sparse: tuple[SparseSpec, ...]
    dense: tuple[str, ...]
    label: str = "click"

    @classmethod
    def of(cls, sparse: Sequence[Any], dense: Sequence[str], label: str = "click") -> FeatureSpec:
        """From names, or objects with ``name`` and ``raw`` (a trainer's ``SparseField``)."""
        fields = tuple(
            SparseSpec(f) if isinstance(f, str) else SparseSpec(f.name, bool(f.raw)) for f in sparse
        )
        return cls(fields, tuple(dense), label)

    @classmethod
    def from_config(cls, cfg: Config) -> FeatureSpec:
        """``cfg.features`` and ``cfg.trainer.label``."""
        return cls(
            tuple(SparseSpec(f.name, f.ids == "raw") for f in cfg.features.sparse),
            tuple(f.name for f in cfg.features.dense),
            cfg.trainer.label,
        )


@dataclass(frozen=True)
class Features:
    """The featurized inputs of ``n`` records (layout in the module doc)."""

    n: int
    sparse: dict[str, tuple[I64, I64]]  # name -> (ids, offsets (n + 1,))
    dense: F32  # (n, len(spec.dense))
    one_each: frozenset[str] = frozenset()  # fields known to hold one id per sample

    def segment(self, name: str) -> I64 | None:
        """The sample of every id of ``name``; None when each sample has exactly one id."""
        if name in self.one_each:
            return None
        ids, offsets = self.sparse[name]
        if ids.shape[0] == self.n and offsets[-1] == self.n and (np.diff(offsets) == 1).all():
            return None
        return np.repeat(np.arange(self.n, dtype=np.int64), np.diff(offsets))


@dataclass(frozen=True)
class BadRecord:
    """A value that is not a v1 Sample: its index in the input, a reason, the detail.

    Reasons: ``malformed_json`` (not one JSON object), ``bad_type`` (a field of the wrong
    JSON type), ``missing_field``, ``unsupported_version`` (``v`` is not 1), ``bad_value``
    (a label not 0/1, an unknown strategy, a null in a list, a dense value that is not a
    finite float32, a raw id that is not a decimal int64).
    """

    index: int
    reason: str
    detail: str


@dataclass(frozen=True)
class Samples:
    """A micro-batch of Sample records (``sample_join/CONTRACTS.md`` section 2), trained
    samples only, in input order; ``index`` maps each back to its input value.

    ``skipped`` counts corrections of another label (left out on purpose); ``bad`` lists
    the values that are not v1 Samples (left out and counted); ``id_xor`` is the XOR of
    ``stable_hash("sample_id", id)`` over the trained samples (the trainer's
    exactly-once checksum).
    """

    features: Features
    label: F32  # (n,) 0 or 1
    event_ms: I64  # (n,)
    fake: npt.NDArray[np.bool_]  # (n,) strategy == "fake_negative"
    index: I64  # (n,) position of each sample in the input
    id_xor: int = 0
    skipped: int = 0
    bad: tuple[BadRecord, ...] = field(default=())

    def __len__(self) -> int:
        return self.features.n
