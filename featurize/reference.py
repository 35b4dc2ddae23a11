"""The per-record reference featurizer: the contract in plain Python, one record at a time.

It is what :class:`featurize.core.Featurizer` must equal (tests compare them on generated
records, ``tests/test_featurize.py``), and the server's fallback for naming the field
at fault in a request Arrow refused. Slow on purpose: nothing here is on a hot path.

Rules (``sample_join/CONTRACTS.md`` section 2 for samples, ``serving/server.py`` for
requests):

- a Sample needs ``v == 1`` (an integer), ``sample_id`` (string), ``event_time_ms``
  (int64), ``labels[label]`` (0 or 1), ``strategy`` (``window`` | ``fake_negative``),
  ``features`` (an object); ``correction`` is optional (false);
- a valid correction (``correction: true``) whose label is not 1 is skipped, not trained;
- ``features.sparse[name]``: a list of strings (absent or null: empty); raw-id fields
  hold decimal int64 strings (``-?[0-9]+``, not the tables' two sentinels);
- ``features.dense[name]``: a number (not a boolean) that is a finite float32 (absent or
  null: 0);
- unknown keys are ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurize.errors import BadInput
from featurize.hashing import stable_hash
from featurize.types import FeatureSpec, SparseSpec

__all__ = ["RefSample", "check_request", "features", "request_instances", "sample", "samples"]

_RESERVED = (-(2**63), -(2**63) + 1)
_RAW = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class RefSample:
    """One featurized Sample: ids per field, dense values, label, time, fake, sample id."""

    ids: dict[str, list[int]]
    dense: list[float]
    label: int
    event_ms: int
    fake: bool
    sample_id: str


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _id(f: SparseSpec, v: Any, where: str) -> int:
    if not isinstance(v, str):
        raise BadInput(f"{where}: value {v!r} is not a string", where)
    if not f.raw:
        return stable_hash(f.name, v)
    if not _RAW.fullmatch(v):
        raise BadInput(f"{where}: {v!r} is not a decimal int64 id (ids: raw)", where)
    h = int(v)
    if not -(2**63) <= h < 2**63 or h in _RESERVED:
        raise BadInput(f"{where}: raw id {v} is out of range", where)
    return h


def features(spec: FeatureSpec, feats: Any, where: str) -> tuple[dict[str, list[int]], list[float]]:
    """Ids per sparse field and the dense values of one features object ``feats``."""
    if not isinstance(feats, Mapping):
        raise BadInput(f"{where}: expected a features object", where)
    sp, dn = feats.get("sparse"), feats.get("dense")
    sp = {} if sp is None else sp
    dn = {} if dn is None else dn
    if not isinstance(sp, Mapping):
        raise BadInput(f"{where}.sparse: must be an object", f"{where}.sparse")
    if not isinstance(dn, Mapping):
        raise BadInput(f"{where}.dense: must be an object", f"{where}.dense")
    ids: dict[str, list[int]] = {}
    for f in spec.sparse:
        at = f"{where}.sparse.{f.name}"
        vals = sp.get(f.name)
        vals = [] if vals is None else vals
        if not isinstance(vals, list):
            raise BadInput(f"{at}: must be a list of strings", at)
        ids[f.name] = [_id(f, v, at) for v in vals]
    dense: list[float] = []
    for name in spec.dense:
        at = f"{where}.dense.{name}"
        x = dn.get(name)
        x = 0.0 if x is None else x
        if isinstance(x, bool) or not isinstance(x, int | float):
            raise BadInput(f"{at}: {x!r} is not a number", at)
        try:
            fx = float(x)
        except OverflowError:
            fx = math.inf
        with np.errstate(over="ignore", invalid="ignore"):
            finite = bool(np.isfinite(np.float32(fx)))
        if not finite:
            raise BadInput(f"{at}: {x!r} is not a finite float32 number", at)
        dense.append(fx)
    return ids, dense


def sample(spec: FeatureSpec, s: Any) -> RefSample | None:
    """One decoded Sample record; None for a correction of another label. Raises
    :class:`BadInput` naming the field at fault."""
    if not isinstance(s, Mapping):
        raise BadInput("the value is not a JSON object", "")
    for key in ("v", "sample_id", "event_time_ms", "strategy", "features"):
        if s.get(key) is None:
            raise BadInput(f"{key}: absent", key)
    if not _is_int(s["v"]):
        raise BadInput(f"v {s['v']!r}: not an integer", "v")
    if s["v"] != 1:
        raise BadInput(f"v {s['v']!r}: this trainer reads version 1", "v")
    sid, t, strategy = s["sample_id"], s["event_time_ms"], s["strategy"]
    if not isinstance(sid, str):
        raise BadInput(f"sample_id {sid!r} is not a string", "sample_id")
    if not _is_int(t) or not -(2**63) <= t < 2**63:
        raise BadInput(f"event_time_ms {t!r}: need an int64", "event_time_ms")
    labels = s.get("labels")
    y = labels.get(spec.label) if isinstance(labels, Mapping) else None
    at = f"labels.{spec.label}"
    if y is None:
        raise BadInput(f"{at}: absent", at)
    if not _is_int(y) or y not in (0, 1):
        raise BadInput(f"{at} {y!r}: need 0 or 1", at)
    if not isinstance(strategy, str) or strategy not in ("window", "fake_negative"):
        raise BadInput(f"strategy {strategy!r}: use window or fake_negative", "strategy")
    correction = s.get("correction")
    if correction is not None and not isinstance(correction, bool):
        raise BadInput(f"correction {correction!r}: need true or false", "correction")
    ids, dense = features(spec, s["features"], "features")
    if correction and y != 1:
        return None
    return RefSample(ids, dense, y, t, strategy == "fake_negative", sid)


def request_instances(doc: Any) -> list[Any]:
    """The features objects of a decoded ``POST /score`` body (no checks)."""
    if not isinstance(doc, Mapping):
        return []
    if "features" in doc:
        return [doc["features"]]
    items = doc.get("instances", doc.get("impressions"))
    if not isinstance(items, list):
        return []
    if "impressions" in doc and "instances" not in doc:
        return [i.get("features") if isinstance(i, Mapping) else None for i in items]
    return items


def check_request(spec: FeatureSpec, doc: Any, max_instances: int = 10_000) -> dict[str, Any]:
    """Check a decoded ``POST /score`` body; returns it with only the known features
    (the same shape). Raises :class:`BadInput` naming the field at fault."""
    if not isinstance(doc, Mapping):
        raise BadInput("the body must be a JSON object (see GET / for the shapes)", "")
    keys = [k for k in ("impressions", "instances", "features") if doc.get(k) is not None]
    if len(keys) != 1:
        raise BadInput(
            "give exactly one of 'impressions' (a list of impression events), "
            "'instances' (a list of features objects) or 'features' (one features object)",
            "",
        )
    key = keys[0]
    if key == "features":
        return {"features": _known(spec, doc["features"], "features")}
    items = doc[key]
    if not isinstance(items, list):
        raise BadInput(f"'{key}' must be a list", key)
    if len(items) > max_instances:
        raise BadInput(f"{len(items)} {key} in one request: at most {max_instances}", key)
    if key == "instances":
        return {key: [_known(spec, x, f"instances[{i}]") for i, x in enumerate(items)]}
    out = []
    for i, imp in enumerate(items):
        if not isinstance(imp, Mapping):
            raise BadInput(f"impressions[{i}] is not an object", f"impressions[{i}]")
        if not isinstance(imp.get("features"), Mapping):
            raise BadInput(f"impressions[{i}] has no 'features' object", f"impressions[{i}]")
        out.append({"features": _known(spec, imp["features"], f"impressions[{i}].features")})
    return {key: out}


def _known(spec: FeatureSpec, feats: Any, where: str) -> dict[str, Any]:
    features(spec, feats, where)  # raises naming the field
    sp, dn = feats.get("sparse") or {}, feats.get("dense") or {}
    return {
        "sparse": {f.name: sp[f.name] for f in spec.sparse if sp.get(f.name) is not None},
        "dense": {n: dn[n] for n in spec.dense if dn.get(n) is not None},
    }


def samples(spec: FeatureSpec, records: Sequence[Any]) -> list[RefSample | BadInput | None]:
    """:func:`sample` of each record: the featurized sample, None (skipped) or the error."""
    out: list[RefSample | BadInput | None] = []
    for s in records:
        try:
            out.append(sample(spec, s))
        except BadInput as e:
            out.append(e)
    return out
