"""OSQ's level 0, the planner: filter status, exact or multi-level plan, partitions and clusters to visit.

Run by :meth:`OSQIndex.search` in process and by serverless allocators (:meth:`OSQIndex.level0`); its output,
:class:`Level0`, is what the partitions' levels 1-3 (:mod:`.osq_partition`) or the exact scan consume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import filters
from ..errors import InvalidArgument
from ..quantization import _osq_kernels as K
from ..quantization.kmeans import sq_distances
from .osq_columns import as_expr
from .osq_partition import DEFAULT_PARAMS, HEAD_DIMS

#: planner cost model (see ``OSQIndex._exact_cheaper``), in BLAS multiply-adds per row-dimension
EXACT_FACTOR = 1.1
INDEXED_BELOW = 16  # the exact plan uses a range index when its predicate leaves at most 1/16 of the rows
ML_ROW_COST = 12.0


@dataclass
class Level0:
    """Output of level 0 for a batch: what an allocator hands to the partition processors.

    Attributes
    ----------
    qrot : float32 (nq, d)
    status : uint8 (ns, ntotal)  filter status per internal row (tombstones 0)
    sidx : int64 (nq,)           status row of each query
    visit : bool (nq, P)         partitions each query visits
    plan : "multilevel" or "exact"
    sure, maybe : int64 (ns,)    counts over the index
    resolved : bool (ns,)        maybe rows were resolved exactly (status has no maybe)
    clusters : bool (nq, P, C)   clusters each query visits inside each partition ((nq, P, 0) under the exact plan)
    q : float32 (nq, d) or None  the prepared (cosine: normalised) unrotated queries; the exact plan scans the
                                 unrotated vectors with them. ``qrot`` may be None under the exact plan when the
                                 caller asked level 0 not to rotate.
    rows : list of int64 arrays or None  under the exact plan, when level 0 found the matches through a range
                                 index: the sorted sure rows of each status row (what ``status`` marks), so the scan
                                 need not look for them again
    """

    qrot: np.ndarray
    status: np.ndarray
    sidx: np.ndarray
    visit: np.ndarray
    plan: str
    sure: np.ndarray
    maybe: np.ndarray
    resolved: np.ndarray
    clusters: np.ndarray
    q: np.ndarray | None = None
    rows: list | None = None


def row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a bool (ns, n) array, int64 (ns,). ``count_nonzero(axis=1)`` sums the bools as
    integers (56 us for one row of 60,000); per row it counts bytes (6 us)."""
    if mask.shape[0] == 1:
        return np.array([np.count_nonzero(mask)], dtype=np.int64)
    return np.fromiter((np.count_nonzero(r) for r in mask), dtype=np.int64, count=mask.shape[0])


def choose_clusters(dc: np.ndarray, sure: np.ndarray, cand: np.ndarray, sidx: np.ndarray, k: int,
                     p: dict, per_cluster: float, ratio: bool = True) -> np.ndarray:
    """Level-0 visiting rule over clusters, nearest first.

    Visit clusters until the filter-passing (sure + maybe) rows of the visited ones reach ``nprobe`` clusters' worth
    of rows (``nprobe * per_cluster``): a selective filter visits more clusters, so the search examines as many
    candidates as an unfiltered one and recall does not collapse, and where the matches lie far from the query
    (a filter anti-correlated with it) the per-cluster counts lead the search there. Clusters within
    ``visit_ratio`` of the nearest distance are added, ``max_visit`` caps the count when set, and in any case
    visiting goes on until the sure rows of the visited clusters reach ``k`` (one pass returns ``min(k, matches)``).

    Parameters
    ----------
    dc : float32 (nq, G) keys of the cluster centroids (squared L2; or negated inner products, then ``ratio``
        must be False since the ``visit_ratio`` rule needs distances)
    sure, cand : int64 (ns, G) sure rows / sure + maybe rows per cluster for each status row
    sidx : int64 (nq,)

    Returns
    -------
    bool (nq, G)
    """
    nq, G = dc.shape
    nprobe = max(1, int(p["nprobe"]))
    target = nprobe * per_cluster
    # rank only the nearest T clusters unless a query needs more to reach k sure rows; a filter passing a fraction f
    # of the rows needs about nprobe / f clusters
    frac = max(float(cand[sidx].sum()) / max(1.0, per_cluster * G * len(sidx)), 1e-6)
    T = min(G, max(2 * nprobe, 32, int(np.ceil(2 * nprobe / frac))))
    out = np.zeros((nq, G), dtype=bool)
    sure = np.ascontiguousarray(sure, dtype=np.int64)
    cand = np.ascontiguousarray(cand, dtype=np.int64)
    todo = np.arange(nq)
    # numpy selects and sorts each query's nearest T clusters (numba's sorts are several times slower); a compiled
    # walk applies the rules and stops where no rule can want a farther cluster; queries whose T clusters hold too
    # few rows (a filter far from them) go round again with 4x as many (the whole-array form of this rule sorted
    # all G clusters for them and cost as much as levels 1-2 under a 50% filter)
    while todo.size:
        d = np.ascontiguousarray(dc[todo], dtype=np.float32)
        if T < G:
            top = np.argpartition(d, T - 1, axis=1)[:, :T]
            order = np.take_along_axis(top, np.argsort(np.take_along_axis(d, top, axis=1), axis=1, kind="stable"),
                                       axis=1)
        else:
            order = np.argsort(d, axis=1, kind="stable")
        need = np.zeros(todo.size, dtype=bool)
        K.walk_clusters(np.ascontiguousarray(order, dtype=np.int64), T >= G, d, sure, cand,
                        np.ascontiguousarray(sidx[todo], dtype=np.int64), todo.astype(np.int64), int(k),
                        float(target), float(p["visit_ratio"]), int(p["max_visit"]), bool(ratio), out, need)
        todo = todo[need]
        T = min(G, 4 * T)
    return out


