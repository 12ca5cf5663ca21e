"""numba kernel for IVF-PQ search: probe, ADC scan, top-k heap and exact re-rank of one query, all compiled.

Layout (see ``index/ivfpq.py``): codes are stored in row order, and every ``add`` batch (a *segment*) is sorted by
inverted list before its rows are numbered, so list ``l`` of segment ``g`` is the contiguous row range
``offsets[g, l] : offsets[g, l + 1]``. Rows are therefore slots: no slot -> row array is stored or read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._heap_kernels import heap_replace_top, heap_sort, heap_worse

_NO_ROW = np.iinfo(np.int64).max


@njit(cache=True)
def _probe_lists(keys, nprobe, out_lists):
    """The ``nprobe`` smallest entries of ``keys`` float32 (nlist,) (ties by index) into ``out_lists``; returns count."""
    nlist = keys.shape[0]
    p = min(nprobe, nlist)
    hd = np.full(p, np.inf, dtype=np.float32)
    hi = np.full(p, _NO_ROW, dtype=np.int64)
    for l in range(nlist):
        if not heap_worse(hd, hi, keys[l], l):
            heap_replace_top(hd, hi, p, keys[l], l)
    heap_sort(hd, hi)
    c = 0
    for j in range(p):
        if hi[j] != _NO_ROW:
            out_lists[c] = hi[j]
            c += 1
    return c


@njit(cache=True)
def _byte_table(sub, nbits, out):
    """Fill ``out`` float32 (S, 256) from sub-space table ``sub`` float32 (M, K) (see ``pq.byte_tables``)."""
    M = sub.shape[0]
    S = out.shape[0]
    if nbits == 8:
        for s in range(S):
            for b in range(256):
                out[s, b] = sub[s, b]
    else:
        for s in range(S):
            m0 = 2 * s
            for b in range(256):
                v = sub[m0, b & 15]
                if m0 + 1 < M:
                    v += sub[m0 + 1, b >> 4]
                out[s, b] = v


@njit(cache=True)
def _query_table(dots, cn, qsub, table_mode, out):
    """The query part of the sub-space tables, float32 (M, K), into ``out``, from ``dots[m, k] = <q_m, C[m, k]>``.

    ``table_mode`` 0: ``-dots`` (inner product); 1: ``||q_m||^2 - 2 dots + ||C_mk||^2`` (l2 codes of the vectors,
    ``qsub[m] = ||q_m||^2``); 2: ``||C_mk||^2 - 2 dots`` (residual l2; the list terms are added per probed list).
    Built here rather than by numpy over a block of queries, which wrote and re-read two (nq, M, K) temporaries.
    """
    M, K = dots.shape
    two = np.float32(2.0)
    for m in range(M):
        if table_mode == 0:
            for j in range(K):
                out[m, j] = -dots[m, j]
        elif table_mode == 1:
            qm = qsub[m]
            for j in range(K):
                out[m, j] = (qm - two * dots[m, j]) + cn[m, j]
        else:
            for j in range(K):
                out[m, j] = cn[m, j] - two * dots[m, j]


@njit(cache=True, inline="always")
def add_list_terms(qt, coarse, l, pq_cent, out):
    """``out[m, k] = qt[m, k] + 2 <coarse[l]_m, pq_cent[m, k]>`` float32 (M, K): the residual-L2 table of list ``l``
    for a list whose terms were not computed beforehand (``coarse`` float32 (nlist, d), ``pq_cent`` float32
    (M, K, dsub))."""
    M, K, dsub = pq_cent.shape
    for m in range(M):
        for kc in range(K):
            acc = np.float32(0.0)
            for t in range(dsub):
                acc += coarse[l, m * dsub + t] * pq_cent[m, kc, t]
            out[m, kc] = qt[m, kc] + 2.0 * acc


@njit(cache=True, inline="always")
def _add_tables(a, b, out):
    """``out[m, j] = a[m, j] + b[m, j]`` for float32 (M, K) tables (``out`` may have more columns than K)."""
    M, K = a.shape
    for m in range(M):
        for j in range(K):
            out[m, j] = a[m, j] + b[m, j]


@njit(cache=True, fastmath=True)
def _exact_keys4(qv, v0, v1, v2, v3, metric_l2):
    """Exact re-rank keys of four stored vectors float32 (d,) for the query ``qv`` float32 (d,): squared L2, or the
    negative inner product.

    ``fastmath`` lets each sum be reassociated into SIMD lanes (strict left-to-right order made every addition wait
    for the previous one: about 1 us per 784-d candidate). Four candidates at once keep four rows' memory loads in
    flight, since re-ranked rows are scattered and mostly not in cache (0.36 vs 0.65 us per random 784-d row here).
    The compiled order is fixed, so repeated searches give bit-identical keys.
    """
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    if metric_l2:
        for t in range(qv.shape[0]):
            x = qv[t]
            e0 = x - v0[t]
            e1 = x - v1[t]
            e2 = x - v2[t]
            e3 = x - v3[t]
            s0 += e0 * e0
            s1 += e1 * e1
            s2 += e2 * e2
            s3 += e3 * e3
    else:
        for t in range(qv.shape[0]):
            x = qv[t]
            s0 -= x * v0[t]
            s1 -= x * v1[t]
            s2 -= x * v2[t]
            s3 -= x * v3[t]
    return s0, s1, s2, s3


@njit(cache=True)
def _rerank(qv, vectors, cand, n, metric_l2, fd, fi, k):
    """Offer the exact keys of rows ``cand[:n]`` int64 to the heap ``(fd, fi)`` of size ``k``, four rows per pass
    (a last partial group repeats its final row, so every key comes from the same compiled arithmetic)."""
    for j in range(0, n, 4):
        r0 = cand[j]
        r1 = cand[min(j + 1, n - 1)]
        r2 = cand[min(j + 2, n - 1)]
        r3 = cand[min(j + 3, n - 1)]
        a0, a1, a2, a3 = _exact_keys4(qv, vectors[r0], vectors[r1], vectors[r2], vectors[r3], metric_l2)
        _push(fd, fi, k, a0, r0)
        if j + 1 < n:
            _push(fd, fi, k, a1, r1)
        if j + 2 < n:
            _push(fd, fi, k, a2, r2)
        if j + 3 < n:
            _push(fd, fi, k, a3, r3)


@njit(cache=True)
def rerank_into(qv, vectors, cand, n, metric_l2, fd, fi, d_out, r_out):
    """Re-rank rows ``cand[:n]`` exactly for the query ``qv`` and write the best ``k = fd.shape[0]`` ascending into
    ``d_out`` float32 (k,) / ``r_out`` int64 (k,) (left as they are where fewer than ``k`` rows exist); ``fd`` / ``fi``
    are the heap's work arrays."""
    fd[:] = np.inf
    fi[:] = _NO_ROW
    _rerank(qv, vectors, cand, n, metric_l2, fd, fi, fd.shape[0])
    heap_sort(fd, fi)
    for j in range(fd.shape[0]):
        if fi[j] != _NO_ROW:
            d_out[j] = fd[j]
            r_out[j] = fi[j]


