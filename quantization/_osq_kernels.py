"""numba kernels of OSQ (SQUASH): bit packing, dimension extraction, Hamming codes, search levels.

Layout conventions shared with :mod:`shoal.quantization.osq`:

* ``segs`` uint8 ``(nseg, n)``: segment-major packed codes. Row ``r``'s bit string is the concatenation of its
  per-dimension codes, most significant bit first; segment ``s`` holds byte ``s`` of every row's bit string.
* Dimension ``j`` with ``bits[j] > 0`` starts at bit offset ``off[j]``; ``dim_byte[j] = off[j] // 8``,
  ``dim_shift[j]`` is the right shift that brings its code to the low bits of the 16-bit window
  ``segs[byte] << 8 | segs[byte + 1]``, and ``dim_two[j]`` says whether the code crosses into the next byte.
* ``cell_lo``/``cell_hi`` float32 ``(d, 256)``: the smallest and largest member value of each cell; bounds use them, so
  they are valid for every stored row (kept up to date on ``add``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

METRIC_L2 = 0
METRIC_IP = 1

#: level-2 modes of :func:`levels12`
LEVEL2_EXACT = 0
LEVEL2_BOUNDS = 1
LEVEL2_HEAD = 2

STATUS_NO = 0
STATUS_SURE = 1
STATUS_MAYBE = 2


@njit(cache=True)
def pack_codes(codes, bits, nseg):
    """Pack per-dimension codes MSB-first into segment-major bytes.

    Parameters
    ----------
    codes : uint8 (n, d)
        ``codes[r, j] < 2**bits[j]``.
    bits : int64 (d,)
        Bits per dimension, 0..8.
    nseg : int
        ``ceil(sum(bits) / 8)``.

    Returns
    -------
    uint8 (nseg, n)
    """
    n, d = codes.shape
    out = np.zeros((nseg, n), dtype=np.uint8)
    for r in range(n):
        pos = 0
        for j in range(d):
            b = bits[j]
            c = np.int64(codes[r, j])
            for t in range(b - 1, -1, -1):
                if (c >> t) & 1:
                    out[pos >> 3, r] |= np.uint8(1 << (7 - (pos & 7)))
                pos += 1
    return out


@njit(cache=True)
def extract_dim(segs, rows, byte, shift, two, mask):
    """Codes of one dimension for ``rows`` (dimensional extraction: one or two byte columns and a shift).

    Parameters
    ----------
    segs : uint8 (nseg, n)
    rows : int64 (m,)
    byte, shift, two, mask : int
        From the dimension's layout (see module docstring).

    Returns
    -------
    int64 (m,)
    """
    m = rows.shape[0]
    out = np.empty(m, dtype=np.int64)
    if two:
        lo_col = segs[byte + 1]
    else:
        lo_col = segs[byte]
    hi_col = segs[byte]
    for i in range(m):
        r = rows[i]
        if two:
            w = (np.int64(hi_col[r]) << 8) | np.int64(lo_col[r])
        else:
            w = np.int64(hi_col[r])
        out[i] = (w >> shift) & mask
    return out


@njit(cache=True, inline="always")
def _code_at(segs, r, byte, shift, two, mask):
    if two:
        w = (np.int64(segs[byte, r]) << 8) | np.int64(segs[byte + 1, r])
    else:
        w = np.int64(segs[byte, r])
    return (w >> shift) & mask


@njit(cache=True)
def sign_codes(y, thresholds, nwords):
    """Binary codes: bit ``j`` set when ``y[:, j] > thresholds[j]`` (first ``len(thresholds)`` dims).

    Returns
    -------
    uint64 (n, nwords)
    """
    n = y.shape[0]
    nb = thresholds.shape[0]
    out = np.zeros((n, nwords), dtype=np.uint64)
    for r in range(n):
        for j in range(nb):
            if y[r, j] > thresholds[j]:
                out[r, j >> 6] |= np.uint64(1) << np.uint64(j & 63)
    return out


@njit(cache=True, inline="always")
def popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True)
def hamming(codes, rows, qcode):
    """Hamming distances between ``qcode`` uint64 (W,) and ``codes[rows]`` (uint64 (n, W)); int64 (m,)."""
    m = rows.shape[0]
    W = codes.shape[1]
    out = np.empty(m, dtype=np.int64)
    for i in range(m):
        r = rows[i]
        h = 0
        for w in range(W):
            h += popcount64(codes[r, w] ^ qcode[w])
        out[i] = h
    return out


@njit(cache=True)
def cluster_counts(status, row_cluster, G):
    """Sure and maybe rows per cluster for every status row, in one pass.

    Parameters
    ----------
    status : uint8 (ns, n)
    row_cluster : int32 (n,)  global cluster of each row (< G)
    G : int

    Returns
    -------
    sure, maybe : int64 (ns, G)
    """
    ns, n = status.shape
    sure = np.zeros((ns, G), dtype=np.int64)
    maybe = np.zeros((ns, G), dtype=np.int64)
    for s in range(ns):
        for r in range(n):
            v = status[s, r]
            if v == STATUS_SURE:
                sure[s, row_cluster[r]] += 1
            elif v == STATUS_MAYBE:
                maybe[s, row_cluster[r]] += 1
    return sure, maybe


@njit(cache=True)
def bounds_rows(segs, rows, q, bits, dim_byte, dim_shift, dim_two, cell_lo, cell_hi, metric):
    """Per-row lower and upper bounds of the distance key between ``q`` and ``rows``, dimension by dimension.

    Parameters
    ----------
    segs : uint8 (nseg, n)
    rows : int64 (m,)
    q : float32 (d,)  rotated query
    bits, dim_byte, dim_shift, dim_two : int64 (d,)
    cell_lo, cell_hi : float32 (d, 256)
    metric : int  METRIC_L2 (squared L2) or METRIC_IP (negated inner product)

    Returns
    -------
    L, U : float32 (m,)
    """
    m = rows.shape[0]
    d = q.shape[0]
    L = np.zeros(m, dtype=np.float32)
    U = np.zeros(m, dtype=np.float32)
    for j in range(d):
        b = bits[j]
        qj = q[j]
        if b == 0:
            lo = cell_lo[j, 0]
            hi = cell_hi[j, 0]
            if metric == METRIC_L2:
                a = lo - qj
                c = qj - hi
                g = max(a, c, np.float32(0.0))
                f = max(qj - lo, hi - qj)
                gl = g * g
                gu = f * f
            else:
                x1 = qj * lo
                x2 = qj * hi
                gl = -max(x1, x2)
                gu = -min(x1, x2)
            for i in range(m):
                L[i] += gl
                U[i] += gu
            continue
        byte = dim_byte[j]
        shift = dim_shift[j]
        two = dim_two[j]
        mask = (1 << b) - 1
        for i in range(m):
            c = _code_at(segs, rows[i], byte, shift, two, mask)
            lo = cell_lo[j, c]
            hi = cell_hi[j, c]
            if metric == METRIC_L2:
                a = lo - qj
                e = qj - hi
                g = max(a, e, np.float32(0.0))
                f = max(qj - lo, hi - qj)
                L[i] += g * g
                U[i] += f * f
            else:
                x1 = qj * lo
                x2 = qj * hi
                L[i] -= max(x1, x2)
                U[i] -= min(x1, x2)
    return L, U


@njit(cache=True)
def bound_tables(q, bits, cell_lo, cell_hi, metric, tab_l, tab_u):
    """Per-query look-up tables: ``tab_l[j, c]`` / ``tab_u[j, c]`` are the smallest / largest contribution of
    dimension ``j`` to the distance key for a row in cell ``c``; returns the summed contributions of the 0-bit
    dimensions ``(const_l, const_u)``."""
    d = q.shape[0]
    const_l = np.float32(0.0)
    const_u = np.float32(0.0)
    for j in range(d):
        qj = q[j]
        ncell = 1 << bits[j]
        for c in range(ncell):
            lo = cell_lo[j, c]
            hi = cell_hi[j, c]
            if not lo <= hi:  # empty cell: no row refers to it
                gl = np.float32(0.0)
                gu = np.float32(0.0)
            elif metric == METRIC_L2:
                a = lo - qj
                e = qj - hi
                g = max(a, e, np.float32(0.0))
                f = max(qj - lo, hi - qj)
                gl = g * g
                gu = f * f
            else:
                x1 = qj * lo
                x2 = qj * hi
                gl = -max(x1, x2)
                gu = -min(x1, x2)
            if bits[j] == 0:
                const_l += gl
                const_u += gu
            else:
                tab_l[j, c] = gl
                tab_u[j, c] = gu
    return const_l, const_u


@njit(cache=True)
def bounds_lut(segs, rows, bits, dim_byte, dim_shift, dim_two, tab_l, tab_u, const_l, const_u, L, U):
    """Lower / upper bounds of ``rows`` from per-query tables, dimension by dimension (segment-major reads).

    ``L`` and ``U`` float32 (>= m,) receive the bounds of the ``m = len(rows)`` rows.
    """
    m = rows.shape[0]
    d = bits.shape[0]
    for i in range(m):
        L[i] = const_l
        U[i] = const_u
    for j in range(d):
        b = bits[j]
        if b == 0:
            continue
        byte = dim_byte[j]
        shift = dim_shift[j]
        mask = (1 << b) - 1
        tl = tab_l[j]
        tu = tab_u[j]
        if dim_two[j]:
            col0 = segs[byte]
            col1 = segs[byte + 1]
            for i in range(m):
                r = rows[i]
                c = (((np.int64(col0[r]) << 8) | np.int64(col1[r])) >> shift) & mask
                L[i] += tl[c]
                U[i] += tu[c]
        else:
            col0 = segs[byte]
            for i in range(m):
                c = (np.int64(col0[rows[i]]) >> shift) & mask
                L[i] += tl[c]
                U[i] += tu[c]


@njit(cache=True)
def _slack(t):
    return t + np.float32(1e-4) * abs(t) + np.float32(1e-5)


@njit(cache=True)
def _offer_worst(best, k, v):
    """Put ``v`` in place of the largest of the ``k`` unordered keys ``best`` if it is smaller; return the largest
    key after that (the k-th smallest so far)."""
    w = 0
    for t in range(1, k):
        if best[t] > best[w]:
            w = t
    if v < best[w]:
        best[w] = v
    mx = best[0]
    for t in range(1, k):
        if best[t] > mx:
            mx = best[t]
    return mx


@njit(cache=True, fastmath=True)
def exact_keys_rows(vectors, rows, q, metric, out):
    """Exact distance keys of ``rows`` (float32 into ``out[:m]``)."""
    d = q.shape[0]
    for i in range(rows.shape[0]):
        r = rows[i]
        acc = np.float32(0.0)
        if metric == METRIC_L2:
            for j in range(d):
                diff = q[j] - vectors[r, j]
                acc += diff * diff
        else:
            for j in range(d):
                acc -= q[j] * vectors[r, j]
        out[i] = acc


@njit(cache=True, fastmath=True)
def _sq_dist_range(vectors, r, q, j0, j1):
    acc = np.float32(0.0)
    for j in range(j0, j1):
        diff = q[j] - vectors[r, j]
        acc += diff * diff
    return acc


@njit(cache=True)
def exact_keys_abandon(vectors, head_vecs, rows, q, st, k, out, best, seeded, hs):
    """Squared L2 keys of ``rows`` (into ``out[:m]``) with early abandoning.

    A row's sum over its first dimensions is a lower bound of its key; once it exceeds ``tau``, the ``k``-th smallest
    key of the *sure* rows computed so far, the row cannot enter the top ``k`` and that partial sum (greater than
    every later ``tau``, so level 2 drops it) is stored instead. The rotated dimensions come in decreasing variance,
    so most rows stop early. Pass 1 sums the first ``head`` dimensions of every row; the sure rows with the ``k``
    smallest head sums get full keys first, which makes ``tau`` tight before pass 2 continues the other rows.
    ``head_vecs`` float32 (n, head) is ``vectors[:, :head]`` stored contiguously (pass 1 streams it).
    ``best`` float32 (k,), ``seeded`` bool (>= m,) and ``hs`` float32 (>= m,) are scratch.
    """
    d = q.shape[0]
    m = rows.shape[0]
    head = head_vecs.shape[1]
    block = 64
    nsure = 0
    for i in range(m):
        out[i] = _sq_dist_range(head_vecs, rows[i], q, 0, head)
        if st[rows[i]] == STATUS_SURE:
            nsure += 1
    best[:] = np.inf  # the k smallest sure keys so far (unordered)
    tau = np.float32(np.inf)
    seeded[:m] = False
    if nsure > k:
        u = 0
        for i in range(m):
            if st[rows[i]] == STATUS_SURE:
                hs[u] = out[i]
                u += 1
        cut = np.partition(hs[:nsure], k - 1)[k - 1]
        seeds = 0
        mx = np.float32(np.inf)
        for i in range(m):
            if seeds < 2 * k and out[i] <= cut and st[rows[i]] == STATUS_SURE:
                full = out[i] + _sq_dist_range(vectors, rows[i], q, head, d)
                out[i] = full
                seeded[i] = True
                seeds += 1
                mx = _offer_worst(best, k, full)
        tau = _slack(mx)
    for i in range(m):
        if seeded[i]:
            continue  # full key already in out[i] and counted in best
        r = rows[i]
        acc = out[i]
        j = head
        while j < d and acc <= tau:
            je = min(j + block, d)
            acc += _sq_dist_range(vectors, r, q, j, je)
            j = je
        out[i] = acc
        if j >= d and acc <= tau and st[r] == STATUS_SURE:
            tau = _slack(_offer_worst(best, k, acc))


@njit(cache=True, fastmath=True)
def head_bounds(head, tail_norms, rows, q, metric, L, U):
    """Bounds of the distance key from the head dimensions (exact) and the tail norms (Cauchy-Schwarz).

    With ``h`` the exact squared L2 (or inner product) over the ``H = head.shape[1]`` first dimensions and
    ``a = |q_tail|``, ``b = |x_tail|``: L2 ``h + (a - b)^2 <= key <= h + (a + b)^2``; inner product (key = -ip)
    ``-h - a b <= key <= -h + a b``. Fills ``L[:m]``, ``U[:m]``.
    """
    H = head.shape[1]
    d = q.shape[0]
    qt = np.float32(0.0)
    for j in range(H, d):
        qt += q[j] * q[j]
    a = np.float32(np.sqrt(qt))
    for i in range(rows.shape[0]):
        r = rows[i]
        acc = np.float32(0.0)
        if metric == METRIC_L2:
            for j in range(H):
                diff = q[j] - head[r, j]
                acc += diff * diff
            b = tail_norms[r]
            L[i] = acc + (a - b) * (a - b)
            U[i] = acc + (a + b) * (a + b)
        else:
            for j in range(H):
                acc += q[j] * head[r, j]
            ab = a * tail_norms[r]
            L[i] = -acc - ab
            U[i] = -acc + ab


@njit(cache=True)
def _select(kept, L, U, st, k, rerank, cand, key, out_row, cnt):
    """Level 2's selection for one query over its ``m`` kept rows with bounds ``L``/``U``: drop rows whose lower
    bound exceeds the ``k``-th smallest upper bound of a sure row, rank the rest by the middle of their bounds, and
    write them to ``out_row`` (at most its length) until ``rerank`` sure rows are taken. ``cand``/``key`` are
    scratch (>= m); ``cnt[2]``/``cnt[3]`` receive the survivors and the rows written."""
    m = kept.shape[0]
    cap = out_row.shape[0]
    # tau: the k-th smallest upper bound of a sure row, from a sorted array of the k smallest seen (one compare per
    # row once it is full; np.partition over a copy cost 3x the level-2 keys of low-dimensional rows)
    topk = np.full(k, np.inf, dtype=np.float32)
    for t in range(m):
        u_ = U[t]
        if u_ < topk[k - 1] and st[kept[t]] == STATUS_SURE:
            i = k - 1
            while i > 0 and topk[i - 1] > u_:
                topk[i] = topk[i - 1]
                i -= 1
            topk[i] = u_
    tau = _slack(topk[k - 1]) if np.isfinite(topk[k - 1]) else np.float32(np.inf)
    # rows whose lower bound exceeds tau cannot enter the top k; the rest are ranked by the middle of their
    # bounds (a better estimate of the distance than either bound alone)
    alive = 0
    for t in range(m):
        if L[t] <= tau:
            key[alive] = L[t] + U[t]
            cand[alive] = kept[t]
            alive += 1
    if alive > cap:
        # only the best ``cap`` keys can be taken: select them before sorting
        thr = np.partition(key[:alive], cap - 1)[cap - 1]
        a2 = 0
        for t in range(alive):
            if key[t] <= thr:
                key[a2] = key[t]
                cand[a2] = cand[t]
                a2 += 1
        cnt[2] = alive
        alive = a2
    else:
        cnt[2] = alive
    order = np.argsort(key[:alive])
    taken = 0
    sure_taken = 0
    for t in range(alive):
        if sure_taken >= rerank or taken >= cap:
            break
        r = cand[order[t]]
        out_row[taken] = r
        taken += 1
        if st[r] == STATUS_SURE:
            sure_taken += 1
    cnt[3] = taken


@njit(cache=True, inline="always")
def _visitors(qcl, c, size, qs):
    """The queries visiting cluster ``c`` (``qcl[:, c] != 0``) into ``qs``; returns their number (0 for an empty
    cluster of ``size`` 0)."""
    nv = 0
    if size > 0:
        for qi in range(qcl.shape[0]):
            if qcl[qi, c] != 0:
                qs[nv] = qi
                nv += 1
    return nv


@njit(cache=True, fastmath=True)
def levels12_cluster_major(status, sidx, qcl, list_indptr, qrot, vectors, head, tail_norms, metric, k, rerank,
                           out_rows, counts, level2):
    """:func:`levels12` without level-1 pruning (every candidate kept), cluster by cluster instead of query by query.

    Requires positions ordered by cluster (cluster ``c`` is positions ``list_indptr[c]:list_indptr[c + 1]``). Each
    visited cluster's rows are compared with all the batch's queries that visit it while they are in cache, so
    they are read from memory once per batch instead of once per query. ``level2`` is ``LEVEL2_EXACT`` (exact
    keys from ``vectors``) or ``LEVEL2_HEAD`` (bounds from ``head`` and ``tail_norms``, as in
    :func:`head_bounds`). Candidates of each query come in the same order as in :func:`levels12` (cluster, then
    position); the other arguments and outputs are as there.
    """
    nq = qrot.shape[0]
    C = qcl.shape[1]
    n = vectors.shape[0]
    d = qrot.shape[1]
    H = head.shape[1]
    ns = status.shape[0]
    use_head = level2 == LEVEL2_HEAD
    A = head if use_head else vectors
    dA = H if use_head else d
    # candidates per query from per-cluster counts of passing rows
    cl_cnt = np.zeros((ns, C), dtype=np.int64)
    for s_ in range(ns):
        st = status[s_]
        for c in range(C):
            for r in range(list_indptr[c], list_indptr[c + 1]):
                if st[r] != STATUS_NO:
                    cl_cnt[s_, c] += 1
    off = np.zeros(nq + 1, dtype=np.int64)
    for qi in range(nq):
        tot = 0
        for c in range(C):
            if qcl[qi, c] != 0:
                tot += cl_cnt[sidx[qi], c]
        off[qi + 1] = off[qi] + tot
    total = off[nq]
    crow = np.empty(total, dtype=np.int64)
    cL = np.empty(total, dtype=np.float32)
    cU = np.empty(total, dtype=np.float32)
    wp = off[:nq].copy()
    qt = np.zeros(nq, dtype=np.float32)  # tail norms of the queries (head mode)
    for qi in range(nq):
        acc = np.float32(0.0)
        for j in range(H, d):
            acc += qrot[qi, j] * qrot[qi, j]
        qt[qi] = np.sqrt(acc)
    qs = np.empty(nq, dtype=np.int64)
    Qs = np.empty((nq, dA), dtype=np.float32)
    for c in range(C):
        lo = list_indptr[c]
        hi = list_indptr[c + 1]
        nv = _visitors(qcl, c, hi - lo, qs)
        w = 0
        for u in range(nv):  # only the queries with passing rows here, their vectors side by side
            qi = qs[u]
            if cl_cnt[sidx[qi], c] > 0:
                qs[w] = qi
                for j in range(dA):
                    Qs[w, j] = qrot[qi, j]
                w += 1
        nv = w
        if nv == 0:
            continue
        for u in range(nv):
            qi = qs[u]
            st = status[sidx[qi]]
            qv = Qs[u]
            w = wp[qi]
            for r in range(lo, hi):
                if st[r] == STATUS_NO:
                    continue
                xv = A[r]
                acc = np.float32(0.0)
                if metric == METRIC_L2:
                    for j in range(dA):
                        diff = qv[j] - xv[j]
                        acc += diff * diff
                else:
                    for j in range(dA):
                        acc += qv[j] * xv[j]
                if use_head:
                    b = tail_norms[r]
                    a = qt[qi]
                    if metric == METRIC_L2:
                        cL[w] = acc + (a - b) * (a - b)
                        cU[w] = acc + (a + b) * (a + b)
                    else:
                        cL[w] = -acc - a * b
                        cU[w] = -acc + a * b
                else:
                    key = acc if metric == METRIC_L2 else -acc
                    cL[w] = key
                    cU[w] = key
                crow[w] = r
                w += 1
            wp[qi] = w
    cand = np.empty(n, dtype=np.int64)
    key_s = np.empty(n, dtype=np.float32)
    for qi in range(nq):
        for w in range(out_rows.shape[1]):
            out_rows[qi, w] = -1
        m = off[qi + 1] - off[qi]
        counts[qi, 0] = m
        counts[qi, 1] = m
        if m == 0:
            counts[qi, 2] = 0
            counts[qi, 3] = 0
            continue
        _select(crow[off[qi]:off[qi + 1]], cL[off[qi]:off[qi + 1]], cU[off[qi]:off[qi + 1]], status[sidx[qi]], k,
                rerank, cand, key_s, out_rows[qi], counts[qi])


@njit(cache=True, inline="always")
def _offer_streamed(bd, br, bs, fill, nsure, qi, key, r, s, k, rerank):
    """Insert ``(key, r, s)`` into one query's sorted buffer (keys ``bd``, rows ``br``, statuses ``bs``; ``fill[qi]``
    entries, ``nsure[qi]`` of them sure) and trim it to what level 2 can still take: at most ``cap`` entries, nothing
    past the ``rerank``-th sure entry, nothing above the slack of the ``k``-th sure key (``_select``'s cut). Returns
    the new admission threshold (a key must be ``<=`` it to enter)."""
    cap = bd.shape[0]
    f = fill[qi]
    if f == cap:  # full: the last entry makes room (the caller checked the key beats it)
        f -= 1
        if bs[f] == STATUS_SURE:
            nsure[qi] -= 1
    pos = f
    while pos > 0 and bd[pos - 1] > key:
        bd[pos] = bd[pos - 1]
        br[pos] = br[pos - 1]
        bs[pos] = bs[pos - 1]
        pos -= 1
    bd[pos] = key
    br[pos] = r
    bs[pos] = s
    f += 1
    if s == STATUS_SURE:
        nsure[qi] += 1
    while nsure[qi] > rerank or (nsure[qi] == rerank and bs[f - 1] != STATUS_SURE):
        if bs[f - 1] == STATUS_SURE:
            nsure[qi] -= 1
        f -= 1
    th = np.float32(np.inf)
    if nsure[qi] >= k:
        seen = 0
        for t in range(f):
            if bs[t] == STATUS_SURE:
                seen += 1
                if seen == k:
                    th = _slack(bd[t])
                    break
        while bd[f - 1] > th:  # never the k-th sure entry itself (its key is below its slack)
            if bs[f - 1] == STATUS_SURE:
                nsure[qi] -= 1
            f -= 1
    fill[qi] = f
    if f == cap:
        th = min(th, bd[f - 1])
    return th


@njit(cache=True, fastmath=True)
def levels12_exact_streamed(status, sidx, qcl, list_indptr, qrot, vectors, metric, k, rerank, out_rows, counts):
    """:func:`levels12_cluster_major` with exact level-2 keys, streamed: each query keeps only its best rows.

    Every visited cluster's rows are compared with the batch's queries that visit it (cluster by cluster, as there),
    but instead of writing every candidate's key for a selection pass per query afterwards, each key is offered at
    once to the query's sorted buffer of at most ``cap`` rows, which is trimmed after its ``rerank``-th sure row
    (rows past it are never taken) and is full after that: most keys then fail one comparison with its last entry.
    The output is what :func:`_select` makes of the same keys (rows in key order up to the ``k``-th smallest key of a
    sure row, with the same slack), from a few kilobytes per query instead of 16 bytes per candidate (measured on
    GloVe-50d, 200 queries visiting 128 clusters each: 24% less time for the whole search, identical results).

    Parameters and outputs are as for :func:`levels12_cluster_major` (without ``head``, ``tail_norms`` and
    ``level2``); ``counts[:, 2]`` is the number of rows written.
    """
    nq = qrot.shape[0]
    C = qcl.shape[1]
    d = qrot.shape[1]
    cap = out_rows.shape[1]
    bd = np.full((nq, cap), np.inf, dtype=np.float32)
    br = np.full((nq, cap), -1, dtype=np.int64)
    bs = np.zeros((nq, cap), dtype=np.uint8)
    fill = np.zeros(nq, dtype=np.int64)
    nsure = np.zeros(nq, dtype=np.int64)
    thr = np.full(nq, np.inf, dtype=np.float32)
    for qi in range(nq):
        counts[qi, 0] = 0
    qs = np.empty(nq, dtype=np.int64)
    keys = np.empty(256, dtype=np.float32)
    for c in range(C):
        lo = list_indptr[c]
        hi = list_indptr[c + 1]
        nv = _visitors(qcl, c, hi - lo, qs)
        nr = hi - lo
        if keys.shape[0] < nr:
            keys = np.empty(2 * nr, dtype=np.float32)
        for u in range(nv):
            qi = qs[u]
            st = status[sidx[qi]]
            qv = qrot[qi]
            th = thr[qi]
            # the keys of the whole cluster first, in a loop of plain arithmetic (computing each key next to the
            # buffer update measured slower, 32 vs 21 ns a candidate on synthetic data; so did moving this loop,
            # shared with levels12_cluster_major, into an inlined helper: 2.6 vs 9.9 ms for 124 queries x 13
            # clusters); rows the filter rejects are skipped (under a 10% filter level 0 visits ~10x the clusters)
            for t in range(nr):
                if st[lo + t] == STATUS_NO:
                    continue
                xv = vectors[lo + t]
                acc = np.float32(0.0)
                if metric == METRIC_L2:
                    for j in range(d):
                        diff = qv[j] - xv[j]
                        acc += diff * diff
                    keys[t] = acc
                else:
                    for j in range(d):
                        acc += qv[j] * xv[j]
                    keys[t] = -acc
            m = 0
            for t in range(nr):
                r = lo + t
                s = st[r]
                if s == STATUS_NO:
                    continue
                m += 1
                key = keys[t]
                if key <= th:
                    th = _offer_streamed(bd[qi], br[qi], bs[qi], fill, nsure, qi, key, r, s, k, rerank)
                    thr[qi] = th
            counts[qi, 0] += m
    for qi in range(nq):
        # the buffer already holds exactly the rows _select would take: each insertion trimmed it at the slack of
        # the k-th sure key, which only ever decreases
        f = fill[qi]
        for t in range(f):
            out_rows[qi, t] = br[qi, t]
        for t in range(f, cap):
            out_rows[qi, t] = -1
        counts[qi, 1] = counts[qi, 0]
        counts[qi, 2] = f
        counts[qi, 3] = f


@njit(cache=True)
def levels12(status, sidx, qcl, list_indptr, list_rows, qrot, qbin, binary, segs, bits, dim_byte, dim_shift,
             dim_two, cell_lo, cell_hi, metric, k, keep_frac, keep_min, rerank, out_rows, counts, vectors, head,
             tail_norms, level2, abandon):
    """Levels 1 and 2 of one partition for a batch of queries: Hamming prune, then bound prune.

    Parameters
    ----------
    status : uint8 (ns, n)
        Per-row filter status (STATUS_NO / SURE / MAYBE); query ``i`` uses row ``sidx[i]``.
    sidx : int64 (nq,)
    qcl : uint8 (nq, C)
        Clusters of the partition each query visits (non-zero = visit).
    list_indptr : int64 (C + 1,), list_rows : int64 (n,)
        Inverted lists: the positions of cluster ``c`` are ``list_rows[list_indptr[c]:list_indptr[c + 1]]``.
    qrot : float32 (nq, d), qbin : uint64 (nq, W)
    binary : uint64 (n, W), segs : uint8 (nseg, n)
    k, keep_min, rerank : int
        Level 1 keeps the best rows by Hamming distance until ``max(keep_frac * candidates, keep_min)`` *sure* rows
        are kept (maybe rows ride along, since they may fail the exact re-check); level 2 drops rows whose lower
        bound exceeds the k-th smallest upper bound of a sure row, then keeps rows in lower-bound order until
        ``rerank`` sure rows are kept.
    out_rows : int64 (nq, cap)
        Survivors (partition positions), padded with -1.
    vectors : float32 (n, d)
    head : float32 (n, H), tail_norms : float32 (n,)
        ``vectors[:, :H]`` stored contiguously, and the norm of each row's other ``d - H`` dimensions.
    level2 : int
        ``LEVEL2_BOUNDS``: bounds from the packed codes (reads ``nseg`` bytes per row); ``LEVEL2_EXACT``: exact keys
        from ``vectors`` (lower = upper = exact; reads ``4 d`` bytes per row); ``LEVEL2_HEAD``: the exact key over
        the ``H`` head dimensions plus Cauchy-Schwarz bounds of the rest from the two tail norms (reads ``4 H + 4``
        contiguous bytes per row; for ``d > H`` in memory, where full rows cost a memory stream each).
    abandon : bool
        Exact L2 keys with early abandoning (:func:`exact_keys_abandon`); same results, fewer bytes read.
    counts : int64 (nq, 4)
        Filled with ``(candidates, level-1 kept, level-2 survivors, survivors written)``.
    """
    nq = qrot.shape[0]
    n = binary.shape[0]
    W = binary.shape[1]
    cap = out_rows.shape[1]
    maxh = 64 * W + 1
    cand = np.empty(n, dtype=np.int64)
    ham = np.empty(n, dtype=np.int64)
    Lb = np.empty(n, dtype=np.float32)
    Ub = np.empty(n, dtype=np.float32)
    key = np.empty(n, dtype=np.float32)
    hist = np.zeros(maxh, dtype=np.int64)
    best = np.empty(k, dtype=np.float32)  # scratch of exact_keys_abandon
    seeded = np.empty(n, dtype=np.bool_)
    hs = np.empty(n, dtype=np.float32)
    d = bits.shape[0]
    use_bounds = level2 == LEVEL2_BOUNDS
    tab_l = np.zeros((d, 256), dtype=np.float32) if use_bounds else np.zeros((1, 1), dtype=np.float32)
    tab_u = np.zeros((d, 256), dtype=np.float32) if use_bounds else np.zeros((1, 1), dtype=np.float32)
    # building the per-query tables costs one entry per cell; below that many (row, dimension) pairs it is
    # cheaper to compute each row's bounds from the cell ranges directly
    table_cells = 0
    for j in range(d):
        table_cells += 1 << bits[j]
    for qi in range(nq):
        st = status[sidx[qi]]
        # ---- level 1: Hamming over candidates, histogram threshold on sure rows
        nc = 0
        nsure = 0
        for c in range(qcl.shape[1]):
            if qcl[qi, c] == 0:
                continue
            for t in range(list_indptr[c], list_indptr[c + 1]):
                r = list_rows[t]
                s = st[r]
                if s != STATUS_NO:
                    cand[nc] = r
                    nc += 1
                    if s == STATUS_SURE:
                        nsure += 1
        for w in range(out_rows.shape[1]):
            out_rows[qi, w] = -1
        counts[qi, 0] = nc
        if nc == 0:
            counts[qi, 1] = 0
            counts[qi, 2] = 0
            counts[qi, 3] = 0
            continue
        target = max(int(np.ceil(keep_frac * nc)), keep_min)
        m = nc
        if nsure > target:
            # Hamming codes only when they prune: with every candidate kept they would be pure overhead
            qc = qbin[qi]
            hist[:] = 0
            for t in range(nc):
                r = cand[t]
                h = 0
                for w in range(W):
                    h += popcount64(binary[r, w] ^ qc[w])
                ham[t] = h
                if st[r] == STATUS_SURE:
                    hist[h] += 1
            hcut = maxh
            acc = 0
            for h in range(maxh):
                acc += hist[h]
                if acc >= target:
                    hcut = h
                    break
            m = 0
            for t in range(nc):
                if ham[t] <= hcut:
                    cand[m] = cand[t]
                    m += 1
        counts[qi, 1] = m
        kept = cand[:m]
        # ---- level 2: bounds from the segments
        if level2 == LEVEL2_HEAD:
            head_bounds(head, tail_norms, kept, qrot[qi], metric, Lb, Ub)
            L = Lb[:m]
            U = Ub[:m]
        elif not use_bounds:
            if metric == METRIC_L2 and abandon:
                exact_keys_abandon(vectors, head, kept, qrot[qi], st, k, Lb, best, seeded, hs)
            else:
                exact_keys_rows(vectors, kept, qrot[qi], metric, Lb)
            L = Lb[:m]
            U = Lb[:m]
        elif m * d < table_cells:
            L, U = bounds_rows(segs, kept, qrot[qi], bits, dim_byte, dim_shift, dim_two, cell_lo, cell_hi, metric)
        else:
            const_l, const_u = bound_tables(qrot[qi], bits, cell_lo, cell_hi, metric, tab_l, tab_u)
            bounds_lut(segs, kept, bits, dim_byte, dim_shift, dim_two, tab_l, tab_u, const_l, const_u, Lb, Ub)
            L = Lb[:m]
            U = Ub[:m]
        _select(kept, L, U, st, k, rerank, cand, key, out_rows[qi], counts[qi])


@njit(cache=True, fastmath=True)
def level3(rows_in, ok, qrot, vectors, metric, k, out_d, out_r):
    """Level 3: exact distance keys of the survivors that passed the exact re-check, top ``k`` per query.

    Parameters
    ----------
    rows_in : int64 (nq, cap)  survivors, -1 padded
    ok : bool (nq, cap)  survivor passed the exact predicate re-check
    qrot : float32 (nq, d), vectors : float32 (n, d)
    out_d : float32 (nq, k)  (filled, +inf padded), out_r : int64 (nq, k)  partition positions, -1 padded
    """
    nq, cap = rows_in.shape
    d = qrot.shape[1]
    keys = np.empty(cap, dtype=np.float32)
    for qi in range(nq):
        m = 0
        for t in range(cap):
            r = rows_in[qi, t]
            if r < 0:
                break
            if not ok[qi, t]:
                keys[t] = np.inf
                continue
            acc = np.float32(0.0)
            if metric == METRIC_L2:
                for j in range(d):
                    diff = qrot[qi, j] - vectors[r, j]
                    acc += diff * diff
            else:
                for j in range(d):
                    acc -= qrot[qi, j] * vectors[r, j]
            keys[t] = acc
            m = t + 1
        for t in range(k):
            out_d[qi, t] = np.inf
            out_r[qi, t] = -1
        if m == 0:
            continue
        order = np.argsort(keys[:m], kind="mergesort")
        w = 0
        for t in range(m):
            o = order[t]
            if not np.isfinite(keys[o]) or w >= k:
                break
            out_d[qi, w] = keys[o]
            out_r[qi, w] = rows_in[qi, o]
            w += 1



@njit(cache=True)
def walk_clusters(order, complete, dc, sure, cand, sidx, rows, k, target, visit_ratio, max_visit, use_ratio, out,
                  need):
    """Level 0's visiting rule (see ``index.osq_planner.choose_clusters``) along each query's nearest clusters.

    Parameters
    ----------
    order : int64 (m, T)
        Query i's ``T`` nearest clusters, nearest first (all of them when ``complete``).
    complete : bool
    dc : float32 (m, G)
        Cluster keys of these queries (squared L2, or negated inner products with ``use_ratio`` False).
    sure, cand : int64 (ns, G)
        Sure and sure + maybe rows per cluster of each status row; query i uses row ``sidx[i]``.
    rows : int64 (m,)
        Row of ``out`` for query i.
    k : int
    target : float
        Visit until the filter-passing rows of the visited clusters reach this; and always until the sure rows
        reach ``k``.
    visit_ratio : float
        With ``use_ratio``, also visit clusters within this ratio of the nearest one's distance.
    max_visit : int
        At most this many non-empty clusters (0: no cap), but never fewer than ``k`` sure rows need.
    out : bool (nq, G)
        Row ``rows[i]`` receives the clusters query i visits (the caller zeroed it).
    need : bool (m,)
        Set where the ``T`` clusters hold fewer than ``k`` sure or ``target`` passing rows and ``complete`` is
        False: the caller retries that query with more clusters (nothing is written for it).
    """
    m, T = order.shape
    for i in range(m):
        s_ = sidx[i]
        if not complete:
            ss = 0
            cs = 0.0
            for t in range(T):
                ss += sure[s_, order[i, t]]
                cs += cand[s_, order[i, t]]
            if ss < k or cs < target:
                need[i] = True
                continue
        o = rows[i]
        d0 = np.sqrt(max(dc[i, order[i, 0]], 0.0)) if use_ratio else 0.0
        cum_c = 0.0
        cum_s = 0
        nonempty_before = 0
        for t in range(T):
            c = order[i, t]
            cc = cand[s_, c]
            near = use_ratio and np.sqrt(max(dc[i, c], 0.0)) <= visit_ratio * d0
            if cum_c >= target and cum_s >= k and not near:
                break  # later clusters are farther: no rule can want them
            want = cum_c < target or near
            if max_visit > 0 and nonempty_before >= max_visit:
                want = False
            if cum_s < k:
                want = True
            if cc > 0:
                out[o, c] = want
                nonempty_before += 1
            cum_c += cc
            cum_s += sure[s_, c]
