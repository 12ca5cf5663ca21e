"""numba selection by ``(key, index)`` with keys packed into uint64: a bounded max-heap and a k-smallest selection.

A float32 key and an index below 2**32 pack into one uint64 (:func:`pack_key`) whose integer order is the
``(key, index)`` order the other scans use (ties to the smaller index), so results never depend on scan order, and
each comparison is one instruction instead of the float and tie tests of ``._heap_kernels``: the 4-bit fast scan
inserts hundreds of candidates per query when it keeps 40-200 for re-ranking, and those tests' mispredicted
branches were most of the cost of an insertion.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._simd import bits_f32, f32_bits

#: an empty heap slot: larger than every packed key
_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True)
def smallest_sorted(keys, k, out, work):
    """Indices of the ``k`` smallest of ``keys`` float32 (n,) by ``(key, index)``, ascending, into ``out``; returns
    how many (``min(k, n)``). ``work`` is a uint64 array of at least ``n`` entries.

    Used to pick the lists a query probes (k = nprobe of ~1,000 keys). A bounded heap takes about
    ``k (1 + ln(n / k))`` entries at some 30 ns each (6 us per query at nprobe 32, 12 at 64). For ``k > 16`` a
    sample of every 8th key gives instead a key below which about ``3 k / 2`` keys are expected; one pass gathers
    them (a superset of the answer whenever there are at least ``k``) and they are sorted as packed integers. When
    the sample misleads (fewer than ``k`` gathered) the heap runs after all: the same answer, slower.
    """
    n = keys.shape[0]
    k = min(k, n)
    if k <= 0:
        return 0
    stride = 8
    ns = n // stride
    t = (3 * k) // (2 * stride) + 2
    m = 0
    if k > 16 and t < ns:
        for j in range(t):
            work[j] = _EMPTY
        for j in range(ns):
            v = pack_key(keys[j * stride], j * stride)
            if v < work[0]:
                u64_heap_replace_top(work, t, v)
        thr = unpack_key(work[0])
        for j in range(n):
            if keys[j] <= thr:
                work[m] = pack_key(keys[j], j)
                m += 1
    if m < k:
        for j in range(k):
            work[j] = _EMPTY
        for j in range(n):
            v = pack_key(keys[j], j)
            if v < work[0]:
                u64_heap_replace_top(work, k, v)
        m = k
    w = np.sort(work[:m])
    for j in range(k):
        out[j] = unpack_index(w[j])
    return k


@njit(cache=True, inline="always")
def pack_key(key, index):
    """``(key float32, index < 2**32)`` as one uint64 whose integer order is the ``(key, index)`` order
    (IEEE bits made monotonic: negative keys inverted, positive ones offset by the sign bit)."""
    u = f32_bits(np.float32(key))
    u = ~u if u & np.uint32(0x80000000) else u | np.uint32(0x80000000)
    return (np.uint64(u) << np.uint64(32)) | np.uint64(index)


@njit(cache=True, inline="always")
def unpack_key(v):
    """The float32 key of a packed value (inverse of :func:`pack_key`)."""
    u = np.uint32(v >> np.uint64(32))
    u = u & np.uint32(0x7FFFFFFF) if u & np.uint32(0x80000000) else ~u
    return bits_f32(u)


@njit(cache=True, inline="always")
def unpack_index(v):
    return np.int64(v & np.uint64(0xFFFFFFFF))


@njit(cache=True, inline="always")
def u64_heap_replace_top(h, k, v):
    """Replace the root (largest) of the max-heap ``h[:k]`` uint64 by ``v`` and sift it down.

    Packed ``(key, index)`` values compare in one instruction, so the sift has one hard-to-predict branch per
    insertion (where it stops) instead of the float/index tie tests of ``._heap_kernels``.
    """
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= k:
            break
        child = left
        right = left + 1
        if right < k and h[right] > h[left]:
            child = right
        hc = h[child]
        if hc > v:
            h[pos] = hc
            pos = child
        else:
            break
    h[pos] = v