@njit(cache=True)
def _push(hd, hi, kk, acc, r):
    if not heap_worse(hd, hi, acc, r):
        heap_replace_top(hd, hi, kk, acc, r)


@njit(cache=True)
def _scan_range(bt, codes, start, stop, b0, mask, mrow, use_mask, hd, hi, kk):
    """ADC-scan rows ``start:stop`` into the heap ``(hd, hi)`` of size ``kk``.

    Without a mask, four rows are summed at once (four independent dependency chains keep the core busy); each row's
    sum is still taken in sub-space order, so the result is bit-identical to the one-row loop.
    """
    S = codes.shape[1]
    r = start
    if not use_mask:
        while r + 4 <= stop:
            a0 = b0
            a1 = b0
            a2 = b0
            a3 = b0
            for s in range(S):
                t = bt[s]
                a0 += t[codes[r, s]]
                a1 += t[codes[r + 1, s]]
                a2 += t[codes[r + 2, s]]
                a3 += t[codes[r + 3, s]]
            _push(hd, hi, kk, a0, r)
            _push(hd, hi, kk, a1, r + 1)
            _push(hd, hi, kk, a2, r + 2)
            _push(hd, hi, kk, a3, r + 3)
            r += 4
    while r < stop:
        if not use_mask or mask[mrow, r]:
            acc = b0
            for s in range(S):
                acc += bt[s, codes[r, s]]
            _push(hd, hi, kk, acc, r)
        r += 1


