"""``Flat``: exact search by brute force over float32 vectors, BLAS for the distance matrix.

The baseline every other kind is measured against, and the index of a collection's unindexed tail.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _topk_kernels as _kern
from .base import Index, array_bytes
from .factory import Stage, take_settings
from .persist import load_arrays, save_arrays
from .topk import empty_result

#: tile of the distance matrix computed per BLAS call: queries x base rows (float32 entries, 16 MiB). Measured on
#: Fashion-MNIST and GloVe (single thread, against faiss's BLAS path): 256 x 1024 tiles left BLAS about 10-15%
#: slower per flop; at 1024 x 4096 the GEMM runs at faiss's speed and selection still streams the tile well
_QUERY_BLOCK = 1024
_BASE_BLOCK = 4096
#: base rows per tile below ``_SMALL_D`` dimensions: there BLAS is bound by writing the tile, not by flops, and a
#: 4 MiB tile leaves more of it in cache for the selection pass (GloVe-50: a few % faster, measured)
_BASE_BLOCK_SMALL_D = 1024
_SMALL_D = 256
#: tile when running multi-threaded (more than one numba thread, and then usually as many BLAS threads): every BLAS
#: call and parallel kernel launch wakes a thread pool, and with small tiles those wake-ups dominate as soon as the
#: cores are shared (measured on a busy 2-core machine: 25x slower than one thread); 32 MiB tiles keep them rare
_QUERY_BLOCK_MT = 512
_BASE_BLOCK_MT = 16384


def distance_keys(q: np.ndarray, x: np.ndarray, metric: str, x_norms: np.ndarray | None = None) -> np.ndarray:
    """Distance keys (smaller is better) between queries and vectors.

    Parameters
    ----------
    q : float32 (nq, d)
    x : float32 (n, d)
    metric : "l2" gives squared L2; "ip" and "cosine" (vectors already normalised) give the negated inner product.
    x_norms : float32 (n,), optional
        Precomputed squared norms of ``x`` for l2.

    Returns
    -------
    float32 (nq, n)
    """
    dots = q @ x.T
    if metric == "l2":
        if x_norms is None:
            x_norms = np.einsum("ij,ij->i", x, x)
        q_norms = np.einsum("ij,ij->i", q, q)
        dots *= -2.0
        dots += q_norms[:, None]
        dots += x_norms[None, :]
        np.maximum(dots, 0.0, out=dots)
        return dots
    np.negative(dots, out=dots)
    return dots


def exact_search(q: np.ndarray, x: np.ndarray, k: int, metric: str, *, labels: np.ndarray | None = None,
                 allowed: np.ndarray | None = None, x_norms: np.ndarray | None = None):
    """Exact top-``k`` of ``q`` over ``x`` under an optional allowed mask.

    The distance matrix is computed by BLAS in tiles of ``_QUERY_BLOCK`` queries x ``_BASE_BLOCK`` rows that stay in
    cache; a numba kernel turns each tile into keys (same float32 operations as :func:`distance_keys`) and feeds one
    bounded heap per query, so the full ``(nq, n)`` matrix is never materialised. Ties are broken by the smaller row.

    Parameters
    ----------
    q : float32 (nq, d)
    x : float32 (n, d)
    labels : int64 (n,), optional
        Returned in place of row numbers.
    allowed : bool (n,) or (nq, n), optional
        A shared mask is applied by gathering the allowed rows first (cheap when selective); per-query masks skip
        excluded entries inside the kernel.

    Returns
    -------
    D float32 (nq, k), I int64 (nq, k)
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    nq, n = q.shape[0], x.shape[0]
    if labels is None:
        labels = np.arange(n, dtype=np.int64)
    if allowed is not None and allowed.ndim == 1:
        rows = np.flatnonzero(allowed)
        if rows.size < n:
            return exact_search(q, x[rows], k, metric, labels=labels[rows],
                                x_norms=None if x_norms is None else x_norms[rows])
        allowed = None
    D, I = empty_result(nq, k)
    kk = min(k, n)
    if nq == 0 or kk == 0:
        return D, I
    l2 = metric == "l2"
    if l2:
        x_norms = np.einsum("ij,ij->i", x, x) if x_norms is None else np.ascontiguousarray(x_norms, np.float32)
        q_norms = np.einsum("ij,ij->i", q, q)
    else:
        x_norms = q_norms = np.zeros(max(nq, n), np.float32)
    use_mask = allowed is not None
    mask = np.ascontiguousarray(allowed) if use_mask else np.ones((1, 1), dtype=bool)
    parallel = _kern.use_parallel(nq)
    update = _kern.heap_update_dots if parallel else _kern.heap_update_dots_serial
    hd, hi = _kern.init_heaps(nq, kk)
    if numba.get_num_threads() > 1:
        bq, bn = min(nq, _QUERY_BLOCK_MT), min(n, _BASE_BLOCK_MT)
    else:
        bq, bn = min(nq, _QUERY_BLOCK), min(n, _BASE_BLOCK if q.shape[1] >= _SMALL_D else _BASE_BLOCK_SMALL_D)
    buf = np.empty(bq * bn, dtype=np.float32)
    for s in range(0, nq, bq):
        qb = q[s:s + bq]
        for c in range(0, n, bn):
            xb = x[c:c + bn]
            dots = buf[:qb.shape[0] * xb.shape[0]].reshape(qb.shape[0], xb.shape[0])
            np.matmul(qb, xb.T, out=dots)
            update(dots, l2, q_norms[s:s + bq], x_norms[c:c + bn], c,
                   mask[s:s + bq, c:c + bn] if use_mask else mask, use_mask, hd[s:s + bq], hi[s:s + bq])
    (_kern.sort_heaps if parallel else _kern.sort_heaps_serial)(hd, hi)
    found = hi >= 0
    D[:, :kk] = hd
    I[:, :kk] = np.where(found, labels[np.where(found, hi, 0)], -1)
    return D, I


