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
from ..index.calibration import DEFAULT_TARGET, RECALL_PARAM
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
    """The collection settings a search depends on."""

    dim: int
    metric: str
    index_spec: str
    exact_threshold: int
    max_k: int = DEFAULT_MAX_K
    max_results: int = DEFAULT_MAX_RESULTS
    target_recall: float = DEFAULT_TARGET


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
    """Names of the search parameters the collection's index kind accepts (``recall`` with every kind)."""
    if index is not None:
        return (*index.search_params, RECALL_PARAM)
    return (*kind_class(resolve_kind(parse_factory(spec))).search_params, RECALL_PARAM)


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
    q = as_vectors(queries, cfg.dim, name="queries")
    nq = q.shape[0]
    k = check_limits(nq, k, cfg.max_k, cfg.max_results)
    index = view.index
    params = as_params(params, search_params(cfg.index_spec, index))
    rec = view.records
    n, b = rec.n, view.boundary
    qn = normalize_rows(q) if cfg.metric == "cosine" else q
    alive = rec.alive[:n]
    fmask = tmask = mask = None
    if expr is not None:
        from .. import filters

        cols = rec.attrs.columns(n=n, names=sorted(filters.attributes(expr)))
        fmask = alive & filters.evaluate(expr, cols, n) if alive.any() else alive.copy()
    if tid is not None:
        tmask = rec.tenant_mask(tid, n)
    if fmask is not None or tmask is not None:
        mask = alive.copy()
        for m in (fmask, tmask):
            if m is not None:
                mask &= m
    eligible = rec.nlive if mask is None else int(np.count_nonzero(mask))
    why = "+".join(w for w, m in (("filter", fmask), ("tenant", tmask)) if m is not None)
    # the index's calibrated settings for this call's band (explicit params override), or its exact scan where
    # the calibration measured that as the cheaper way to the target
    tuned: dict = {}
    if index is not None and b > 0 and index.calibration is not None:
        params, tuned = index.tuned_params(params, fraction=eligible / max(1, rec.nlive), target=cfg.target_recall,
                                           tenant=tid if index.supports_tenants else None, exact_ok=True)
    if (mask is not None and (index is None or eligible <= cfg.exact_threshold)) or tuned.get("exact"):
        slots = np.flatnonzero(alive if mask is None else mask)
        D, I = _exact(view, cfg.metric, qn, k, slots)
        plan = f"exact({why})" if not tuned.get("exact") else f"exact({why + ';' if why else ''}calibrated)"
        ndis = nscanned = nq * int(slots.size)
    elif index is None or b == 0:
        tail_mask = alive if mask is None else mask
        D, I = _exact(view, cfg.metric, qn, k, None, 0, n, tail_mask)
        plan = "tail"
        ndis = nscanned = nq * eligible
    else:
        Di, Ii, idx_scanned, idx_ndis, sub = _index_part(view, q, k, params, expr, tid, fmask, tmask)
        tail_mask = (alive if mask is None else mask)[b:n]
        ntail = int(np.count_nonzero(tail_mask))
        parts = [(Di, Ii)]
        if ntail:
            parts.append(_exact(view, cfg.metric, qn, k, None, b, n, tail_mask))
        D, I = merge_topk(parts, k) if len(parts) > 1 else (Di, Ii)
        plan = f"index({index.kind}{':' + sub if sub else ''})" + (f"[{why}]" if why else "") + ("+tail" if ntail else "")
        nscanned = idx_scanned + nq * ntail
        ndis = idx_ndis + nq * ntail
    # no silent short lists: queries with fewer than min(k, eligible) results are answered exactly
    need = min(k, eligible)
    short = np.flatnonzero(np.count_nonzero(I >= 0, axis=1) < need)
    if short.size:
        slots = np.flatnonzero(alive if mask is None else mask)
        Ds, Is = _exact(view, cfg.metric, qn[short], k, slots)
        D, I = D.copy(), I.copy()
        D[short], I[short] = Ds, Is
        plan += f"+exact_fallback({short.size})"
        ndis += short.size * int(slots.size)
        nscanned += short.size * int(slots.size)
    attrs = None
    if include_attrs:
        slot_of = rec.slot_of
        attrs = [[rec.attrs.record(slot_of[int(u)]) if u >= 0 else {} for u in row] for row in I]
    scores, kind = keys_to_scores(D, cfg.metric)
    scores = np.where(I >= 0, scores, np.float32(np.inf if kind == "distance" else -np.inf)).astype(np.float32)
    calibrated = tuned and plan.startswith("index") or tuned.get("exact")
    stats = SearchStats(plan, int(ndis), int(nscanned), (time.perf_counter() - t0) * 1e3,
                        matched=eligible, exact_fallback=int(short.size),
                        band=tuned.get("band") if calibrated else None,
                        calibrated_recall=tuned.get("recall") if calibrated else None,
                        params=(tuned.get("params") or None) if calibrated else None)
    return SearchResult(I, scores, kind, stats, attrs)


def _index_part(view: View, q, k, params, expr, tid, fmask, tmask):
    """Search the index part: ``(D, I, nscanned, ndis, sub-plan)``."""
    index = view.index
    b = view.boundary
    nq = q.shape[0]
    native_t = tid is not None and index.supports_tenants
    native_f = expr is not None and index.supports_filter
    if tmask is not None and not tmask[:b].any():
        return (*empty_result(nq, k), 0, 0, "")
    smask = None
    for m, native in ((fmask, native_f), (tmask, native_t)):
        if m is not None and not native:
            smask = m if smask is None else smask & m
    allowed = None
    ntotal = index.ntotal
    if smask is not None:
        rs = view.row_slot
        allowed = np.zeros(ntotal, bool)
        ok = rs >= 0
        allowed[ok] = smask[rs[ok]]
        eligible = int(np.count_nonzero(allowed & ~index.deleted))
        if eligible == 0:
            return (*empty_result(nq, k), 0, 0, "")
    else:
        eligible = index.nlive
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
