"""Product quantization: M sub-spaces, 4- or 8-bit codes, training by plain or balanced (RepCONC) k-means, optional
OPQ rotation; encode / decode; per-query ADC look-up tables.

Stored codes are bytes: 8-bit PQ keeps one byte per sub-space; 4-bit PQ packs sub-spaces ``2j`` (low nibble) and
``2j+1`` (high nibble) into byte ``j`` (``code_size = ceil(M / 2)``). Scans never unpack: :func:`byte_tables` turns the
``(M, K)`` table of a query into one 256-entry table per stored byte.
"""

from __future__ import annotations

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from ._pq_kernels import adc_scan_all
from .kmeans import assign, balanced_kmeans, kmeans

MODES = ("kmeans", "balanced")


def check_pq_shape(d: int, M: int, nbits: int) -> None:
    """Raise :class:`InvalidArgument` unless ``M`` divides ``d`` and ``nbits`` is 4 or 8."""
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 1:
        raise InvalidArgument(f"PQ: number of sub-spaces M must be a positive integer, got {M!r}")
    if d % M:
        divisors = [m for m in range(1, d + 1) if d % m == 0]
        raise InvalidArgument(f"PQ: M={M} does not divide the dimension d={d}; valid M for d={d}: {divisors}")
    if nbits not in (4, 8):
        raise InvalidArgument(f"PQ: nbits must be 4 or 8 (codes of one nibble or one byte), got {nbits!r}")


def train_opq(x: np.ndarray, M: int, *, niter: int = 10, seed: int = 0, max_train: int = 32768) -> np.ndarray:
    """Learn an OPQ rotation (faiss ``OPQMatrix``) for ``M`` sub-spaces.

    Parameters
    ----------
    x : float32 (n, d)

    Returns
    -------
    float32 (d, d)
        Orthonormal ``R``; rotated vectors are ``x @ R.T``.
    """
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32)
    d = x.shape[1]
    opq = faiss.OPQMatrix(d, int(M))
    opq.niter = int(niter)
    opq.max_train_points = int(max_train)
    opq.verbose = False
    # faiss seeds its OPQ internals from fixed constants; the sample order is ours
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    opq.train(np.ascontiguousarray(x[perm]))
    return faiss.vector_to_array(opq.A).reshape(d, d).astype(np.float32)


