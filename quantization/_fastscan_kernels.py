"""numba kernels of the 4-bit fast-scan path: block packing, quantized look-up tables, and the IVF search.

Layout and table quantization are described in ``quantization/fastscan.py``; the SIMD block sum in ``._simd``.
The search keeps faiss's fast-scan structure (8-bit tables, 16-bit sums, a threshold test on 32 rows at a time) but
only the rows that pass the test are looked at one by one: their float key is ``b0 + sum / scale``, checked against
the heap by ``(key, row)`` like every other scan here, so results do not depend on scan order or SIMD width.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._ivf_kernels import _add_tables, _query_table, add_list_terms, rerank_into
from ._select_kernels import _EMPTY, pack_key, smallest_sorted, u64_heap_replace_top, unpack_index, unpack_key
from ._simd import pq4_block_sums, prefetch_bytes, prefetch_row, trailing_zeros

BLOCK = 32
#: bytes of the next list's blocks asked for ahead of its scan (per segment)
_PREFETCH_BYTES = 1024


@njit(cache=True)
def pack_blocks(sub, list_offsets, block_offsets, Mp, out):
    """Write one segment's codes into the blocked layout.

    Parameters
    ----------
    sub : uint8 (n, M)
        Sub-quantizer codes (0..15) of the segment's rows in row order (sorted by list).
    list_offsets : int64 (nlist + 1,)
        Row range of each list, relative to the segment's first row.
    block_offsets : int64 (nlist + 1,)
        First block of each list, relative to the segment's first block.
    Mp : int
        Sub-quantizers per block (M padded to a multiple of 4; the padding codes are 0).
    out : uint8 (nblocks, 16 * Mp)
        Zero-filled; receives the blocks.
    """
    M = sub.shape[1]
    nlist = list_offsets.shape[0] - 1
    for l in range(nlist):
        b0 = block_offsets[l]
        for r in range(list_offsets[l], list_offsets[l + 1]):
            i = r - list_offsets[l]
            blk = b0 + i // BLOCK
            pos = i % BLOCK
            shift = 0 if pos < 16 else 4
            lane = pos % 16
            for m in range(M):
                out[blk, 16 * m + lane] |= np.uint8(sub[r, m] << shift)


@njit(cache=True)
def unpack_blocks(blocks, offsets, block_offsets, M, out):
    """Inverse of :func:`pack_blocks` over every segment: ``out`` uint8 (ntotal, M) receives the codes by row.

    ``offsets`` / ``block_offsets`` are int64 (nseg, nlist + 1), absolute rows and blocks.
    """
    nseg, nl1 = offsets.shape
    for g in range(nseg):
        for l in range(nl1 - 1):
            b0 = block_offsets[g, l]
            for r in range(offsets[g, l], offsets[g, l + 1]):
                i = r - offsets[g, l]
                blk = b0 + i // BLOCK
                pos = i % BLOCK
                shift = 0 if pos < 16 else 4
                lane = pos % 16
                for m in range(M):
                    out[r, m] = (blocks[blk, 16 * m + lane] >> shift) & 15


@njit(cache=True)
def quantize_table(t, qmax, lut):
    """Quantize a float32 (M, 16) sub-space table to uint8 in place of ``lut`` uint8 (16 * Mp,).

    Entry ``(m, j)`` becomes ``round((t[m, j] - min_m) * scale)`` with one ``scale`` for all sub-spaces (so sums of
    entries are comparable) chosen so the widest sub-space spans ``0..qmax``; padding sub-spaces stay 0.

    Returns
    -------
    bias : float64
        ``sum_m min_m``: the float key of a 16-bit sum ``s`` is ``bias + s / scale``.
    scale : float64
    """
    M, K = t.shape
    bias = 0.0
    span = 0.0
    for m in range(M):
        lo = t[m, 0]
        hi = t[m, 0]
        for j in range(1, K):
            v = t[m, j]
            lo = min(lo, v)
            hi = max(hi, v)
        bias += lo
        span = max(span, np.float64(hi) - np.float64(lo))
    scale = qmax / span if span > 0.0 else 1.0
    for m in range(M):
        lo = t[m, 0]
        for j in range(1, K):
            lo = min(lo, t[m, j])
        for j in range(K):
            q = np.floor((np.float64(t[m, j]) - np.float64(lo)) * scale + 0.5)
            lut[16 * m + j] = np.uint8(min(max(q, 0.0), np.float64(qmax)))
    return bias, scale


@njit(cache=True, inline="always")
def _threshold(h0, b0, scale, slack):
    """Largest 16-bit sum whose key can still enter the heap whose root (worst kept) is the packed ``h0``; -1 when
    none can. The slack (one unit plus the float32 rounding of keys) keeps the test from dropping a row the heap
    would take; the heap decides exactly."""
    if h0 == _EMPTY:
        return 65535
    x = (np.float64(unpack_key(h0)) - b0) * scale + slack
    if x < 0.0:
        return -1
    if x >= 65535.0:
        return 65535
    return np.int64(x)


@njit(cache=True, inline="always")
def _scan_list(blocks, bbytes, ngroups, lut, blk0, r0, r1, b0, inv, scale, mask, mrow, use_mask, h, kk, sums):
    """Scan rows ``r0:r1`` (blocks from ``blk0``) into the packed heap ``h`` of size ``kk``; returns rows scanned.

    A row's key is ``b0 + sum / scale`` (``inv = 1 / scale``): the 16-bit test only skips rows that cannot enter.
    """
    # keys of this list are >= b0 and the root only falls, so |root| <= max(|b0|, |root now|) while scanning
    top = abs(np.float64(unpack_key(h[0]))) if h[0] != _EMPTY else abs(b0) + 65535.0 * inv
    slack = 1.0 + 2e-6 * scale * (abs(b0) + max(abs(b0), top))
    thr = _threshold(h[0], b0, scale, slack)
    if thr < 0:
        return 0
    nblk = (r1 - r0 + BLOCK - 1) // BLOCK
    for b in range(nblk):
        bits = pq4_block_sums(blocks, (blk0 + b) * bbytes, lut, ngroups, thr, sums)
        rb = r0 + b * BLOCK
        while bits != 0:
            i = trailing_zeros(bits)
            bits &= bits - np.uint32(1)
            r = rb + np.int64(i)
            if r >= r1:
                break
            if use_mask and not mask[mrow, r]:
                continue
            v = pack_key(np.float32(b0 + np.float64(sums[i]) * inv), r)
            if v < h[0]:
                u64_heap_replace_top(h, kk, v)
                thr = _threshold(h[0], b0, scale, slack)
                if thr < 0:
                    return min(r1 - r0, (b + 1) * BLOCK)
    return r1 - r0


@njit(cache=True, inline="always")
def _prefetch_list(blocks, bbytes, offsets, block_offsets, l):
    """Ask for the first bytes of list ``l``'s blocks in every segment (the next list to scan)."""
    for g in range(offsets.shape[0]):
        n = offsets[g, l + 1] - offsets[g, l]
        if n > 0:
            prefetch_bytes(blocks, block_offsets[g, l] * bbytes, min(((n + BLOCK - 1) // BLOCK) * bbytes,
                                                                   _PREFETCH_BYTES))


@njit(cache=True)
def ivf_fastscan_search(coarse_ip, qnorms, coarse_norms, coarse_bias, balanced, nprobe, use_base, dots, cn, qsub,
                        table_mode, coarse, pq_cent, list_terms, list_slot, offsets, block_offsets, blocks, ngroups,
                        mask, mask_mode, kk, k, rerank, vectors, queries, metric_l2):
    """Search a batch of queries over a 4-bit IVF-PQ index in the blocked layout.

    Parameters are those of :func:`._ivf_kernels.ivf_pq_search` (tables, masks, re-rank), except that the probe
    keys and base keys are derived here, one query at a time, from the query-centroid products (a row stays in
    cache; as whole (nq, nlist) arrays made by numpy they cost several passes over memory per batch, and the
    scattered base look-ups missed cache):

    coarse_ip : float32 (nq, nlist)
        ``<q, coarse[l]>``.
    qnorms : float32 (nq,)
        ``||q||^2``.
    coarse_norms : float32 (nlist,)
        ``||coarse[l]||^2``. The probe key is ``max(-2 coarse_ip + qnorms + coarse_norms, 0)`` (numpy's float32
        operations in numpy's order), minus ``coarse_bias`` float32 (nlist,) when ``balanced``; the residual base
        key is that squared distance (l2) or ``-coarse_ip`` (inner product).
    block_offsets : int64 (nseg, nlist + 1)
        First block of each list of each segment.
    blocks : uint8 (nblocks * 64 * ngroups,)
        The blocked codes, flattened.
    ngroups : int
        Groups of four sub-quantizers per block.

    Rows must be below 2**32 (they are packed with their keys).

    Returns
    -------
    D : float32 (nq, k), R : int64 (nq, k) internal rows (``-1`` padding), nscanned : int64 (nq,)
        Without re-ranking, ``D`` are the keys of the quantized tables.
    """
    nq, nlist = coarse_ip.shape
    M, K = dots.shape[1], dots.shape[2]
    per_list = table_mode == 2
    bbytes = 64 * ngroups
    qmax = min(255, 65535 // M)
    P = min(nprobe, nlist)
    D = np.full((nq, k), np.inf, dtype=np.float32)
    R = np.full((nq, k), -1, dtype=np.int64)
    nscanned = np.zeros(nq, dtype=np.int64)
    sums = np.empty(BLOCK, dtype=np.uint16)
    lt = np.empty((M, K), dtype=np.float32)
    qt = np.empty((M, K), dtype=np.float32)
    work = np.empty(nlist, dtype=np.uint64)
    pk = np.empty(nlist, dtype=np.float32)
    cl2 = np.empty(nlist, dtype=np.float32)
    use_mask = mask_mode != 0
    # per query: probed lists (nearest first), their base keys, the quantized table (one per query unless each
    # list changes it), and the candidate heap
    plists = np.empty((nq, P), dtype=np.int64)
    pbase = np.zeros((nq, P), dtype=np.float64)
    nprobed = np.zeros(nq, dtype=np.int64)
    luts = np.zeros((1 if per_list else nq, bbytes), dtype=np.uint8)
    lut = np.zeros(bbytes, dtype=np.uint8)
    qbias = np.zeros(nq, dtype=np.float64)
    qscale = np.ones(nq, dtype=np.float64)
    H = np.full((nq, kk), _EMPTY, dtype=np.uint64)
    # argument bundles for _scan_pair (a call with more than 30 arguments compiles to *args, which numba cannot inline)
    tabs = (dots, cn, qsub, coarse, pq_cent, list_terms, list_slot)
    scratch = (qt, lt, lut, sums)
    layout = (blocks, offsets, block_offsets)
    for q in range(nq):
        qq = qnorms[q]
        for l in range(nlist):
            v = coarse_ip[q, l] * np.float32(-2.0)
            v = v + qq
            v = v + coarse_norms[l]
            if v < np.float32(0.0):
                v = np.float32(0.0)
            cl2[l] = v
            pk[l] = v - coarse_bias[l] if balanced else v
        nprobed[q] = smallest_sorted(pk, P, plists[q], work)
        for j in range(nprobed[q]):
            l = plists[q, j]
            pbase[q, j] = np.float64(cl2[l] if metric_l2 else -coarse_ip[q, l]) if use_base else 0.0
        if not per_list:
            _query_table(dots[q], cn, qsub[q] if table_mode == 1 else cn[0], table_mode, qt)
            qbias[q], qscale[q] = quantize_table(qt, qmax, luts[q])
    if nq * P < 2 * nlist:
        # few queries per list: each query scans its lists nearest first (its heap fills with good candidates
        # early, so fewer rows pass the threshold)
        for q in range(nq):
            for j in range(nprobed[q]):
                l = plists[q, j]
                if j + 1 < nprobed[q]:
                    _prefetch_list(blocks, bbytes, offsets, block_offsets, plists[q, j + 1])
                nscanned[q] += _scan_pair(q, l, pbase[q, j], per_list, tabs, table_mode, qmax, scratch, luts, qbias,
                                          qscale, layout, bbytes, ngroups, mask, mask_mode, use_mask, H, kk)
    else:
        # list by list, every query that probes the list in turn: a list's blocks come from memory once per batch
        # and from cache for the other queries (once the codes outgrow the last-level cache, scanning query by
        # query was memory-bound: 0.55x faiss at 4M vectors, where faiss buckets queries by list the same way)
        start = np.zeros(nlist + 1, dtype=np.int64)
        for q in range(nq):
            for j in range(nprobed[q]):
                start[plists[q, j] + 1] += 1
        for l in range(nlist):
            start[l + 1] += start[l]
        fill = start[:-1].copy()
        bq = np.empty(start[nlist], dtype=np.int64)
        bj = np.empty(start[nlist], dtype=np.int64)
        for q in range(nq):
            for j in range(nprobed[q]):
                l = plists[q, j]
                bq[fill[l]] = q
                bj[fill[l]] = j
                fill[l] += 1
        for l in range(nlist):
            for t in range(start[l], start[l + 1]):
                q = bq[t]
                nscanned[q] += _scan_pair(q, l, pbase[q, bj[t]], per_list, tabs, table_mode, qmax, scratch, luts,
                                          qbias, qscale, layout, bbytes, ngroups, mask, mask_mode, use_mask, H, kk)
    fd = np.empty(k, dtype=np.float32)
    fi = np.empty(k, dtype=np.int64)
    cand = np.empty(kk, dtype=np.int64)
    for q in range(nq):
        h = H[q]
        nc = 0
        for j in range(kk):
            if h[j] != _EMPTY:
                cand[nc] = unpack_index(h[j])
                nc += 1
        if rerank:
            # re-ranked rows are scattered (and may be memory-mapped): ask for all of them before computing any key
            for j in range(nc):
                prefetch_row(vectors, cand[j])
            rerank_into(queries[q], vectors, cand, nc, metric_l2, fd, fi, D[q], R[q])
        else:
            srt = np.sort(h)
            for j in range(min(k, nc)):
                D[q, j] = unpack_key(srt[j])
                R[q, j] = unpack_index(srt[j])
    return D, R, nscanned


@njit(cache=True, inline="always")
def _scan_pair(q, l, base, per_list, tabs, table_mode, qmax, scratch, luts, qbias, qscale, layout, bbytes, ngroups,
               mask, mask_mode, use_mask, H, kk):
    """Scan list ``l`` (every segment) for query ``q`` into its heap ``H[q]``; returns the rows scanned.

    ``tabs`` = (dots, cn, qsub, coarse, pq_cent, list_terms, list_slot), ``scratch`` = (qt, lt, lut, sums),
    ``layout`` = (blocks, offsets, block_offsets), as in :func:`ivf_fastscan_search`.
    """
    dots, cn, qsub, coarse, pq_cent, list_terms, list_slot = tabs
    qt, lt, lut, sums = scratch
    blocks, offsets, block_offsets = layout
    nseg = offsets.shape[0]
    if per_list:
        # residual l2: the list adds 2 <c_l,m, C_mk> to the query's tables (see ivf_pq_search)
        _query_table(dots[q], cn, cn[0], table_mode, qt)
        slot = list_slot[l] if list_slot.shape[0] > 0 else -1
        if slot >= 0:
            _add_tables(qt, list_terms[slot], lt)
        else:
            add_list_terms(qt, coarse, l, pq_cent, lt)
        bias, scale = quantize_table(lt, qmax, lut)
        table = lut
    else:
        bias, scale = qbias[q], qscale[q]
        table = luts[q]
    b0 = bias + base
    inv = 1.0 / scale
    mrow = 0 if mask_mode == 1 else q
    h = H[q]
    scanned = 0
    for g in range(nseg):
        r0 = offsets[g, l]
        r1 = offsets[g, l + 1]
        if r1 > r0:
            scanned += _scan_list(blocks, bbytes, ngroups, table, block_offsets[g, l], r0, r1, b0, inv, scale, mask,
                                  mrow, use_mask, h, kk, sums)
    return scanned
