"""numba kernels for product codes: ADC scans over packed byte codes (top-k through :mod:`._heap_kernels`).

Codes reach these kernels in *byte* form: one ``uint8`` per byte of the stored code, and one 256-entry look-up table
per byte. For 8-bit PQ a byte is one sub-space code; for 4-bit PQ a byte packs two sub-space codes and its table is
the sum of the two sub-space tables (built once per query by ``pq.byte_tables``), so one scan kernel serves both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._heap_kernels import heap_replace_top, heap_sort, heap_worse


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
