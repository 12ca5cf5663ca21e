"""``OSQ``: SQUASH-style filtered search over quantized vectors *and* attributes, partitioned for fan-out.

Build: one global PCA rotation (``y = x @ R``, distances preserved), balanced k-means into ``partitions`` (sizes
within ``balance`` of the mean), and per partition an OSQ codebook (greedy bit allocation under ``bits`` per vector,
quantile + Lloyd cells), segment-major packed codes, binary sign codes and the rotated float32 vectors for re-ranking.
Numeric attributes are quantized to one byte per row (cells with member ranges); keywords and tags stay exact
dictionary codes. Exact attribute values are kept for the re-check.

Search (every setting per query through ``params``):

0. *Allocator*: rotate the queries, evaluate the filter in three-valued logic on the attribute codes (one pass over
   all rows, shared by the batch), count *sure* and *maybe* rows per partition, rank partitions by centroid distance
   and visit ``nprobe`` / those within ``visit_ratio`` of the nearest, then more until the visited sure counts reach
   ``k``. When the whole index has fewer than ``k`` sure rows the maybe rows are resolved exactly first, so one pass
   returns ``min(k, matches)`` results. Very selective filters (at most ``exact_below`` of the rows may match) are
   answered by an exact scan of the matching rows instead (``mode="auto"``).
1. Hamming prune on binary codes (``keep_frac`` of the candidates, at least ``keep_min`` sure rows).
2. Bound prune: lower/upper bounds from the segments; drop rows whose lower bound exceeds the k-th smallest upper bound
   of a sure row; keep ``rerank`` sure rows in lower-bound order.
3. Exact re-rank of the survivors with the exact predicate re-checked for maybe rows.

Levels 1-3 run per partition (:class:`OSQPartition`), so a serverless processor can load one partition
(:meth:`OSQIndex.load_partition`) and answer with the level-0 outputs of an allocator (:meth:`OSQIndex.level0`).
The storage layout is documented in ``docs/osq.md``.

Modules: this one (build, add, search, persistence), :mod:`.osq_planner` (level 0: filter status, plan, partitions
and clusters to visit), :mod:`.osq_partition` (one partition's data and levels 1-3), :mod:`.osq_columns` (the exact
attribute columns).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np

from .. import filters
from ..errors import FailedPrecondition, InvalidArgument
from ..quantization import _osq_kernels as K
from ..quantization.kmeans import capped_assign, capped_kmeans, kmeans, sq_distances
from ..quantization.osq import NumericCells, OSQCodebook, fit_rotation
from .base import Index, array_bytes
from .factory import Stage, take_settings
from .flat import exact_search
from ._topk_kernels import topk_rows
from .osq_columns import as_expr, col_nbytes, column_arrays, column_from_arrays, concat_columns, missing_like
from .osq_partition import DEFAULT_PARAMS, OSQPartition
from .osq_planner import Level0, Level0Planner
from .persist import load_arrays, load_meta, save_arrays

SETTINGS = {"partitions": 16, "clusters": 0, "bits": 0, "attr_bits": 8, "binary": 256, "lloyd": 25,
            "balance": 0.1, "kmeans_iters": 10}

_BIG = 1 << 53
_SMALL_SCAN = 1 << 20  # query x row pairs up to which the exact plan builds the full key matrix (4 MB)
_PART_RE = re.compile(r"^p\d{4}/")


class OSQIndex(Level0Planner, Index):
    """SQUASH filtered search. Factory: ``OSQ(partitions=16,clusters=64,bits=256,attr_bits=8,binary=256,lloyd=25)``.

    ``bits=0`` (default) means ``4 * d`` bits per vector; ``clusters=0`` (default) means about ``sqrt(n / P)``
    clusters per partition (``n`` = training vectors). Partitions are the unit of distribution (one per serverless
    processor); clusters inside a partition are inverted lists that level 0 ranks like IVF cells.
    """

    kind = "OSQ"
    supports_filter = True
    search_params = tuple(DEFAULT_PARAMS)

    def __init__(self, d: int, metric: str = "l2", **settings):
        super().__init__(d, metric)
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise InvalidArgument(f"unknown OSQ setting(s) {', '.join(unknown)}; valid: {', '.join(SETTINGS)}")
        self.settings = {**SETTINGS, **settings}
        s = self.settings
        if s["partitions"] < 1:
            raise InvalidArgument("OSQ partitions must be >= 1")
        if s["bits"] < 0 or not (1 <= s["attr_bits"] <= 8) or s["binary"] < 1:
            raise InvalidArgument("OSQ bits must be >= 0, attr_bits in 1..8, binary >= 1")
        self.rotation: np.ndarray | None = None
        self.centroids = np.empty((0, self.d), dtype=np.float32)
        self.parts: list[OSQPartition | None] = []
        self.row_part = np.empty(0, dtype=np.int32)
        self.row_pos = np.empty(0, dtype=np.int64)
        self.row_cluster = np.empty(0, dtype=np.int32)  # global cluster (p * C + c) of each row
        self.cluster_centroids = np.empty((0, self.d), dtype=np.float32)  # (P * C, d)
        self.columns: dict[str, Any] = {}      # exact attribute columns (filters.*Column) over all rows
        self.kinds: dict[str, str] = {}        # attribute -> "int" | "float" | "keyword" | "tags"
        self._source = None                    # (store, prefix) of a level-0-only load: exact numbers on demand
        self.cells: dict[str, NumericCells] = {}
        self.codes: dict[str, np.ndarray] = {}  # uint8 (ntotal,) per numeric attribute
        # unrotated (cosine: normalised) float32 vectors in row order, and their squared norms: the exact plan
        # scans them without rotating the queries (d^2 flops a query, more than the scan itself when few rows pass)
        self.raw = np.empty((0, self.d), dtype=np.float32)
        self.raw_norms = np.empty(0, dtype=np.float32)

    # ------------------------------------------------------------------ factory
    @property
    def budget(self) -> int:
        return int(self.settings["bits"]) or 4 * self.d

    @classmethod
    def from_stages(cls, d: int, stages: list[Stage], metric: str = "l2") -> "OSQIndex":
        settings = {}
        for st in stages:
            if st.name != "OSQ":
                raise InvalidArgument(f"stage {st.name} cannot be combined with OSQ; OSQ takes no other stage")
            if st.arg:
                raise InvalidArgument(f"OSQ takes no numeric argument, got 'OSQ{st.arg}'; use OSQ(partitions=N)")
            settings = take_settings(st, SETTINGS)
        return cls(d, metric, **settings)

    def factory_string(self) -> str:
        s = self.settings
        return (f"OSQ(partitions={s['partitions']},clusters={s['clusters']},bits={s['bits']},"
                f"attr_bits={s['attr_bits']},binary={s['binary']},lloyd={s['lloyd']})")

    @property
    def is_trained(self) -> bool:
        return self.rotation is not None

    @property
    def nparts(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def nclusters(self) -> int:
        """Clusters per partition."""
        return int(self.cluster_centroids.shape[0] // max(1, self.nparts))

    # ------------------------------------------------------------------ build
    def rotate(self, q) -> np.ndarray:
        """Validate, normalise (cosine) and rotate queries: float32 (nq, d)."""
        return np.ascontiguousarray(self.prepare(q, name="queries") @ self.rotation, dtype=np.float32)

    def train(self, x) -> None:
        """Fit the rotation, the balanced partitions and one OSQ codebook per partition on ``x`` float32 (n, d)."""
        x = self.prepare(x)
        n = x.shape[0]
        P = int(self.settings["partitions"])
        if n < P:
            raise InvalidArgument(f"OSQ training needs at least partitions={P} vectors, got {n}")
        R, _ = fit_rotation(x)
        y = np.ascontiguousarray(x @ R, dtype=np.float32)
        cap = np.full(P, int(np.ceil(n / P * (1 + self.settings["balance"]))), dtype=np.int64)
        cent, _ = capped_kmeans(y, P, cap, niter=int(self.settings["kmeans_iters"]), seed=0)
        # Clusters (the inverted lists) are fitted globally, like an IVF's, and each partition gets C whole clusters
        # (the nearest ones to its centroid, C each): fitting clusters inside the partitions instead, with rows held
        # in their partition, left 0.891 of GloVe-50d's true top 10 in the 64 nearest of 2,496 clusters against
        # 0.928 for a global IVF of as many lists, so recall 0.95 needed ~2x the clusters
        C = int(self.settings["clusters"]) or max(1, int(round(np.sqrt(n / P))))
        C = max(1, min(C, n // P))
        G = P * C
        glob = kmeans(y, G, niter=max(1, int(self.settings["kmeans_iters"])), seed=0)
        owner = capped_assign(sq_distances(glob, cent), np.full(P, C, dtype=np.int64))
        order = np.argsort(owner, kind="stable")  # cluster p * C + c is the c-th of partition p's clusters
        glob = np.ascontiguousarray(glob[order])
        assign, _ = self._route(y, glob, P, C, cap)
        books, subs = [], []
        for p in range(P):
            yp = y[assign == p]
            books.append(OSQCodebook.fit(yp, self.budget, lloyd_iters=int(self.settings["lloyd"]),
                                         nbin=int(self.settings["binary"])))
            subs.append(glob[p * C:(p + 1) * C])
            if yp.shape[0]:
                cent[p] = yp.mean(axis=0)
        self.rotation = R
        self.centroids = np.ascontiguousarray(cent, dtype=np.float32)
        W = books[0].nwords
        self.parts = [OSQPartition(p, np.empty(0, np.int64), np.empty(0, np.int64), books[p],
                                   np.zeros((books[p].nseg, 0), np.uint8), np.zeros((0, W), np.uint64),
                                   np.zeros((0, self.d), np.float32), self.metric, subs[p],
                                   np.empty(0, np.int32)) for p in range(P)]
        self.cluster_centroids = np.ascontiguousarray(np.concatenate(subs), dtype=np.float32)
        for part in self.parts:
            self._bind(part)

    def _bind(self, part: OSQPartition) -> None:
        def exact(expr, positions, _part=part):
            return self.exact_rows(expr, _part.rows[positions])
        part.exact = exact

    def add(self, x, ids, *, tenants=None, attrs=None) -> None:
        """Add vectors under ``ids``; ``attrs`` maps names to ``filters`` columns (or numeric arrays) over the rows."""
        if tenants is not None:
            raise InvalidArgument("OSQ has no native tenants; pass allowed masks")
        x, ids = self.check_add(x, ids)
        n = x.shape[0]
        cols = self._check_attrs(attrs, n)
        start = self.ntotal
        rows = self._append_rows(ids)
        y = np.ascontiguousarray(x @ self.rotation, dtype=np.float32)
        P = self.nparts
        sizes = np.array([p.size for p in self.parts], dtype=np.int64)
        total = int(sizes.sum()) + n
        cap = np.maximum(int(np.ceil(total / P * (1 + self.settings["balance"]))) - sizes, 0)
        if cap.sum() < n:
            cap += int(np.ceil((n - cap.sum()) / P))
        assign, near = self._route(y, self.cluster_centroids, P, self.nclusters, cap)
        row_part = np.empty(n, dtype=np.int32)
        row_pos = np.empty(n, dtype=np.int64)
        row_cluster = np.empty(n, dtype=np.int32)
        for p in range(P):
            sel = np.flatnonzero(assign == p)
            if sel.size == 0:
                continue
            part = self.parts[p]
            yp = y[sel]
            codes = part.book.encode(yp)
            row_part[sel] = p
            row_pos[sel] = part.size + np.arange(sel.size)
            part.segs = np.concatenate([part.segs, part.book.pack(codes)], axis=1)
            part.binary = np.concatenate([part.binary, part.book.binary(yp)])
            part.vectors = np.concatenate([part.vectors, yp])
            part.rows = np.concatenate([part.rows, rows[sel]])
            part.ids = np.concatenate([part.ids, ids[sel]])
            cl = near[sel, p]
            part.cluster = np.concatenate([part.cluster, cl])
            row_cluster[sel] = p * self.nclusters + cl
        self.row_part = np.concatenate([self.row_part, row_part])
        self.row_pos = np.concatenate([self.row_pos, row_pos])
        self.row_cluster = np.concatenate([self.row_cluster, row_cluster])
        for p in np.unique(assign):
            self._relayout(int(p))
        self._set_raw(np.concatenate([self.raw, x]))
        self._add_attrs(cols, start, n)

    @staticmethod
    def _route(y: np.ndarray, clusters: np.ndarray, P: int, C: int, cap: np.ndarray, block: int = 16384):
        """Partition and cluster of rotated rows ``y`` float32 (n, d): each row goes to its nearest cluster
        (``clusters`` float32 (P * C, d), partition p's are rows ``p * C .. p * C + C - 1``) in a partition with room
        (``cap`` int64 (P,) rows), else to the nearest cluster of the nearest partition with room.

        Returns ``(partition int64 (n,), near int32 (n, P))``: ``near[i, p]`` is row i's nearest cluster in p.
        """
        n = y.shape[0]
        dpart = np.empty((n, P), dtype=np.float32)
        near = np.empty((n, P), dtype=np.int32)
        norms = np.einsum("ij,ij->i", clusters, clusters)
        for s in range(0, n, block):
            dist = sq_distances(y[s:s + block], clusters, norms).reshape(-1, P, C)
            near[s:s + block] = dist.argmin(axis=2)
            dpart[s:s + block] = np.take_along_axis(dist, near[s:s + block, :, None].astype(np.int64), axis=2)[:, :, 0]
        part = capped_assign(dpart, cap) if n else np.empty(0, np.int64)
        return part, near

    def _set_raw(self, raw: np.ndarray) -> None:
        self.raw = np.ascontiguousarray(raw, dtype=np.float32)
        self.raw_norms = np.einsum("ij,ij->i", self.raw, self.raw)

    def _relayout(self, p: int) -> None:
        """Order partition ``p``'s positions by cluster, so that each inverted list is a contiguous range of every
        per-position array: levels 1-3 then stream codes and vectors instead of gathering them at random (measured:
        the random gathers of 4 d byte vectors dominated level 2 on GloVe)."""
        part = self.parts[p]
        order = np.argsort(part.cluster, kind="stable")
        if np.all(order == np.arange(order.size)):
            part.reindex()
            return
        part.rows, part.ids, part.cluster = part.rows[order], part.ids[order], part.cluster[order]
        part.segs = np.ascontiguousarray(part.segs[:, order])
        part.binary = np.ascontiguousarray(part.binary[order])
        part.vectors = np.ascontiguousarray(part.vectors[order])
        part.reindex()
        self.row_pos[part.rows] = np.arange(part.size, dtype=np.int64)

    def _check_attrs(self, attrs, n: int) -> dict:
        cols = {}
        for name, col in (attrs or {}).items():
            if not isinstance(col, (filters.NumericColumn, filters.KeywordColumn, filters.TagsColumn)):
                try:
                    col = filters.NumericColumn(np.asarray(col))
                except ValueError as exc:
                    raise InvalidArgument(f"attribute {name!r}: {exc}") from None
            if len(col) != n:
                raise InvalidArgument(f"attribute {name!r} has {len(col)} rows for {n} vectors")
            old = self.columns.get(name)
            if old is not None and type(old) is not type(col):
                raise InvalidArgument(f"attribute {name!r} changed type ({old.kind} -> {col.kind})")
            cols[name] = col
        return cols

    def _add_attrs(self, cols: dict, start: int, n: int) -> None:
        for name in set(self.columns) | set(cols):
            old = self.columns.get(name)
            new = cols.get(name)
            if new is None:
                new = missing_like(old, n)
            if isinstance(new, filters.NumericColumn):
                if name not in self.cells:
                    self.cells[name] = NumericCells.fit(new.values, self.settings["attr_bits"], missing=new.missing,
                                                        lloyd_iters=int(self.settings["lloyd"]))
                code = self.cells[name].encode(new.values, new.missing)
                prev = self.codes.get(name, np.full(start, 255, dtype=np.uint8))
                self.codes[name] = np.concatenate([prev, code])
            if old is None:
                old = missing_like(new, start)
            self.columns[name] = concat_columns(old, new)
            self.kinds[name] = self.columns[name].kind

    # ------------------------------------------------------------------ filters
    def _check_pred(self, pred) -> None:
        """A predicate on a known attribute must fit its type (InvalidArgument naming both otherwise). Predicates
        already found valid for the attribute's kind are remembered: the check cost ~10 us a predicate, a tenth of
        a whole very selective search."""
        kind = self.kinds[pred.attr]
        checked = self.__dict__.setdefault("_checked_preds", set())
        try:
            if (pred, kind) in checked:
                return
        except TypeError:  # an unhashable literal: check every time
            checked = None
        try:
            filters.check(pred, {pred.attr: kind})
        except filters.FilterTypeError as exc:
            raise InvalidArgument(str(exc)) from None
        if checked is not None:
            if len(checked) >= 4096:
                checked.clear()
            checked.add((pred, kind))

    def _leaf(self, pred):
        """(sure, maybe) of one predicate over all rows from the attribute codes (exact for keywords and tags).

        An attribute the index has never seen is missing on every row, so its predicates are false.
        """
        n = self.ntotal
        kind = self.kinds.get(pred.attr)
        if kind is None:
            return np.zeros(n, bool), np.zeros(n, bool)
        self._check_pred(pred)
        if kind in ("int", "float"):
            cells = self.cells[pred.attr]
            lo, hi = cells.lo.copy(), cells.hi.copy()
            empty = ~(lo <= hi)
            empty[255] = True
            lo[empty] = hi[empty] = 0.0
            # int64 values beyond 2**53 were rounded into float64 ranges: widen by one ulp to stay a superset
            big = np.abs(lo) > _BIG
            lo[big] = np.nextafter(lo[big], -np.inf)
            big = np.abs(hi) > _BIG
            hi[big] = np.nextafter(hi[big], np.inf)
            sure_t, maybe_t = filters.interval_predicate(pred, lo, hi, missing=empty)
            # one uint8 table (1 sure, 2 maybe) and one np.take: about 3x faster than two boolean fancy-indexings
            lut = sure_t.astype(np.uint8) | ((maybe_t & ~sure_t).astype(np.uint8) << 1)
            v = np.take(lut, self.codes[pred.attr])
            return v == 1, v == 2
        return filters.evaluate_predicate(pred, {pred.attr: self.columns[pred.attr]}, n), np.zeros(n, bool)

    def filter_status(self, expr) -> tuple[np.ndarray, np.ndarray]:
        """Three-valued filter over all rows from the attribute codes: ``(sure, maybe)`` bool (ntotal,)."""
        n = self.ntotal
        if expr is None:
            return np.ones(n, bool), np.zeros(n, bool)
        expr = as_expr(expr)
        return filters.evaluate3(expr, self._leaf, n)

    def exact_rows(self, expr, rows: np.ndarray) -> np.ndarray:
        """Exact truth of ``expr`` on internal ``rows`` (bool (m,)), from the exact attribute values."""
        rows = np.asarray(rows, dtype=np.int64)
        if expr is None:
            return np.ones(rows.shape[0], bool)
        expr = as_expr(expr)
        names = filters.attributes(expr)
        cols = {}
        for name in names:
            if name in self.kinds:
                cols[name] = self._exact_column(name).take(rows)
            else:
                cols[name] = filters.NumericColumn(np.full(rows.size, np.nan))
        return filters.evaluate(expr, cols, int(rows.size))

    def _exact_column(self, name: str):
        col = self.columns.get(name)
        if col is None and self._source is not None:
            store, prefix = self._source
            _, a = load_arrays(store, prefix, kind=self.kind, names=[f"attr/{name}/values", f"attr/{name}/missing"])
            col = self.columns[name] = filters.NumericColumn(a[f"attr/{name}/values"], a[f"attr/{name}/missing"])
        if col is None:
            raise FailedPrecondition(f"exact values of attribute {name!r} are not loaded")
        return col

    def estimate_matches(self, expr) -> tuple[int, int]:
        """``(sure, maybe)`` live-row counts from the attribute codes: ``sure <= matches <= sure + maybe``."""
        sure, maybe = self.filter_status(expr)
        live = ~self.deleted
        return int(np.count_nonzero(sure & live)), int(np.count_nonzero(maybe & live))

    # ------------------------------------------------------------------ search
    def _live(self) -> tuple[np.ndarray, int]:
        """``(live bool (ntotal,), number live)``, remembered until the next add (a new ``deleted`` array) or remove
        (:meth:`_on_remove`): two passes over every row that a very selective search would otherwise make each time
        (~50 us at 390,000 rows, a few per cent of such a search). Callers must not write to the mask."""
        memo = self.__dict__.get("_live_memo")
        if memo is None or memo[0] is not self.deleted:
            live = ~self.deleted
            memo = self._live_memo = (self.deleted, live, int(np.count_nonzero(live)))
        return memo[1], memo[2]

    def _on_remove(self, rows: np.ndarray) -> None:
        super()._on_remove(rows)
        self.__dict__.pop("_live_memo", None)

    def _rotate_prepared(self, q: np.ndarray) -> np.ndarray:
        """Rotate already prepared queries float32 (nq, d): one GEMM for the batch."""
        return np.ascontiguousarray(q @ self.rotation, dtype=np.float32)

    def search(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """Filtered top-``k``; ``filter`` is a ``filters`` AST (or its text / JSON form). See the module docstring."""
        D, I, _ = self.search_with_stats(q, k, params=params, allowed=allowed, tenant=tenant, filter=filter)
        return D, I

    def search_with_stats(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        """:meth:`search` plus this call's stats: ``plan`` (``exact`` / ``multilevel``), ``sure`` / ``maybe`` rows,
        ``ndis``, bytes touched, ``partitions_visited``, ``elapsed_ms``, ..."""
        q, k, params, allowed = self.check_search(q, k, params, allowed, tenant, filter)
        t0 = time.perf_counter()
        nq = q.shape[0]
        D, I = self.empty(nq, k)
        if nq == 0 or self.ntotal == 0:
            return D, I, {"plan": "empty", "nq": nq}
        expr = None if filter is None else as_expr(filter)
        p = dict(DEFAULT_PARAMS)
        p.update(params)
        lv = self._level0(q, k, p, expr, allowed, False)
        if not float(p["keep_frac"]) and expr is not None and \
                float((lv.sure + lv.maybe).max()) <= 0.5 * max(1, self._live()[1]):
            # under a filter the nearest passing rows can lie far from the query, where sign codes rank poorly
            # (measured: recall 0.85 -> 1.0 on Fashion-MNIST with another class's filter); keep every candidate
            p["keep_frac"] = 1.0
        nattr_bytes = sum(c.nbytes for c in self.codes.values()) + sum(
            col_nbytes(c) for c in self.columns.values() if not isinstance(c, filters.NumericColumn))
        stats = {"plan": lv.plan, "nq": nq, "sure": int(lv.sure.sum()), "maybe": int(lv.maybe.sum()),
                 "resolved": bool(lv.resolved.any()), "level0_bytes": int(nattr_bytes + self.centroids.nbytes)}
        if lv.plan == "exact":
            D, I = self._exact_scan(lv, k)
            nm = int(lv.sure[lv.sidx].sum())
            stats.update({"ndis": nm, "query_bytes": nm * 4 * self.d})
        else:
            D, I, st = self._multilevel(lv, k, p, expr)
            stats.update(st)
            D, I = self._fill_short(lv, D, I, k, expr, stats)
        stats["bytes_per_query"] = (stats["level0_bytes"] + stats["query_bytes"]) / nq
        stats["elapsed_ms"] = (time.perf_counter() - t0) * 1e3
        return D, I, stats

    def _vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """Rotated vectors of internal ``rows`` (float32 (m, d))."""
        out = np.empty((rows.shape[0], self.d), dtype=np.float32)
        parts = self.row_part[rows]
        pos = self.row_pos[rows]
        for p in np.unique(parts):
            sel = parts == p
            out[sel] = self.parts[p].vectors[pos[sel]]
        return out

    def _key_metric(self) -> str:
        return "l2" if self.metric == "l2" else "ip"

    def _exact_scan(self, lv: Level0, k: int):
        """Exact top-``k`` over each status row's sure rows: one BLAS product per status row for the queries sharing
        it, on the unrotated vectors (no query rotation)."""
        q = lv.q if lv.q is not None else self._unrotate(lv.qrot)
        nq = q.shape[0]
        D, I = self.empty(nq, k)
        if lv.status.shape[0] == 1:
            groups = [(0, np.arange(nq))]
        else:
            groups = [(s, np.flatnonzero(lv.sidx == s)) for s in range(lv.status.shape[0])]
        metric = self._key_metric()
        for s, qs in groups:
            if qs.size == 0:
                continue
            # an exact plan's status has no maybe rows left (resolved at level 0): it holds only 0 and 1
            # (STATUS_SURE), so it reads as bool, on which flatnonzero is ~8x faster than on uint8
            rows = lv.rows[s] if lv.rows is not None else np.flatnonzero(lv.status[s].view(bool))
            if rows.size == 0:
                continue
            if qs.size * rows.size <= _SMALL_SCAN:
                D[qs], I[qs] = self._small_scan(q[qs], rows, k, metric)
            else:
                D[qs], I[qs] = exact_search(q[qs], self.raw[rows], k, metric, labels=self.row_ids[rows],
                                            x_norms=self.raw_norms[rows] if metric == "l2" else None)
        return D, I

    def _small_scan(self, q: np.ndarray, rows: np.ndarray, k: int, metric: str):
        """Exact top-``k`` of ``q`` over a few ``rows``: one GEMM into a full key matrix, then a sorted insertion
        per query (:func:`._topk_kernels.topk_rows`; cheaper than the tiled heap scan of ``exact_search`` when the
        matrix is small)."""
        nq = q.shape[0]
        keys = q @ self.raw[rows].T
        if metric == "l2":
            keys *= -2.0
            keys += self.raw_norms[rows][None, :]
            keys += np.einsum("ij,ij->i", q, q)[:, None]
            np.maximum(keys, 0.0, out=keys)
        else:
            np.negative(keys, out=keys)
        D, cols = self.empty(nq, k)
        topk_rows(np.ascontiguousarray(keys, dtype=np.float32), D, cols)
        I = np.where(cols >= 0, self.row_ids[rows][np.maximum(cols, 0)], -1)
        return D, I

    def _unrotate(self, qrot: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(qrot @ self.rotation.T, dtype=np.float32)

    def _multilevel(self, lv: Level0, k: int, p: dict, expr):
        nq, P = lv.visit.shape
        accD = np.full((nq, P * k), np.inf, dtype=np.float32)
        accI = np.full((nq, P * k), -1, dtype=np.int64)
        tot = {"candidates": 0, "hamming": 0, "bounds": 0, "rerank": 0, "maybe_checked": 0, "bytes": 0}
        for pi in range(P):
            qs = np.flatnonzero(lv.visit[:, pi])
            part = self.parts[pi]
            if qs.size == 0 or part.size == 0:
                continue
            status_p = np.ascontiguousarray(lv.status[:, part.rows])
            d_, i_, st = part.search(lv.qrot[qs], status_p, k, p, expr=expr, sidx=lv.sidx[qs],
                                     clusters=lv.clusters[qs, pi])
            accD[qs, pi * k:(pi + 1) * k] = d_
            accI[qs, pi * k:(pi + 1) * k] = i_
            for key in tot:
                tot[key] += st[key]
        order = np.lexsort((np.where(accI < 0, np.iinfo(np.int64).max, accI), accD), axis=1)[:, :k]
        D = np.take_along_axis(accD, order, axis=1)
        I = np.take_along_axis(accI, order, axis=1)
        stats = {"partitions_visited": float(lv.visit.sum() / nq),
                 "clusters_visited": float(lv.clusters.sum() / nq), "ndis": tot["rerank"],
                 "hamming": tot["hamming"], "bounds": tot["bounds"], "maybe_checked": tot["maybe_checked"],
                 "query_bytes": tot["bytes"]}
        return D, I, stats

    def _fill_short(self, lv: Level0, D, I, k, expr, stats):
        """Safety net: a query left with fewer than ``min(k, matches)`` results is answered by an exact scan."""
        got = np.count_nonzero(I >= 0, axis=1)
        need = np.minimum(k, lv.sure[lv.sidx])
        short = np.flatnonzero(got < need)
        stats["short_fixed"] = int(short.size)
        if short.size == 0:
            return D, I
        status = lv.status.copy()
        for s in np.unique(lv.sidx[short]):
            rows = np.flatnonzero(status[s] == K.STATUS_MAYBE)
            if rows.size:
                status[s, rows] = np.where(self.exact_rows(expr, rows), K.STATUS_SURE, K.STATUS_NO)
        sub = Level0(lv.qrot[short], status, lv.sidx[short], lv.visit[short], "exact", lv.sure, lv.maybe,
                     lv.resolved, lv.clusters[short], None if lv.q is None else lv.q[short])
        D[short], I[short] = self._exact_scan(sub, k)
        return D, I

    def search_partition(self, p: int, qrot, status, k: int, params=None, *, expr=None, sidx=None, clusters=None):
        """Levels 1-3 on partition ``p`` only (what a serverless processor runs); see :meth:`OSQPartition.search`.

        ``status`` is over the partition's positions (``level0().status[:, index.parts[p].rows]``) and ``clusters``
        is ``level0().clusters[queries, p]``.
        """
        return self.parts[p].search(qrot, status, k, params, expr=None if expr is None else as_expr(expr),
                                    sidx=sidx, clusters=clusters)

    def reconstruct(self, rows) -> np.ndarray:
        """Stored (normalised for cosine) vectors of internal ``rows``: float32 (m, d)."""
        rows = np.asarray(rows, dtype=np.int64)
        return np.ascontiguousarray(self._vectors_of(rows) @ self.rotation.T)

    # ------------------------------------------------------------------ persistence
    def _meta(self) -> dict:
        attrs = {}
        for name, col in self.columns.items():
            entry = {"kind": col.kind}
            if not isinstance(col, filters.NumericColumn):
                entry["vocab"] = list(col.vocab)
            attrs[name] = entry
        return {"kind": self.kind, "d": self.d, "metric": self.metric, "settings": self.settings,
                "partitions": self.nparts, "sizes": [p.size for p in self.parts],
                "nseg": [p.book.nseg for p in self.parts], "attributes": attrs}

    def global_arrays(self) -> dict[str, np.ndarray]:
        """Level-0 data: rotation, centroids, row maps, attribute codes (the allocator's share)."""
        a = {"rotation": self.rotation, "centroids": self.centroids, "row_ids": self.row_ids,
             "deleted": self.deleted, "row_part": self.row_part, "row_pos": self.row_pos,
             "row_cluster": self.row_cluster, "cluster_centroids": self.cluster_centroids}
        for name, col in self.columns.items():
            if isinstance(col, filters.NumericColumn):
                a[f"attr/{name}/codes"] = self.codes[name]
                a.update({f"attr/{k_}": v for k_, v in self.cells[name].arrays(name).items()})
            a.update(column_arrays(f"attr/{name}", col))
        return a

    def partition_arrays(self, p: int) -> dict[str, np.ndarray]:
        """Partition ``p``'s arrays: one per segment, binary codes, vectors, codebook, exact attributes."""
        part = self.parts[p]
        pre = f"p{p:04d}"
        a = {f"{pre}/rows": part.rows, f"{pre}/ids": part.ids, f"{pre}/binary": part.binary,
             f"{pre}/vectors": part.vectors, f"{pre}/centroids": part.centroids, f"{pre}/cluster": part.cluster}
        for s in range(part.segs.shape[0]):
            a[f"{pre}/seg{s:04d}"] = np.ascontiguousarray(part.segs[s])
        a.update({f"{pre}/book/{k_}": v for k_, v in part.book.arrays().items()})
        for name, col in self.columns.items():
            a.update(column_arrays(f"{pre}/attr/{name}", col.take(part.rows)))
        return a

    def save(self, store, prefix: str) -> None:
        if not self.is_trained:
            raise InvalidArgument("cannot save an untrained OSQ index")
        arrays = self.global_arrays()
        for p in range(self.nparts):
            arrays.update(self.partition_arrays(p))
        # the unrotated vectors serve the full index's exact plan only (neither allocator nor processors read them)
        arrays["raw_vectors"] = self.raw
        save_arrays(store, prefix, self._meta(), arrays)

    @classmethod
    def _from_meta(cls, meta: dict) -> "OSQIndex":
        if meta.get("kind") != cls.kind:
            raise InvalidArgument(f"not an OSQ index: kind {meta.get('kind')!r}")
        return cls(meta["d"], meta["metric"], **meta["settings"])

    @staticmethod
    def level0_array_names(names: list[str]) -> list[str]:
        """Of the saved array ``names``, those :meth:`load_level0` reads: everything outside the partitions but the
        exact attribute values (read on demand) and the unrotated vectors (the full index's exact plan)."""
        return [n for n in names if not _PART_RE.match(n) and not n.endswith(("/values", "/missing"))
                and n != "raw_vectors"]

    @staticmethod
    def partition_array_names(names: list[str], p: int, *, attrs: bool = True, vectors: bool = True) -> list[str]:
        """Of the saved array ``names``, those :meth:`load_partition` reads for partition ``p`` (``vectors=False``:
        all but the rotated vectors, which a processor reads by row)."""
        pre = f"p{p:04d}/"
        return [n for n in names if n.startswith(pre) and (attrs or not n.startswith(pre + "attr/"))
                and (vectors or n != pre + "vectors")]

    @staticmethod
    def partition_vectors_name(p: int) -> str:
        """The saved array of partition ``p``'s rotated vectors, float32 (size, d) in position order."""
        return f"p{p:04d}/vectors"

    @classmethod
    def load_level0(cls, store, prefix: str, *, mmap: bool = False) -> "OSQIndex":
        """Load only the level-0 (allocator) data; partitions stay unloaded (``parts[p] is None``)."""
        meta = load_meta(store, prefix, kind=cls.kind)
        _, a = load_arrays(store, prefix, kind=cls.kind, mmap=mmap, names=cls.level0_array_names(meta["arrays"]))
        index = cls._from_meta(meta)
        index.rotation = np.array(a["rotation"])
        index.centroids = np.array(a["centroids"])
        index.row_ids = np.array(a["row_ids"])
        index.deleted = np.array(a["deleted"])
        index.row_part = np.array(a["row_part"])
        index.row_pos = np.array(a["row_pos"])
        index.row_cluster = np.array(a["row_cluster"])
        index.cluster_centroids = np.array(a["cluster_centroids"])
        for name, entry in meta["attributes"].items():
            index.kinds[name] = entry["kind"]
            if entry["kind"] in ("int", "float"):
                index.codes[name] = np.array(a[f"attr/{name}/codes"])
                index.cells[name] = NumericCells.from_arrays({k_[5:]: v for k_, v in a.items()
                                                              if k_.startswith(f"attr/{name}.")}, name)
                # level 0 needs only the codes of numbers; exact values are read on demand (maybe resolution)
                index.columns[name] = None
            else:
                index.columns[name] = column_from_arrays(f"attr/{name}", entry, a)
        index.parts = [None] * int(meta["partitions"])
        index._source = (store, prefix)
        return index

    @classmethod
    def load_partition(cls, store, prefix: str, p: int, *, mmap: bool = False, attrs: bool = True,
                       fetch_rows=None) -> OSQPartition:
        """Load partition ``p`` alone (a processor's share): segments, binary codes, vectors, exact attributes.

        ``attrs=False`` skips the partition's exact attribute slices (the full :meth:`load` has them globally).
        ``fetch_rows`` (callable(positions int64 (m,)) -> float32 (m, d)) leaves the vectors unread: the partition
        asks it for the rows it re-ranks (see :attr:`OSQPartition.fetch_rows`).
        """
        meta = load_meta(store, prefix, kind=cls.kind)
        if not 0 <= p < int(meta["partitions"]):
            raise InvalidArgument(f"partition {p} out of range 0..{int(meta['partitions']) - 1}")
        pre = f"p{p:04d}/"
        names = cls.partition_array_names(meta["arrays"], p, attrs=attrs, vectors=fetch_rows is None)
        _, a = load_arrays(store, prefix, kind=cls.kind, mmap=mmap, names=names)
        a = {n[len(pre):]: v for n, v in a.items()}
        book = OSQCodebook.from_arrays({k_[5:]: v for k_, v in a.items() if k_.startswith("book/")})
        nseg = int(meta["nseg"][p])
        size = int(meta["sizes"][p])
        segs = np.empty((nseg, size), dtype=np.uint8)
        for s in range(nseg):
            segs[s] = a[f"seg{s:04d}"]
        columns = {name: column_from_arrays(f"attr/{name}", entry, a)
                   for name, entry in meta["attributes"].items()} if attrs else {}
        if fetch_rows is not None:
            vectors = np.empty((0, int(meta["d"])), dtype=np.float32)
        else:
            vectors = a["vectors"] if mmap else np.array(a["vectors"])
        return OSQPartition(p, np.array(a["rows"]), np.array(a["ids"]), book, segs, np.array(a["binary"]),
                            vectors, meta["metric"], np.array(a["centroids"]), np.array(a["cluster"]), None, columns,
                            fetch_rows=fetch_rows)

    @classmethod
    def load(cls, store, prefix: str, *, mmap: bool = False) -> "OSQIndex":
        index = cls.load_level0(store, prefix, mmap=mmap)
        meta = load_meta(store, prefix, kind=cls.kind)
        parts = [cls.load_partition(store, prefix, p, mmap=mmap, attrs=False) for p in range(int(meta["partitions"]))]
        for name in meta["attributes"]:
            index._exact_column(name)
        for part in parts:
            part.columns = {}
            index._bind(part)
        index.parts = parts
        if "raw_vectors" in meta["arrays"]:
            _, a = load_arrays(store, prefix, kind=cls.kind, mmap=mmap, names=["raw_vectors"])
            index._set_raw(a["raw_vectors"] if mmap else np.array(a["raw_vectors"]))
        else:  # saved before the unrotated copy was kept: undo the rotation
            index._set_raw(index._vectors_of(np.arange(index.ntotal)) @ index.rotation.T)
        return index

    # ------------------------------------------------------------------ accounting
    def code_bytes_per_vector(self) -> float:
        """Index bytes per vector excluding the re-rank vectors: packed codes + binary codes + attribute codes."""
        n = max(1, self.ntotal)
        codes = sum(p.segs.nbytes + p.binary.nbytes for p in self.parts if p is not None)
        attrs = sum(c.nbytes for c in self.codes.values()) + sum(
            col_nbytes(c) for c in self.columns.values() if c is not None and not isinstance(c, filters.NumericColumn))
        return (codes + attrs) / n

    def _all_arrays(self):
        arrs = [self.rotation, self.centroids, self.row_ids, self.deleted, self.row_part, self.row_pos,
                self.row_cluster, self.cluster_centroids, self.raw, self.raw_norms, *self.codes.values()]
        for p in self.parts:
            if p is not None:
                arrs += p.arrays()
        return arrs

    def memory_bytes(self) -> int:
        cols = sum(col_nbytes(c) for c in self.columns.values() if c is not None)
        cells = sum(c.inner.nbytes + c.lo.nbytes + c.hi.nbytes for c in self.cells.values())
        return array_bytes(*self._all_arrays())[0] + cols + cells

    def mapped_bytes(self) -> int:
        return array_bytes(*self._all_arrays())[1]


__all__ = ["OSQIndex", "OSQPartition", "Level0", "DEFAULT_PARAMS", "SETTINGS"]