def pack_codes(sub: np.ndarray, nbits: int) -> np.ndarray:
    """Sub-space codes uint8 (n, M) -> stored bytes uint8 (n, code_size)."""
    sub = np.ascontiguousarray(sub, dtype=np.uint8)
    if nbits == 8:
        return sub
    n, M = sub.shape
    out = np.zeros((n, (M + 1) // 2), dtype=np.uint8)
    out[:, :] = sub[:, 0::2]
    out[:, : M // 2] |= sub[:, 1::2] << 4
    return out


def unpack_codes(codes: np.ndarray, M: int, nbits: int) -> np.ndarray:
    """Stored bytes uint8 (n, code_size) -> sub-space codes uint8 (n, M)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if nbits == 8:
        return codes
    out = np.empty((codes.shape[0], M), dtype=np.uint8)
    out[:, 0::2] = codes & 15
    out[:, 1::2] = codes[:, : M // 2] >> 4
    return out


def byte_tables(tables: np.ndarray, nbits: int) -> np.ndarray:
    """Per-byte look-up tables float32 (nq, code_size, 256) from sub-space tables float32 (nq, M, K)."""
    if nbits == 8:
        return np.ascontiguousarray(tables, dtype=np.float32)
    nq, M, _ = tables.shape
    S = (M + 1) // 2
    lo = tables[:, 0::2, :]                          # (nq, S, 16)
    hi = np.zeros((nq, S, 16), dtype=np.float32)
    hi[:, : M // 2] = tables[:, 1::2, :]
    byte = np.arange(256)
    return np.ascontiguousarray(lo[:, :, byte & 15] + hi[:, :, byte >> 4], dtype=np.float32)


class ProductQuantizer:
    """Product quantizer with plain or balanced (Sinkhorn-constrained) codebooks.

    Parameters
    ----------
    d : int
    M : int
        Sub-spaces; must divide ``d``.
    nbits : {4, 8}
        Bits per sub-space code (``K = 2**nbits`` centroids per sub-space).
    mode : {"kmeans", "balanced"}
        ``balanced`` refines k-means codebooks with Sinkhorn-balanced assignments (RepCONC) and encodes with the
        learned per-centroid bias, so codeword usage stays near uniform.
    opq : bool
        Learn an OPQ rotation first (standalone use; an IVF index applies its own rotation before the coarse stage).
    eps, rounds, sinkhorn_iters : Sinkhorn settings of balanced training (see :func:`balanced_kmeans`).
    niter : int
        k-means iterations.
    max_train : int
        Training vectors are subsampled (seeded) to at most this many.
    seed : int
    gpu : bool
        k-means on GPU where faiss sees one.

    Attributes
    ----------
    centroids : float32 (M, K, dsub)
    bias : float32 (M, K)
        Encoding bias (zero for ``kmeans``).
    rotation : float32 (d, d) or None
    """

    def __init__(self, d: int, M: int, nbits: int = 8, *, mode: str = "kmeans", opq: bool = False,
                 eps: float = 0.2, rounds: int = 4, sinkhorn_iters: int = 30, niter: int = 20,
                 max_train: int = 65536, seed: int = 0, gpu: bool = False):
        check_pq_shape(d, M, nbits)
        if mode not in MODES:
            raise InvalidArgument(f"PQ: unknown training mode {mode!r}; valid modes: {', '.join(MODES)}")
        self.d, self.M, self.nbits = int(d), int(M), int(nbits)
        self.K = 1 << self.nbits
        self.dsub = self.d // self.M
        self.code_size = self.M if self.nbits == 8 else (self.M + 1) // 2
        self.mode, self.opq = mode, bool(opq)
        self.eps, self.rounds, self.sinkhorn_iters = float(eps), int(rounds), int(sinkhorn_iters)
        self.niter, self.max_train, self.seed, self.gpu = int(niter), int(max_train), int(seed), bool(gpu)
        self.centroids: np.ndarray | None = None
        self.bias = np.zeros((self.M, self.K), dtype=np.float32)
        self.rotation: np.ndarray | None = None
        self.tuned: np.ndarray | None = None

    def score_centroids(self) -> np.ndarray:
        """Centroids that score codes: the tuned ones after :func:`~shoal.quantization.tuning.tune_centroids`, else
        the encoding centroids (codes are always assigned with the encoding centroids, so tuning never moves them)."""
        self._require()
        return self.centroids if self.tuned is None else self.tuned

    @property
    def is_trained(self) -> bool:
        return self.centroids is not None

    def _require(self) -> None:
        if self.centroids is None:
            raise FailedPrecondition("product quantizer is not trained: call train(x) first")

    # ------------------------------------------------------------------ training
    def train(self, x, *, rotated: bool = False) -> "ProductQuantizer":
        """Learn codebooks (and the OPQ rotation unless ``rotated``) from float32 (n, d) vectors.

        Raises
        ------
        InvalidArgument
            If there are fewer training vectors than ``K`` centroids.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise InvalidArgument(f"PQ: training vectors must have shape (n, {self.d}), got {x.shape}")
        if x.shape[0] < self.K:
            raise InvalidArgument(f"PQ: {self.K} centroids per sub-space need at least {self.K} training vectors, "
                                  f"got {x.shape[0]}")
        if x.shape[0] > self.max_train:
            x = x[np.sort(np.random.default_rng(self.seed).choice(x.shape[0], self.max_train, replace=False))]
        if self.opq and not rotated:
            self.rotation = train_opq(x, self.M, seed=self.seed)
            x = self.rotate(x)
        cents = np.empty((self.M, self.K, self.dsub), dtype=np.float32)
        bias = np.zeros((self.M, self.K), dtype=np.float32)
        for m in range(self.M):
            sub = np.ascontiguousarray(x[:, m * self.dsub:(m + 1) * self.dsub])
            seed = self.seed + 1009 * m
            if self.mode == "balanced":
                cents[m], bias[m] = balanced_kmeans(sub, self.K, niter=self.niter, rounds=self.rounds, eps=self.eps,
                                                    sinkhorn_iters=self.sinkhorn_iters, seed=seed, gpu=self.gpu)
            else:
                cents[m] = kmeans(sub, self.K, niter=self.niter, seed=seed, gpu=self.gpu)
        self.centroids, self.bias, self.tuned = cents, bias, None
        return self

    # ------------------------------------------------------------------ codes
    def rotate(self, x: np.ndarray) -> np.ndarray:
        """Apply the OPQ rotation (identity without one): float32 (n, d) -> float32 (n, d)."""
        if self.rotation is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        return np.ascontiguousarray(x @ self.rotation.T, dtype=np.float32)

    def encode_sub(self, y: np.ndarray, *, block: int = 65536) -> np.ndarray:
        """Sub-space codes uint8 (n, M) of already rotated float32 (n, d) vectors."""
        self._require()
        y = np.ascontiguousarray(y, dtype=np.float32)
        out = np.empty((y.shape[0], self.M), dtype=np.uint8)
        use_bias = bool(np.any(self.bias))
        for m in range(self.M):
            sub = y[:, m * self.dsub:(m + 1) * self.dsub]
            out[:, m] = assign(sub, self.centroids[m], self.bias[m] if use_bias else None, block=block)
        return out

    def encode(self, x, *, rotated: bool = False) -> np.ndarray:
        """Stored codes uint8 (n, code_size) of float32 (n, d) vectors."""
        self._require()
        y = np.ascontiguousarray(x, dtype=np.float32) if rotated else self.rotate(np.asarray(x, dtype=np.float32))
        return pack_codes(self.encode_sub(y), self.nbits)

    def decode_sub(self, sub: np.ndarray) -> np.ndarray:
        """Reconstruction float32 (n, d) (rotated space) from sub-space codes uint8 (n, M)."""
        self._require()
        sub = np.asarray(sub)
        out = np.empty((sub.shape[0], self.d), dtype=np.float32)
        C = self.score_centroids()
        for m in range(self.M):
            out[:, m * self.dsub:(m + 1) * self.dsub] = C[m][sub[:, m]]
        return out

    def decode(self, codes: np.ndarray, *, rotated: bool = False) -> np.ndarray:
        """Reconstruction float32 (n, d) from stored codes, back in the original space unless ``rotated``."""
        y = self.decode_sub(unpack_codes(codes, self.M, self.nbits))
        if rotated or self.rotation is None:
            return y
        return np.ascontiguousarray(y @ self.rotation, dtype=np.float32)

    # ------------------------------------------------------------------ look-up tables
    def adc_tables(self, q: np.ndarray, metric: str = "l2") -> np.ndarray:
        """Sub-space look-up tables float32 (nq, M, K) of rotated queries float32 (nq, d).

        ``l2``: ``||q_m - C[m, k]||^2`` (summing over m gives the squared distance to the reconstruction);
        ``ip`` / ``cosine``: ``-<q_m, C[m, k]>``.
        """
        self._require()
        q = np.ascontiguousarray(q, dtype=np.float32)
        qs = q.reshape(q.shape[0], self.M, self.dsub)
        C = self.score_centroids()
        dots = np.einsum("qmj,mkj->qmk", qs, C, optimize=True).astype(np.float32)
        if metric == "l2":
            cn = np.einsum("mkj,mkj->mk", C, C)
            qn = np.einsum("qmj,qmj->qm", qs, qs)
            t = qn[:, :, None] - 2.0 * dots + cn[None]
            return np.ascontiguousarray(np.maximum(t, 0.0), dtype=np.float32)
        return np.ascontiguousarray(-dots, dtype=np.float32)

    def search(self, q: np.ndarray, codes: np.ndarray, k: int, metric: str = "l2", *, rotated: bool = False,
               mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive ADC search of float32 queries (nq, d) over stored ``codes`` (n, code_size).

        Returns ``(D float32 (nq, k), I int64 (nq, k))`` with row numbers, padded with ``+inf`` / ``-1``.
        """
        y = np.ascontiguousarray(q, dtype=np.float32) if rotated else self.rotate(np.asarray(q, np.float32))
        t = byte_tables(self.adc_tables(y, metric), self.nbits)
        m = np.zeros(0, dtype=np.bool_) if mask is None else np.ascontiguousarray(mask, dtype=np.bool_)
        return adc_scan_all(t, np.ascontiguousarray(codes, dtype=np.uint8), int(k), m)

    # ------------------------------------------------------------------ persistence helpers
    def settings(self) -> dict:
        return {"d": self.d, "M": self.M, "nbits": self.nbits, "mode": self.mode, "opq": self.opq, "eps": self.eps,
                "rounds": self.rounds, "sinkhorn_iters": self.sinkhorn_iters, "niter": self.niter,
                "max_train": self.max_train, "seed": self.seed}

    def arrays(self, prefix: str = "pq_") -> dict[str, np.ndarray]:
        self._require()
        out = {prefix + "centroids": self.centroids, prefix + "bias": self.bias}
        if self.rotation is not None:
            out[prefix + "rotation"] = self.rotation
        if self.tuned is not None:
            out[prefix + "tuned"] = self.tuned
        return out

    @classmethod
    def restore(cls, settings: dict, arrays: dict, prefix: str = "pq_") -> "ProductQuantizer":
        pq = cls(**settings)
        pq.centroids = np.ascontiguousarray(arrays[prefix + "centroids"], dtype=np.float32)
        pq.bias = np.ascontiguousarray(arrays[prefix + "bias"], dtype=np.float32)
        rot = arrays.get(prefix + "rotation")
        pq.rotation = None if rot is None else np.ascontiguousarray(rot, dtype=np.float32)
        tuned = arrays.get(prefix + "tuned")
        pq.tuned = None if tuned is None else np.ascontiguousarray(tuned, dtype=np.float32)
        return pq

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.centroids, self.bias, self.rotation, self.tuned) if a is not None)
