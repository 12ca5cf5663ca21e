"""The blocked layout of 4-bit PQ codes that fast-scan search reads (faiss's "fast scan" idea, our own layout).

Rows are grouped in blocks of 32. A block holds ``Mp = 4 * ceil(M / 4)`` sub-quantizers, 16 bytes each: byte
``16 m + i`` has row ``i``'s code of sub-quantizer ``m`` in its low nibble and row ``i + 16``'s in its high nibble
(padding sub-quantizers and padding rows are 0). So one 64-byte load holds four sub-quantizers of 32 rows, and each
16-byte lane meets its sub-quantizer's 16-entry table in the same lane of a ``pshufb`` (``quantization/_simd.py``).
A block takes ``16 * Mp`` bytes: ``Mp / 2`` bytes per row, as packed 4-bit codes, plus the padding.

In an IVF index every (segment, list) row range starts a new block, so ranges never share one; ``block_offsets``
(same shape as the row ``offsets``) gives each range's first block.

Look-up tables are quantized per query (and per list where the list changes them): one scale for all sub-quantizers,
entries ``0..qmax`` with ``qmax = min(255, 65535 // M)``, so the sum of ``M`` entries never leaves 16 bits; the float
key of a sum ``s`` is ``bias + s / scale`` (:func:`._fastscan_kernels.quantize_table`).
"""

from __future__ import annotations

import numpy as np

from ._fastscan_kernels import BLOCK, pack_blocks, unpack_blocks


def padded_subspaces(M: int) -> int:
    """Sub-quantizers stored per block: ``M`` rounded up to a multiple of 4."""
    return -(-int(M) // 4) * 4


def block_bytes(M: int) -> int:
    """Bytes per block of 32 rows."""
    return 16 * padded_subspaces(M)


def block_offsets(offsets: np.ndarray) -> np.ndarray:
    """First block of every (segment, list) row range, int64 (nseg, nlist + 1), from row ``offsets`` of that shape.

    Ranges are laid out segment by segment, list by list, each rounded up to whole blocks; column ``nlist`` is the
    segment's end.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.shape[0] == 0:
        return np.empty_like(offsets)
    nblocks = (np.diff(offsets, axis=1) + BLOCK - 1) // BLOCK
    ends = np.cumsum(nblocks.ravel()).reshape(nblocks.shape)
    out = np.empty_like(offsets)
    out[:, 1:] = ends
    out[:, 0] = ends[:, -1] - nblocks.sum(axis=1)
    return out


def pack_segment(sub: np.ndarray, list_offsets: np.ndarray, M: int) -> np.ndarray:
    """Blocks uint8 (nblocks, 16 Mp) of one segment from its sub-quantizer codes uint8 (n, M) in row order and its
    relative row ``list_offsets`` int64 (nlist + 1,)."""
    rel = block_offsets(np.asarray(list_offsets, dtype=np.int64)[None, :])[0]
    out = np.zeros((int(rel[-1]), block_bytes(M)), dtype=np.uint8)
    pack_blocks(np.ascontiguousarray(sub, dtype=np.uint8), np.ascontiguousarray(list_offsets, dtype=np.int64),
                rel, padded_subspaces(M), out)
    return out


def unpack_all(blocks: np.ndarray, offsets: np.ndarray, M: int) -> np.ndarray:
    """Sub-quantizer codes uint8 (ntotal, M) by row, from the blocks of every segment."""
    offsets = np.asarray(offsets, dtype=np.int64)
    ntotal = int(offsets[-1, -1]) if offsets.shape[0] else 0
    out = np.zeros((ntotal, M), dtype=np.uint8)
    if ntotal:
        unpack_blocks(blocks, offsets, block_offsets(offsets), int(M), out)
    return out


def unpack_rows(blocks: np.ndarray, offsets: np.ndarray, block_offs: np.ndarray, M: int, rows) -> np.ndarray:
    """Sub-quantizer codes uint8 (n, M) of int64 ``rows``, read from their blocks (rows must be < ntotal)."""
    rows = np.asarray(rows, dtype=np.int64).ravel()
    offsets = np.asarray(offsets, dtype=np.int64)
    seg = np.searchsorted(offsets[:, 0], rows, side="right") - 1
    # the last list starting at or before the row is the one holding it (empty lists start where the next does)
    lst = np.array([np.searchsorted(offsets[g, :-1], r, side="right") - 1 for g, r in zip(seg, rows)],
                   dtype=np.int64).reshape(rows.shape)
    i = rows - offsets[seg, lst]
    blk = block_offs[seg, lst] + i // BLOCK
    pos = i % BLOCK
    lane = pos % 16
    shift = np.where(pos < 16, 0, 4).astype(np.uint8)
    cols = 16 * np.arange(M)[None, :] + lane[:, None]
    return ((blocks[blk[:, None], cols] >> shift[:, None]) & 15).astype(np.uint8)
