"""``Flat``: exact search by brute force over float32 vectors, BLAS for the distance matrix.

The baseline every other kind is measured against, and the index of a collection's unindexed tail.
"""

from __future__ import annotations

import numpy as np

from .base import Index, array_bytes
from .factory import Stage, take_settings
from .persist import load_arrays, save_arrays
from .topk import topk_from_distances

#: cap on one block of the distance matrix (float32 entries); bounds memory at 64 MiB per block
_BLOCK_ENTRIES = 1 << 24


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

    Parameters
    ----------
    q : float32 (nq, d)
    x : float32 (n, d)
    labels : int64 (n,), optional
        Returned in place of row numbers.
    allowed : bool (n,) or (nq, n), optional
        A shared mask is applied by gathering the allowed rows first (cheap when selective); per-query masks set
        excluded keys to ``+inf``.

    Returns
    -------
    D float32 (nq, k), I int64 (nq, k)
    """
    nq, n = q.shape[0], x.shape[0]
    if labels is None:
        labels = np.arange(n, dtype=np.int64)
    if allowed is not None and allowed.ndim == 1:
        rows = np.flatnonzero(allowed)
        if rows.size < n:
            return exact_search(q, x[rows], k, metric, labels=labels[rows],
                                x_norms=None if x_norms is None else x_norms[rows])
        allowed = None
    if metric == "l2" and x_norms is None:
        x_norms = np.einsum("ij,ij->i", x, x)
    block = max(1, min(nq, _BLOCK_ENTRIES // max(n, 1)))
    Ds, Is = [], []
    for s in range(0, nq, block):
        dist = distance_keys(q[s:s + block], x, metric, x_norms)
        if allowed is not None:
            dist[~allowed[s:s + block]] = np.inf
        d_, i_ = topk_from_distances(dist, k, labels)
        Ds.append(d_)
        Is.append(i_)
    if not Ds:
        return topk_from_distances(np.empty((0, n), np.float32), k)
    return np.concatenate(Ds), np.concatenate(Is)


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
