"""Query planning and execution on a :class:`~shoal.engine.view.View`: index + exact tail, deletes masked, filters
and tenants.

Plans (reported in :class:`~shoal.engine.results.SearchStats`):

* ``exact(<why>)``: a filter and/or tenant leaves at most ``exact_threshold`` live rows: scan exactly those rows
  (faster than any index at that selectivity, and exact).
* ``tail``: no index yet: exact scan of every live row.
* ``index(<kind>)+tail``: the index (filters / tenants handled natively by kinds that declare ``supports_filter`` /
  ``supports_tenants``, otherwise passed as ``allowed`` masks over the index's rows), plus an exact scan of the
  unindexed tail, merged with :func:`~shoal.index.topk.merge_topk`.

No silent short lists: every query gets ``min(k, matching live records)`` results. An approximate index can return
fewer (a selective mask that its probed clusters barely hold, a small candidate budget); those queries are answered
again by an exact scan of the matching rows, and the stats count them (``exact_fallback``).

Index results need no re-validation: the collection applies every remove / grant / revoke to the index under the same
write lock that changes the records, and the allowed masks come from the same view.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument, NotFound
from ..index.factory import kind_class, parse_factory, resolve_kind
from ..index.flat import exact_search
from ..index.topk import empty_result, merge_topk
from ..index.validate import as_params, as_vectors, check_k, normalize_rows
from .results import SearchResult, SearchStats, keys_to_scores
from .view import View

#: default largest k a search may ask for (a collection setting: ``max_k``)
DEFAULT_MAX_K = 10_000
#: default largest number of result slots (queries x k) in one call (a collection setting: ``max_results``)
DEFAULT_MAX_RESULTS = 1 << 22


@dataclass(frozen=True)
class SearchSettings:
    """The collection settings a search depends on (built once per configuration, not per call)."""

    dim: int
    metric: str
    index_spec: str
    exact_threshold: int | None
    max_k: int = DEFAULT_MAX_K
    max_results: int = DEFAULT_MAX_RESULTS


def check_limits(nq: int, k, max_k: int, max_results: int) -> int:
    """Validate ``k`` and the size of a request before anything is allocated for it."""
    k = check_k(k)
    if k > max_k:
        raise InvalidArgument(f"k = {k} is larger than this collection's max_k = {max_k} (a collection setting)")
    if nq * k > max_results:
        raise InvalidArgument(f"{nq} queries x k = {k} is {nq * k:,} results, more than max_results = "
                              f"{max_results:,} per call (a collection setting): split the batch")
    return k


def search_params(spec: str, index) -> tuple[str, ...]:
    """Names of the search parameters the collection's index kind accepts."""
    if index is not None:
        return tuple(index.search_params)
    return tuple(kind_class(resolve_kind(parse_factory(spec))).search_params)


def _exact(view: View, metric: str, qn: np.ndarray, k: int, slots: np.ndarray | None, lo: int = 0, hi: int = 0,
           mask: np.ndarray | None = None):
    """Exact top-k over ``slots`` (gathered) or over the slot range ``[lo, hi)`` restricted to ``mask``."""
    rec = view.records
    if slots is not None:
        x, labels, allowed = rec.vectors[slots], rec.ids[slots], None
    else:
        x, labels, allowed = rec.vectors[lo:hi], rec.ids[lo:hi], mask
        if allowed is not None and allowed.all():
            allowed = None
    if metric == "cosine":
        if allowed is not None:
            rows = np.flatnonzero(allowed)
            x, labels, allowed = x[rows], labels[rows], None
        x = normalize_rows(x)
    return exact_search(qn, np.ascontiguousarray(x), k, metric, labels=labels, allowed=allowed)


_NONE = np.zeros(0, np.int64)

#: exact_threshold when the collection leaves it to the planner (``None``), by how the index would take the
#: constraint: a kind that handles a tenant natively (Curator: shortlists made for small tenants) answers faster than
#: gathering and scanning even a few hundred rows (measured by bench/engine.py); a native filter (OSQ) plans its own
#: exact scans with its cost model; a mask over an approximate index loses to an exact scan of a few thousand rows
AUTO_EXACT_NATIVE_TENANT = 64
AUTO_EXACT_MASKED = 4096


def exact_threshold(cfg: SearchSettings, index, native_t: bool, native_f: bool, masked: bool) -> int | float:
    """Matching rows at or below which a constrained search scans them exactly instead of asking the index."""
    if cfg.exact_threshold is not None:
        return cfg.exact_threshold
    if index is None or index.kind == "Flat":
        return np.inf  # a masked Flat index scans the same rows, after building a mask over all of them
    if masked:
        return AUTO_EXACT_MASKED
    if native_f:
        return 0
    return AUTO_EXACT_NATIVE_TENANT if native_t else 0


