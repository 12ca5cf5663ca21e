"""numba kernels for product codes: a bounded max-heap for top-k, ADC scans over packed byte codes.

Codes reach these kernels in *byte* form: one ``uint8`` per byte of the stored code, and one 256-entry look-up table
per byte. For 8-bit PQ a byte is one sub-space code; for 4-bit PQ a byte packs two sub-space codes and its table is
the sum of the two sub-space tables (built once per query by ``pq.byte_tables``), so one scan kernel serves both.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def heap_replace_top(hd, hi, k, dist, idx):
    """Replace the root of a max-heap ``(hd float32 (k,), hi int64 (k,))`` by ``(dist, idx)`` and sift it down.

    Ties on ``dist`` are ordered by ``idx`` (larger index is "worse"), so results do not depend on scan order.
    """
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        right = left + 1
        child = left
        if right < k and (hd[right] > hd[left] or (hd[right] == hd[left] and hi[right] > hi[left])):
            child = right
        if hd[child] > dist or (hd[child] == dist and hi[child] > idx):
            hd[pos] = hd[child]
            hi[pos] = hi[child]
            pos = child
        else:
            break
    hd[pos] = dist
    hi[pos] = idx


@njit(cache=True)
def heap_worse(hd, hi, dist, idx):
    """True when ``(dist, idx)`` would not enter the heap (it is not better than the current root)."""
    return dist > hd[0] or (dist == hd[0] and idx >= hi[0])


@njit(cache=True)
def heap_sort(hd, hi):
    """Sort a heap's arrays ascending by ``(dist, idx)`` in place (insertion sort: ``k`` is small)."""
    k = hd.shape[0]
    for a in range(1, k):
        d = hd[a]
        i = hi[a]
        b = a - 1
        while b >= 0 and (hd[b] > d or (hd[b] == d and hi[b] > i)):
            hd[b + 1] = hd[b]
            hi[b + 1] = hi[b]
            b -= 1
        hd[b + 1] = d
        hi[b + 1] = i


@njit(cache=True)
def adc_scan_all(tables, codes, k, mask):
    """Exhaustive ADC top-``k`` of each query over every code (used by tuning and flat PQ search).

    Parameters
    ----------
    tables : float32 (nq, S, 256)
        Byte tables (see module doc).
    codes : uint8 (n, S)
    k : int
    mask : bool (n,) or (0,)
        Rows with ``False`` are skipped; an empty mask allows every row.

    Returns
    -------
    D : float32 (nq, k) ascending (``+inf`` padding), I : int64 (nq, k) row numbers (``-1`` padding)
    """
    nq = tables.shape[0]
    n, S = codes.shape
    use_mask = mask.shape[0] > 0
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    for q in range(nq):
        hd = np.full(k, np.inf, dtype=np.float32)
        hi = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        t = tables[q]
        for r in range(n):
            if use_mask and not mask[r]:
                continue
            acc = np.float32(0.0)
            for s in range(S):
                acc += t[s, codes[r, s]]
            if not heap_worse(hd, hi, acc, r):
                heap_replace_top(hd, hi, k, acc, r)
        heap_sort(hd, hi)
        for j in range(k):
            D[q, j] = hd[j]
            I[q, j] = hi[j] if hi[j] != np.iinfo(np.int64).max else -1
    return D, I


@njit(cache=True)
def adc_scores(tables, codes, rows):
    """ADC distance keys of chosen rows per query.

    Parameters
    ----------
    tables : float32 (nq, S, 256)
    codes : uint8 (n, S)
    rows : int64 (nq, c)
        Rows to score (``-1`` entries give ``+inf``).

    Returns
    -------
    float32 (nq, c)
    """
    nq, c = rows.shape
    S = codes.shape[1]
    out = np.empty((nq, c), dtype=np.float32)
    for q in range(nq):
        for j in range(c):
            r = rows[q, j]
            if r < 0:
                out[q, j] = np.inf
                continue
            acc = np.float32(0.0)
            for s in range(S):
                acc += tables[q, s, codes[r, s]]
            out[q, j] = acc
    return out
