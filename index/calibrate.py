"""Measuring an index's calibrated defaults (:class:`~shoal.index.calibration.Calibration`) on its own vectors.

Shared by every approximate kind; a kind supplies only its ladder (:meth:`Index.calibration_ladder`), a cost per
query for what a search did (:meth:`Index.calibration_cost`), its band axis and, optionally, query families of its
own (:meth:`Index.calibration_filters`: OSQ's filters over its attribute columns).

1. **Queries**: a seeded sample of the index's live rows (``nq``, 300 by default), each used as a query whose own
   row is excluded from its answers and from the ground truth (leave-one-out), drawn first from rows the index was
   not trained on (the engine's builder leaves ``HOLDOUT`` rows out of training for this): rows the training saw
   measure optimistically.
2. **Ground truth**: exact top-k by BLAS (:func:`~shoal.index.flat.exact_search`) over the rows each query may
   return, reading the vectors in blocks through ``fetch`` (the engine's records; the index need not store them).
3. **Families** per band: ``fraction`` bands at 100%, 25%, 6.25%, 1.56%, ... of the live rows (those above
   ``min_rows``, the engine's exact-scan threshold, plus one band just above it) with two mask families: ``random``
   (uniform, a filter uncorrelated with the vectors) and ``slab`` (rows below a quantile of their projection on a
   random direction: a filter correlated with the vectors, whose queries lie inside the slab (easy) or far outside
   it (hard)), and the kind's own (OSQ: ranges and equalities over its attribute columns). ``tenant_size`` bands
   (Curator) at powers of two of tenant size, each measured on the band's largest tenants (up to
   ``TENANTS_PER_BAND``, ``nq`` queries in all) with two families:
   ``members`` (a tenant's own vectors as queries) and ``random`` (any vector of the index, paired with the tenant).
4. **Sweep**: each band walks the ladder from cheap to expensive; the secondary setting (re-rank depth) grows
   while it still gains more than ``GAIN`` recall. A rung's recall is the smallest family mean (its confidence
   bound the smallest family's mean - ``Z`` standard errors). A query that comes back with fewer than
   ``min(k, matches)`` results counts as answered exactly, as the engine's planner does (recall 1, the cost of an
   exact scan of its matches). The sweep stops once the bound passes ``STOP_RECALL`` (and the target), or once
   the time budget is spent after the target was reached.
5. **Exact scans** (``exact=True``: the engine, which can answer a call by scanning the rows it may return): each
   band also prices that scan, on the index rungs' cost scale, and offers it as a choice; the sweep stops where the
   index gets slower than it.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ..errors import InvalidArgument
from .calibration import Band, Calibration, Rung, check_target
from .flat import exact_search
from .topk import merge_topk
from .validate import normalize_rows

K = 10
NQ = 300
FRACTIONS = (1.0, 0.25, 0.0625, 0.0156, 0.0039, 0.001)
#: a fraction band needs at least this many rows (and more than ``min_rows``)
MIN_BAND_ROWS = 200
#: tenant-size bands: powers of two from here up
MIN_TENANT = 64
TENANTS_PER_BAND = 8
#: confidence bound: mean - Z standard errors (of per-query recalls, their spread at least SPREAD_FLOOR)
Z = 2.0
SPREAD_FLOOR = 0.05
#: the sweep goes on past the target until the recall's bound reaches ``target + STOP_ABOVE`` (at least
#: ``STOP_RECALL``), so the table also serves per-call targets above the collection's
STOP_RECALL = 0.99
STOP_ABOVE = 0.01
#: a larger secondary setting (re-rank depth) is kept while it gains at least this much recall
GAIN = 0.002
_BLOCK = 65536


class RowVectors:
    """Vectors of an index's internal rows, read on demand and prepared for its metric (cosine: normalised).

    Parameters
    ----------
    fetch : callable(rows int64 (m,)) -> float32 (m, d)
        Original vectors of internal rows (e.g. the engine's records through the row -> slot map).
    metric : {"l2", "ip", "cosine"}
    """

    def __init__(self, fetch: Callable[[np.ndarray], np.ndarray], metric: str):
        self._fetch = fetch
        self.metric = metric

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self._fetch(np.asarray(rows, dtype=np.int64)), dtype=np.float32)
        return normalize_rows(x) if self.metric == "cosine" else x

    @classmethod
    def from_arrays(cls, index, x, ids) -> "RowVectors":
        """For vectors ``x`` float32 (n, d) given under user ``ids`` (any order); every live row's id must be among
        them."""
        x = np.asarray(x, dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        if x.ndim != 2 or x.shape[1] != index.d or ids.shape != (x.shape[0],):
            raise InvalidArgument(f"calibration needs vectors (n, {index.d}) and n ids, got {x.shape} and {ids.shape}")
        order = np.argsort(ids, kind="stable")
        live = np.flatnonzero(~index.deleted)
        pos = np.searchsorted(ids[order], index.row_ids[live])
        pos = np.minimum(pos, max(0, ids.size - 1))
        ok = ids.size > 0 and ids[order][pos] == index.row_ids[live]
        if not np.all(ok):
            raise InvalidArgument("calibration: the vectors given do not cover every id in the index")
        where = np.full(index.ntotal, -1, np.int64)
        where[live] = order[pos]
        return cls(lambda rows: x[where[rows]], index.metric)


class Group:
    """Queries measured together: one search call per rung.

    Attributes
    ----------
    family : str
    qrows : int64 (m,)       internal rows used as queries (excluded from their own answers)
    q : float32 (m, d)
    kwargs : dict            ``allowed`` / ``filter`` / ``tenant`` for the search
    rows : int64 or None     the rows the queries may return (sorted), where all queries share them
    gt : float32 (m, k)      exact keys of the true top k (inf-padded)
    matches : int64 (m,)     rows each query may return, itself excluded
    exact_ms : float         time the ground truth took: an exact scan of those rows for the group's queries
    """

    def __init__(self, family, qrows, q, kwargs, rows, truth):
        self.family, self.qrows, self.q, self.kwargs, self.rows = family, qrows, q, kwargs, rows
        self.gt, self.matches, self.exact_ms = truth


def ground_truth(vec: RowVectors, rows: np.ndarray, q: np.ndarray, qrows: np.ndarray, k: int):
    """Exact top-``k`` keys of each query over internal ``rows`` (sorted int64), its own row excluded.

    Returns
    -------
    gt float32 (m, k) (inf-padded), matches int64 (m,), milliseconds taken
    """
    t0 = time.perf_counter()
    m = q.shape[0]
    metric = "l2" if vec.metric == "l2" else "ip"
    parts = []
    for s in range(0, rows.size, _BLOCK):
        blk = rows[s:s + _BLOCK]
        parts.append(exact_search(q, vec(blk), k + 1, metric, labels=blk))
    if not parts:
        return np.full((m, k), np.inf, np.float32), np.zeros(m, np.int64), 0.0
    D, R = merge_topk(parts, k + 1) if len(parts) > 1 else parts[0]
    own = R == qrows[:, None]
    D = np.where(own, np.inf, D)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    inside = np.isin(qrows, rows, assume_unique=False)
    return (np.take_along_axis(D, order, axis=1).astype(np.float32), rows.size - inside.astype(np.int64),
            (time.perf_counter() - t0) * 1e3)


class Scorer:
    """Recall@k of returned user ids against a group's exact keys, with ties counted as hits.

    With ``fallback``, a query that came back with fewer than ``min(k, matches)`` results counts as found (recall
    1), as the engine's planner answers it again by an exact scan; without, it counts what it returned.
    """

    def __init__(self, index, vec: RowVectors, k: int, fallback: bool = False):
        live = np.flatnonzero(~index.deleted)
        ids = index.row_ids[live]
        order = np.argsort(ids, kind="stable")
        self._ids, self._rows = ids[order], live[order]
        self.vec = vec
        self.fallback = fallback
        self.k = k
        self.metric = "l2" if vec.metric == "l2" else "ip"

    def rows_of(self, I: np.ndarray) -> np.ndarray:
        pos = np.clip(np.searchsorted(self._ids, I), 0, max(0, self._ids.size - 1))
        hit = (I >= 0) & (self._ids.size > 0) & (self._ids[pos] == I)
        return np.where(hit, self._rows[pos], -1)

    def score(self, g: Group, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-query recall, and which queries came back short (answered exactly by the engine's planner)."""
        k = self.k
        R = self.rows_of(I)
        R = np.where(R == g.qrows[:, None], -1, R)
        valid = R >= 0
        # exact keys of the returned rows (the index's own may be approximations)
        keys = np.full(R.shape, np.inf, np.float32)
        if valid.any():
            x = self.vec(R[valid])
            qi = np.nonzero(valid)[0]
            if self.metric == "l2":
                diff = x - g.q[qi]
                keys[valid] = np.einsum("ij,ij->i", diff, diff)
            else:
                keys[valid] = -np.einsum("ij,ij->i", x, g.q[qi])
        want = np.minimum(k, g.matches)
        kth = g.gt[np.arange(R.shape[0]), np.maximum(want - 1, 0)]
        tol = 1e-5 * np.abs(kth) + 1e-6
        hits = np.minimum(np.count_nonzero(keys <= (kth + tol)[:, None], axis=1), want)
        short = np.count_nonzero(valid, axis=1) < want
        rec = np.where(want > 0, hits / np.maximum(want, 1), 1.0)
        return (np.where(short, 1.0, rec) if self.fallback else rec), short


# ---------------------------------------------------------------------------------------------------- families
def sample_rows(index, n: int, rng, pool: np.ndarray | None = None) -> np.ndarray:
    """``n`` live rows, drawn from ``pool`` (rows the index was not trained on) first."""
    return _draw(rng, n, np.flatnonzero(~index.deleted), pool)


def fraction_bands(nlive: int, min_rows: int) -> list[float]:
    """Fractions to calibrate: ``FRACTIONS`` with more than ``max(min_rows, MIN_BAND_ROWS)`` rows, plus one just
    above ``min_rows`` so every call the engine sends to the index has a band at or below its fraction."""
    floor = max(min_rows, MIN_BAND_ROWS)
    out = [f for f in FRACTIONS if f * nlive > floor]
    if min_rows > 0 and nlive > 2 * floor:
        edge = float(f"{(floor + 1) / nlive:.3g}")
        if out and out[-1] < 2 * edge and len(out) > 1:
            out[-1] = edge
        elif not out or out[-1] > edge:
            out.append(edge)
    return out or [1.0]


def fraction_groups(index, vec: RowVectors, qrows: np.ndarray, q: np.ndarray, bands: list[float], k: int, rng,
                    nq_masked: int, checkpoint) -> dict[float, list[Group]]:
    """Query groups per fraction band: every query unfiltered at 1.0; below, ``nq_masked`` of them under each mask
    family (``random``, ``slab``, and the kind's own filters)."""
    live = np.flatnonzero(~index.deleted)
    n = index.ntotal
    out: dict[float, list[Group]] = {}
    if 1.0 in bands:
        out[1.0] = [Group("all", qrows, q, {}, live, ground_truth(vec, live, q, qrows, k))]
    masked = [b for b in bands if b < 1.0]
    if not masked:
        return out
    mq, mr = q[:nq_masked], qrows[:nq_masked]
    # one random order and one random direction serve every band (nested masks)
    rank = np.empty(n, np.int64)
    rank[live] = np.argsort(rng.permutation(live.size))
    u = rng.standard_normal(index.d).astype(np.float32)
    proj = np.full(n, np.inf, np.float32)
    for s in range(0, live.size, _BLOCK):
        blk = live[s:s + _BLOCK]
        proj[blk] = vec(blk) @ u
    order = live[np.argsort(proj[live], kind="stable")]
    pos = np.empty(n, np.int64)
    pos[order] = np.arange(order.size)
    for b in masked:
        checkpoint()
        m = max(1, int(round(b * live.size)))
        groups = []
        for family, mask in (("random", np.zeros(n, bool)), ("slab", np.zeros(n, bool))):
            keep = live[rank[live] < m] if family == "random" else order[:m]
            mask[keep] = True
            keep = np.sort(keep)
            groups.append(Group(family, mr, mq, {"allowed": mask}, keep, ground_truth(vec, keep, mq, mr, k)))
        for family, kwargs, mask in index.calibration_filters(b, live, rng):
            keep = np.flatnonzero(mask)
            groups.append(Group(family, mr, mq, kwargs, keep, ground_truth(vec, keep, mq, mr, k)))
        out[b] = groups
    return out


def tenant_groups(index, vec: RowVectors, k: int, rng, nq: int, min_rows: int, checkpoint,
                  pool: np.ndarray | None = None) -> dict[float, list[Group]]:
    """Query groups per tenant-size band (Curator): bands at powers of two of tenant size above ``min_rows``; each
    measured on up to ``TENANTS_PER_BAND`` of its largest tenants, half the queries their own members, half any
    live vector of the index."""
    members = index.tenant_members()  # {tenant: sorted live rows}
    live = np.flatnonzero(~index.deleted)
    sizes = {t: r.size for t, r in members.items() if r.size > max(min_rows, k)}
    out: dict[float, list[Group]] = {}
    if not sizes:
        return out
    lo = max(MIN_TENANT, min_rows + 1)
    edges = [lo]
    top = max(sizes.values())
    while edges[-1] * 2 <= top:
        edges.append(edges[-1] * 2)
    for i, e in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else np.inf
        ts = sorted((t for t, s in sizes.items() if e <= s < hi), key=lambda t: -sizes[t])[:TENANTS_PER_BAND]
        if not ts:
            continue
        per = max(8, -(-nq // (2 * len(ts))))
        checkpoint()
        groups = []
        for t in ts:
            rows = members[t]
            for family, among in (("members", rows), ("random", None)):
                qr = _draw(rng, per, live if among is None else among, pool)
                qv = vec(qr)
                groups.append(Group(family, qr, qv, {"tenant": int(t)}, rows, ground_truth(vec, rows, qv, qr, k)))
        out[float(e)] = groups
    return out


def _draw(rng, m: int, among: np.ndarray, pool: np.ndarray | None) -> np.ndarray:
    """``m`` rows of ``among``, taken from ``pool`` first (rows held out of training)."""
    if pool is not None:
        first = np.intersect1d(among, pool)
        if first.size >= m:
            return np.sort(rng.choice(first, m, replace=False))
        rest = np.setdiff1d(among, first)
        return np.sort(np.concatenate([first, rng.choice(rest, min(m - first.size, rest.size), replace=False)]))
    return np.sort(rng.choice(among, min(m, among.size), replace=False))


# ---------------------------------------------------------------------------------------------------- sweep
def measure(index, scorer: Scorer, groups: list[Group], params: dict[str, Any], k: int) -> Rung:
    """Run one rung on every group: recall (smallest family mean), its bound, cost and time per query (the cost of
    the queries that came back short is added by :func:`price_exact` once the exact scan's cost is known)."""
    per_family: dict[str, list[np.ndarray]] = {}
    cost = ms = 0.0
    nq = nshort = 0
    for g in groups:
        m = g.qrows.size
        t0 = time.perf_counter()
        _, I, info = index.search_with_stats(g.q, k + 1, params={**params, **index.calibration_fixed}, **g.kwargs)
        ms += (time.perf_counter() - t0) * 1e3
        rec, short = scorer.score(g, I)
        per_family.setdefault(g.family, []).append(rec)
        cost += index.calibration_cost(params, info, m) * m
        nq += m
        nshort += int(np.count_nonzero(short))
    means, lcbs = [], []
    for recs in per_family.values():
        r = np.concatenate(recs)
        mean = float(r.mean())
        # a sample without spread (every query perfect) still leaves doubt: the spread is floored at SPREAD_FLOOR
        se = max(float(r.std(ddof=1)) if r.size > 1 else 0.0, SPREAD_FLOOR) / np.sqrt(r.size)
        means.append(mean)
        lcbs.append(mean - Z * se)
    return Rung(dict(params), min(means), min(lcbs), cost / max(1, nq), ms / max(1, nq), nshort / max(1, nq))


def sweep(index, scorer: Scorer, groups: list[Group], primary: list[dict], secondary: list[dict], k: int,
          target: float, deadline: float, checkpoint, exact_ms: float | None = None) -> list[Rung]:
    """Walk ``primary`` (cheap to expensive) two steps at a time, measuring the step skipped just below the first
    rung that reaches ``target``; at each step the ``secondary`` setting grows while it gains ``GAIN``.

    A rung *reaches* the target when its ``lcb`` does with at most 5% of its queries short (a rung that is mostly
    exact fallbacks says nothing about the index). Once one did, the walk stops when the bound passes
    ``STOP_RECALL`` (or ``target + STOP_ABOVE``), when the last two steps gained less than ``GAIN`` together (a plateau), or after
    ``deadline``; in any case at the end of the ladder, or after two rungs in a row took more than three times
    ``exact_ms`` (the exact scan's time per query, where the caller can run it: no rung further up can be the
    cheaper way to the target).
    """
    rungs: list[Rung] = []
    seen: dict[tuple[int, int], Rung] = {}
    j = 0
    stop = min(0.999, max(STOP_RECALL, target + STOP_ABOVE))
    rest = [False]  # the last test of a larger secondary gained nothing: skip the next test

    def run(i: int) -> Rung:
        nonlocal j
        checkpoint()
        if (i, j) not in seen:
            seen[(i, j)] = measure(index, scorer, groups, {**primary[i], **secondary[j]}, k)
            rungs.append(seen[(i, j)])
        r = seen[(i, j)]
        if rest[0]:
            rest[0] = False
            return r
        while j + 1 < len(secondary) and r.recall < 0.9999:
            checkpoint()
            r2 = seen[(i, j + 1)] = measure(index, scorer, groups, {**primary[i], **secondary[j + 1]}, k)
            rungs.append(r2)
            if r2.recall - r.recall < GAIN:
                rest[0] = True
                break
            j += 1
            r = r2
        return r

    i, last = 0, len(primary) - 1
    crossed = False
    walked: list[Rung] = []
    slow = 0
    while True:
        r = run(i)
        walked.append(r)
        if not crossed and r.lcb >= target and r.short <= 0.05:
            crossed = True
            if i >= 2 and not any(key[0] == i - 1 for key in seen):
                run(i - 1)
        plateau = len(walked) >= 3 and walked[-1].recall - walked[-3].recall < GAIN
        if crossed and (r.lcb >= stop or plateau or time.perf_counter() > deadline):
            break
        if exact_ms is not None:
            # the exact scan on the rungs' cost scale, through the median time per unit so far (one timing is noisy)
            timed = [x.ms / x.cost for x in rungs if x.cost > 0 and x.ms > 0 and x.short <= 0.05]
            slow = slow + 1 if len(timed) >= 3 and r.cost > 3 * exact_ms / float(np.median(timed)) else 0
        if slow >= 2 or i == last:
            break
        i = min(i + 2, last)
    return rungs


def price_exact(index, scorer: Scorer, groups: list[Group], rungs: list[Rung], target: float, k: int,
                exact_ms: float) -> Rung | None:
    """The exact scan as a rung of the band, on the index rungs' cost scale, and each rung's short queries charged
    with it (the engine answers them by that scan).

    Its cost is the exact scan's time over the time per unit of the cheapest index rung reaching ``target``, both
    timed in alternation on the band's first query group (best of three, so the machine's load does not decide)
    when their first timings are within a factor three of each other; otherwise (one clearly wins) through the
    median time per unit of the three most expensive rungs.
    """
    priced = [r for r in rungs if r.cost > 0 and r.ms > 0]
    if not priced:
        return None
    top = sorted(priced, key=lambda r: r.cost)[-3:]
    per_unit = float(np.median([r.ms / r.cost for r in top]))
    exact_cost = exact_ms / per_unit
    ok = [r for r in priced if r.lcb >= target and r.short <= 0.05]
    if ok:
        best = min(ok, key=lambda r: r.cost)
        if 1 / 3 < exact_cost / best.cost < 3:
            t_idx, t_exact = [], []
            g = groups[0]
            for _ in range(3):
                t_idx.append(measure(index, scorer, [g], best.params, k).ms)
                t0 = time.perf_counter()
                ground_truth(scorer.vec, g.rows, g.q, g.qrows, k)
                t_exact.append((time.perf_counter() - t0) * 1e3 / max(1, g.qrows.size))
            exact_cost = best.cost * min(t_exact) / max(min(t_idx), 1e-9)
            exact_ms = min(t_exact)
    for r in rungs:
        r.cost += r.short * exact_cost
    return Rung({}, 1.0, 1.0, exact_cost, exact_ms, exact=True)


def calibrate(index, x, ids, *, query_ids=None, **kwargs) -> Calibration | None:
    """Measure and keep ``index``'s calibrated defaults (after ``train`` and ``add``), from its vectors ``x`` float32
    (n, d) given under user ``ids`` int64 (n,) in any order (every live row's id must be among them); keyword
    arguments as for :func:`calibrate_rows`. ``query_ids``: ids of vectors added but left out of ``train`` (the
    queries are drawn from them first; see ``queries``). Also kept as ``index.calibration``."""
    pool = None
    if query_ids is not None:
        pool = np.flatnonzero(np.isin(index.row_ids, np.asarray(query_ids, dtype=np.int64)) & ~index.deleted)
    return calibrate_rows(index, RowVectors.from_arrays(index, x, ids), queries=pool, **kwargs)


def calibrate_rows(index, vec: RowVectors, *, target: float = 0.95, k: int = K, min_rows: int = 0, nq: int = NQ,
                   seed: int = 0, budget_s: float | None = None, exact: bool = False, queries: np.ndarray | None = None,
                   progress: Callable[[int, int, str], None] | None = None,
                   checkpoint: Callable[[], None] | None = None) -> Calibration | None:
    """Measure ``index``'s calibrated defaults (see the module docstring) and keep them as ``index.calibration``;
    ``None`` for kinds without a ladder or an index with too few rows to measure.

    Parameters
    ----------
    vec : RowVectors
        Vectors of the index's internal rows (the engine reads its records through the row -> slot map).
    target : float
        Recall@k the defaults must reach (their confidence bound, in each band).
    min_rows : int
        Calls that may return at most this many rows never reach the index (the engine scans them exactly), so no
        band is calibrated for them.
    nq : int
        Queries sampled (masked and tenant families use half as many each).
    budget_s : float, optional
        Once a band reached the target, stop its sweep when this much time has been spent in all.
    exact : bool
        The caller answers a call by an exact scan of the rows it may return where the table says that is cheaper,
        and answers short lists that way (the engine's planner): each band then prices that scan, stops sweeping
        where the index gets slower, and counts short queries as found.
    queries : int64 array, optional
        Internal rows to draw the queries from first: rows the index was *not trained on*. Queries the training saw
        measure optimistically (their clusters were fitted around them: IVF64 on clustered data, recall 0.58 for
        trained-on rows against 0.53 for held-out ones at the same setting; rows in the index but not in its
        training measure like held-out ones), so the engine's builder trains without a few rows and passes them.
    progress : callable(done, total, "calibrate"), optional
    checkpoint : callable, optional
        Called between measurements (a build's cancellation check).
    """
    target = check_target(target, "target_recall")
    primary, secondary = index.calibration_ladder(k)
    nlive = index.nlive
    if not primary or nlive <= k + 1:
        index.calibration = None
        return None
    checkpoint = checkpoint or (lambda: None)
    t0 = time.perf_counter()
    deadline = t0 + budget_s if budget_s is not None else np.inf
    rng = np.random.default_rng(seed)
    secondary = secondary or [{}]
    if index.calibration_axis == "tenant_size":
        groups = tenant_groups(index, vec, k, rng, nq, min_rows, checkpoint, queries)
    else:
        bands = fraction_bands(nlive, min_rows)
        qrows = rng.permutation(sample_rows(index, nq, rng, queries))
        groups = fraction_groups(index, vec, qrows, vec(qrows), bands, k, rng, max(50, nq // 2), checkpoint)
    if not groups:
        index.calibration = None
        return None
    scorer = Scorer(index, vec, k, fallback=exact)
    out = []
    for i, (lo, gs) in enumerate(sorted(groups.items(), key=lambda kv: -kv[0])):
        if progress:
            progress(i, len(groups), "calibrate")
        nqb = int(sum(g.qrows.size for g in gs))
        exact_ms = sum(g.exact_ms for g in gs) / max(1, nqb) if exact else None
        rungs = sweep(index, scorer, gs, primary, secondary, k, target, deadline, checkpoint, exact_ms)
        ex = price_exact(index, scorer, gs, rungs, target, k, exact_ms) if exact else None
        label = f"{index.calibration_axis}>={lo:g}"
        out.append(Band(lo, label, nqb, sorted({g.family for g in gs}), rungs, ex))
    if progress:
        progress(len(groups), len(groups), "calibrate")
    keys = tuple(sorted({key for p in primary for key in p} | {key for s in secondary for key in s}))
    index.calibration = Calibration(index.calibration_axis, k, target, keys, out, nlive, time.perf_counter() - t0)
    return index.calibration