class _Constraint:
    """The rows one search may return (live, visible to the tenant, matching the filter), computed only as far as
    a plan needs: counts from the tenant registry are free, masks over every slot are not."""

    def __init__(self, rec, n: int, expr, tid: int | None):
        self.rec, self.n, self.expr, self.tid = rec, n, expr, tid
        self._mask = None

    @property
    def any(self) -> bool:
        return self.expr is not None or self.tid is not None

    def cheap_count(self) -> int | None:
        """Matching live rows when known without a pass over the slots."""
        if self.expr is None:
            return self.rec.nlive if self.tid is None else self.rec.tenant_count(self.tid)
        return None

    @property
    def mask(self) -> np.ndarray:
        """bool (n,) over slots."""
        if self._mask is None:
            rec, n = self.rec, self.n
            mask = rec.alive[:n]
            if self.tid is not None:
                mask = mask & rec.tenant_mask(self.tid, n)
            if self.expr is not None:
                mask = mask & rec.filter_mask(self.expr, n)
            self._mask = mask
        return self._mask

    def count(self) -> int:
        c = self.cheap_count()
        return int(np.count_nonzero(self.mask)) if c is None else c

    def slots(self) -> np.ndarray:
        """Sorted matching slots."""
        if self.expr is None and self.tid is not None:
            return self.rec.tenant_members(self.tid)
        return np.flatnonzero(self.mask)

    def tail(self, b: int) -> np.ndarray | None:
        """bool (n - b,) over the tail's slots, without a pass over the indexed ones; None when nothing there."""
        rec, n = self.rec, self.n
        if b >= n:
            return None
        if self._mask is not None:
            return self._mask[b:n]
        mask = rec.alive[b:n]
        if self.tid is not None:
            members = rec.tenant_members(self.tid)
            inside = members[np.searchsorted(members, b):np.searchsorted(members, n)]
            tmask = np.zeros(n - b, bool)
            tmask[inside - b] = True
            mask = mask & tmask
        if self.expr is not None:
            mask = mask & rec.filter_mask_range(self.expr, b, n)
        return mask