@njit(cache=True)
def ivf_pq_search(probe_keys, nprobe, base, use_base, dots, cn, qsub, table_mode, nbits, coarse, pq_cent, list_terms,
                  list_slot, offsets, codes, mask, mask_mode, kk, k, rerank, vectors, queries, metric_l2):
    """Search a batch of queries over an IVF-PQ index; one query's probe, scan, heap and re-rank stay compiled.

    Parameters
    ----------
    probe_keys : float32 (nq, nlist)
        Keys that choose the lists to probe (the ``nprobe`` smallest).
    nprobe : int
    base : float32 (nq, nlist)
        Per-(query, list) constant added to every code's ADC sum when ``use_base`` (residual codes).
    use_base : bool
    dots : float32 (nq, M, K)
        ``<q_m, C[m, k]>`` of each query with the scoring centroids.
    cn : float32 (M, K)
        ``||C[m, k]||^2``.
    qsub : float32 (nq, M) or (0, M)
        ``||q_m||^2`` (``table_mode`` 1 only).
    table_mode : int
        0: inner product; 1: l2, codes of the vectors; 2: residual l2, where each probed list adds
        ``2 <coarse[l]_m, pq_cent[m, k]>`` to the tables: taken from ``list_terms[list_slot[l]]`` when
        ``list_slot[l] >= 0`` (computed by BLAS for the lists the batch probes, or precomputed for every list),
        else computed here (see :func:`_query_table`).
    nbits : int
        4 or 8.
    coarse : float32 (nlist, d)
    pq_cent : float32 (M, K, dsub)
    list_terms : float32 (nu, M, K)
    list_slot : int64 (nlist,) or (0,)
    offsets : int64 (nseg, nlist + 1)
        Row range of each list in each segment.
    codes : uint8 (ntotal, S)
    mask : bool (nmask, ntotal)
        Rows that may be returned; ``mask_mode`` 0: ignored, 1: row 0 shared by all queries, 2: one row per query.
    kk : int
        Candidates kept by the ADC scan (``>= k``).
    k : int
    rerank : bool
        Re-rank the ``kk`` candidates exactly with ``vectors`` and ``queries``.
    vectors : float32 (ntotal, d) (may be memory-mapped) or (0, d)
    queries : float32 (nq, d)
    metric_l2 : bool
        Exact re-rank key: squared L2 if true, else negative inner product.

    Returns
    -------
    D : float32 (nq, k), R : int64 (nq, k) internal rows (``-1`` padding), nscanned : int64 (nq,)
    """
    nq, nlist = probe_keys.shape
    M, K = dots.shape[1], dots.shape[2]
    list_mode = 1 if table_mode == 2 else 0
    S = codes.shape[1]
    nseg = offsets.shape[0]
    D = np.full((nq, k), np.inf, dtype=np.float32)
    R = np.full((nq, k), -1, dtype=np.int64)
    nscanned = np.zeros(nq, dtype=np.int64)
    bt = np.empty((S, 256), dtype=np.float32)
    lt = np.empty((M, K), dtype=np.float32)
    qt = np.empty((M, K), dtype=np.float32)
    lists = np.empty(nlist, dtype=np.int64)
    hd = np.empty(kk, dtype=np.float32)
    hi = np.empty(kk, dtype=np.int64)
    fd = np.empty(k, dtype=np.float32)
    fi = np.empty(k, dtype=np.int64)
    cand = np.empty(kk, dtype=np.int64)
    for q in range(nq):
        mrow = 0 if mask_mode == 1 else q
        np_ = _probe_lists(probe_keys[q], nprobe, lists)
        _query_table(dots[q], cn, qsub[q] if table_mode == 1 else cn[0], table_mode, qt)
        if list_mode == 0:
            _byte_table(qt, nbits, bt)
        hd[:] = np.inf
        hi[:] = _NO_ROW
        scanned = 0
        for j in range(np_):
            l = lists[j]
            if list_mode == 1:
                # residual l2: ||q - c - r||^2 = ||q - c||^2 + sum_m ||C_mk||^2 - 2<q_m, C_mk> + 2<c_m, C_mk>
                slot = list_slot[l] if list_slot.shape[0] > 0 else -1
                if slot >= 0 and nbits == 8:
                    # 8-bit codes: the byte tables are the sub-space tables, so add straight into them (one pass)
                    _add_tables(qt, list_terms[slot], bt)
                elif slot >= 0:
                    _add_tables(qt, list_terms[slot], lt)
                else:
                    add_list_terms(qt, coarse, l, pq_cent, lt)
                if slot < 0 or nbits != 8:
                    _byte_table(lt, nbits, bt)
            b0 = base[q, l] if use_base else np.float32(0.0)
            for g in range(nseg):
                start = offsets[g, l]
                stop = offsets[g, l + 1]
                scanned += stop - start
                _scan_range(bt, codes, start, stop, b0, mask, mrow, mask_mode != 0, hd, hi, kk)
        nscanned[q] = scanned
        if rerank:
            nc = 0
            for j in range(kk):
                if hi[j] != _NO_ROW:
                    cand[nc] = hi[j]
                    nc += 1
            rerank_into(queries[q], vectors, cand, nc, metric_l2, fd, fi, D[q], R[q])
        else:
            heap_sort(hd, hi)
            for j in range(k):
                if hi[j] != _NO_ROW:
                    D[q, j] = hd[j]
                    R[q, j] = hi[j]
    return D, R, nscanned
