"""Query planning and execution for a collection: index + exact tail, deletes masked, filters and tenants.

Plans (reported in :class:`~shoal.engine.results.SearchStats`):

* ``exact(<why>)``: a filter and/or tenant leaves at most ``exact_threshold`` live rows: scan exactly those rows
  (faster than any index at that selectivity, and exact).
* ``tail``: no index yet: exact scan of every live row.
* ``index(<kind>)+tail``: the index (filters / tenants handled natively by kinds that declare
  ``supports_filter`` / ``supports_tenants``, otherwise passed as ``allowed`` masks over the index's rows), plus an
  exact scan of the unindexed tail, merged with :func:`~shoal.index.topk.merge_topk`. Index results are checked
  against the engine's own state (live, still indexed, matching); when that leaves fewer than k for a query while
  the index had more, the index is asked again with a larger k (over-fetch), so k live results come back whenever
  they exist.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import NotFound
from ..index.factory import kind_class, parse_factory, resolve_kind
from ..index.flat import exact_search
from ..index.topk import empty_result, merge_topk
from ..index.validate import as_params, as_vectors, check_k, normalize_rows
from .results import SearchResult, SearchStats, keys_to_scores

#: growth factor of k when index results had to be dropped
OVERFETCH = 4


def _search_params(col, index) -> tuple[str, ...]:
    if index is not None:
        return tuple(index.search_params)
    return tuple(kind_class(resolve_kind(parse_factory(col.index_spec))).search_params)


def _exact(col, qn: np.ndarray, k: int, slots: np.ndarray | None, lo: int = 0, hi: int = 0,
           mask: np.ndarray | None = None):
    """Exact top-k over ``slots`` (gathered) or over the slot range ``[lo, hi)`` restricted to ``mask``."""
    rec = col.records
    if slots is not None:
        x, labels, allowed = rec.vectors[slots], rec.ids[slots], None
    else:
        x, labels, allowed = rec.vectors[lo:hi], rec.ids[lo:hi], mask
        if allowed is not None and allowed.all():
            allowed = None
    if col.metric == "cosine":
        if allowed is not None:
            rows = np.flatnonzero(allowed)
            x, labels, allowed = x[rows], labels[rows], None
        x = normalize_rows(x)
    return exact_search(qn, np.ascontiguousarray(x), k, col.metric, labels=labels, allowed=allowed)


def run_search(col, queries, k, flt, tenant, params, include_attrs) -> SearchResult:
    from .collection import parse_filter

    t0 = time.perf_counter()
    q = as_vectors(queries, col.dim, name="queries")
    k = check_k(k)
    expr = parse_filter(flt, col.schema)
    nq = q.shape[0]
    with col._rw.read:
        tid = col._tenant_id(tenant)
        index = col._index
        params = as_params(params, _search_params(col, index))
        rec = col.records
        n, b = rec.n, col._boundary
        qn = normalize_rows(q) if col.metric == "cosine" else q
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
        why = "+".join(w for w, m in (("filter", fmask), ("tenant", tmask)) if m is not None)
        ndis = nscanned = 0
        if mask is not None and (index is None or int(np.count_nonzero(mask)) <= col.exact_threshold):
            slots = np.flatnonzero(mask)
            D, I = _exact(col, qn, k, slots)
            plan = f"exact({why})"
            ndis = nscanned = nq * int(slots.size)
        elif index is None or b == 0:
            tail_mask = alive if mask is None else mask
            D, I = _exact(col, qn, k, None, 0, n, tail_mask)
            plan = "tail"
            ndis = nscanned = nq * int(np.count_nonzero(tail_mask))
        else:
            Di, Ii, idx_scanned, idx_ndis, sub = _index_part(col, index, q, k, params, expr, tid, fmask, tmask, mask, b)
            tail_mask = (alive if mask is None else mask)[b:n]
            ntail = int(np.count_nonzero(tail_mask))
            parts = [(Di, Ii)]
            if ntail:
                parts.append(_exact(col, qn, k, None, b, n, tail_mask))
            D, I = merge_topk(parts, k)
            plan = f"index({index.kind}{':' + sub if sub else ''})" + (f"[{why}]" if why else "") + ("+tail" if ntail else "")
            nscanned = idx_scanned + nq * ntail
            ndis = idx_ndis + nq * ntail
        attrs = None
        if include_attrs:
            attrs = [[rec.attrs.record(rec.slot_of[int(u)]) if u >= 0 else {} for u in row] for row in I]
    scores, kind = keys_to_scores(D, col.metric)
    scores = np.where(I >= 0, scores, np.float32(np.inf if kind == "distance" else -np.inf)).astype(np.float32)
    col.counters["searches"] += 1
    col.counters["queries"] += nq
    stats = SearchStats(plan, int(ndis), int(nscanned), (time.perf_counter() - t0) * 1e3)
    return SearchResult(I, scores, kind, stats, attrs)


def _index_part(col, index, q, k, params, expr, tid, fmask, tmask, mask, b):
    """Search the index for ``k`` results per query that are live, indexed and matching."""
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
        rs = col._row_slot
        allowed = np.zeros(ntotal, bool)
        ok = rs >= 0
        allowed[ok] = smask[rs[ok]]
        eligible = int(np.count_nonzero(allowed & ~index.deleted))
        if eligible == 0:
            return (*empty_result(nq, k), 0, 0, "")
    else:
        eligible = index.nlive
    slot_of = col.records.slot_of
    kk = min(k, max(ntotal, 1))
    while True:
        kw = dict(params=params, allowed=allowed, tenant=tid if native_t else None, filter=expr if native_f else None)
        try:
            sub = ""
            if hasattr(index, "search_stats"):  # kinds that count candidates per query
                D, I, counts = index.search_stats(q, kk, **kw)
                ndis = int(np.sum(counts))
            else:
                D, I = index.search(q, kk, **kw)
                st = getattr(index, "last_stats", None)
                ndis = int(st["ndis"]) if isinstance(st, dict) and "ndis" in st else None
                sub = str(st.get("plan", "")) if isinstance(st, dict) else ""
        except NotFound:  # a kind with native tenants that has not seen this tenant yet
            return (*empty_result(nq, k), 0, 0, "")
        flat = I.ravel().tolist()
        slots = np.fromiter((slot_of.get(u, -1) if u >= 0 else -1 for u in flat), np.int64, len(flat)).reshape(I.shape)
        valid = (slots >= 0) & (slots < b)
        if mask is not None:
            valid &= mask[np.where(valid, slots, 0)]
        full = I[:, -1] >= 0
        short = (valid.sum(axis=1) < k) & full
        if not short.any() or kk >= ntotal:
            break
        kk = min(ntotal, kk * OVERFETCH)
    D = np.where(valid, D, np.inf).astype(np.float32)
    I = np.where(valid, I, -1)
    if ndis is None:
        ndis = nq * eligible if index.kind == "Flat" else 0
    D, I = merge_topk([(D, I)], k) if D.shape[1] != k or not valid.all() else (D, I)
    return D, I, nq * eligible, int(ndis), sub