def search(view: View, cfg: SearchSettings, queries, k, expr, tid: int | None, params,
           include_attrs: bool) -> SearchResult:
    """Answer a batch of queries on ``view`` (the caller holds the collection's read lock).

    Parameters
    ----------
    queries : float32 (nq, dim)
    k : int
    expr : parsed filter expression or None
    tid : int or None
        Tenant id (already resolved by the collection).
    params : dict or None
        Search parameters of the index kind.
    """
    t0 = time.perf_counter()
    index = view.index
    rec = view.records
    n, b = rec.n, view.boundary
    if (index is not None and b == n and expr is None and type(queries) is np.ndarray and queries.ndim == 2
            and queries.dtype == np.float32 and queries.shape[1] == cfg.dim and queries.shape[0] and (
            tid is None or (index.supports_tenants and cfg.exact_threshold is None
                            and rec.tenant_count(tid) > AUTO_EXACT_NATIVE_TENANT))):
        # the thin path: everything indexed and no mask to build (no constraint, or a tenant the index takes
        # natively); the index's own edge checks the queries' values, so they are not checked twice
        nq = queries.shape[0]
        k = check_limits(nq, k, cfg.max_k, cfg.max_results)
        params = as_params(params, index.search_params)
        D, I, info = index.search_with_stats(queries, k, params=params, tenant=tid)
        if k <= index.ntotal and (I[0, k - 1] >= 0 if nq == 1 else (I[:, k - 1] >= 0).all()):
            scores, kind = keys_to_scores(D, cfg.metric)
            sub = info.get("plan")
            plan = f"index({index.kind}:{sub})" if sub else f"index({index.kind})"
            matched = rec.nlive if tid is None else rec.tenant_count(tid)
            ndis = info.get("ndis", nq * matched if index.kind == "Flat" else 0)
            stats = SearchStats(plan + ("[tenant]" if tid is not None else ""), int(ndis), nq * matched,
                                (time.perf_counter() - t0) * 1e3, matched=matched)
            attrs = _attributes(rec, I) if include_attrs else None
            return SearchResult(I, scores, kind, stats, attrs)
    q = as_vectors(queries, cfg.dim, name="queries")
    nq = q.shape[0]
    k = check_limits(nq, k, cfg.max_k, cfg.max_results)
    params = as_params(params, search_params(cfg.index_spec, index))
    qn = normalize_rows(q) if cfg.metric == "cosine" else q
    cons = _Constraint(rec, n, expr, tid)
    why = "filter+tenant" if expr is not None and tid is not None else "filter" if expr is not None else \
        "tenant" if tid is not None else ""
    native_t = tid is not None and index is not None and index.supports_tenants
    native_f = expr is not None and index is not None and index.supports_filter
    masked = (tid is not None and not native_t) or (expr is not None and not native_f)
    eligible = cons.cheap_count()
    if cons.any and (masked or eligible is not None or (cfg.exact_threshold or 0) > 0):
        eligible = cons.count()  # a native filter alone is counted only when the collection sets a threshold
    ndis = nscanned = 0
    if cons.any and index is not None and b > 0 and \
            eligible is not None and eligible <= exact_threshold(cfg, index, native_t, native_f, masked):
        slots = cons.slots()
        D, I = _exact(view, cfg.metric, qn, k, slots)
        plan = f"exact({why})"
        ndis = nscanned = nq * int(slots.size)
    elif index is None or b == 0:
        mask = cons.mask if cons.any else rec.alive[:n]
        D, I = _exact(view, cfg.metric, qn, k, None, 0, n, mask)
        plan = "tail"
        eligible = cons.count()
        ndis = nscanned = nq * eligible
    else:
        Di, Ii, idx_scanned, idx_ndis, sub = _index_part(view, q, k, params, expr, tid, cons, native_t, native_f,
                                                         masked)
        tail_mask = cons.tail(b) if cons.any else (rec.alive[b:n] if b < n else None)
        ntail = 0 if tail_mask is None else int(np.count_nonzero(tail_mask))
        if ntail:
            D, I = merge_topk([(Di, Ii), _exact(view, cfg.metric, qn, k, None, b, n, tail_mask)], k)
        else:
            D, I = Di, Ii
        plan = f"index({index.kind}{':' + sub if sub else ''})" + (f"[{why}]" if why else "") + ("+tail" if ntail else "")
        nscanned = idx_scanned + nq * ntail
        ndis = idx_ndis + nq * ntail
    # no silent short lists: queries with fewer than min(k, eligible) results are answered exactly (results are
    # packed to the left, so a filled last column means a full list)
    short = _NONE
    if nq and not (I[:, k - 1] >= 0).all():
        if eligible is None:
            eligible = cons.count()  # a native filter came back short somewhere: count the matches now
        short = np.flatnonzero(np.count_nonzero(I >= 0, axis=1) < min(k, eligible))
    if short.size:
        slots = cons.slots() if cons.any else rec.live_slots(0, n)
        Ds, Is = _exact(view, cfg.metric, qn[short], k, slots)
        D, I = D.copy(), I.copy()
        D[short], I[short] = Ds, Is
        plan += f"+exact_fallback({short.size})"
        ndis += short.size * int(slots.size)
        nscanned += short.size * int(slots.size)
    attrs = _attributes(rec, I) if include_attrs else None
    scores, kind = keys_to_scores(D, cfg.metric)
    stats = SearchStats(plan, int(ndis), int(nscanned), (time.perf_counter() - t0) * 1e3,
                        matched=eligible, exact_fallback=int(short.size))
    return SearchResult(I, scores, kind, stats, attrs)


def _attributes(rec, I: np.ndarray) -> list[list[dict]]:
    slot_of = rec.slot_of
    return [[rec.attrs.record(slot_of[int(u)]) if u >= 0 else {} for u in row] for row in I]


def _index_part(view: View, q, k, params, expr, tid, cons: _Constraint, native_t: bool, native_f: bool,
                masked: bool):
    """Search the index part: ``(D, I, nscanned, ndis, sub-plan)``."""
    index = view.index
    nq = q.shape[0]
    allowed = None
    ntotal = index.ntotal
    if masked:
        rec, n = cons.rec, cons.n
        smask = rec.alive[:n]
        if tid is not None and not native_t:
            smask = smask & rec.tenant_mask(tid, n)
        if expr is not None and not native_f:
            smask = smask & rec.filter_mask(expr, n)
        rs = view.row_slot
        allowed = np.zeros(ntotal, bool)
        ok = rs >= 0
        allowed[ok] = smask[rs[ok]]
        eligible = int(np.count_nonzero(allowed & ~index.deleted))
        if eligible == 0:
            return (*empty_result(nq, k), 0, 0, "")
    else:
        # rows the index may return for these queries, for the stats: known without a pass over the index
        eligible = cons.cheap_count() or 0
    kk = min(k, max(ntotal, 1))
    try:
        D, I, info = index.search_with_stats(q, kk, params=params, allowed=allowed,
                                             tenant=tid if native_t else None, filter=expr if native_f else None)
    except NotFound:  # a kind with native tenants that has not seen this tenant yet
        return (*empty_result(nq, k), 0, 0, "")
    if kk < k:
        D, I = merge_topk([(D, I)], k)
    ndis = info.get("ndis")
    if ndis is None:
        ndis = nq * eligible if index.kind == "Flat" else 0
    return D, I, nq * eligible, int(ndis), str(info.get("plan", ""))
