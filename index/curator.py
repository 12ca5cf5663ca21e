"""``Curator``: multi-tenant clustering trees (Jin et al., arXiv 2401.07119), our own implementation.

One hierarchical k-means tree is shared by every tenant and every vector is stored once. Each tenant's own index is
implicit in the tree: per node, a *shortlist* of the tenant's rows below it (when they are few, at most ``shortlist``)
and, on internal nodes, a Bloom filter of tenants that have shortlists deeper down. Small tenants live in a shortlist
at the root (searching them is a short exact scan); big tenants are split down the tree so their search is best-first
over their own leaves. An exact access map (row -> tenants) backs revokes, deletes and ``tenants_of``.

Layout: every structure is flat numpy arrays (CSR-like slab pools for shortlists and access lists, open-addressing
hash tables for ``(node, tenant) -> shortlist`` and ``id -> row``, Bloom filters as a byte matrix) so a query's whole
traversal and scan runs in one numba call (:mod:`._curator_kernels`). Updates never rebuild the tree.

Concurrency: mutations hold the write side of a readers-writer lock, searches the read side (the search kernel
releases the GIL, so readers run in parallel). Build settings come from the factory string
``Curator(branch=16,leaf=128,shortlist=256,bloom=16384,hashes=4,niter=20,seed=0)``; per-query settings are
``gamma`` (candidate budget as a multiple of k) and ``variance_boost``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..quantization.kmeans import kmeans_with_labels
from . import _curator_kernels as K
from . import _curator_search_kernels as KS
from .base import Index, array_bytes
from .calibration import RECALL_PARAM, ladder_values
from .factory import Stage, format_stage, take_settings
from .flat import exact_search
from .persist import load_arrays, save_arrays
from .rwlock import RWLock
from .validate import as_allowed, as_ids, as_params, as_vectors, check_k, normalize_rows

BUILD_SETTINGS: dict[str, Any] = {"branch": 16, "leaf": 128, "shortlist": 256, "bloom": 16384, "hashes": 4,
                                  "niter": 20, "seed": 0}
DEFAULT_GAMMA = 64.0
DEFAULT_VBOOST = 0.0
DEFAULT_RERANK = 64
MAX_TENANT = 2**31 - 1


def _pow2(n: int) -> int:
    return 1 << max(6, int(n - 1).bit_length())


def build_tree(x: np.ndarray, branch: int, leaf: int, niter: int, seed: int):
    """Hierarchical k-means (:func:`~shoal.quantization.kmeans.kmeans_with_labels`, seeded) in breadth-first order;
    children of a node are contiguous.

    Parameters
    ----------
    x : float32 (n, d)
    branch, leaf : int
        Children per split; nodes with at most ``leaf`` points (or depth ``MAX_DEPTH - 2``) stay leaves.

    Returns
    -------
    cent float32 (N, d), var float32 (N,) (mean squared distance of members to the centroid), child_lo, child_hi,
    parent, depth int32 (N,)
    """
    d = x.shape[1]
    cents, vars_, parents, depths = [], [], [], []
    lo: list[int] = []
    hi: list[int] = []

    def node(members, par, dep):
        c = x[members].mean(axis=0) if members.size else np.zeros(d, np.float32)
        v = float(((x[members] - c) ** 2).sum(axis=1).mean()) if members.size else 0.0
        cents.append(c.astype(np.float32))
        vars_.append(v)
        parents.append(par)
        depths.append(dep)
        lo.append(0)
        hi.append(0)
        return len(cents) - 1

    queue = [(node(np.arange(x.shape[0]), -1, 0), np.arange(x.shape[0]))]
    head = 0
    while head < len(queue):
        nid, members = queue[head]
        head += 1
        if members.size <= leaf or depths[nid] >= K.MAX_DEPTH - 2:
            continue
        sub = x[members]
        nc = min(branch, members.size)
        _, near = kmeans_with_labels(sub, nc, niter=niter, seed=seed + nid)
        groups = [members[near == j] for j in range(nc)]
        groups = [g for g in groups if g.size]
        if len(groups) < 2:  # identical points: k-means cannot split them
            continue
        first = len(cents)
        for g in groups:
            queue.append((node(g, nid, depths[nid] + 1), g))
        lo[nid], hi[nid] = first, first + len(groups)
    return (np.asarray(cents, np.float32).reshape(-1, d), np.asarray(vars_, np.float32),
            np.asarray(lo, np.int32), np.asarray(hi, np.int32), np.asarray(parents, np.int32),
            np.asarray(depths, np.int32))


class CuratorIndex(Index):
    """Multi-tenant clustering tree. Factory: ``Curator(branch=16,leaf=128,shortlist=256)``.

    Parameters
    ----------
    d : int
    metric : {"l2", "ip", "cosine"}
        The tree is always an L2 k-means tree; candidates are scored with the metric's key.
    branch, leaf : int
        Tree shape: children per split and the most training points a leaf holds.
    shortlist : int
        A tenant's shortlist at an internal node splits when it exceeds this; children's shortlists merge back into
        their parent when together they hold at most half of it.
    bloom : int
        Bits of each internal node's Bloom filter (a power of two, at least 512; blocked: a tenant's ``hashes`` bits
        fall in one 512-bit block).
    niter, seed : int
        k-means iterations and seed.
    """

    kind = "Curator"
    supports_tenants = True
    search_params = ("gamma", "variance_boost", "rerank")
    calibration_axis = "tenant_size"

    def __init__(self, d: int, metric: str = "l2", *, branch: int = 16, leaf: int = 128, shortlist: int = 256,
                 bloom: int = 16384, hashes: int = 4, niter: int = 20, seed: int = 0):
        super().__init__(d, metric)
        if branch < 2 or leaf < 1 or shortlist < 2:
            raise InvalidArgument(f"Curator: need branch >= 2, leaf >= 1, shortlist >= 2 "
                                  f"(got branch={branch}, leaf={leaf}, shortlist={shortlist})")
        if bloom < 512 or bloom & (bloom - 1):
            raise InvalidArgument(f"Curator: bloom must be a power of two >= 512 bits, got {bloom}")
        if not 1 <= hashes <= 16 or niter < 1:
            raise InvalidArgument(f"Curator: need 1 <= hashes <= 16 and niter >= 1 (got {hashes}, {niter})")
        self.settings = {"branch": int(branch), "leaf": int(leaf), "shortlist": int(shortlist), "bloom": int(bloom),
                         "hashes": int(hashes), "niter": int(niter), "seed": int(seed)}
        self._lock = RWLock()
        self._tree = None
        self._sq = (np.zeros(d, np.float32), np.ones(d, np.float32))  # 4-bit code grid (lo, step), set by training
        self._n = 0
        self._init_rows(0)
        self._init_tenant_state()

    # ------------------------------------------------------------------ factory
    @classmethod
    def from_stages(cls, d: int, stages: list[Stage], metric: str = "l2") -> "CuratorIndex":
        for st in stages:
            if st.name != "Curator":
                raise InvalidArgument(f"stage {st.name} cannot be combined with Curator; Curator takes no other stage")
            if st.arg:
                raise InvalidArgument(f"Curator takes no numeric argument, got 'Curator{st.arg}'")
        return cls(d, metric, **take_settings(stages[0], BUILD_SETTINGS))

    def factory_string(self) -> str:
        changed = {k: v for k, v in self.settings.items() if k in ("branch", "leaf", "shortlist") or v != BUILD_SETTINGS[k]}
        return format_stage("Curator", "", changed)

    # ------------------------------------------------------------------ state
    def _init_rows(self, cap: int) -> None:
        self._vecs = np.empty((cap, self.d), np.float32)
        self._codes = _aligned_codes(cap, self.d)
        self._ids = np.empty(cap, np.int64)
        self._del = np.zeros(cap, bool)
        self._leaf = np.zeros(cap, np.int32)
        self._astart = np.zeros(cap, np.int64)
        self._alen = np.zeros(cap, np.int32)
        self._acap = np.zeros(cap, np.int32)
        self._sync_views()

    def _init_tenant_state(self) -> None:
        self._apool = np.empty(1024, np.int32)
        self._ameta = np.zeros(2, np.int64)
        s = 256
        self._sstart = np.zeros(s, np.int64)
        self._slen = np.zeros(s, np.int32)
        self._scap = np.zeros(s, np.int32)
        self._snode = np.full(s, -1, np.int32)
        self._sten = np.full(s, -1, np.int32)
        self._sfree = np.zeros(s, np.int32)
        self._spool = np.empty(4096, np.int32)
        self._smeta = np.zeros(8, np.int64)
        self._hkeys = np.full(1024, K.EMPTY, np.int64)
        self._hvals = np.zeros(1024, np.int32)
        self._irows = np.full(1024, K.EMPTY, np.int32)  # id -> row table (keys read from row ids)
        self._imeta = np.zeros(2, np.int64)  # (entries, tombstones)
        self._tcount = np.zeros(16, np.int64)
        self._tnsl = np.zeros(16, np.int64)
        self._talive = np.zeros(16, bool)
        self._stale = 0

    def _sync_views(self) -> None:
        self.row_ids = self._ids[:self._n]
        self.deleted = self._del[:self._n]

    @property
    def is_trained(self) -> bool:
        return self._tree is not None

    @property
    def nnodes(self) -> int:
        return 0 if self._tree is None else int(self._tree.cent.shape[0])

    def _sl(self):
        return (self._sstart, self._slen, self._scap, self._snode, self._sten, self._spool, self._sfree,
                self._hkeys, self._hvals, self._smeta)

    def _acc(self):
        return (self._astart, self._alen, self._acap, self._apool, self._ameta)

    def _ten(self):
        return (self._tcount, self._tnsl)

    def _levels(self) -> int:
        return int(self._tree.depth.max()) + 1 if self._tree is not None else 1

    # ------------------------------------------------------------------ training
    def train(self, x) -> None:
        """Build the shared tree from ``x`` float32 (n, d) (the data itself or a representative sample)."""
        x = self.prepare(x)
        if x.shape[0] == 0:
            raise InvalidArgument("Curator.train: need at least one vector")
        with self._lock.write:
            self._train(x)

    def _train(self, x: np.ndarray) -> None:
        if self._tree is not None:
            raise FailedPrecondition("Curator index is already trained; the tree is built once")
        s = self.settings
        cent, var, lo, hi, parent, depth = build_tree(x, s["branch"], s["leaf"], s["niter"], s["seed"])
        # 4-bit code grid: 16 equal buckets between each dimension's extremes in the training data (quantile-trimmed
        # ranges scored worse on GloVe: the ranking needs the tails more than finer buckets in the middle)
        lo_x = x.min(axis=0)
        step = (x.max(axis=0) - lo_x) / 16
        self._sq = (lo_x.astype(np.float32), np.where(step > 0, step, 1.0).astype(np.float32))
        internal = hi > lo
        bidx = np.full(cent.shape[0], -1, np.int32)
        bidx[internal] = np.arange(int(internal.sum()), dtype=np.int32)
        bloom = np.zeros((s["bloom"] // 512, max(1, int(internal.sum())), 64), np.uint8)
        self._tree = K.Tree(cent, var, lo, hi, parent, depth, bidx, bloom)

    # ------------------------------------------------------------------ growth (write lock held)
    def _grow_rows(self, need: int) -> None:
        cap = self._ids.shape[0]
        if need <= cap:
            return
        self._resize_rows(max(need, 2 * cap, 1024))

    def _resize_rows(self, new: int) -> None:
        """Reallocate the per-row buffers to ``new`` rows (>= ``_n``): growth by doubling, or shrinking to fit."""

        def grow(a, fill=0):
            out = np.full((new,) + a.shape[1:], fill, a.dtype) if fill else np.zeros((new,) + a.shape[1:], a.dtype)
            out[:self._n] = a[:self._n]
            return out

        self._vecs = grow(self._vecs)
        codes = _aligned_codes(new, self.d)
        codes[:self._n] = self._codes[:self._n]
        self._codes = codes
        self._ids = grow(self._ids)
        self._del = grow(self._del)
        self._leaf = grow(self._leaf)
        self._astart = grow(self._astart)
        self._alen = grow(self._alen)
        self._acap = grow(self._acap)
        self._sync_views()  # row_ids / deleted are views: they must follow the new buffers

    def _need_pool(self) -> int:
        levels = self._levels() + 2
        biggest = max(self.settings["shortlist"], int(self._smeta[K.M_MAXLEN])) + 2
        return levels * (3 * biggest + 8 * self.settings["branch"])

    def _compact_sl(self, slack: float = 2.0) -> None:
        live = int(self._smeta[K.M_USED] - self._smeta[K.M_GARB])
        size = max(int(slack * live), live + 4 * self._need_pool(), 4096)
        self._spool, used = K.pool_compact(self._sstart, self._slen, self._scap, self._spool,
                                           int(self._smeta[K.M_HW]), size)
        self._smeta[K.M_USED] = used
        self._smeta[K.M_GARB] = 0

    def _compact_acc(self, slack: float = 2.0, extra: int = 0) -> None:
        live = int(self._ameta[0] - self._ameta[1])
        big = int(self._alen[:self._n].max()) if self._n else 0
        size = max(int(slack * live), live + 4 * (big + 8) + extra, 1024)
        self._apool, used = K.pool_compact(self._astart, self._alen, self._acap, self._apool, self._n, size)
        self._ameta[0] = used
        self._ameta[1] = 0

    def _grow_slots(self) -> None:
        new = 2 * self._sstart.shape[0]

        def grow(a, fill):
            out = np.full(new, fill, a.dtype)
            out[:a.shape[0]] = a
            return out

        self._sstart, self._slen, self._scap = grow(self._sstart, 0), grow(self._slen, 0), grow(self._scap, 0)
        self._snode, self._sten, self._sfree = grow(self._snode, -1), grow(self._sten, -1), grow(self._sfree, 0)

    def _rehash_sl(self) -> None:
        levels = self._levels() + 2
        need = int(self._smeta[K.M_HCOUNT]) + levels * (self.settings["branch"] + 1)
        self._hkeys, self._hvals, cnt = K.nt_rehash(self._hkeys, self._hvals, _pow2(int(need / 0.35)),
                                                    self._tree.parent, self._tree.child_lo)
        self._smeta[K.M_HCOUNT] = cnt
        self._smeta[K.M_HTOMB] = 0

    def _ensure_ids(self, extra: int) -> None:
        # up to 3/4 full: linear probing stays short and a pow2 table need not double too early
        if (self._imeta[0] + self._imeta[1] + extra) * 4 > self._irows.shape[0] * 3:
            self._rebuild_ids(int(self._imeta[0]) + extra)

    def _rebuild_ids(self, entries: int) -> None:
        """A fresh id table with room for ``entries`` ids (every live row entered, tombstones gone)."""
        self._irows, cnt = K.ids_build(self._ids, self._del, self._n, _pow2(int(entries / 0.75) + 1))
        self._imeta[0] = cnt
        self._imeta[1] = 0

    def _ensure_tenants(self, tmax: int) -> None:
        cap = self._tcount.shape[0]
        if tmax < cap:
            return
        new = max(tmax + 1, 2 * cap)
        for name in ("_tcount", "_tnsl", "_talive"):
            a = getattr(self, name)
            out = np.zeros(new, a.dtype)
            out[:cap] = a
            setattr(self, name, out)

    def _run(self, kernel, *lead) -> None:
        """Call an update kernel, growing whatever structure it asks for, until all its pairs are applied."""
        i = 0
        s = self.settings
        while True:
            i, code = kernel(*lead, i, self._tree, self._sl(), self._acc(), self._ten(), self._leaf,
                             s["shortlist"], s["hashes"], s["branch"], self._levels())
            if code == K.OK:
                return
            if code == K.NEED_SL_POOL:
                self._compact_sl()
            elif code == K.NEED_SLOTS:
                self._grow_slots()
            elif code == K.NEED_HASH:
                self._rehash_sl()
            elif code == K.NEED_ACC_POOL:
                self._compact_acc()
            else:
                raise RuntimeError("Curator: internal shortlist state is inconsistent (please report)")

    # ------------------------------------------------------------------ checks
    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return K.ids_lookup(self._irows, self._ids, ids)

    @staticmethod
    def _as_tenant(tenant) -> int:
        if isinstance(tenant, bool) or not isinstance(tenant, (int, np.integer)):
            raise InvalidArgument(f"tenant must be an integer id, got {tenant!r}")
        if not 0 <= int(tenant) <= MAX_TENANT:
            raise InvalidArgument(f"tenant ids must be in 0..2^31-1, got {int(tenant)}")
        return int(tenant)

    def _known(self, t: int) -> bool:
        return t < self._talive.shape[0] and bool(self._talive[t])

    def _require_tenant(self, t: int) -> None:
        if not self._known(t):
            raise NotFound(f"tenant {t} does not exist (no vector was ever granted to it, or it was dropped)")

    def _require_rows(self, ids: np.ndarray) -> np.ndarray:
        rows = self._rows(ids)
        if (rows < 0).any():
            raise NotFound(f"id {int(ids[rows < 0][0])} is not in the index (never added, or removed)")
        return rows

    @staticmethod
    def _as_tenants_csr(tenants, n: int) -> tuple[np.ndarray, np.ndarray]:
        if tenants is None:
            return np.zeros(n + 1, np.int64), np.zeros(0, np.int32)
        try:
            indptr, tids = tenants
        except (TypeError, ValueError):
            raise InvalidArgument("tenants must be (indptr, tenant_ids)") from None
        indptr = np.asarray(indptr)
        tids = np.asarray(tids)
        if indptr.ndim != 1 or indptr.shape[0] != n + 1 or indptr.dtype.kind not in "iu":
            raise InvalidArgument(f"tenants: indptr must be {n + 1} integers")
        if tids.ndim != 1 or (tids.size and tids.dtype.kind not in "iu"):
            raise InvalidArgument("tenants: tenant_ids must be a 1-d integer array")
        indptr = indptr.astype(np.int64)
        if indptr[0] != 0 or (np.diff(indptr) < 0).any() or indptr[-1] != tids.shape[0]:
            raise InvalidArgument("tenants: indptr must start at 0, not decrease and end at len(tenant_ids)")
        if tids.size and (tids.min() < 0 or tids.max() > MAX_TENANT):
            raise InvalidArgument("tenants: tenant ids must be in 0..2^31-1")
        return indptr, tids.astype(np.int32)

    # ------------------------------------------------------------------ updates
    def add(self, x, ids, *, tenants=None, attrs=None) -> None:
        """Add vectors with the tenants that may see them.

        Parameters
        ----------
        x : float32 (n, d)
        ids : int64 (n,)
            New user ids (an id already live is an error).
        tenants : (indptr int64 (n+1,), tenant_ids int32), optional
            Row i is granted to ``tenant_ids[indptr[i]:indptr[i+1]]``. An untrained index trains on ``x`` first.
        """
        if attrs is not None:
            raise InvalidArgument("Curator has no native attributes; the engine filters with allowed masks")
        x = self.prepare(x)
        ids = as_ids(ids, x.shape[0])
        indptr, tids = self._as_tenants_csr(tenants, x.shape[0])
        n = x.shape[0]
        if n == 0:
            return
        with self._lock.write:
            clash = self._rows(ids) >= 0
            if clash.any():
                raise InvalidArgument(f"id {int(ids[clash][0])} is already in the index; remove it first")
            if self._tree is None:
                self._train(x)
            start = self._n
            rows = np.arange(start, start + n, dtype=np.int64)
            self._grow_rows(start + n)
            self._vecs[start:start + n] = x
            K.sq4_encode(x, self._sq[0], self._sq[1], self._codes[start:start + n])
            self._ids[start:start + n] = ids
            self._del[start:start + n] = False
            self._leaf[start:start + n] = K.route(x, self._tree)
            # reserve each new row's access list at its exact size, so granting never relocates it
            counts = np.diff(indptr).astype(np.int32)
            total = int(indptr[-1])
            if self._ameta[0] + total > self._apool.shape[0]:
                self._n = start  # rows not visible yet
                self._compact_acc(extra=total)
            self._astart[start:start + n] = self._ameta[0] + indptr[:-1]
            self._alen[start:start + n] = 0
            self._acap[start:start + n] = counts
            self._ameta[0] += total
            self._ensure_ids(n)  # before the new rows count: a rebuilt table holds the rows below self._n
            self._n = start + n
            K.ids_insert(self._irows, self._imeta, self._ids, rows)
            if tids.size:
                self._ensure_tenants(int(tids.max()))
                self._talive[tids] = True
                self._run(K.grant_pairs, np.repeat(rows, counts), tids)
            if n >= 1000:
                self._trim()
            self._sync_views()

    def grant(self, ids, tenant) -> None:
        """Give ``tenant`` access to the vectors ``ids`` (creating the tenant if new). Unknown ids: NotFound."""
        t = self._as_tenant(tenant)
        ids = as_ids(ids, allow_duplicates=True)
        with self._lock.write:
            rows = self._require_rows(ids)
            self._ensure_tenants(t)
            self._talive[t] = True
            self._run(K.grant_pairs, rows, np.full(rows.shape[0], t, np.int32))

    def revoke(self, ids, tenant) -> None:
        """Withdraw ``tenant``'s access to ``ids`` (pairs not granted are ignored). Unknown tenant or ids: NotFound."""
        t = self._as_tenant(tenant)
        ids = as_ids(ids, allow_duplicates=True)
        with self._lock.write:
            self._require_tenant(t)
            rows = self._require_rows(ids)
            self._run(K.revoke_pairs, rows, np.full(rows.shape[0], t, np.int32))
            self._after_revoke(rows.shape[0])

    def remove(self, ids) -> int:
        """Delete vectors for every tenant (tombstoned; unknown ids are ignored). Returns how many were removed."""
        ids = as_ids(ids, allow_duplicates=True)
        with self._lock.write:
            rows = self._rows(np.unique(ids))
            rows = rows[rows >= 0]
            if rows.size == 0:
                return 0
            self._run(K.remove_rows, rows)
            self._del[rows] = True
            K.ids_delete(self._irows, self._imeta, self._ids, rows)
            self._after_revoke(rows.shape[0])
            return int(rows.size)

    def drop_tenant(self, tenant) -> None:
        """Delete a tenant: its shortlists, its access grants and its Bloom filter bits. Unknown tenant: NotFound."""
        t = self._as_tenant(tenant)
        with self._lock.write:
            self._require_tenant(t)
            K.drop_tenant(t, self._tree, self._sl(), self._acc(), self._ten())
            self._talive[t] = False
            if self._tree is not None:
                K.bloom_rebuild(self._tree, self._sl(), self.settings["hashes"])
            self._stale = 0

    def _after_revoke(self, n: int) -> None:
        # revokes leave stale Bloom bits (false positives only cost descent); refresh once they pile up
        self._stale += n
        if self._stale > max(10000, int(self._tcount.sum()) // 10):
            K.bloom_rebuild(self._tree, self._sl(), self.settings["hashes"])
            self._stale = 0

    def _trim(self) -> None:
        """Give back pool slack after a bulk change (amortised; single updates leave it alone)."""
        live = int(self._smeta[K.M_USED] - self._smeta[K.M_GARB])
        if self._spool.shape[0] > 1.3 * live + 4 * self._need_pool():
            self._compact_sl(slack=1.1)
        live = int(self._ameta[0] - self._ameta[1])
        if self._apool.shape[0] > 1.3 * live + 8192:
            self._compact_acc(slack=1.1)

    def compact(self) -> None:
        """Give back all spare capacity now: pool slack, and row buffers beyond the rows held (a build feeds rows in
        chunks, and doubling leaves up to half of the last allocation unused)."""
        with self._lock.write:
            self._trim()
            if self._ids.shape[0] > self._n:
                self._resize_rows(self._n)

    # ------------------------------------------------------------------ queries
    def tenants_of(self, id) -> list[int]:
        """Sorted tenant ids that may see vector ``id``; NotFound if the id is not live."""
        ids = as_ids(id)
        with self._lock.read:
            row = int(self._require_rows(ids)[0])
            s, n = int(self._astart[row]), int(self._alen[row])
            return sorted(int(t) for t in self._apool[s:s + n])

    def list_tenants(self) -> list[int]:
        """Ids of the tenants that exist (granted at least once and not dropped)."""
        with self._lock.read:
            return [int(t) for t in np.flatnonzero(self._talive)]

    def tenant_size(self, tenant) -> int:
        """Number of live vectors ``tenant`` may see."""
        t = self._as_tenant(tenant)
        with self._lock.read:
            self._require_tenant(t)
            return int(self._tcount[t])

    # ------------------------------------------------------------------ calibration (index/calibrate.py)
    def tenant_members(self) -> dict[int, np.ndarray]:
        """``{tenant: sorted live rows it may see}`` from the access map (one pass over every grant)."""
        with self._lock.read:
            n = self._n
            alen = self._alen[:n].astype(np.int64)
            rows = np.repeat(np.arange(n, dtype=np.int64), alen)
            starts = np.repeat(self._astart[:n], alen)
            offs = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(alen) - alen, alen)
            tens = self._apool[starts + offs].astype(np.int64)
        order = np.lexsort((rows, tens))
        rows, tens = rows[order], tens[order]
        cuts = np.flatnonzero(np.diff(tens)) + 1
        return {int(ts[0]): r for ts, r in zip(np.split(tens, cuts), np.split(rows, cuts)) if r.size}

    def calibration_ladder(self, k: int) -> tuple[list[dict], list[dict]]:
        """``gamma`` from 1 up to an exhaustive budget for the largest tenant, in steps of about 1.5x; re-rank depths
        where there are codes to rank by (d <= 128)."""
        top = int(self._tcount.max()) if self._tcount.size else 0
        primary = [{"gamma": g} for g in ladder_values(1, max(2, -(-top // max(1, k))))]
        secondary = [{"rerank": r} for r in (32, 64, 128, 256)] if self._codes.shape[1] else []
        return primary, secondary

    def calibration_cost(self, params: dict, info: dict, nq: int) -> float:
        """Per query: candidates ranked (by their 4-bit codes, a padded row's bytes each, or exactly, ``d`` each)
        plus the exact re-ranks."""
        cand = float(info.get("ndis", 0)) / max(1, nq)
        stride = self._codes.shape[1]
        if not stride:
            return cand * self.d
        return cand * stride + min(cand, float(params.get("rerank", DEFAULT_RERANK))) * self.d

    def band_value(self, *, allowed=None, tenant=None, filter=None, fraction=None) -> float | None:
        """The queried tenant's size (the largest over a batch's tenants); ``None`` without a tenant."""
        if tenant is None:
            return None
        if isinstance(tenant, (int, np.integer)):
            t = int(tenant)
            return float(self._tcount[t]) if 0 <= t < self._tcount.shape[0] else 0.0
        ts = np.asarray(tenant, dtype=np.int64)
        ts = ts[(ts >= 0) & (ts < self._tcount.shape[0])]
        return float(self._tcount[ts].max()) if ts.size else 0.0

    def search(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """Top-``k`` of each query among the vectors its tenant may see.

        Parameters
        ----------
        q : float32 (nq, d)
        k : int
        params : dict, optional
            ``gamma`` (float, default 64): score at least ``gamma * k`` candidates before stopping;
            ``variance_boost`` (float, default 0): node score = squared L2 to centroid - boost * node variance;
            ``rerank`` (int, default 64): rank the candidates by their 4-bit codes and score only the best
            ``max(k, rerank)`` exactly (0: score every candidate exactly; with a huge ``gamma`` that is exact search).
            Codes are kept only for d <= 128; above, every candidate is scored exactly whatever ``rerank`` says.
        allowed : bool (ntotal,) or (nq, ntotal), optional
            Extra row mask (e.g. an attribute filter), applied inside the scan.
        tenant : int or int sequence (nq,), optional
            The querying tenant (one for the batch, or one per query). ``None`` searches every live vector exactly.

        Returns
        -------
        D float32 (nq, k), I int64 (nq, k)
        """
        hit = self._fast(q, k, params, allowed, tenant, filter)
        if hit is not None:
            return hit[0], hit[1]
        D, I, _ = self.search_stats(q, k, params=params, allowed=allowed, tenant=tenant, filter=filter)
        return D, I

    def _fast(self, q, k, params, allowed, tenant, filter):
        """``(D, I, nscored)`` for the common call (one tenant, no mask, a well-formed float32 batch), or ``None``.

        The same checks as check_search, minus the conversions, since at tens of microseconds per query the Python
        edge is a large share. The kernel checks that the queries are finite (it flags a query that is not with
        nscored -1; the slow path then raises the usual error) and takes the tenant as a scalar.
        """
        if (allowed is None and filter is None and type(q) is np.ndarray and q.dtype == np.float32 and q.ndim == 2
                and q.shape[1] == self.d and q.flags.c_contiguous and type(k) is int and k > 0
                and type(tenant) is int and self._tree is not None and 0 <= tenant < self._talive.shape[0]
                and self._talive[tenant] and (params is None or type(params) is dict and params.keys() <= _PARAMS)):
            if self.calibration is not None or (params and RECALL_PARAM in params):
                params = self.tuned_params(params, tenant=tenant)[0]
            if params:
                gamma = float(params.get("gamma", DEFAULT_GAMMA))
                vboost = float(params.get("variance_boost", DEFAULT_VBOOST))
                rerank = params.get("rerank", DEFAULT_RERANK)
            else:
                gamma, vboost, rerank = DEFAULT_GAMMA, DEFAULT_VBOOST, DEFAULT_RERANK
            if gamma > 0 and math.isfinite(vboost) and type(rerank) is int and rerank >= 0:
                with self._lock.read:
                    D, I, ns = self._kernel(q, _NO_TENS, k, max(k, math.ceil(gamma * k)), vboost, rerank, _NO_MASK,
                                            0, tenant)
                if ns.shape[0] == 0 or (ns[0] >= 0 if ns.shape[0] == 1 else ns.min() >= 0):
                    return D, I, ns
        return None

    def _kernel(self, q, tens, k, budget, vboost, rerank, mask, mode, tenant=0):
        cent, var, lo, hi, parent, depth, bidx, bloom = self._tree
        rerank = max(k, rerank) if rerank else 0
        return KS.search_batch(q, tens, k, budget, vboost, self.metric != "l2", self.metric == "cosine", cent, var,
                               lo, hi, parent, bidx, bloom, self._sstart, self._slen, self._spool, self._hkeys, self._hvals,
                               self._vecs, self._ids, mask, mode, self.settings["hashes"], self.settings["branch"],
                               self._codes, self._sq[0], self._sq[1], rerank, tenant)

    def search_with_stats(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        hit = self._fast(q, k, params, allowed, tenant, filter)
        if hit is None:
            hit = self.search_stats(q, k, params=params, allowed=allowed, tenant=tenant, filter=filter)
        return hit[0], hit[1], {"ndis": sum(hit[2].tolist())}

    def search_stats(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """:meth:`search` that also returns the number of candidates scored per query (int64 (nq,))."""
        # like check_search, but the queries stay unnormalised: the kernel normalises them for cosine itself, so
        # the fast path and this one give bit-identical results
        q = as_vectors(q, self.d, name="queries")
        k = check_k(k)
        params = as_params(params, (*self.search_params, RECALL_PARAM))
        if filter is not None:
            raise InvalidArgument("Curator has no native filters; pass an allowed mask instead")
        allowed = as_allowed(allowed, self.ntotal, q.shape[0])
        params = self.tuned_params(params, allowed=allowed, tenant=tenant)[0]
        nq = q.shape[0]
        gamma = float(params.get("gamma", DEFAULT_GAMMA))
        vboost = float(params.get("variance_boost", DEFAULT_VBOOST))
        if not gamma > 0 or not np.isfinite(vboost):
            raise InvalidArgument(f"gamma must be > 0 and variance_boost finite (got {gamma}, {vboost})")
        rerank = params.get("rerank", DEFAULT_RERANK)
        if isinstance(rerank, bool) or not isinstance(rerank, (int, np.integer)) or rerank < 0:
            raise InvalidArgument(f"rerank must be an integer >= 0 (got {rerank!r})")
        with self._lock.read:
            if tenant is None:
                mask = self.live_mask(allowed)
                qn = normalize_rows(q) if self.metric == "cosine" else q
                D, I = exact_search(qn, self._vecs[:self._n], k, self.metric, labels=self._ids[:self._n],
                                    allowed=mask)
                return D, I, np.full(nq, self.nlive, np.int64)
            tens = self._query_tenants(tenant, nq)
            if self._tree is None or nq == 0:
                D, I = self.empty(nq, k)
                return D, I, np.zeros(nq, np.int64)
            if allowed is None:
                mask, mode = _NO_MASK, 0
            elif allowed.ndim == 1:
                mask, mode = allowed[None, :], 1
            else:
                mask, mode = allowed, 2
            return self._kernel(q, tens, k, max(k, int(np.ceil(gamma * k))), vboost, int(rerank), mask, mode)

    def _query_tenants(self, tenant, nq: int) -> np.ndarray:
        if isinstance(tenant, (int, np.integer)) and not isinstance(tenant, bool):
            t = self._as_tenant(tenant)
            self._require_tenant(t)
            return np.full(nq, t, np.int32)
        arr = np.asarray(tenant)
        if arr.ndim != 1 or arr.shape[0] != nq or (arr.size and arr.dtype.kind not in "iu"):
            raise InvalidArgument(f"tenant must be an int or {nq} ints (one per query)")
        for t in np.unique(arr):
            self._require_tenant(self._as_tenant(int(t)))
        return arr.astype(np.int32)

    # ------------------------------------------------------------------ introspection
    def shortlists(self) -> dict[tuple[int, int], np.ndarray]:
        """``{(node, tenant): rows int64}`` of every live shortlist (for tests and debugging)."""
        with self._lock.read:
            out = {}
            for s in range(int(self._smeta[K.M_HW])):
                n = int(self._snode[s])
                if n >= 0:
                    a = int(self._sstart[s])
                    out[(n, int(self._sten[s]))] = self._spool[a:a + int(self._slen[s])].astype(np.int64)
            return out

    def check_invariants(self) -> None:
        """Raise AssertionError if the shortlists disagree with the access map or the tree (slow; for tests).

        Checks: every (row, tenant) grant is in exactly one shortlist of that tenant, on the row's root-leaf path;
        shortlists of one tenant never nest; internal shortlists hold at most ``shortlist`` rows; each ancestor of a
        shortlist has the tenant in its Bloom filter; every tenant count matches.
        """
        cent, var, lo, hi, parent, depth, bidx, bloom = self._tree if self._tree else (None,) * 8
        sls = self.shortlists()
        seen: dict[tuple[int, int], int] = {}
        per_t: dict[int, set[int]] = {}
        for (node, t), rows in sls.items():
            assert rows.size > 0, f"empty shortlist at node {node} for tenant {t}"
            if hi[node] > lo[node]:
                assert rows.size <= self.settings["shortlist"], f"overfull shortlist at node {node}"
            per_t.setdefault(t, set()).add(node)
            for r in rows:
                assert (int(r), t) not in seen, f"row {r} twice in tenant {t}'s shortlists"
                seen[(int(r), t)] = node
        for t, nodes in per_t.items():
            for node in nodes:
                p = int(parent[node])
                while p >= 0:
                    assert p not in nodes, f"nested shortlists for tenant {t} at {p} and {node}"
                    assert _bloom_has_py(bloom, int(bidx[p]), t, self.settings["hashes"]), "Bloom misses"
                    p = int(parent[p])
        grants = 0
        for r in range(self._n):
            s, n = int(self._astart[r]), int(self._alen[r])
            ts = self._apool[s:s + n]
            assert len(set(ts.tolist())) == n, f"duplicate tenants in row {r}'s access list"
            assert not (self._del[r] and n), f"removed row {r} still has tenants"
            for t in ts:
                node = seen.get((r, int(t)))
                assert node is not None, f"grant ({r}, {t}) missing from shortlists"
                path = set()
                m = int(self._leaf[r])
                while m >= 0:
                    path.add(m)
                    m = int(parent[m])
                assert node in path, f"row {r} filed off its path for tenant {t}"
            grants += n
        assert grants == len(seen), "shortlists hold rows without grants"
        for t in range(self._tcount.shape[0]):
            want = sum(1 for (r, tt) in seen if tt == t)
            assert self._tcount[t] == want, f"tenant {t} count {self._tcount[t]} != {want}"

    # ------------------------------------------------------------------ memory
    def _arrays(self) -> dict[str, list]:
        tree = list(self._tree) if self._tree is not None else []
        return {
            "vectors": [self._vecs],
            "codes": [self._codes, *self._sq],
            "rows": [self._ids, self._del, self._leaf],
            "id_map": [self._irows],
            "access": [self._astart, self._alen, self._acap, self._apool],
            "shortlists": [self._sstart, self._slen, self._scap, self._snode, self._sten, self._sfree, self._spool],
            "shortlist_map": [self._hkeys, self._hvals],
            "bloom": tree[7:8],
            "tree": tree[:7],
            "tenants": [self._tcount, self._tnsl, self._talive],
        }

    def memory_breakdown(self) -> dict[str, int]:
        """In-memory bytes per structure (buffers at their allocated capacity)."""
        return {name: array_bytes(*arrs)[0] for name, arrs in self._arrays().items()}

    def memory_bytes(self) -> int:
        return sum(self.memory_breakdown().values()) + 2048  # + the Python objects themselves

    def mapped_bytes(self) -> int:
        return array_bytes(self._vecs)[1]

    def tenant_memory_bytes(self, tenant) -> int:
        """Bytes attributable to one tenant: its shortlist and access-list entries plus its shortlists' bookkeeping.

        Vectors, the tree and the Bloom filters are shared and not charged to any tenant.
        """
        t = self._as_tenant(tenant)
        with self._lock.read:
            self._require_tenant(t)
            per_slot = 8 + 4 * 5 + 12 * self._hkeys.shape[0] / max(1, int(self._smeta[K.M_HCOUNT]))
            return int(8 * self._tcount[t] + per_slot * self._tnsl[t])

    # ------------------------------------------------------------------ persistence
    def save(self, store, prefix: str) -> None:
        with self._lock.write:
            if self._tree is not None:
                self._compact_sl(slack=1.0)
                self._compact_acc(slack=1.0)
            n, hw = self._n, int(self._smeta[K.M_HW])
            arrays = {
                "vectors": self._vecs[:n], "codes": self._codes[:n], "sq_lo": self._sq[0], "sq_step": self._sq[1],
                "row_ids": self._ids[:n], "deleted": self._del[:n],
                "row_leaf": self._leaf[:n], "acc_start": self._astart[:n], "acc_len": self._alen[:n],
                "acc_cap": self._acap[:n], "acc_pool": self._apool[:int(self._ameta[0])], "acc_meta": self._ameta,
                "sl_start": self._sstart[:hw], "sl_len": self._slen[:hw], "sl_cap": self._scap[:hw],
                "sl_node": self._snode[:hw], "sl_tenant": self._sten[:hw],
                "sl_free": self._sfree[:int(self._smeta[K.M_NFREE])], "sl_pool": self._spool[:int(self._smeta[K.M_USED])],
                "sl_meta": self._smeta, "sl_keys": self._hkeys, "sl_vals": self._hvals,
                "t_count": self._tcount, "t_nsl": self._tnsl, "t_alive": self._talive,
            }
            if self._tree is not None:
                for name, a in self._tree._asdict().items():
                    arrays["tree_" + name] = a
            meta = {"kind": self.kind, "d": self.d, "metric": self.metric, "settings": self.settings,
                    "curator_version": 2, "trained": self._tree is not None, "ntotal": n, "stale": self._stale,
                    **self.calibration_meta()}
            save_arrays(store, prefix, meta, arrays)

    @classmethod
    def load(cls, store, prefix: str, *, mmap: bool = False) -> "CuratorIndex":
        meta, a = load_arrays(store, prefix, kind=cls.kind, mmap=mmap)
        if meta.get("curator_version") not in (1, 2):
            raise FailedPrecondition(f"{prefix}: Curator layout version {meta.get('curator_version')} is not supported")
        ix = cls(meta["d"], meta["metric"], **meta["settings"])
        own = lambda name: np.array(a[name])  # noqa: E731 - writable in-memory copy
        ix._n = int(meta["ntotal"])
        ix._vecs = a["vectors"] if mmap else own("vectors")
        if "codes" in a:
            ix._sq = (own("sq_lo"), own("sq_step"))
            ix._codes = _aligned_codes(ix._n, ix.d)
            ix._codes[:] = a["codes"]
        else:  # saved before the codes existed: grid from the stored vectors
            ix._codes = _aligned_codes(ix._n, ix.d)
            if ix._n:
                v = np.asarray(ix._vecs[:ix._n])
                step = (v.max(axis=0) - v.min(axis=0)) / 16
                ix._sq = (v.min(axis=0).astype(np.float32), np.where(step > 0, step, 1.0).astype(np.float32))
                K.sq4_encode(v, ix._sq[0], ix._sq[1], ix._codes)
        for attr, name in (("_ids", "row_ids"), ("_del", "deleted"), ("_leaf", "row_leaf"), ("_astart", "acc_start"),
                           ("_alen", "acc_len"), ("_acap", "acc_cap"), ("_apool", "acc_pool"),
                           ("_ameta", "acc_meta"), ("_smeta", "sl_meta"), ("_hkeys", "sl_keys"),
                           ("_hvals", "sl_vals"),
                           ("_tcount", "t_count"), ("_tnsl", "t_nsl"), ("_talive", "t_alive")):
            setattr(ix, attr, own(name))
        hw = int(ix._smeta[K.M_HW])
        cap = max(256, hw)
        for attr, name, fill in (("_sstart", "sl_start", 0), ("_slen", "sl_len", 0), ("_scap", "sl_cap", 0),
                                 ("_snode", "sl_node", -1), ("_sten", "sl_tenant", -1), ("_sfree", "sl_free", 0)):
            src = a[name]
            out = np.full(cap, fill, src.dtype)
            out[:src.shape[0]] = src
            setattr(ix, attr, out)
        ix._spool = own("sl_pool")
        if meta["trained"]:
            ix._tree = K.Tree(*(own("tree_" + name) for name in K.Tree._fields))
        ix._stale = int(meta.get("stale", 0))
        ix.restore_calibration(meta)
        # the id table is not saved (version 1 saved one with its keys): rebuilt from the row ids, ~20 ns a row
        ix._rebuild_ids(int(ix._n - np.count_nonzero(ix._del[:ix._n])))
        ix._sync_views()
        return ix

    # the row buffers may be memory-mapped after load; growing copies them into memory
    def __getstate__(self):
        raise TypeError("CuratorIndex is saved with save(store, prefix), not pickled")


def _aligned_codes(n: int, d: int) -> np.ndarray:
    """Zeroed uint8 (n, stride) code store starting on a 64-byte boundary (a row never straddles lines needlessly)."""
    stride = K.code_stride(d)
    raw = np.zeros(n * stride + 64, np.uint8)
    off = (-raw.ctypes.data) % 64
    return raw[off:off + n * stride].reshape(n, stride)


_NO_MASK = np.zeros((1, 1), dtype=bool)
_NO_TENS = np.zeros(0, dtype=np.int32)
_PARAMS = frozenset((*CuratorIndex.search_params, RECALL_PARAM))


def _bloom_has_py(bloom: np.ndarray, row: int, t: int, nhash: int) -> bool:
    """Pure-Python mirror of the kernel's blocked Bloom test (used by :meth:`CuratorIndex.check_invariants`)."""
    mask = (1 << 64) - 1

    def mix(x):
        x &= mask
        x = ((x ^ (x >> 31)) * 0x7FB5D329728EA185) & mask
        x = ((x ^ (x >> 27)) * 0x81DADEF4BC2DD44D) & mask
        return (x ^ (x >> 33)) >> 1

    h = mix(t * 2 + 1)
    blk, a = h & (bloom.shape[0] - 1), (h >> 20) & 0xFFFFFFFF
    b = (mix(t * 2 + 2) & 0xFFFFFFFF) | 1
    for i in range(nhash):
        p = (a + i * b) & 511
        if not (int(bloom[blk, row, p >> 3]) >> (p & 7)) & 1:
            return False
    return True
