"""Structured fuzzing of the delta readers: ``python -m tests.fuzz_delta --cases N --seed S``.

Each case takes a seed object (the golden vectors and a few generated ones) and applies one
mutator, then decodes it with reader limits of ``--limit-mib`` (object and raw bytes):

=================  ==============================================================
``truncate``       cut the object anywhere
``flip``           flip 1-8 bits anywhere
``reseal``         overwrite 1-4 bytes after the prefix, then a valid sha256 trailer
``header``         change one header field (type, value, huge numbers), resealed
``lengths``        huge header length, body length, raw_bytes, LZ4 block sizes and
                   content size (resealed, so the size checks are what stops them)
``lz4``            recompress the same Arrow bytes as another valid frame (block size,
                   linked, checksums, no content size, stored blocks, two frames)
``arrow``          edit the decompressed Arrow stream (bytes, int32/int64 fields set to
                   0, -1, 2^31-1, 2^62, ...), recompress and reseal
``bomb``           memory bombs: a frame with no content size hiding 1 GiB of zeros, a
                   tiny claimed raw size, Arrow body compression claiming 4 GiB
=================  ==============================================================

and every ``--consumer-every`` case also goes through a real ``file://`` store and a
``DeltaConsumer`` (the object replaces version 1's table, its manifest re-signed to match,
or a symlink to /dev/zero or a FIFO takes its place).

A case passes when the reader returns a decoding or raises an ``ExporterError``; anything
else is counted as untyped. The last line printed is one JSON object: cases, outcomes by
class, untyped (with examples), the slowest case, and the peak RSS above the baseline
(VmHWM after the seeds are built) against the limit, and as a control the peak while a
valid object of half the limit decodes. Exit 1 if any case was untyped or the
peak exceeded 2x the limit. ``tests/test_export_fuzz.py`` runs 3000 cases.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lz4.frame
import numpy as np
import pyarrow as pa

from exporter.errors import ExporterError
from exporter.exporter import Exporter
from exporter.format import Limits, decode_object, encode_dense, encode_table
from exporter.manifest import (
    LATEST_KEY,
    latest_bytes,
    manifest_key,
    parse_manifest,
    sign_manifest,
    table_key,
)
from exporter.sdk import DeltaConsumer
from exporter.settings import ExporterConfig
from exporter.store import FileStore
from exporter.testdata import make_golden
from tests.test_export_chain import Trainer

GOLDEN = Path(make_golden.__file__).parent
_PREFIX = struct.Struct("<8sHHI")
KEY = b"fuzz-key"


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def split(data: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """``(header, header bytes, body)`` of a well-formed object."""
    hlen = _PREFIX.unpack_from(data, 0)[3]
    head = data[16 : 16 + hlen]
    return json.loads(head), head, data[16 + hlen : -40]


def rebuild(header: dict[str, Any] | bytes, body: bytes) -> bytes:
    return make_golden.frame(header, body)


def seeds() -> list[bytes]:
    out = [p.read_bytes() for p in sorted(GOLDEN.glob("*.fxd"))]
    rng = np.random.default_rng(0)
    for enc in ("f32", "f16", "i8"):
        ids = rng.choice(1 << 40, 300, replace=False)
        vals = rng.standard_normal((300, 8)).astype(np.float32)
        out.append(encode_table("t", 8, ids, vals, np.arange(7), enc)[0])
    out.append(encode_dense({"a": np.ones((3, 5), np.float32), "b": np.zeros(0, np.float32)})[0])
    return out


# ----------------------------------------------------------------------------- mutators


def m_truncate(r: random.Random, d: bytes) -> bytes:
    return d[: r.randrange(len(d))]


def m_flip(r: random.Random, d: bytes) -> bytes:
    b = bytearray(d)
    for _ in range(r.randint(1, 8)):
        b[r.randrange(len(b))] ^= 1 << r.randrange(8)
    return bytes(b)


def m_reseal(r: random.Random, d: bytes) -> bytes:
    b = bytearray(d[:-32])
    for _ in range(r.randint(1, 4)):
        b[r.randrange(16, len(b))] = r.randrange(256)
    return make_golden.seal(bytes(b))


_HUGE = [0, -1, 1 << 31, (1 << 32) - 1, 1 << 40, (1 << 63) - 1, 1 << 64, 10**30]


def m_header(r: random.Random, d: bytes) -> bytes:
    h, _head, body = split(d)
    key = r.choice([*h, "kind", "dim", "x"])
    old = h.get(key, 0)
    bumped = old + 1 if isinstance(old, int) else old + "x"
    h[key] = r.choice([None, True, 1.5, "x", [], {}, *_HUGE, bumped])
    try:
        return rebuild(h, body)
    except (TypeError, ValueError, OverflowError):
        return d


def m_lengths(r: random.Random, d: bytes) -> bytes:
    h, head, body = split(d)
    which = r.randrange(5)
    if which == 0:  # header length
        b = bytearray(d[:-32])
        b[12:16] = struct.pack("<I", r.choice([0, 1, 65537, (1 << 32) - 1, len(head) + 1]))
        return make_golden.seal(bytes(b))
    if which == 1:  # body length u64
        b = bytearray(d[:-32])
        b[-8:] = struct.pack("<Q", r.choice([0, (1 << 64) - 1, 1 << 40, len(body) - 1]))
        return make_golden.seal(bytes(b))
    if which == 2:  # raw_bytes
        h["raw_bytes"] = r.choice([0, 1, 1 << 31, 1 << 40, (1 << 63) - 1, h["raw_bytes"] * 200])
        return rebuild(h, body)
    fb = bytearray(body)
    if which == 3 and len(fb) > 19:  # the first block's size word
        fb[15:19] = struct.pack("<I", r.choice([0x7FFFFFFF, 0xFFFFFFFF, 4 << 20, (4 << 20) + 1]))
    elif len(fb) > 14:  # content size
        fb[6:14] = struct.pack("<Q", r.choice([0, (1 << 64) - 1, 1 << 40, h["raw_bytes"] + 1]))
    return rebuild(h, bytes(fb))


def m_lz4(r: random.Random, d: bytes) -> bytes:
    h, _head, body = split(d)
    raw = lz4.frame.decompress(body)
    choice = r.randrange(4)
    if choice == 0:
        new = lz4.frame.compress(
            raw,
            block_size=r.choice([lz4.frame.BLOCKSIZE_MAX64KB, lz4.frame.BLOCKSIZE_MAX4MB]),
            block_linked=r.random() < 0.5,
            block_checksum=r.random() < 0.5,
            content_checksum=r.random() < 0.5,
            store_size=r.random() < 0.8,
        )
    elif choice == 1:
        new = make_golden.stored_frame(raw)
    elif choice == 2:
        new = lz4.frame.compress(raw) + lz4.frame.compress(raw[: r.randrange(1, 64)])
    else:
        new = lz4.frame.compress(raw, store_size=False)
    return rebuild(h, bytes(new))


def m_arrow(r: random.Random, d: bytes) -> bytes:
    h, _head, body = split(d)
    raw = bytearray(lz4.frame.decompress(body))
    for _ in range(r.randint(1, 3)):
        width = r.choice([1, 4, 8])
        at = r.randrange(0, max(1, len(raw) - width)) & ~(width - 1)
        value = r.choice([0, -1, 1, 7, 255, (1 << 31) - 1, 1 << 62, r.randrange(1 << 16)])
        fmt = {1: "<B", 4: "<i", 8: "<q"}[width]
        with contextlib.suppress(struct.error):
            struct.pack_into(fmt, raw, at, value if width > 1 else value & 0xFF)
    h["raw_bytes"] = len(raw)
    return rebuild(h, bytes(lz4.frame.compress(bytes(raw), store_size=True)))


_BOMBS: list[bytes] = []


def _bombs() -> list[bytes]:
    if not _BOMBS:
        zeros = lz4.frame.compress(b"\0" * (64 << 20), store_size=False)  # ~250 KB
        hdr = {"kind": "table", "name": "t", "dim": 4, "encoding": "f32", "rows": 1}
        _BOMBS.append(rebuild(hdr | {"tombstones": 0, "raw_bytes": 1000}, zeros))
        sized = lz4.frame.compress(b"\0" * (64 << 20), store_size=True)
        _BOMBS.append(rebuild(hdr | {"tombstones": 0, "raw_bytes": 1000}, sized))
        sch = make_golden.table_schema(4, "f32")
        batch = make_golden.f32_batch(list(range(1 << 16)), np.zeros((1 << 16, 4)))
        comp = make_golden.ipc(sch, [batch], compression="lz4")
        # claim 4 GiB in every compressed buffer's uncompressed-length prefix
        for n in ((1 << 16) * 8, (1 << 16) * 16):
            comp = comp.replace(struct.pack("<q", n), struct.pack("<q", 1 << 32))
        _BOMBS.append(
            rebuild(hdr | {"rows": 1 << 16, "tombstones": 0, "raw_bytes": len(comp)}, lz4f(comp))
        )
        _BOMBS.append(rebuild(hdr | {"tombstones": 0, "raw_bytes": 1 << 40}, sized))
    return _BOMBS


def lz4f(raw: bytes) -> bytes:
    return bytes(lz4.frame.compress(raw, store_size=True))


def m_bomb(r: random.Random, d: bytes) -> bytes:
    return r.choice(_bombs())


MUTATORS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "truncate": m_truncate,
    "flip": m_flip,
    "reseal": m_reseal,
    "header": m_header,
    "lengths": m_lengths,
    "lz4": m_lz4,
    "arrow": m_arrow,
    "bomb": m_bomb,
}


# ----------------------------------------------------------------------------- consumer


class _ConsumerRig:
    """A store with versions 0 (snapshot) and 1; each case replaces version 1's table."""

    def __init__(self, root: Path) -> None:
        self.store = FileStore(root)
        self.store.ensure_container()
        t, ex = Trainer(3), Exporter(self.store, ExporterConfig(), hmac_key=KEY)
        t.publish(ex)
        t.publish(ex)
        self.manifest = parse_manifest(self.store.get(manifest_key(1)), KEY, 1)
        self.key = table_key(1, "item_id")
        self.path = root / self.key

    def run(self, r: random.Random, data: bytes, limits: Limits) -> str:
        """Sync a fresh consumer at version 0 over the mutated version 1; its outcome."""
        c = DeltaConsumer(self.store, hmac_key=KEY, limits=limits)
        doc = dict(self.manifest)
        objs = [dict(o) for o in doc["objects"]]
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        self.store.delete(manifest_key(1))  # hidden while version 0 is applied
        self.store.put(LATEST_KEY, latest_bytes(0, 0, KEY))
        if c.sync() != 1:
            raise RuntimeError(f"the rig's version 0 did not apply: {c.stats.last_error}")
        self.store.put(LATEST_KEY, latest_bytes(1, 0, KEY))
        special = r.random()
        if special < 0.05:
            os.symlink("/dev/zero", self.path)
        elif special < 0.1:
            os.mkfifo(self.path)
        else:
            self.path.write_bytes(data)
            objs[0] |= {"bytes": len(data), "sha256": hashlib.sha256(data[:-32]).hexdigest()}
        self.store.put(manifest_key(1), sign_manifest(doc | {"objects": objs}, KEY))
        c.sync()
        if c.version == 1:
            return "applied"
        reasons = list(c.stats.reasons)
        from exporter import errors

        if not reasons or any(not hasattr(errors, n) for n in reasons):
            raise RuntimeError(f"consumer outcome not typed: {c.stats.last_error}")
        return f"sync:{reasons[-1]}"


