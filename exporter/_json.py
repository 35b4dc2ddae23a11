"""Strict JSON for everything a reader parses: object headers, manifests, ``LATEST.json``.

FORMAT.md section 5 ("JSON") is the rule; in short, a document is refused when it

- is not valid UTF-8, or starts with a byte order mark;
- is not RFC 8259 JSON (``NaN``, ``Infinity``, comments, trailing data, control
  characters inside strings);
- repeats a key inside one object;
- nests arrays/objects deeper than :data:`MAX_DEPTH` (``{}`` has depth 1);
- has a number token longer than :data:`MAX_NUMBER_CHARS` characters, or an integer
  outside the signed 64-bit range.

Example: ``loads(b'{"a":1,"a":2}', BadManifest, "manifest")`` raises
``BadManifest("manifest: key 'a' repeated")``.
"""

from __future__ import annotations

import json
from typing import Any

from exporter.errors import FormatError

__all__ = ["MAX_DEPTH", "MAX_NUMBER_CHARS", "loads"]

MAX_DEPTH = 16
MAX_NUMBER_CHARS = 64
_I64 = (-(1 << 63), (1 << 63) - 1)


class _Refused(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"key {k!r} repeated")
        out[k] = v
    return out


def _int(token: str) -> int:
    if len(token) > MAX_NUMBER_CHARS:
        raise _Refused(f"number of {len(token)} characters > {MAX_NUMBER_CHARS}")
    v = int(token)
    if not _I64[0] <= v <= _I64[1]:
        raise _Refused(f"integer {token} outside the signed 64-bit range")
    return v


def _float(token: str) -> float:
    if len(token) > MAX_NUMBER_CHARS:
        raise _Refused(f"number of {len(token)} characters > {MAX_NUMBER_CHARS}")
    return float(token)


def _constant(token: str) -> Any:
    raise _Refused(f"{token} is not JSON")


def _depth(doc: Any) -> int:
    """Nesting depth of containers, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        stack.extend((c, d + 1) for c in children)
    return deepest


def loads(data: bytes | memoryview, error: type[FormatError], what: str) -> Any:
    """Parse ``data`` strictly (rules in the module docstring); raises ``error``."""
    try:
        text = bytes(data).decode("utf-8", errors="strict")
    except UnicodeDecodeError as e:
        raise error(f"{what} is not UTF-8: {e}") from None
    if text.startswith("\ufeff"):
        raise error(f"{what} starts with a byte order mark")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except RecursionError:
        raise error(f"{what} nests deeper than {MAX_DEPTH}") from None
    except ValueError as e:  # JSONDecodeError and _Refused
        raise error(f"{what} is not strict JSON: {e}") from None
    if _depth(doc) > MAX_DEPTH:
        raise error(f"{what} nests deeper than {MAX_DEPTH}")
    return doc