class FlatIndex(Index):
    """Exact search. Factory string: ``Flat``."""

    kind = "Flat"

    def __init__(self, d: int, metric: str = "l2"):
        super().__init__(d, metric)
        self.vectors = np.empty((0, self.d), dtype=np.float32)
        self.norms = np.empty(0, dtype=np.float32)

    @classmethod
    def from_stages(cls, d: int, stages: list[Stage], metric: str = "l2") -> "FlatIndex":
        from ..errors import InvalidArgument

        for st in stages:
            if st.name != "Flat":
                raise InvalidArgument(f"stage {st.name} cannot be combined with Flat; Flat takes no other stage")
            if st.arg:
                raise InvalidArgument(f"Flat takes no numeric argument, got 'Flat{st.arg}'")
            take_settings(st, {})
        return cls(d, metric)

    def factory_string(self) -> str:
        return "Flat"

    def add(self, x, ids, *, tenants=None, attrs=None) -> None:
        x, ids = self.check_add(x, ids)
        self._append_rows(ids)
        self.vectors = np.concatenate([self.vectors, x]) if self.vectors.shape[0] else x.copy()
        self.norms = np.concatenate([self.norms, np.einsum("ij,ij->i", x, x)])

    def search(self, q, k, *, params=None, allowed=None, tenant=None, filter=None):
        q, k, params, allowed = self.check_search(q, k, params, allowed, tenant, filter)
        mask = self.live_mask(allowed)
        return exact_search(q, self.vectors, k, self.metric, labels=self.row_ids, allowed=mask,
                            x_norms=self.norms if self.metric == "l2" else None)

    def reconstruct(self, rows) -> np.ndarray:
        """Stored (normalised for cosine) vectors of internal ``rows``: float32 (len(rows), d)."""
        return np.asarray(self.vectors[np.asarray(rows, dtype=np.int64)])

    def save(self, store, prefix: str) -> None:
        save_arrays(store, prefix, {"kind": self.kind, "d": self.d, "metric": self.metric},
                    {"vectors": self.vectors, "norms": self.norms, "row_ids": self.row_ids, "deleted": self.deleted})

    @classmethod
    def load(cls, store, prefix: str, *, mmap: bool = False) -> "FlatIndex":
        meta, arrays = load_arrays(store, prefix, kind=cls.kind, mmap=mmap)
        index = cls(meta["d"], meta["metric"])
        index.vectors = arrays["vectors"]
        index.norms = np.array(arrays["norms"])
        index.row_ids = np.array(arrays["row_ids"])
        index.deleted = np.array(arrays["deleted"])
        return index

    def memory_bytes(self) -> int:
        return array_bytes(self.vectors, self.norms, self.row_ids, self.deleted)[0]

    def mapped_bytes(self) -> int:
        return array_bytes(self.vectors)[1]