# ----------------------------------------------------------------------------- main


def run(cases: int, seed: int, limit_mib: int, consumer_every: int) -> dict[str, Any]:
    logging.getLogger("exporter").setLevel(logging.CRITICAL)  # rejections are the point
    limits = Limits(max_object_bytes=limit_mib << 20, max_raw_bytes=limit_mib << 20)
    objects = seeds()
    _bombs()
    r = random.Random(seed)
    outcomes: Counter[str] = Counter()
    by_mutator: Counter[str] = Counter()
    untyped: list[str] = []
    slowest = (0.0, "")
    with tempfile.TemporaryDirectory() as tmp:
        rig = _ConsumerRig(Path(tmp) / "store")
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := now
        baseline = _rss("VmRSS")
        for i in range(cases):
            name = r.choice(list(MUTATORS))
            data = MUTATORS[name](r, r.choice(objects))
            by_mutator[name] += 1
            start = time.perf_counter()
            try:
                decode_object(data, None, limits)
                outcome = "decoded"
            except ExporterError as e:
                outcome = type(e).__name__
            except Exception as e:  # the bug this harness looks for
                outcome = "UNTYPED"
                untyped.append(f"case {i} ({name}): {type(e).__name__}: {e}"[:300])
            if consumer_every and i % consumer_every == 0:
                try:
                    outcomes[rig.run(r, data, limits)] += 1
                except Exception as e:
                    untyped.append(f"case {i} ({name}) via the consumer: {e}"[:300])
            took = time.perf_counter() - start
            if took > slowest[0]:
                slowest = (took, name)
            outcomes[outcome] += 1
        peak = max(0, _rss("VmHWM") - baseline)
        # control: a valid object of half the limit shows what the measurement sees
        n = (limit_mib << 20) // 2 // (8 + 4 * 16)
        rng = np.random.default_rng(seed)
        big = encode_table("c", 16, np.arange(n), rng.standard_normal((n, 16), np.float32))[0]
        Path("/proc/self/clear_refs").write_text("5")
        before = _rss("VmRSS")
        decode_object(big, None, limits)
        control = max(0, _rss("VmHWM") - before)
    return {
        "cases": cases,
        "seed": seed,
        "limit_mib": limit_mib,
        "mutators": dict(sorted(by_mutator.items())),
        "outcomes": dict(sorted(outcomes.items())),
        "untyped": len(untyped),
        "untyped_examples": untyped[:5],
        "slowest_case_s": round(slowest[0], 3),
        "slowest_mutator": slowest[1],
        "peak_rss_mib": round(peak / 2**20, 1),
        "peak_rss_over_limit": round(peak / (limit_mib << 20), 3),
        "control_object_mib": round(len(big) / 2**20, 1),
        "control_peak_rss_mib": round(control / 2**20, 1),
        "pyarrow": pa.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--limit-mib", type=int, default=64, help="reader limits (object and raw)")
    p.add_argument("--consumer-every", type=int, default=10, help="0: objects only")
    ns = p.parse_args(argv)
    res = run(ns.cases, ns.seed, ns.limit_mib, ns.consumer_every)
    print(json.dumps(res))
    return 1 if res["untyped"] or res["peak_rss_over_limit"] > 2 else 0


if __name__ == "__main__":
    sys.exit(main())
