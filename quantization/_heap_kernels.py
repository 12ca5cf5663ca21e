"""numba primitives for top-k selection shared by the scan kernels (PQ/ADC, IVF, exact, Curator): a bounded max-heap,
and insertion into a short sorted array (cheaper when few keys enter, as after the first ones of a small scan).

A heap is two arrays: ``hd`` float32 (k,) keys and ``hi`` int64 (k,) row/column numbers, ordered by ``(key, index)``
so that among equal keys the smaller index wins and results do not depend on scan order. The root ``hd[0]`` is the
worst entry kept. Empty slots hold ``+inf`` / ``-1``.
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def heap_worse(hd, hi, dist, idx):
    """True when ``(dist, idx)`` would not enter the heap (it is not better than the current root)."""
    return dist > hd[0] or (dist == hd[0] and idx >= hi[0])


@njit(cache=True, nogil=True)
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


@njit(inline="always")
def insert_sorted(keys, vals, n, key, val):
    """Insert ``(key, val)`` into the ascending ``keys[:n]`` / ``vals[:n]``, dropping the last entry (the caller has
    checked ``key < keys[n - 1]``). Equal keys keep their order: an entry goes after those equal to it."""
    pos = n - 1
    while pos > 0 and keys[pos - 1] > key:
        keys[pos] = keys[pos - 1]
        vals[pos] = vals[pos - 1]
        pos -= 1
    keys[pos] = key
    vals[pos] = val
