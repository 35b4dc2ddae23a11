"""One LZ4 frame (LZ4 Frame Format 1.6): writing it as independent 4 MiB blocks, and
checking a frame's structure before anything is decompressed (:func:`check_frame`).

The frame a writer emits, piece by piece (``emit`` receives each piece in order)::

    04 22 4D 18  FLG BD  content size u64 LE  HC      frame header (15 bytes, from lz4.frame)
    u32 LE size | data                                block 1: compressed ...
    u32 LE (size | 0x80000000) | data                 block 2: ... or stored, when LZ4
    ...                                               would not make it smaller
    00 00 00 00                                       end mark (no content checksum)

Blocks are independent (FLG bit 5), so each one is compressed on its own with
``lz4.block`` (the same LZ4 algorithm as ``lz4.frame`` at level 0) on a worker thread,
one block ahead of the caller, who hashes and writes. A stored block is a view of the
input: incompressible rows (random-looking fp32) are never copied. Any LZ4 frame reader
(``lz4.frame.decompress``, ``lz4 -d``, Arrow's ``CompressedInputStream``) reads the result.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import lz4.block
import lz4.frame

from exporter.errors import BadBody, BadHeader

__all__ = ["BLOCK_BYTES", "check_frame", "write_frame"]

BLOCK_BYTES = 4 << 20  # LZ4 frame block maximum size id 7
_STORED = 0x80000000
_U32 = struct.Struct("<I")
_THREADED_MIN = 2 * BLOCK_BYTES  # below this a worker thread does not pay
_AHEAD = 2  # blocks compressed ahead of the writer


def _header(raw_size: int) -> bytes:
    comp = lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX4MB,
        block_linked=False,
        compression_level=0,
        content_checksum=False,
    )
    return bytes(comp.begin(source_size=raw_size))


def _blocks(pieces: Sequence[Any]) -> Iterator[Any]:
    """Cut ``pieces`` (bytes-like) into BLOCK_BYTES blocks; views where a block lies inside
    one piece, a joined copy (at most one block) where it spans pieces."""
    pending: list[memoryview] = []
    have = 0
    for piece in pieces:
        view = memoryview(piece).cast("B")
        while len(view):
            if not pending and len(view) >= BLOCK_BYTES:
                yield view[:BLOCK_BYTES]
                view = view[BLOCK_BYTES:]
                continue
            take = min(BLOCK_BYTES - have, len(view))
            pending.append(view[:take])
            have += take
            view = view[take:]
            if have == BLOCK_BYTES:
                yield b"".join(pending)
                pending, have = [], 0
    if pending:
        yield b"".join(pending)


def _compress(block: Any) -> bytes:
    return bytes(lz4.block.compress(block, store_size=False))


def _emit_block(block: Any, packed: bytes, emit: Callable[[Any], object]) -> None:
    if len(packed) < len(block):
        emit(_U32.pack(len(packed)))
        emit(packed)
    else:  # LZ4 did not help: store the block as it is
        emit(_U32.pack(len(block) | _STORED))
        emit(block)


def write_frame(pieces: Sequence[Any], raw_size: int, emit: Callable[[Any], object]) -> None:
    """Emit one LZ4 frame of the concatenation of ``pieces`` (``raw_size`` bytes in all)."""
    emit(_header(raw_size))
    if raw_size < _THREADED_MIN:
        for block in _blocks(pieces):
            _emit_block(block, _compress(block), emit)
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="lz4") as pool:
            ahead: deque[tuple[Any, Future[bytes]]] = deque()
            for block in _blocks(pieces):
                ahead.append((block, pool.submit(_compress, block)))
                if len(ahead) > _AHEAD:
                    block0, fut = ahead.popleft()
                    _emit_block(block0, fut.result(), emit)
            while ahead:
                block0, fut = ahead.popleft()
                _emit_block(block0, fut.result(), emit)
    emit(b"\0\0\0\0")


# ----------------------------------------------------------------------------- reading

_FRAME_MAGIC = 0x184D2204
_BLOCK_MAX = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}
_DESCRIPTOR = struct.Struct("<IBBQ")  # magic, FLG, BD, content size (then HC)


def check_frame(body: memoryview, raw: int) -> None:  # noqa: PLR0912
    """Check the structure of the LZ4 frame ``body`` (FORMAT.md 2.2) without decompressing:
    one frame, version 01, no dictionary, reserved bits 0, a content size equal to ``raw``,
    every block size within the block maximum, at most ``max(1, ceil(raw / block max))``
    blocks, the end mark (and content checksum, if flagged) ending ``body`` exactly.
    The header checksum and block/content checksums are verified while decompressing.
    Raises :class:`~exporter.errors.BadBody` (``BadHeader`` for a content size that is not
    ``raw``)."""
    n = len(body)
    if n < _DESCRIPTOR.size + 1:
        raise BadBody(f"LZ4 frame of {n} bytes is shorter than a frame header with content size")
    magic, flg, bd, size = _DESCRIPTOR.unpack_from(body, 0)
    if magic != _FRAME_MAGIC:
        raise BadBody(f"LZ4 frame magic {magic:#010x} is not 0x184d2204")
    if flg >> 6 != 1 or flg & 0x02 or bd & 0x8F:
        raise BadBody(f"LZ4 frame descriptor FLG {flg:#04x} BD {bd:#04x}: bad version/reserved")
    if flg & 0x01:
        raise BadBody("LZ4 frame uses a dictionary (DictID): not allowed")
    if not flg & 0x08:
        raise BadBody("LZ4 frame has no content size: FORMAT.md requires it")
    block_max = _BLOCK_MAX.get((bd >> 4) & 0x7)
    if block_max is None:
        raise BadBody(f"LZ4 frame block maximum size id {(bd >> 4) & 0x7} not in 4..7")
    if size != raw:
        raise BadHeader(f"LZ4 content size {size} != raw_bytes {raw}")
    checksum = 4 if flg & 0x10 else 0
    max_blocks = max(1, -(-raw // block_max))
    pos, blocks = _DESCRIPTOR.size + 1, 0
    while True:
        if pos + 4 > n:
            raise BadBody("LZ4 frame ends inside a block header (no end mark)")
        (word,) = _U32.unpack_from(body, pos)
        pos += 4
        if word == 0:
            break
        length = word & 0x7FFFFFFF
        if length > block_max:
            raise BadBody(f"LZ4 block of {length} bytes > the frame's block maximum {block_max}")
        blocks += 1
        if blocks > max_blocks:
            raise BadBody(f"LZ4 frame has more than {max_blocks} blocks for {raw} bytes")
        pos += length + checksum
    pos += 4 if flg & 0x04 else 0
    if pos != n:
        what = "trailing bytes after" if pos < n else "a truncated"
        raise BadBody(f"{what} the LZ4 frame ({n} bytes in the body, the frame ends at {pos})")
