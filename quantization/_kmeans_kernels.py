"""numba kernels of k-means: the capacity-limited assignment of :func:`~shoal.quantization.kmeans.capped_kmeans`."""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def balanced_assign(dist, capacity):
    """Assign each row to its nearest centroid that still has room (greedy, most-confident rows first).

    Parameters
    ----------
    dist : float32 (n, P)
    capacity : int64 (P,)
        Room left per centroid; ``sum(capacity) >= n``.

    Returns
    -------
    int64 (n,)
    """
    n, P = dist.shape
    room = capacity.copy()
    best = np.empty(n, dtype=np.float64)
    for i in range(n):
        b1 = np.inf
        b2 = np.inf
        for p in range(P):
            v = dist[i, p]
            if v < b1:
                b2 = b1
                b1 = v
            elif v < b2:
                b2 = v
        # rows with the largest regret (second - first) choose first: they lose most by moving
        best[i] = -(b2 - b1) if P > 1 else b1
    order = np.argsort(best)
    assign = np.full(n, -1, dtype=np.int64)
    for t in range(n):
        i = order[t]
        pref = np.argsort(dist[i])
        for u in range(P):
            p = pref[u]
            if room[p] > 0:
                room[p] -= 1
                assign[i] = p
                break
    return assign
