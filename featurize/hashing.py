"""Stable hashing of string feature values to signed int64 ids.

Python's ``hash()`` is salted per process; feature ids must be identical across
processes, restarts, releases and languages, so they are the first 8 bytes
(little-endian, signed) of ``blake2b(field + "\\x1f" + value, digest_size=8)``::

    stable_hash("item_id", "i-9")  ->  a fixed int64, the same in every process

The field name is part of the input, so ``user_id="7"`` and ``item_id="7"`` differ.
:data:`HASHING` names this function; a change to it would be a new name (and every
deployed table would be re-keyed), so the trainer and every server agree by construction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

__all__ = ["HASHING", "stable_hash", "stable_hash_many"]

HASHING = "blake2b64-field-v1"
"""The name of the id function below (the same in every release so far)."""


def stable_hash(field: str, value: str) -> int:
    """The int64 id of one string value of ``field``."""
    digest = hashlib.blake2b(f"{field}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def stable_hash_many(field: str, values: Iterable[str]) -> npt.NDArray[np.int64]:
    """The int64 ids of many values of ``field`` (same as :func:`stable_hash` each)."""
    return np.fromiter((stable_hash(field, v) for v in values), dtype=np.int64)
