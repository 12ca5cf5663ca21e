"""One OSQ partition's data and its search, levels 1-3 (Hamming prune, bound prune, exact re-rank).

A serverless processor needs only this module's :class:`OSQPartition` (loaded by ``OSQIndex.load_partition``);
level 0's output (:class:`~shoal.index.osq_planner.Level0`) tells it which rows pass the filter and which clusters
to visit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import filters
from ..errors import InvalidArgument
from ..quantization import _osq_kernels as K
from ..quantization.osq import OSQCodebook

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
            # bounds save reading vectors, which pays only where a row costs a request (``fetch_rows``); vectors in
            # memory or memory-mapped (the page cache: a mapped index serves like one in memory, with the same
            # results) make exact keys cheaper on a CPU, and above HEAD_DIMS dimensions head keys (a contiguous
            # stream) cheaper still
            level2 = "bounds" if self.remote else "head" if self.vectors.shape[1] > HEAD_DIMS else "exact"
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

