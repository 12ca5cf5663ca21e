"""OSQ partitions (levels 1-3), the level-0 result, and helpers of :mod:`shoal.index.osq`.

A serverless processor needs only this module's :class:`OSQPartition` (loaded by ``OSQIndex.load_partition``);
the allocator's :class:`Level0` output tells it which rows pass the filter and which clusters to visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import filters
from ..errors import InvalidArgument
from ..quantization import _osq_kernels as K
from ..quantization.kmeans import sq_distances
from ..quantization.osq import OSQCodebook
from .base import array_bytes

SETTINGS = {"partitions": 16, "clusters": 0, "bits": 0, "attr_bits": 8, "binary": 256, "lloyd": 25,
            "balance": 0.1, "kmeans_iters": 10}

HEAD_DIMS = 64  # leading rotated dimensions copied contiguously per partition (``OSQPartition.head``)

DEFAULT_PARAMS = {"nprobe": 16, "visit_ratio": 1.0, "max_visit": 0, "keep_frac": 0.0, "keep_min": 100,
                  "rerank": 50, "mode": "auto", "exact_below": 0.0, "level2": "auto"}


# ---------------------------------------------------------------------------------------------------- partitions
@dataclass
class OSQPartition:
    """One partition's data for levels 1-3.

    Attributes
    ----------
    number : int
    rows : int64 (n,)      internal (global) row of each position
    ids : int64 (n,)       user id of each position
    book : OSQCodebook
    segs : uint8 (nseg, n) segment-major packed codes
    binary : uint64 (n, W) sign codes
    vectors : float32 (n, d) rotated vectors (exact re-rank); (0, d) when ``fetch_rows`` reads them on demand
    centroids : float32 (C, d) the partition's clusters (rotated space)
    cluster : int32 (n,)   cluster of each position
    exact : callable(expr, positions int64) -> bool (m,)
        Exact filter evaluation for some positions (the maybe re-check).
    fetch_rows : callable(positions int64 (m,)) -> float32 (m, d), optional
        Where the vectors are not in memory (a serverless processor reads them with ranged GETs): the rows level 3
        and the exact plan need. Level 2 then ranks by code bounds, as it does over a memory-mapped partition.
    """

    number: int
    rows: np.ndarray
    ids: np.ndarray
    book: OSQCodebook
    segs: np.ndarray
    binary: np.ndarray
    vectors: np.ndarray
    metric: str
    centroids: np.ndarray
    cluster: np.ndarray
    exact: Callable[[Any, np.ndarray], np.ndarray] | None = None
    columns: dict = field(default_factory=dict)
    abandon: bool = True  # early-abandoned exact L2 keys at level 2 (same results; False only to compare)
    fetch_rows: Callable[[np.ndarray], np.ndarray] | None = None

    def __post_init__(self):
        self.reindex()

    def reindex(self) -> None:
        """Rebuild the inverted lists (positions grouped by cluster) from ``cluster``, and ``head``: a contiguous
        copy of the first ``HEAD_DIMS`` rotated dimensions of every vector (early-abandoned level-2 keys stream it
        instead of touching one cache line per 4 d-byte row: measured 78 ns a candidate on Fashion-MNIST, mostly
        memory latency)."""
        # up to HEAD_DIMS dimensions the head is the vectors themselves (a view: no copy)
        self.head = self.vectors if self.vectors.shape[1] <= HEAD_DIMS else \
            np.ascontiguousarray(self.vectors[:, :HEAD_DIMS], dtype=np.float32)
        tail = np.asarray(self.vectors[:, HEAD_DIMS:], dtype=np.float32)
        self.tail_norms = np.sqrt(np.einsum("ij,ij->i", tail, tail)).astype(np.float32)
        C = int(self.centroids.shape[0])
        order = np.argsort(self.cluster, kind="stable").astype(np.int64)
        self.list_rows = order
        # positions already ordered by cluster (OSQIndex keeps them so): lists are ranges
        self.contiguous = bool(np.array_equal(order, np.arange(order.size)))
        self.list_indptr = np.concatenate([[0], np.cumsum(np.bincount(self.cluster, minlength=C))]).astype(np.int64)

    @property
    def size(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nclusters(self) -> int:
        return int(self.centroids.shape[0])

    def auto_keep_frac(self, level2: str = "bounds") -> float:
        """Level-1 keep fraction when ``keep_frac=0``: sign codes rank better the more bits they have (about
        ``4 / sqrt(bits)``: 0.25 at 256 bits, 0.57 at 50). Short codes, inner products over vectors of varying norm
        (where signs say little), and exact level-2 keys in at most 64 dimensions (as cheap as a Hamming distance)
        keep everything."""
        nbin = int(self.book.thresholds.shape[0])
        if nbin < 32 or self.metric == "ip" or level2 == "head" or (level2 == "exact" and self.vectors.shape[1] <= 64):
            return 1.0
        return min(1.0, 4.0 / np.sqrt(nbin))

    def arrays(self) -> list[np.ndarray]:
        """Every array the partition holds (for memory accounting; the exact attribute slices are in ``columns``)."""
        arrs = [self.rows, self.ids, self.segs, self.binary, self.vectors, self.tail_norms, self.centroids,
                self.cluster, self.list_rows, self.list_indptr, *self.book.arrays().values()]
        if self.head is not self.vectors:
            arrs.append(self.head)
        return arrs

    @property
    def remote(self) -> bool:
        """The vectors are read on demand (``fetch_rows``), not held."""
        return self.fetch_rows is not None

    def vectors_at(self, positions: np.ndarray) -> np.ndarray:
        """float32 (m, d) rotated vectors of ``positions`` (int64 (m,)), from memory or ``fetch_rows``."""
        if self.remote:
            return np.ascontiguousarray(self.fetch_rows(np.asarray(positions, dtype=np.int64)), dtype=np.float32)
        return np.ascontiguousarray(self.vectors[positions])

    def exact_match(self, expr, positions: np.ndarray) -> np.ndarray:
        """Exact truth of ``expr`` for partition ``positions`` (bool (m,))."""
        if expr is None or positions.size == 0:
            return np.ones(positions.shape[0], dtype=bool)
        if self.exact is not None:
            return self.exact(expr, positions)
        cols = _take_columns(self.columns, filters.attributes(expr), positions)
        return filters.evaluate(expr, cols, int(positions.shape[0]))

    def search(self, qrot: np.ndarray, status: np.ndarray, k: int, params: dict | None = None, *, expr=None,
               sidx: np.ndarray | None = None, clusters: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """Levels 1-3 for a batch of rotated queries.

        Parameters
        ----------
        qrot : float32 (nq, d)
            Queries rotated by the index's rotation (``OSQIndex.rotate``; cosine queries normalised first).
        status : uint8 (n,) or (ns, n)
            Level-0 filter status of each position: 0 no, 1 sure, 2 maybe (tombstones must be 0).
        k : int
        params : dict
            ``keep_frac``, ``keep_min``, ``rerank`` (see :data:`DEFAULT_PARAMS`).
        expr : filter AST
            Needed to re-check maybe rows exactly.
        sidx : int64 (nq,), optional
            Status row of each query when ``status`` is 2-d.
        clusters : bool (nq, C), optional
            The partition's clusters each query visits (level 0 chose them); default all.

        Returns
        -------
        D float32 (nq, k), I int64 (nq, k) user ids, stats dict (per-batch sums of rows touched and bytes read)
        """
        p = dict(DEFAULT_PARAMS)
        p.update(params or {})
        qrot = np.ascontiguousarray(qrot, dtype=np.float32)
        nq = qrot.shape[0]
        status = np.ascontiguousarray(status, dtype=np.uint8)
        if status.ndim == 1:
            status = status[None, :]
        if sidx is None:
            sidx = np.zeros(nq, dtype=np.int64) if status.shape[0] == 1 else np.arange(nq, dtype=np.int64)
        sidx = np.ascontiguousarray(sidx, dtype=np.int64)
        rerank = max(int(p["rerank"]), k)
        keep_min = max(int(p["keep_min"]), rerank)
        cap = max(1, min(2 * rerank + 64, self.size))
        out_rows = np.full((nq, cap), -1, dtype=np.int64)
        counts = np.zeros((nq, 4), dtype=np.int64)
        metric = K.METRIC_L2 if self.metric == "l2" else K.METRIC_IP
        b = self.book
        qcl = np.ones((nq, self.nclusters), np.uint8) if clusters is None else \
            np.ascontiguousarray(clusters, dtype=np.uint8)
        level2 = p["level2"]
        if level2 not in ("auto", "bounds", "exact", "head"):
            raise InvalidArgument(f"level2 must be auto, bounds, exact or head, got {level2!r}")
        if level2 == "auto":
            # bounds save reading vectors; with the vectors already in memory exact keys are cheaper on a CPU, and
            # above HEAD_DIMS dimensions head keys (a contiguous stream) cheaper still
            level2 = "bounds" if self.remote or _is_mapped(self.vectors) else \
                "head" if self.vectors.shape[1] > HEAD_DIMS else "exact"
        elif self.remote and level2 != "bounds":
            raise InvalidArgument(f"level2={level2!r} reads every candidate's vector, but partition {self.number} "
                                  "reads its vectors by row on demand; use 'bounds' or 'auto'")
        keep_frac = float(p["keep_frac"]) or self.auto_keep_frac(level2)
        if keep_frac >= 1.0 and self.contiguous and level2 == "exact" and not (
                metric == K.METRIC_L2 and self.abandon and self.vectors.shape[1] > HEAD_DIMS):
            # no level-1 pruning: cluster by cluster for all the queries visiting it, keys offered as computed
            K.levels12_exact_streamed(status, sidx, qcl, self.list_indptr, qrot, self.vectors, metric, k, rerank,
                                      out_rows, counts)
        elif keep_frac >= 1.0 and self.contiguous and level2 == "head":
            K.levels12_cluster_major(status, sidx, qcl, self.list_indptr, qrot, self.vectors, self.head,
                                     self.tail_norms, metric, k, rerank, out_rows, counts, _LEVEL2[level2])
        else:
            qbin = self.book.binary(qrot)
            K.levels12(status, sidx, qcl, self.list_indptr, self.list_rows, qrot, qbin, self.binary, self.segs,
                       b.bits, b.dim_byte, b.dim_shift, b.dim_two, b.cell_lo, b.cell_hi, metric, k, keep_frac,
                       keep_min, rerank, out_rows, counts, self.vectors, self.head, self.tail_norms,
                       _LEVEL2[level2], self.abandon)
        # level 3 needs the exact truth of maybe survivors; evaluate each distinct one once for the batch
        valid = out_rows >= 0
        safe = np.where(valid, out_rows, 0)
        maybe = valid & (status[sidx[:, None], safe] == K.STATUS_MAYBE)
        ok = valid.copy()
        nmaybe = 0
        if maybe.any():
            uniq, inv = np.unique(out_rows[maybe], return_inverse=True)
            nmaybe = int(uniq.size)
            ok[maybe] = self.exact_match(expr, uniq)[inv]
        D = np.empty((nq, k), dtype=np.float32)
        R = np.empty((nq, k), dtype=np.int64)
        if self.remote:
            # only the survivors that passed the re-check are read, each distinct row once for the batch; level 3
            # then runs over that compact matrix (rows that failed the re-check point at row 0 and are never read)
            need = valid & ok
            fetched, inv = np.unique(out_rows[need], return_inverse=True)
            local = np.where(valid, 0, -1)
            local[need] = inv
            K.level3(local, ok, qrot, self.vectors_at(fetched), metric, k, D, R)
            R = np.where(R >= 0, fetched[np.maximum(R, 0)], -1) if fetched.size else np.full_like(R, -1)
        else:
            K.level3(out_rows, ok, qrot, self.vectors, metric, k, D, R)
        I = np.where(R >= 0, self.ids[np.maximum(R, 0)], -1)
        c = counts.sum(axis=0).tolist()
        stats = {"candidates": c[0], "hamming": c[0], "bounds": c[1], "rerank": c[3], "maybe_checked": nmaybe,
                 "bytes": int(c[0] * self.binary.shape[1] * 8 + c[1] * _row_bytes(level2, b.nseg, self.vectors.shape[1])
                              + c[3] * 4 * self.vectors.shape[1])}
        return D, I, stats


_LEVEL2 = {"exact": K.LEVEL2_EXACT, "bounds": K.LEVEL2_BOUNDS, "head": K.LEVEL2_HEAD}


def _row_bytes(level2: str, nseg: int, d: int) -> int:
    """Bytes level 2 reads per row."""
    if level2 == "bounds":
        return nseg
    if level2 == "head":
        return 4 * min(d, HEAD_DIMS) + 4
    return 4 * d


def _take_columns(columns: dict, names, rows: np.ndarray) -> dict:
    """Columns restricted to ``rows``; attributes the index has never seen are all-missing."""
    out = {}
    m = int(rows.shape[0])
    for name in names:
        col = columns.get(name)
        out[name] = col.take(rows) if col is not None else filters.NumericColumn(np.full(m, np.nan))
    return out


# ---------------------------------------------------------------------------------------------------- level 0
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


# ---------------------------------------------------------------------------------------------------- helpers
def row_counts(mask: np.ndarray) -> np.ndarray:
    """True entries per row of a bool (ns, n) array, int64 (ns,). ``count_nonzero(axis=1)`` sums the bools as
    integers (56 us for one row of 60,000); per row it counts bytes (6 us)."""
    if mask.shape[0] == 1:
        return np.array([np.count_nonzero(mask)], dtype=np.int64)
    return np.fromiter((np.count_nonzero(r) for r in mask), dtype=np.int64, count=mask.shape[0])


def _is_mapped(a) -> bool:
    return array_bytes(a)[1] > 0


def _choose_clusters(dc: np.ndarray, sure: np.ndarray, cand: np.ndarray, sidx: np.ndarray, k: int,
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


def _as_expr(expr):
    """Accept an AST, its JSON dict or its text form."""
    if isinstance(expr, str):
        return filters.parse(expr)
    if isinstance(expr, dict):
        return filters.from_json(expr)
    return expr


def _col_nbytes(col) -> int:
    """Bytes of an exact attribute column in memory, with its range index once built."""
    if col is None:
        return 0
    idx = col.__dict__.get("_sorted")
    return int(col.nbytes) + (idx[1].nbytes + idx[2].nbytes if idx is not None else 0)


def _missing_like(col, n: int):
    if isinstance(col, filters.NumericColumn):
        if col.kind == "int":
            return filters.NumericColumn(np.zeros(n, np.int64), np.ones(n, bool))
        return filters.NumericColumn(np.full(n, np.nan))
    if isinstance(col, filters.KeywordColumn):
        return filters.KeywordColumn(np.full(n, -1, np.int32), col.vocab)
    return filters.TagsColumn(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), col.vocab)


def _merge_vocab(old, new) -> tuple[list, np.ndarray, np.ndarray]:
    """Union vocabulary (old words keep their codes) and code maps for both columns."""
    vocab = list(old.vocab)
    lookup = {w: i for i, w in enumerate(vocab)}
    for w in new.vocab:
        if w not in lookup:
            lookup[w] = len(vocab)
            vocab.append(w)
    new_map = np.array([lookup[w] for w in new.vocab], dtype=np.int32)
    return vocab, np.arange(len(old.vocab), dtype=np.int32), new_map


def _concat_columns(old, new):
    if isinstance(new, filters.NumericColumn):
        if old.kind != new.kind:
            vals = np.concatenate([old.values.astype(np.float64), new.values.astype(np.float64)])
            return filters.NumericColumn(vals, np.concatenate([old.missing, new.missing]))
        return filters.NumericColumn(np.concatenate([old.values, new.values]),
                                     np.concatenate([old.missing, new.missing]))
    vocab, _, nmap = _merge_vocab(old, new)
    if isinstance(new, filters.KeywordColumn):
        codes = np.where(new.codes >= 0, nmap[np.maximum(new.codes, 0)] if nmap.size else -1, -1)
        return filters.KeywordColumn(np.concatenate([old.codes, codes.astype(np.int32)]), vocab)
    codes = nmap[new.codes] if new.codes.size else new.codes
    indptr = np.concatenate([old.indptr, old.indptr[-1] + new.indptr[1:]])
    return filters.TagsColumn(indptr, np.concatenate([old.codes, codes]).astype(np.int32), vocab)


def _column_arrays(pre: str, col) -> dict[str, np.ndarray]:
    if isinstance(col, filters.NumericColumn):
        return {f"{pre}/values": col.values, f"{pre}/missing": col.missing}
    if isinstance(col, filters.KeywordColumn):
        return {f"{pre}/kw": col.codes}
    return {f"{pre}/indptr": col.indptr, f"{pre}/tags": col.codes}


def _column_from_arrays(pre: str, entry: dict, a: dict):
    kind = entry["kind"]
    if kind in ("int", "float"):
        return filters.NumericColumn(np.array(a[f"{pre}/values"]), np.array(a[f"{pre}/missing"]))
    if kind == "keyword":
        return filters.KeywordColumn(np.array(a[f"{pre}/kw"]), entry["vocab"])
    return filters.TagsColumn(np.array(a[f"{pre}/indptr"]), np.array(a[f"{pre}/tags"]), entry["vocab"])
