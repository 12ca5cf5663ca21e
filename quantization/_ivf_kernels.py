"""numba kernel for IVF-PQ search: probe, ADC scan, top-k heap and exact re-rank of one query, all compiled.

Layout (see ``index/ivfpq.py``): codes are stored in row order, and every ``add`` batch (a *segment*) is sorted by
inverted list before its rows are numbered, so list ``l`` of segment ``g`` is the contiguous row range
``offsets[g, l] : offsets[g, l + 1]``. Rows are therefore slots: no slot -> row array is stored or read.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._pq_kernels import heap_replace_top, heap_sort, heap_worse

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
def ivf_pq_search(probe_keys, nprobe, base, use_base, sub_tabs, nbits, list_mode, coarse, pq_cent, list_terms,
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
    sub_tabs : float32 (nq, M, K)
        Query part of the sub-space look-up tables.
    nbits : int
        4 or 8.
    list_mode : int
        0: the tables are complete; 1: add ``2 <coarse[l]_m, pq_cent[m, k]>`` per probed list (residual l2): taken
        from ``list_terms[list_slot[l]]`` when ``list_slot[l] >= 0`` (computed by BLAS for the lists the batch
        probes), else computed here.
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
    M, K = sub_tabs.shape[1], sub_tabs.shape[2]
    S = codes.shape[1]
    nseg = offsets.shape[0]
    d = queries.shape[1]
    dsub = pq_cent.shape[2]
    D = np.full((nq, k), np.inf, dtype=np.float32)
    R = np.full((nq, k), -1, dtype=np.int64)
    nscanned = np.zeros(nq, dtype=np.int64)
    bt = np.empty((S, 256), dtype=np.float32)
    lt = np.empty((M, K), dtype=np.float32)
    lists = np.empty(nlist, dtype=np.int64)
    hd = np.empty(kk, dtype=np.float32)
    hi = np.empty(kk, dtype=np.int64)
    fd = np.empty(k, dtype=np.float32)
    fi = np.empty(k, dtype=np.int64)
    for q in range(nq):
        mrow = 0 if mask_mode == 1 else q
        np_ = _probe_lists(probe_keys[q], nprobe, lists)
        if list_mode == 0:
            _byte_table(sub_tabs[q], nbits, bt)
        hd[:] = np.inf
        hi[:] = _NO_ROW
        scanned = 0
        for j in range(np_):
            l = lists[j]
            if list_mode == 1:
                # residual l2: ||q - c - r||^2 = ||q - c||^2 + sum_m ||C_mk||^2 - 2<q_m, C_mk> + 2<c_m, C_mk>
                slot = list_slot[l] if list_slot.shape[0] > 0 else -1
                if slot >= 0:
                    for m in range(M):
                        for kc in range(K):
                            lt[m, kc] = sub_tabs[q, m, kc] + list_terms[slot, m, kc]
                else:
                    for m in range(M):
                        for kc in range(K):
                            acc = np.float32(0.0)
                            for t in range(dsub):
                                acc += coarse[l, m * dsub + t] * pq_cent[m, kc, t]
                            lt[m, kc] = sub_tabs[q, m, kc] + 2.0 * acc
                _byte_table(lt, nbits, bt)
            b0 = base[q, l] if use_base else np.float32(0.0)
            for g in range(nseg):
                start = offsets[g, l]
                stop = offsets[g, l + 1]
                scanned += stop - start
                _scan_range(bt, codes, start, stop, b0, mask, mrow, mask_mode != 0, hd, hi, kk)
        nscanned[q] = scanned
        if rerank:
            fd[:] = np.inf
            fi[:] = _NO_ROW
            for j in range(kk):
                r = hi[j]
                if r == _NO_ROW:
                    continue
                acc = np.float32(0.0)
                if metric_l2:
                    for t in range(d):
                        diff = queries[q, t] - vectors[r, t]
                        acc += diff * diff
                else:
                    for t in range(d):
                        acc -= queries[q, t] * vectors[r, t]
                if not heap_worse(fd, fi, acc, r):
                    heap_replace_top(fd, fi, k, acc, r)
            heap_sort(fd, fi)
            for j in range(k):
                if fi[j] != _NO_ROW:
                    D[q, j] = fd[j]
                    R[q, j] = fi[j]
        else:
            heap_sort(hd, hi)
            for j in range(k):
                if hi[j] != _NO_ROW:
                    D[q, j] = hd[j]
                    R[q, j] = hi[j]
    return D, R, nscanned
