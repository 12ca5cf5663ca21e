"""numba search kernel of the Curator index (the update kernels and the layout are in :mod:`._curator_kernels`).

One query's whole search runs in one compiled call, in two alternating phases:

* **gather**: best-first traversal of the tenant's implicit tree (a binary min-heap of nodes keyed by centroid
  distance); each popped shortlist's rows are appended to a row buffer, until the candidate budget is reached;
* **scan**: the buffered rows are scored in one stream, prefetching a few rows ahead: exactly (float32), or, when a
  re-rank depth R is given, first by their 4-bit codes (one 32-byte row instead of a 200-byte one for d=50, scored with
  per-query weights per dimension, see :func:`_code_weights`) keeping the R best, which are then scored exactly.

Splitting them keeps the prefetch pipeline full across shortlist boundaries: a big tenant's shortlists hold a handful
of rows each, so prefetching inside one shortlist at a time left most memory latencies exposed. The candidate set
and the order candidates are scored in are the same as with a scan per shortlist.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..quantization._heap_kernels import insert_sorted
from ._curator_kernels import EMPTY, _bloom_hashes, _l2, _mix, _prefetch, bloom_test_hashed, nt_find

PF_AHEAD = 10      # rows prefetched ahead in the exact scan (each row is 3-5 cache lines)
PF_CODES = 16      # code rows prefetched ahead (one cache line each)
GATHER_CAP = 4096  # rows buffered between two scans


@njit(inline="always")
def _heap_push(hs, hn, hk, size, score, node, kind):
    i = size
    hs[i] = score
    hn[i] = node
    hk[i] = kind
    while i > 0:
        p = (i - 1) >> 1
        if hs[p] <= hs[i]:
            break
        hs[p], hs[i] = hs[i], hs[p]
        hn[p], hn[i] = hn[i], hn[p]
        hk[p], hk[i] = hk[i], hk[p]
        i = p
    return size + 1


@njit(inline="always")
def _heap_pop(hs, hn, hk, size):
    """Remove the root (the caller read it first); returns the new size."""
    size -= 1
    hs[0] = hs[size]
    hn[0] = hn[size]
    hk[0] = hk[size]
    i = 0
    while True:
        l = 2 * i + 1
        if l >= size:
            break
        m = l
        if l + 1 < size and hs[l + 1] < hs[l]:
            m = l + 1
        if hs[i] <= hs[m]:
            break
        hs[m], hs[i] = hs[i], hs[m]
        hn[m], hn[i] = hn[i], hn[m]
        hk[m], hk[i] = hk[i], hk[m]
        i = m
    return size


@njit(inline="always")
def _child_slots(keys, vals, parent, child_lo, child_hi, node, t, out):
    """``out[j]`` = slot of ``t``'s shortlist at child ``child_lo[node] + j``, or -2 where it has none.

    The (node, tenant) table starts the probe of every child of ``node`` at hash(node, tenant) + the child's rank,
    so the entries of one expansion lie in one run of the table: a single sweep from that hash to the first empty
    slot past the last rank finds them all. (Looking the children up one by one walked that run once per child,
    and a child without a shortlist walked it to its end: a few dozen slots each at the table's load.)
    """
    lo = child_lo[node]
    nch = child_hi[node] - lo
    for j in range(nch):
        out[j] = -2
    mask = keys.shape[0] - 1
    if nch > mask:  # more children than table slots: the sweep would wrap; look them up one by one
        for j in range(nch):
            p = nt_find(keys, parent, child_lo, lo + j, t)
            if p >= 0:
                out[j] = vals[p]
        return nch
    i = _mix(np.int64(node + 1) * 2147483648 + np.int64(t)) & mask
    off = 0
    while True:
        key = keys[i]
        if key == EMPTY:
            if off >= nch - 1:
                break
        elif key >= 0 and (key & 2147483647) == t:
            c = (key >> 31) - lo
            if 0 <= c < nch:
                out[c] = vals[i]
        i = (i + 1) & mask
        off += 1
    return nch


@njit(inline="always")
def _scan(rows, n, q, vecs, row_ids, use_ip, td, ti, k):
    """Score ``rows[:n]`` against ``q`` and merge them into the sorted top-k (``td``, ``ti``)."""
    d = q.shape[0]
    for j in range(min(n, PF_AHEAD)):
        for z in range(0, d, 16):
            _prefetch(vecs, rows[j], z)
        _prefetch(vecs, rows[j], d - 1)
    for j in range(n):
        if j + PF_AHEAD < n:
            rn = rows[j + PF_AHEAD]
            for z in range(0, d, 16):
                _prefetch(vecs, rn, z)
            _prefetch(vecs, rn, d - 1)
        r = rows[j]
        x = vecs[r]
        acc = np.float32(0.0)
        if use_ip:
            for z in range(d):
                acc += q[z] * x[z]
            acc = -acc
        else:
            for z in range(d):
                u = q[z] - x[z]
                acc += u * u
        if acc < td[k - 1]:
            insert_sorted(td, ti, k, acc, row_ids[r])


@njit(inline="always")
def _code_weights(q, sqlo, sqstep, use_ip, w):
    """Per-query weights that score a code row up to a constant, so ranking needs no table look-ups.

    Dimension z of a row decodes to ``sqlo[z] + (c_z + 1/2) * sqstep[z]`` for its 4-bit code ``c_z``, so
    ``-<q, x_hat> = const + sum_z c_z * (-q_z * step_z)`` and
    ``||q - x_hat||^2 = const + sum_z c_z * (step_z^2 * c_z - 2 * u_z * step_z)`` with
    ``u_z = q_z - sqlo_z - step_z / 2``. The constant is the same for every row and ranking ignores it.

    ``w`` float32 (4, stride): rows ``beta_lo, beta_hi, alpha_lo, alpha_hi`` per code byte (the low nibble holds the
    even dimension); 0 on the padding bytes, whose codes are 0 anyway.
    """
    d = q.shape[0]
    for b in range(w.shape[1]):
        for h in range(2):
            z = 2 * b + h
            beta = np.float32(0.0)
            alpha = np.float32(0.0)
            if z < d:
                st = sqstep[z]
                if use_ip:
                    beta = -q[z] * st
                else:
                    u = q[z] - sqlo[z] - np.float32(0.5) * st
                    beta = np.float32(-2.0) * u * st
                    alpha = st * st
            w[h, b] = beta
            w[2 + h, b] = alpha


@njit(inline="always")
def _scan_codes(rows, n, codes, w, use_ip, rd, rr, R):
    """Score ``rows[:n]`` by their codes (weights from :func:`_code_weights`) and merge them into the sorted R best
    (``rd`` scores, ``rr`` rows).

    The nibbles are unpacked in float arithmetic (``hi = floor(byte / 16)``, ``lo = byte - 16 * hi``, exact for
    0..255) over the whole padded row, so the loop vectorises: about 20% faster than summing a 256-entry table per
    byte, whose look-ups form one serial chain per row, and no table to fill per query.
    """
    nb = w.shape[1]
    blo = w[0]
    bhi = w[1]
    alo = w[2]
    ahi = w[3]
    for j in range(min(n, PF_CODES)):
        _prefetch(codes, rows[j], 0)
    for j in range(n):
        if j + PF_CODES < n:
            _prefetch(codes, rows[j + PF_CODES], 0)
        r = rows[j]
        acc = np.float32(0.0)
        if use_ip:
            for b in range(nb):
                f = np.float32(codes[r, b])
                hi = np.floor(f * np.float32(0.0625))
                lo = f - np.float32(16.0) * hi
                acc += lo * blo[b] + hi * bhi[b]
        else:
            for b in range(nb):
                f = np.float32(codes[r, b])
                hi = np.floor(f * np.float32(0.0625))
                lo = f - np.float32(16.0) * hi
                acc += lo * (alo[b] * lo + blo[b]) + hi * (ahi[b] * hi + bhi[b])
        if acc < rd[R - 1]:
            insert_sorted(rd, rr, R, acc, r)


@njit(inline="always")
def _flush(buf, nbuf, q, vecs, row_ids, use_ip, td, ti, k, codes, w, rd, rr, R):
    if R > 0:
        _scan_codes(buf, nbuf, codes, w, use_ip, rd, rr, R)
    else:
        _scan(buf, nbuf, q, vecs, row_ids, use_ip, td, ti, k)


# fast-math minus the no-NaN / no-Inf assumptions, which would let the compiler drop the finiteness check of the queries
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FAST)
def search_batch(Q, tens, k, budget, vboost, use_ip, normalize, cent, var, child_lo, child_hi, parent, bidx, bloom, start,
                 length, pool, keys, vals, vecs, row_ids, allowed, mask_mode, nhash, branch, codes, sqlo, sqstep,
                 rerank, tenant):
    """Best-first search of each query's tenant tree.

    Parameters
    ----------
    Q : float32 (nq, d)
    tens : int32 (nq,) or (0,)
        Tenant of each query; empty: every query searches ``tenant``.
    k, budget : int
        Results wanted; stop opening shortlists once ``budget`` candidates were gathered (the last shortlist opened
        is taken whole).
    vboost : float
        Node score = squared L2 to centroid - ``vboost`` * node variance.
    use_ip : bool
        Score candidates by negated inner product instead of squared L2.
    normalize : bool
        L2-normalise each query first (cosine).
    cent, var, child_lo, child_hi, parent, bidx, bloom
        The tree arrays (see :mod:`._curator_kernels`); passed one by one, as numba dispatches plain arrays much
        faster than tuples (this call is on every query's path).
    start, length, pool, keys, vals
        The shortlist arrays and the ``(node, tenant) -> shortlist`` table, read only.
    vecs : float32 (ntotal, d)
    row_ids : int64 (ntotal,)
    allowed : bool (m, ntotal)
        Row masks; used when ``mask_mode`` is 1 (row 0 for every query) or 2 (row i for query i). Rows that fail
        the mask are dropped while gathering and do not count against the budget.
    nhash : int
        Bloom hash functions.
    branch : int
        Most children of any node (the build setting).
    codes : uint8 (ntotal, >= ceil(d / 2)) or (ntotal, 0)
        4-bit codes of the rows (see :func:`._curator_kernels.sq4_encode`), used when ``0 < rerank < budget``;
        with no code columns (d > 128) every candidate is scored exactly.
    sqlo, sqstep : float32 (d,)
        The code grid: bucket c of dimension z is centred at ``sqlo[z] + (c + 0.5) * sqstep[z]``.
    rerank : int
        Keep the ``rerank`` candidates with the best code scores and score only those exactly; 0 scores every
        candidate exactly.
    tenant : int
        The tenant of every query when ``tens`` is empty.

    Returns
    -------
    D float32 (nq, k), I int64 (nq, k), nscored int64 (nq,) (-1 for a query with a non-finite entry, which is
    not searched)
    """
    nq = Q.shape[0]
    nn = cent.shape[0]
    D = np.full((nq, k), np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    nscored = np.zeros(nq, dtype=np.int64)
    hs = np.empty(nn + 1, dtype=np.float32)
    hn = np.empty(nn + 1, dtype=np.int32)
    hk = np.empty(nn + 1, dtype=np.int32)
    kids = np.empty(max(1, branch), dtype=np.int64)
    buf = np.empty(GATHER_CAP, dtype=np.int32)
    d = Q.shape[1]
    q = np.empty(d, dtype=np.float32)
    nblk = bloom.shape[0]
    R = rerank if 0 < rerank < budget and codes.shape[1] > 0 else 0
    w = np.zeros((4, codes.shape[1] if R > 0 else 1), dtype=np.float32)
    rd = np.empty(max(R, 1), dtype=np.float32)
    rr = np.empty(max(R, 1), dtype=np.int32)
    pool2 = pool.reshape((1, pool.shape[0]))  # 2-d views for _prefetch
    len2 = length.reshape((1, length.shape[0]))
    for qi in range(nq):
        q[:] = Q[qi]
        finite = True
        for z in range(d):
            finite &= np.isfinite(q[z])
        if not finite:
            nscored[qi] = -1
            continue
        if normalize:
            nrm = np.float32(0.0)
            for z in range(d):
                nrm += q[z] * q[z]
            if nrm > 0:
                nrm = np.float32(1.0) / np.sqrt(nrm)
                for z in range(d):
                    q[z] *= nrm
        if R > 0:
            _code_weights(q, sqlo, sqstep, use_ip, w)
            for j in range(R):
                rd[j] = np.inf
                rr[j] = -1
        t = tens[qi] if tens.shape[0] > 0 else tenant
        blk, ha, hb = _bloom_hashes(t, nblk)
        mrow = qi if mask_mode == 2 else 0
        td = D[qi]
        ti = I[qi]
        size = 0
        p = nt_find(keys, parent, child_lo, 0, t)
        if p >= 0:
            size = _heap_push(hs, hn, hk, size, np.float32(0.0), 0, vals[p])
        elif child_hi[0] > child_lo[0] and bloom_test_hashed(bloom, bidx[0], blk, ha, hb, nhash):
            size = _heap_push(hs, hn, hk, size, np.float32(0.0), 0, -1)
        gathered = 0
        nbuf = 0
        while size > 0 and gathered < budget:
            node = hn[0]
            slot = hk[0]
            size = _heap_pop(hs, hn, hk, size)
            if slot >= 0:
                s0 = start[slot]
                for j in range(length[slot]):
                    r = pool[s0 + j]
                    if mask_mode != 0 and (r >= allowed.shape[1] or not allowed[mrow, r]):
                        continue
                    if nbuf == GATHER_CAP:
                        _flush(buf, nbuf, q, vecs, row_ids, use_ip, td, ti, k, codes, w, rd, rr, R)
                        nbuf = 0
                    buf[nbuf] = r
                    nbuf += 1
                    gathered += 1
                continue
            lo = child_lo[node]
            nch = _child_slots(keys, vals, parent, child_lo, child_hi, node, t, kids)
            for j in range(nch):
                kind = kids[j]
                c = lo + j
                if kind == -2:
                    if child_hi[c] > child_lo[c] and bloom_test_hashed(bloom, bidx[c], blk, ha, hb, nhash):
                        kind = -1
                    else:
                        continue
                if kind >= 0:
                    # Start the shortlist's memory reads now: its header and first pool lines would otherwise be a
                    # chain of dependent misses when it is popped; here the children's misses overlap.
                    s0 = start[kind]
                    _prefetch(pool2, 0, s0)
                    _prefetch(pool2, 0, s0 + 16)
                    _prefetch(len2, 0, kind)
                sc = _l2(q, cent[c]) - vboost * var[c]
                size = _heap_push(hs, hn, hk, size, sc, c, kind)
        _flush(buf, nbuf, q, vecs, row_ids, use_ip, td, ti, k, codes, w, rd, rr, R)
        if R > 0:
            m = 0
            while m < R and rr[m] >= 0:
                m += 1
            _scan(rr, m, q, vecs, row_ids, use_ip, td, ti, k)
        nscored[qi] = gathered
    return D, I, nscored
