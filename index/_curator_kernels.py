"""numba kernels of the Curator index: hash tables, slab pools, Bloom filters and shortlist updates.

Every structure is a handful of flat numpy arrays, so one query's whole traversal and scan runs inside one compiled
call (the search kernel is in :mod:`._curator_search_kernels`; the layout in ``docs/curator.md``). The update kernels
work pair by pair and stop *before* a pair when a structure lacks the room a pair may need in the worst case,
returning a code; the Python side grows that structure and calls again from the same pair, so a pair is never half
applied.

State tuples (passed as tuples of arrays so signatures stay short):

``tree``  = :class:`Tree` (a NamedTuple: the Python side reads its fields by name)
``sl``    = (start i64 (S,), length i32 (S,), cap i32 (S,), node i32 (S,), tenant i32 (S,), pool i32 (P,),
             free i32 (S,), keys i64 (H,), vals i32 (H,), meta i64 (8,))
``acc``   = (start i64 (R,), length i32 (R,), cap i32 (R,), pool i32 (Q,), meta i64 (2,))
``ten``   = (count i64 (T,), nsl i64 (T,))
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

EMPTY = -1
TOMB = -2


class Tree(NamedTuple):
    """The shared k-means tree, breadth-first (the children of a node are contiguous)."""

    cent: np.ndarray  # float32 (N, d) node centroids
    var: np.ndarray  # float32 (N,) mean squared distance of the node's training points to its centroid
    child_lo: np.ndarray  # int32 (N,) first child (child_lo == child_hi: a leaf)
    child_hi: np.ndarray  # int32 (N,) one past the last child
    parent: np.ndarray  # int32 (N,) -1 for the root
    depth: np.ndarray  # int32 (N,)
    bidx: np.ndarray  # int32 (N,) row of the node's Bloom filter, -1 for leaves
    bloom: np.ndarray  # uint8 (nblocks, B, 64) Bloom filters of the internal nodes

# sl meta slots
M_USED, M_GARB, M_HW, M_NFREE, M_HCOUNT, M_HTOMB, M_MAXLEN = 0, 1, 2, 3, 4, 5, 6

# codes returned by the update kernels when a structure needs room
OK, NEED_SL_POOL, NEED_SLOTS, NEED_HASH, NEED_ACC_POOL, CORRUPT = 0, 1, 2, 3, 4, 5

MAX_DEPTH = 64


# ---------------------------------------------------------------------------------------------------- prefetch
@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to fetch the cache line holding ``arr[row, col]`` (2-d array) for reading.

    Shortlist scans read rows scattered over the vector store; prefetching a few rows ahead overlaps those memory
    latencies (about 2x on the scan loop here), as the authors' C++ does with faiss's prefetch helpers.
    """
    sig = types.void(arr, row, col)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        r = context.cast(builder, args[1], signature.args[1], types.intp)
        c = context.cast(builder, args[2], signature.args[2], types.intp)
        ptr = cgutils.get_item_pointer2(context, builder, data=ary.data,
                                        shape=cgutils.unpack_tuple(builder, ary.shape),
                                        strides=cgutils.unpack_tuple(builder, ary.strides), layout=aryty.layout,
                                        inds=[r, c], wraparound=False, boundscheck=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [i8p, i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen




# ---------------------------------------------------------------------------------------------------- hashing
@njit(inline="always")
def _mix(key):
    """splitmix64-style finaliser in unsigned arithmetic (signed overflow would be undefined for the compiler).

    Returns a non-negative int64.
    """
    x = np.uint64(key)
    x = (x ^ (x >> np.uint64(31))) * np.uint64(0x7FB5D329728EA185)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x81DADEF4BC2DD44D)
    x = x ^ (x >> np.uint64(33))
    return np.int64(x >> np.uint64(1))


@njit(inline="always")
def _nt_key(node, tenant):
    return np.int64(node) * 2147483648 + np.int64(tenant)


@njit(inline="always")
def ht_find_h(keys, key, h):
    """Position of ``key`` in an open-addressing table ``keys`` int64 (H,) (H a power of two), probing linearly
    from ``h``; -1 if absent."""
    mask = keys.shape[0] - 1
    i = h & mask
    while True:
        k = keys[i]
        if k == key:
            return i
        if k == EMPTY:
            return -1
        i = (i + 1) & mask


@njit(cache=True)
def ht_put_h(keys, vals, meta, ci, ti, key, val, h):
    """Insert or overwrite ``key -> val`` probing from ``h``; ``meta[ci]`` counts entries, ``meta[ti]`` tombstones.

    The value is written before the key so a reader never sees a key paired with a stale value.
    """
    mask = keys.shape[0] - 1
    i = h & mask
    tomb = -1
    while True:
        k = keys[i]
        if k == key:
            vals[i] = val
            return
        if k == EMPTY:
            break
        if k == TOMB and tomb < 0:
            tomb = i
        i = (i + 1) & mask
    if tomb >= 0:
        i = tomb
        meta[ti] -= 1
    vals[i] = val
    keys[i] = key
    meta[ci] += 1


@njit(cache=True)
def ht_del_h(keys, meta, ci, ti, key, h):
    pos = ht_find_h(keys, key, h)
    if pos >= 0:
        keys[pos] = TOMB
        meta[ci] -= 1
        meta[ti] += 1
    return pos


@njit(inline="always")
def nt_start(parent, child_lo, node, tenant):
    """Probe start of ``(node, tenant)``: a hash of (parent, tenant) plus the node's rank among its siblings, so the
    entries of one tenant's sibling nodes sit next to each other and expanding a node touches one or two cache
    lines of the table instead of ``branch`` random ones."""
    par = parent[node]
    base = _mix(np.int64(par + 1) * 2147483648 + np.int64(tenant))
    if par < 0:
        return base
    return base + (node - child_lo[par])


@njit(inline="always")
def nt_find(keys, parent, child_lo, node, tenant):
    return ht_find_h(keys, _nt_key(node, tenant), nt_start(parent, child_lo, node, tenant))


@njit(cache=True)
def nt_rehash(keys, vals, new_cap, parent, child_lo):
    """Rehash the (node, tenant) table into ``new_cap`` slots; returns (keys, vals, count)."""
    nk = np.full(new_cap, EMPTY, dtype=np.int64)
    nv = np.zeros(new_cap, dtype=vals.dtype)
    meta = np.zeros(2, dtype=np.int64)
    for i in range(keys.shape[0]):
        key = keys[i]
        if key >= 0:
            node = key >> 31
            ht_put_h(nk, nv, meta, 0, 1, key, vals[i], nt_start(parent, child_lo, node, key & 2147483647))
    return nk, nv, meta[0]


# The id table holds only row numbers: a row's key is its user id, read from ``row_ids`` (4 bytes a slot instead of
# 12 with the keys stored; the extra read per probe costs only updates: searches never look ids up).
@njit(inline="always")
def _id_slot(table, row_ids, key):
    """Slot holding the row of user id ``key`` in ``table`` int32 (H,) (H a power of two; EMPTY / TOMB / row), or
    -1."""
    mask = table.shape[0] - 1
    i = _mix(key) & mask
    while True:
        r = table[i]
        if r == EMPTY:
            return -1
        if r >= 0 and row_ids[r] == key:
            return i
        i = (i + 1) & mask


@njit(inline="always")
def _id_put(table, row_ids, r):
    """Insert row ``r`` (its id absent from the table) at the first free or tombstoned slot of its probe run;
    returns 1 when a tombstone was reused."""
    mask = table.shape[0] - 1
    i = _mix(row_ids[r]) & mask
    while table[i] >= 0:
        i = (i + 1) & mask
    reused = 1 if table[i] == TOMB else 0
    table[i] = r
    return reused


@njit(cache=True)
def ids_lookup(table, row_ids, ids):
    """Rows of user ``ids`` int64 (n,) in the id table; -1 where absent."""
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    for j in range(ids.shape[0]):
        p = _id_slot(table, row_ids, ids[j])
        if p >= 0:
            out[j] = table[p]
    return out


@njit(cache=True)
def ids_insert(table, meta, row_ids, rows):
    """Enter ``rows`` int64 (n,), whose ids (``row_ids[rows]``) are not in the table; ``meta`` = (count, tombs)."""
    for j in range(rows.shape[0]):
        meta[1] -= _id_put(table, row_ids, rows[j])
        meta[0] += 1


@njit(cache=True)
def ids_delete(table, meta, row_ids, rows):
    """Tombstone the entries of ``rows`` int64 (n,) (rows not entered are ignored)."""
    for j in range(rows.shape[0]):
        p = _id_slot(table, row_ids, row_ids[rows[j]])
        if p >= 0 and table[p] == rows[j]:
            table[p] = TOMB
            meta[0] -= 1
            meta[1] += 1


@njit(cache=True)
def ids_build(row_ids, deleted, n, cap):
    """A fresh id table of ``cap`` slots (a power of two) holding every live row below ``n``; returns
    ``(table int32 (cap,), count)``."""
    table = np.full(cap, EMPTY, dtype=np.int32)
    count = 0
    for r in range(n):
        if not deleted[r]:
            _id_put(table, row_ids, r)
            count += 1
    return table, count


# ---------------------------------------------------------------------------------------------------- slab pools
@njit(inline="always")
def _pool_push(start, length, cap, pool, meta, slot, value):
    """Append ``value`` to segment ``slot``, relocating it to the pool's end when full. False if the pool is full."""
    n = length[slot]
    if n == cap[slot]:
        newcap = n + n // 2 + 2
        s = meta[0]
        if s + newcap > pool.shape[0]:
            return False
        old = start[slot]
        for j in range(n):
            pool[s + j] = pool[old + j]
        meta[0] = s + newcap
        meta[1] += cap[slot]
        start[slot] = s
        cap[slot] = newcap
    pool[start[slot] + n] = value
    length[slot] = n + 1
    return True


@njit(inline="always")
def _pool_remove(start, length, pool, slot, value):
    """Swap-remove ``value`` from segment ``slot``; True if it was there."""
    s = start[slot]
    n = length[slot]
    for j in range(n):
        if pool[s + j] == value:
            pool[s + j] = pool[s + n - 1]
            length[slot] = n - 1
            return True
    return False


@njit(inline="always")
def _pool_has(start, length, pool, slot, value):
    s = start[slot]
    for j in range(length[slot]):
        if pool[s + j] == value:
            return True
    return False


@njit(cache=True)
def pool_compact(start, length, cap, pool, nslots, new_size):
    """Copy the live segments of ``pool`` into a fresh int32 array of ``new_size``, each with capacity = length.

    Returns ``(new_pool, used)``; ``start`` and ``cap`` are updated in place.
    """
    out = np.empty(new_size, dtype=np.int32)
    pos = 0
    for s in range(nslots):
        n = length[s]
        if cap[s] == 0 and n == 0:
            continue
        old = start[s]
        for j in range(n):
            out[pos + j] = pool[old + j]
        start[s] = pos
        cap[s] = n
        pos += n
    return out, pos


# ---------------------------------------------------------------------------------------------------- Bloom filters
@njit(inline="always")
def _bloom_hashes(tenant, nblocks):
    """Block and the two probe seeds of ``tenant`` (the block depends on the tenant only, see bloom_has)."""
    h = _mix(np.int64(tenant) * 2 + 1)
    b = (_mix(np.int64(tenant) * 2 + 2) & 0xFFFFFFFF) | 1
    return h & (nblocks - 1), (h >> 20) & 0xFFFFFFFF, b


@njit(inline="always")
def bloom_has(bloom, row, tenant, nhash):
    """Blocked Bloom test: all of a tenant's bits sit in one 512-bit block, so a test touches one cache line.

    ``bloom`` is u8 (nblocks, nfilters, 64): block-major, so the same block of sibling nodes (consecutive filter
    rows) is contiguous and expanding a node reads its children's blocks in one sweep.
    """
    blk, a, b = _bloom_hashes(tenant, bloom.shape[0])
    return bloom_test_hashed(bloom, row, blk, a, b, nhash)


@njit(inline="always")
def bloom_test_hashed(bloom, row, blk, a, b, nhash):
    """:func:`bloom_has` with the tenant's block and probe seeds already computed (once per query, by the search)."""
    for i in range(nhash):
        p = (a + i * b) & 511
        if (bloom[blk, row, p >> 3] >> (p & 7)) & 1 == 0:
            return False
    return True


@njit(inline="always")
def bloom_set(bloom, row, tenant, nhash):
    blk, a, b = _bloom_hashes(tenant, bloom.shape[0])
    for i in range(nhash):
        p = (a + i * b) & 511
        bloom[blk, row, p >> 3] |= np.uint8(1 << (p & 7))


@njit(cache=True)
def bloom_rebuild(tree, sl, nhash):
    """Recompute every node's filter from the live shortlists: t is set at each strict ancestor of t's shortlists."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    bloom[:] = 0
    for s in range(meta[M_HW]):
        n = snode[s]
        if n < 0:
            continue
        p = parent[n]
        while p >= 0:
            bloom_set(bloom, bidx[p], sten[s], nhash)
            p = parent[p]


# ---------------------------------------------------------------------------------------------------- tree routing
@njit(inline="always")
def _l2(a, b):
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        t = a[j] - b[j]
        s += t * t
    return s


@njit(cache=True)
def route(x, tree):
    """Leaf of each vector of ``x`` float32 (n, d) by greedy descent to the nearest child centroid (squared L2)."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    out = np.empty(x.shape[0], dtype=np.int32)
    for i in range(x.shape[0]):
        n = 0
        while child_hi[n] > child_lo[n]:
            best = child_lo[n]
            bd = np.float32(np.inf)
            for c in range(child_lo[n], child_hi[n]):
                dd = _l2(x[i], cent[c])
                if dd < bd:
                    bd = dd
                    best = c
            n = best
        out[i] = n
    return out


@njit(inline="always")
def _path(leaf, parent, buf):
    """Fill ``buf`` with the root -> leaf path; returns its length."""
    m = 0
    n = leaf
    while n >= 0:
        buf[m] = n
        m += 1
        n = parent[n]
    for j in range(m // 2):
        t = buf[j]
        buf[j] = buf[m - 1 - j]
        buf[m - 1 - j] = t
    return m


# ---------------------------------------------------------------------------------------------------- shortlists
@njit(cache=True)
def _new_slot(tree, sl, ten, node, tenant):
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    if meta[M_NFREE] > 0:
        meta[M_NFREE] -= 1
        s = free[meta[M_NFREE]]
    else:
        s = meta[M_HW]
        meta[M_HW] += 1
    start[s] = 0
    length[s] = 0
    cap[s] = 0
    snode[s] = node
    sten[s] = tenant
    ht_put_h(keys, vals, meta, M_HCOUNT, M_HTOMB, _nt_key(node, tenant), s, nt_start(parent, child_lo, node, tenant))
    ten[1][tenant] += 1
    return s


@njit(cache=True)
def _free_slot(tree, sl, ten, s):
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    ht_del_h(keys, meta, M_HCOUNT, M_HTOMB, _nt_key(snode[s], sten[s]), nt_start(parent, child_lo, snode[s], sten[s]))
    ten[1][sten[s]] -= 1
    meta[M_GARB] += cap[s]
    cap[s] = 0
    length[s] = 0
    snode[s] = -1
    sten[s] = -1
    free[meta[M_NFREE]] = s
    meta[M_NFREE] += 1


@njit(inline="always")
def _sl_push(sl, s, row):
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    if not _pool_push(start, length, cap, pool, meta, s, row):
        meta[7] += 1
    if length[s] > meta[M_MAXLEN]:
        meta[M_MAXLEN] = length[s]


@njit(cache=True)
def _room(sl, acc, row, max_sl, branch, max_depth):
    """Code of the first structure lacking the worst-case room one pair's update may need (OK if none)."""
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    levels = max_depth + 2
    biggest = max(max_sl, meta[M_MAXLEN]) + 2
    if meta[M_USED] + levels * (3 * biggest + 8 * branch) > pool.shape[0]:
        return NEED_SL_POOL
    if start.shape[0] - meta[M_HW] + meta[M_NFREE] < levels * (branch + 1):
        return NEED_SLOTS
    if (meta[M_HCOUNT] + meta[M_HTOMB] + levels * (branch + 1)) * 10 > keys.shape[0] * 7:
        return NEED_HASH
    if row >= 0:
        astart, alen, acap, apool, ameta = acc
        if ameta[0] + alen[row] + alen[row] // 2 + 4 > apool.shape[0]:
            return NEED_ACC_POOL
    return OK


@njit(cache=True)
def _split(tree, sl, ten, row_leaf, s0, max_sl, nhash, buf):
    """Move the rows of overflowing shortlist ``s0`` one level down, then split any child that overflows in turn."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    stack = np.empty(4096, dtype=np.int64)
    top = 0
    stack[top] = s0
    top += 1
    while top > 0:
        top -= 1
        s = stack[top]
        n = snode[s]
        t = sten[s]
        if child_hi[n] == child_lo[n] or length[s] <= max_sl:
            continue
        nrows = length[s]
        rows = pool[start[s]:start[s] + nrows].copy()
        _free_slot(tree, sl, ten, s)
        bloom_set(bloom, bidx[n], t, nhash)
        lvl = depth[n] + 1
        for j in range(nrows):
            r = rows[j]
            _path(row_leaf[r], parent, buf)
            c = buf[lvl]
            p = nt_find(keys, parent, child_lo, c, t)
            if p >= 0:
                cs = vals[p]
            else:
                cs = _new_slot(tree, sl, ten, c, t)
            _sl_push(sl, cs, r)
        for c in range(child_lo[n], child_hi[n]):
            p = nt_find(keys, parent, child_lo, c, t)
            if p >= 0 and length[vals[p]] > max_sl and child_hi[c] > child_lo[c]:
                if top < stack.shape[0]:
                    stack[top] = vals[p]
                    top += 1


@njit(cache=True)
def _sl_insert(tree, sl, ten, row_leaf, r, t, max_sl, nhash, buf):
    """Put row ``r`` into tenant ``t``'s shortlist on its path (creating or splitting shortlists as needed)."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    m = _path(row_leaf[r], parent, buf)
    for lvl in range(m):
        n = buf[lvl]
        p = nt_find(keys, parent, child_lo, n, t)
        if p >= 0:
            s = vals[p]
            _sl_push(sl, s, r)
            if length[s] > max_sl and child_hi[n] > child_lo[n]:
                _split(tree, sl, ten, row_leaf, s, max_sl, nhash, buf)
            return
        leaf = child_hi[n] == child_lo[n]
        if leaf or not bloom_has(bloom, bidx[n], t, nhash):
            s = _new_slot(tree, sl, ten, n, t)
            _sl_push(sl, s, r)
            return


@njit(cache=True)
def _collect(tree, sl, p, t, limit, nhash, out_slots):
    """Shortlists of ``t`` strictly below node ``p`` (guided by the Bloom filters).

    Returns the number found in ``out_slots``, or -1 when they hold more than ``limit`` rows or the search would visit
    too many nodes (a merge is then not worth it).
    """
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    stack = np.empty(256, dtype=np.int64)
    top = 0
    for c in range(child_lo[p], child_hi[p]):
        stack[top] = c
        top += 1
    nfound = 0
    total = 0
    visited = 0
    while top > 0:
        top -= 1
        c = stack[top]
        visited += 1
        if visited > 128:
            return -1
        q = nt_find(keys, parent, child_lo, c, t)
        if q >= 0:
            s = vals[q]
            total += length[s]
            if total > limit or nfound >= out_slots.shape[0]:
                return -1
            out_slots[nfound] = s
            nfound += 1
        elif child_hi[c] > child_lo[c] and bloom_has(bloom, bidx[c], t, nhash):
            if top + child_hi[c] - child_lo[c] > stack.shape[0]:
                return -1
            for cc in range(child_lo[c], child_hi[c]):
                stack[top] = cc
                top += 1
    return nfound


@njit(cache=True)
def _merge_up(tree, sl, ten, p, t, max_sl, nhash):
    """Merge ``t``'s shortlists below ``p`` into one at ``p`` while they hold at most ``max_sl // 2`` rows."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    found = np.empty(64, dtype=np.int64)
    while p >= 0:
        if nt_find(keys, parent, child_lo, p, t) >= 0:
            return
        nf = _collect(tree, sl, p, t, max_sl // 2, nhash, found)
        if nf <= 0:
            return
        s = _new_slot(tree, sl, ten, p, t)
        for j in range(nf):
            src = found[j]
            for i in range(length[src]):
                _sl_push(sl, s, pool[start[src] + i])
            _free_slot(tree, sl, ten, src)
        p = parent[p]


@njit(cache=True)
def _sl_remove(tree, sl, ten, row_leaf, r, t, max_sl, nhash, buf):
    """Remove row ``r`` from ``t``'s shortlist on its path; drop it if empty and merge upwards. False if absent."""
    cent, var, child_lo, child_hi, parent, depth, bidx, bloom = tree
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    m = _path(row_leaf[r], parent, buf)
    for lvl in range(m):
        n = buf[lvl]
        p = nt_find(keys, parent, child_lo, n, t)
        if p >= 0:
            s = vals[p]
            if not _pool_remove(start, length, pool, s, r):
                return False
            if length[s] == 0:
                _free_slot(tree, sl, ten, s)
            _merge_up(tree, sl, ten, parent[n], t, max_sl, nhash)
            return True
    return False


# ---------------------------------------------------------------------------------------------------- update entry points
@njit(cache=True)
def grant_pairs(rows, tens, i0, tree, sl, acc, ten, row_leaf, max_sl, nhash, branch, max_depth):
    """Grant tenant ``tens[i]`` access to row ``rows[i]`` for i >= ``i0`` (pairs already present are skipped).

    Returns ``(next_i, code)``: ``code`` is OK when all pairs are done, else the structure to grow before calling
    again from ``next_i``.
    """
    astart, alen, acap, apool, ameta = acc
    count, nsl = ten
    buf = np.empty(MAX_DEPTH, dtype=np.int64)
    for i in range(i0, rows.shape[0]):
        r = rows[i]
        t = tens[i]
        code = _room(sl, acc, r, max_sl, branch, max_depth)
        if code != OK:
            return i, code
        if _pool_has(astart, alen, apool, r, t):
            continue
        _pool_push(astart, alen, acap, apool, ameta, r, t)
        count[t] += 1
        _sl_insert(tree, sl, ten, row_leaf, r, t, max_sl, nhash, buf)
    return rows.shape[0], OK


@njit(cache=True)
def revoke_pairs(rows, tens, i0, tree, sl, acc, ten, row_leaf, max_sl, nhash, branch, max_depth):
    """Revoke tenant ``tens[i]``'s access to row ``rows[i]`` (absent pairs are skipped). Returns (next_i, code)."""
    astart, alen, acap, apool, ameta = acc
    count, nsl = ten
    buf = np.empty(MAX_DEPTH, dtype=np.int64)
    for i in range(i0, rows.shape[0]):
        r = rows[i]
        t = tens[i]
        code = _room(sl, acc, -1, max_sl, branch, max_depth)
        if code != OK:
            return i, code
        if not _pool_remove(astart, alen, apool, r, t):
            continue
        count[t] -= 1
        if not _sl_remove(tree, sl, ten, row_leaf, r, t, max_sl, nhash, buf):
            return i, CORRUPT
    return rows.shape[0], OK


@njit(cache=True)
def remove_rows(rows, i0, tree, sl, acc, ten, row_leaf, max_sl, nhash, branch, max_depth):
    """Take rows out of every tenant's shortlists and clear their access lists. Returns (next_i, code)."""
    astart, alen, acap, apool, ameta = acc
    count, nsl = ten
    buf = np.empty(MAX_DEPTH, dtype=np.int64)
    for i in range(i0, rows.shape[0]):
        r = rows[i]
        while alen[r] > 0:
            code = _room(sl, acc, -1, max_sl, branch, max_depth)
            if code != OK:
                return i, code
            t = apool[astart[r] + alen[r] - 1]
            alen[r] -= 1
            count[t] -= 1
            if not _sl_remove(tree, sl, ten, row_leaf, r, t, max_sl, nhash, buf):
                return i, CORRUPT
        ameta[1] += acap[r]
        acap[r] = 0
    return rows.shape[0], OK


@njit(cache=True)
def drop_tenant(t, tree, sl, acc, ten):
    """Delete every shortlist of tenant ``t`` and remove ``t`` from the access lists of its rows."""
    start, length, cap, snode, sten, pool, free, keys, vals, meta = sl
    astart, alen, acap, apool, ameta = acc
    for s in range(meta[M_HW]):
        if sten[s] != t or snode[s] < 0:
            continue
        for j in range(length[s]):
            _pool_remove(astart, alen, apool, pool[start[s] + j], t)
        _free_slot(tree, sl, ten, s)
    ten[0][t] = 0


# ---------------------------------------------------------------------------------------------------- 4-bit codes
CODE_MAX_D = 128


def code_stride(d: int) -> int:
    """Bytes per row of the 4-bit code store: ``ceil(d / 2)`` rounded up to a power of two, so that with a 64-byte
    aligned store a row never straddles cache lines; 0 (no codes) when ``d > CODE_MAX_D``.

    The search scores codes through a per-query table of ``ceil(d / 2) * 256`` floats; beyond 128 dimensions it
    outgrows the L1/L2 caches (Fashion-MNIST's 784: 400 KB) and every look-up misses, which made code ranking slower
    than scoring every candidate exactly (1.4 ms vs 0.8 ms brute force per query there).
    """
    if d > CODE_MAX_D:
        return 0
    nb = (d + 1) // 2
    return 1 << max(0, (nb - 1).bit_length())


@njit(cache=True)
def sq4_encode(x, lo, step, out):
    """4-bit scalar codes of ``x`` float32 (n, d) into ``out`` uint8 (n, stride): dimension z gets
    ``clip(floor((x - lo[z]) / step[z]), 0, 15)``, two dimensions per byte (even z in the low nibble)."""
    d = x.shape[1]
    if out.shape[1] == 0:  # no codes kept for this dimensionality
        return
    for i in range(x.shape[0]):
        for b in range(out.shape[1]):
            out[i, b] = 0
        for z in range(d):
            c = np.int64(np.floor((x[i, z] - lo[z]) / step[z]))
            c = min(15, max(0, c))
            out[i, z >> 1] |= np.uint8(c << (4 * (z & 1)))
