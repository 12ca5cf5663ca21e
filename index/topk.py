"""Top-k selection and the one merge every layer uses (segments, gRPC fan-out, Lambda tree).

Scores are distance keys where smaller is better (see ARCHITECTURE.md); padding is ``+inf`` / ``-1``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(D, I)`` filled with padding: ``D`` float32 ``+inf`` and ``I`` int64 ``-1``, both ``(nq, k)``."""
    return np.full((nq, k), np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


def topk_from_distances(dist: np.ndarray, k: int, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Select the ``k`` smallest keys of each row, ascending.

    Parameters
    ----------
    dist : float32 (nq, n)
        Distance keys; ``+inf`` marks excluded entries (they come back as padding).
    k : int
    labels : int64 (n,) or None
        Label of each column; ``None`` returns column numbers.

    Returns
    -------
    D : float32 (nq, k), I : int64 (nq, k)
    """
    from . import _topk_kernels as _kern  # numba compiles on first use; keep importing topk cheap

    dist = np.ascontiguousarray(dist, dtype=np.float32)
    nq, n = dist.shape
    D, I = empty_result(nq, k)
    kk = min(k, n)
    if kk == 0 or nq == 0:
        return D, I
    # one bounded heap per row, ordered by (key, column): ties go to the smaller column, +inf never enters
    hd, hi = _kern.init_heaps(nq, kk)
    if n * nq >= 1 << 16 and _kern.use_parallel(nq):
        _kern.heap_update_keys(dist, 0, hd, hi)
        _kern.sort_heaps(hd, hi)
    else:
        _kern.heap_update_keys_serial(dist, 0, hd, hi)
        _kern.sort_heaps_serial(hd, hi)
    found = hi >= 0
    D[:, :kk] = hd
    cols = np.where(found, hi, 0)
    I[:, :kk] = np.where(found, cols if labels is None else labels[cols], -1)
    return D, I


def merge_topk(parts: Iterable[Sequence[np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge several ``(D, I)`` results for the same queries into one ascending top-``k``.

    Parameters
    ----------
    parts : iterable of (D float32 (nq, ki), I int64 (nq, ki))
        Partial results; each may have its own width ``ki``. Padding (``-1``) never displaces a real result.
    k : int

    Returns
    -------
    D : float32 (nq, k), I : int64 (nq, k)
        Ties are broken by smaller id, so the merge is independent of the order of ``parts``. An id that appears in
        several parts (e.g. the same row in a tail and an index) is kept once, with its smallest key.
    """
    parts = [(np.asarray(d, dtype=np.float32), np.asarray(i, dtype=np.int64)) for d, i in parts]
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    nq = parts[0][0].shape[0]
    for d, i in parts:
        if d.shape != i.shape or d.shape[0] != nq:
            raise ValueError(f"merge_topk: mismatched part shapes {d.shape} / {i.shape} for {nq} queries")
    D = np.concatenate([d for d, _ in parts], axis=1)
    I = np.concatenate([i for _, i in parts], axis=1)
    D = np.where(I < 0, np.inf, D).astype(np.float32)
    I_sort = np.where(I < 0, np.iinfo(np.int64).max, I)
    order = np.lexsort((I_sort, D), axis=1)
    D = np.take_along_axis(D, order, axis=1)
    I = np.take_along_axis(I, order, axis=1)
    if len(parts) > 1 and I.shape[1] > 1:
        # drop repeated ids: after sorting by (key, id) the first occurrence has the smallest key
        I_by_id = np.where(I < 0, np.iinfo(np.int64).max, I)
        o2 = np.argsort(I_by_id, axis=1, kind="stable")
        sid = np.take_along_axis(I_by_id, o2, axis=1)
        dup_sorted = np.zeros_like(sid, dtype=bool)
        dup_sorted[:, 1:] = (sid[:, 1:] == sid[:, :-1]) & (sid[:, 1:] != np.iinfo(np.int64).max)
        dup = np.zeros_like(dup_sorted)
        np.put_along_axis(dup, o2, dup_sorted, axis=1)
        if dup.any():
            D = np.where(dup, np.inf, D)
            I = np.where(dup, -1, I)
            I_sort = np.where(I < 0, np.iinfo(np.int64).max, I)
            order = np.lexsort((I_sort, D), axis=1)
            D = np.take_along_axis(D, order, axis=1)
            I = np.take_along_axis(I, order, axis=1)
    out_D, out_I = empty_result(nq, k)
    w = min(k, D.shape[1])
    out_D[:, :w] = D[:, :w]
    out_I[:, :w] = I[:, :w]
    return out_D, out_I