class Level0Planner:
    """The level-0 methods of :class:`~shoal.index.osq.OSQIndex` (a mixin: they read the index's rotation, row maps,
    cluster centroids, attribute codes and columns, and call its ``filter_status``, ``exact_rows``, ``_check_pred``,
    ``_live`` and ``_rotate_prepared``)."""

    def level0(self, q, k: int, params: dict | None = None, *, filter=None, allowed=None,
               rotate_exact: bool = True) -> Level0:
        """Level 0 (allocator): three-valued filter, plan, rotation, counts per cluster, clusters to visit.

        Parameters are as for :meth:`search`; ``allowed`` must already be validated (``None``, (ntotal,) or
        (nq, ntotal) bool). ``rotate_exact=False`` leaves ``qrot`` None under the exact plan (the in-process exact
        scan reads the unrotated vectors; a serverless processor needs the rotated queries).
        """
        return self._level0(self.prepare(q, name="queries"), k, params, filter, allowed, rotate_exact)

    def _level0(self, q, k, params, filter, allowed, rotate_exact) -> Level0:
        """:meth:`level0` on prepared queries."""
        p = dict(DEFAULT_PARAMS)
        p.update(params or {})
        nq, P = q.shape[0], self.nparts
        expr = None if filter is None else as_expr(filter)
        live, nlive = self._live()
        mode = p["mode"]
        if mode not in ("auto", "exact", "multilevel"):
            raise InvalidArgument(f"mode must be auto, exact or multilevel, got {mode!r}")
        lv = self._level0_exact(q, k, p, expr, allowed, live, nlive, rotate_exact) if mode != "multilevel" else None
        if isinstance(lv, Level0):
            return lv
        if lv is not None:
            # the planner chose levels 0-3 but the filter was already evaluated exactly: those statuses (sure or no,
            # no maybe rows to re-check) serve the multi-level plan as well, instead of a second, three-valued pass
            # over the attribute codes (mode="multilevel" still takes the codes, as a serverless allocator does)
            status, sidx, nsure = lv
            ns = status.shape[0]
            nmaybe = np.zeros(ns, dtype=np.int64)
            resolved = np.ones(ns, dtype=bool)
            exact = False
        else:
            status, sidx, nsure, nmaybe, resolved, exact = self._status_from_codes(q, k, p, expr, allowed, live,
                                                                                   nlive)
        if exact or P == 0:
            qrot = self._rotate_prepared(q) if rotate_exact else None
            return Level0(qrot, status, sidx, np.zeros((nq, P), bool), "exact", nsure, nmaybe, resolved,
                          np.zeros((nq, P, 0), bool), q)
        return self._level0_clusters(q, k, p, status, sidx, nsure, nmaybe, resolved, nlive)

    def _status_from_codes(self, q, k, p, expr, allowed, live, nlive):
        """Level 0's filter status from the attribute codes (three-valued), the plan, and the exact resolution of
        the maybe rows where the plan is exact or a status row has fewer than ``k`` sure rows."""
        nq, P = q.shape[0], self.nparts
        mode = p["mode"]
        sure, maybe = self.filter_status(expr)
        if allowed is None or allowed.ndim == 1:
            keep = live if allowed is None else live & allowed
            sure = sure & keep
            maybe = maybe & keep
            sidx = np.zeros(nq, dtype=np.int64)
        else:
            keep = allowed & live[None, :]
            sure = sure[None] & keep
            maybe = maybe[None] & keep
            sidx = np.arange(nq, dtype=np.int64)
        # sure wins where both are set (evaluate3 resolves overlap that way): status 1 sure, 2 maybe, 0 no
        status = np.where(sure, np.uint8(K.STATUS_SURE), maybe.view(np.uint8) << 1).reshape(-1, self.ntotal)
        ns = status.shape[0]
        nsure = row_counts(sure.reshape(ns, -1))
        nmaybe = row_counts(status == K.STATUS_MAYBE)
        resolved = np.zeros(ns, dtype=bool)
        exact = mode == "exact" or (mode == "auto" and P > 0 and
                                    self._exact_cheaper(nsure + nmaybe, sidx, nlive, p))
        for s in range(ns):
            if (exact or nsure[s] < k) and nmaybe[s]:
                rows = np.flatnonzero(status[s] == K.STATUS_MAYBE)
                hit = self.exact_rows(expr, rows)
                status[s, rows] = np.where(hit, K.STATUS_SURE, K.STATUS_NO)
                resolved[s] = True
                nsure[s] += int(hit.sum())
                nmaybe[s] = 0
        return status, sidx, nsure, nmaybe, resolved, exact

    def _level0_clusters(self, q, k, p, status, sidx, nsure, nmaybe, resolved, nlive) -> Level0:
        """The multi-level plan's level 0 after the filter status: rotation, cluster ranking, clusters to visit."""
        nq, P = q.shape[0], self.nparts
        qrot = self._rotate_prepared(q)
        # per-cluster counts of sure and maybe rows (status row x cluster, clusters numbered p * C + c)
        G = P * self.nclusters
        sc, mc = K.cluster_counts(status, self.row_cluster, G)
        if self.metric == "ip":
            # inner-product search ranks cells by the inner product with their centroid, as IVF does
            dc = np.ascontiguousarray(-(qrot @ self.cluster_centroids.T), dtype=np.float32)
        else:
            # squared distances with the centroid norms cached: recomputing them cost as much as the product
            cc = self.cluster_centroids
            if getattr(self, "_cc_src", None) is not cc:
                self._cc_src, self._cc_norms = cc, np.einsum("ij,ij->i", cc, cc)
            dc = sq_distances(qrot, cc, self._cc_norms)
        per_cluster = max(1.0, float(nlive) / G)
        vcl = choose_clusters(dc, sc, sc + mc, sidx, k, p, per_cluster, ratio=self.metric != "ip")
        clusters = vcl.reshape(nq, P, self.nclusters)
        visit = clusters.any(axis=2)
        return Level0(qrot, status, sidx, visit, "multilevel", nsure, nmaybe, resolved, clusters, q)

    def _level0_exact(self, q, k, p, expr, allowed, live, nlive, rotate_exact) -> Level0 | tuple | None:
        """The exact plan straight from the exact attribute values when they are all in memory (a full index):
        one exact filter pass (as plain pre-filtering does) gives exact counts for the planner and the status.
        Returns the exact plan's Level0; or ``(status uint8 (ns, n), sidx, nsure)`` when the planner picks the
        multi-level search (which then runs on these exact statuses); or None when the values are not loaded (an
        allocator's level-0-only load decides on the codes instead)."""
        names = () if expr is None else filters.attributes(expr)
        if any(name in self.kinds and self.columns.get(name) is None for name in names):
            return None
        nq, P = q.shape[0], self.nparts
        n = self.ntotal
        for pred in () if expr is None else filters.leaf_predicates(expr):
            if pred.attr in self.kinds:
                self._check_pred(pred)
        if expr is not None and (allowed is None or allowed.ndim == 1):
            lv = self._level0_indexed(q, k, p, expr, allowed, live, nlive, rotate_exact)
            if lv is not None:
                return lv
        if expr is None:
            match = live.copy()  # the status below views it; the remembered live mask must stay unshared
        else:
            cols = {name: self.columns[name] if name in self.kinds else filters.NumericColumn(np.full(n, np.nan))
                    for name in names}
            match = filters.evaluate(expr, cols, n)
            if nlive < n:
                match = match & live  # (evaluate may hand back an array it shares)
        if allowed is None or allowed.ndim == 1:
            sure = match if allowed is None else match & allowed
            sidx = np.zeros(nq, dtype=np.int64)
        else:
            sure = allowed & match[None, :]
            sidx = np.arange(nq, dtype=np.int64)
        status = sure.view(np.uint8).reshape(-1, n)
        nsure = row_counts(sure.reshape(-1, n))
        if p["mode"] == "auto" and P > 0 and not self._exact_cheaper(nsure, sidx, nlive, p):
            return status, sidx, nsure  # the multi-level plan, on these exact statuses
        ns = status.shape[0]
        qrot = self._rotate_prepared(q) if rotate_exact else None
        return Level0(qrot, status, sidx, np.zeros((nq, P), bool), "exact", nsure, np.zeros(ns, np.int64),
                      np.ones(ns, bool), np.zeros((nq, P, 0), bool), q)

    def _level0_indexed(self, q, k, p, expr, allowed, live, nlive, rotate_exact):
        """:meth:`_level0_exact` through the range index of the filter's most selective range predicate (the
        filter itself, or one argument of a top-level ``and``), when that predicate leaves at most
        ``1 / INDEXED_BELOW`` of the rows: its candidate rows come from two binary searches in the column's sort
        order (:func:`filters.range_candidates`) and the whole filter is then evaluated exactly on them only,
        instead of over every row (at 390,000 rows and 0.1% selectivity ~0.3 ms of comparisons and ~0.1 ms of
        mask scans per batch, a quarter of an exact-plan search). Returns what :meth:`_level0_exact` returns, or None
        when no predicate qualifies."""
        n = self.ntotal
        preds = list(expr.args) if isinstance(expr, filters.And) else [expr]
        best = None
        for pred in preds:
            if isinstance(pred, (filters.Compare, filters.Between)) and self.kinds.get(pred.attr) in ("int", "float"):
                cand = filters.range_candidates(pred, self.columns[pred.attr])
                if cand is not None and (best is None or cand.size < best.size):
                    best = cand
        if best is None or best.size * INDEXED_BELOW > n:
            return None
        rows = np.sort(best)
        rows = rows[self.exact_rows(expr, rows)]
        if nlive < n:
            rows = rows[live[rows]]
        if allowed is not None:
            rows = rows[allowed[rows]]
        nsure = np.array([rows.size], dtype=np.int64)
        nq, P = q.shape[0], self.nparts
        sidx = np.zeros(nq, dtype=np.int64)
        status = np.zeros((1, n), dtype=np.uint8)
        status[0, rows] = K.STATUS_SURE
        if p["mode"] == "auto" and P > 0 and not self._exact_cheaper(nsure, sidx, nlive, p):
            return status, sidx, nsure  # the multi-level plan, on these exact statuses
        qrot = self._rotate_prepared(q) if rotate_exact else None
        return Level0(qrot, status, sidx, np.zeros((nq, P), bool), "exact", nsure, np.zeros(1, np.int64),
                      np.ones(1, bool), np.zeros((nq, P, 0), bool), q, rows=[rows])

    def _exact_cheaper(self, matches: np.ndarray, sidx: np.ndarray, live: int, p: dict) -> bool:
        """The planner: is an exact scan of the (at most ``matches``) passing rows cheaper than levels 0-3?

        ``exact_below > 0`` keeps a plain threshold (every status row passes at most that fraction of the live
        rows). Otherwise (the default) a cost model in units of one BLAS multiply-add: the exact scan costs
        ``EXACT_FACTOR sum_s nq_s m_s d`` (the distance GEMM of the ``nq_s`` queries sharing status row ``s`` over
        its ``m_s`` rows; the factor charges each query a share of gathering the rows, as for batches of about 20
        queries: a per-query cost, so the plan does not change when a batch is split), the multi-level search ``nq (d^2 + G d + ML_ROW_COST
        nprobe (n / G) min(d, 2 HEAD_DIMS))`` (query rotation, cluster ranking, and the ``nprobe`` clusters' worth
        of filter-passing candidates that level 0 collects whatever the selectivity, each costing ``ML_ROW_COST``
        units per level-2 dimension read: gathers, head or exact keys, re-ranks and per-partition bookkeeping;
        fitted on this machine: on GloVe-50d the exact scan measured faster up to 50% and levels 0-3 at 100%).
        """
        frac = float(p["exact_below"])
        if frac > 0:
            return bool(np.all(matches <= frac * max(1, live)))
        d, nq = self.d, sidx.shape[0]
        G = max(1, self.nparts * self.nclusters)
        if matches.shape[0] == 1:  # one status row shared by the batch (the common case: no per-query masks)
            exact = float(matches[0]) * nq * d * EXACT_FACTOR
        else:
            nq_s = np.bincount(sidx, minlength=matches.shape[0])
            exact = float(np.sum(matches.astype(np.float64) * nq_s)) * d * EXACT_FACTOR
        per_cluster = max(1.0, live / G)
        cand = max(1, int(p["nprobe"])) * per_cluster
        multi = nq * (d * d + G * d + ML_ROW_COST * cand * min(d, 2 * HEAD_DIMS))
        return exact <= multi
