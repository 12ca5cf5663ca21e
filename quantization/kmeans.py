"""k-means: plain (faiss ``Clustering``, seeded), balanced (Sinkhorn-constrained, after RepCONC) and capped (sizes
limited by a capacity).

Plain k-means minimises squared error and lets dense regions or outliers capture very unequal shares of the points.
Balanced k-means starts from plain k-means and then, for a few rounds, assigns mini-batches with
:func:`~shoal.quantization.sinkhorn.sinkhorn_assign` (uniform marginals) and moves each centroid to the mean of the
points assigned to it. It also learns one additive bias per centroid (the Sinkhorn dual) so that
``argmin_k ||x - c_k||^2 - bias_k`` reproduces the balanced assignment for single new points.

Capped k-means bounds every cluster's size outright (OSQ's partitions, which must each fit a function's memory):
Lloyd steps whose assignment, in the later iterations, gives each point its nearest centroid that still has room.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ._kmeans_kernels import balanced_assign
from .sinkhorn import sinkhorn_assign


def _check_training(x: np.ndarray, k: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise InvalidArgument(f"training vectors: expected shape (n, d), got {x.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgument(f"number of centroids must be a positive integer, got {k!r}")
    if x.shape[0] < k:
        raise InvalidArgument(f"k-means with {k} centroids needs at least {k} training points, got {x.shape[0]}")
    return x


def gpu_available() -> bool:
    """True when the installed faiss was built with GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def require_gpu(what: str) -> None:
    """Raise :class:`InvalidArgument` naming ``what`` when faiss sees no GPU (asked-for GPU work never falls back
    silently)."""
    if not gpu_available():
        import faiss

        build = "faiss-cpu is installed" if not hasattr(faiss, "get_num_gpus") else "faiss sees no GPU"
        raise InvalidArgument(f"{what}: {build}; on a machine with an NVIDIA GPU, swap in faiss-gpu-cu12 "
                              f"(`make gpu`)")


def kmeans(x, k: int, *, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256,
           gpu: bool = False) -> np.ndarray:
    """Plain k-means with faiss (seeded, reproducible for a given faiss build and thread count).

    Parameters
    ----------
    x : float32 (n, d)
    k : int
        Number of centroids; ``n >= k`` is required.
    niter : int
    seed : int
    max_points_per_centroid : int
        faiss subsamples to ``k * max_points_per_centroid`` points (deterministically from ``seed``).
    gpu : bool
        Run on the GPU when faiss sees one; uses the CPU otherwise.

    Returns
    -------
    float32 (k, d)
    """
    return _faiss_kmeans(_check_training(x, k), k, niter, seed, max_points_per_centroid, gpu)[0]


def kmeans_with_labels(x, k: int, *, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256
                       ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`kmeans` and each training point's nearest centroid: ``(float32 (k, d), int64 (n,))``.

    The labels come from the faiss index that trained, not from :func:`assign`, as Curator's tree always took them
    (its tree is bit-identical to the one its own faiss.Kmeans call built, checked on 40,000 clustered points): a loop
    of small clusterings then never alternates faiss's OpenMP threads with numpy's BLAS threads, which spin and
    contend on a busy 2-core machine.
    """
    x = _check_training(x, k)
    cent, quantizer = _faiss_kmeans(x, k, niter, seed, max_points_per_centroid, False)
    if quantizer is None:
        return cent, np.arange(k, dtype=np.int64)
    return cent, quantizer.search(x, 1)[1][:, 0].astype(np.int64)


def _faiss_kmeans(x: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int, gpu: bool):
    """Centroids float32 (k, d) of checked ``x`` and the faiss index holding them (None when ``k == n``)."""
    import faiss

    n, d = x.shape
    if k == n:
        return x.copy(), None
    cp = faiss.ClusteringParameters()
    cp.niter = int(niter)
    cp.seed = int(seed)
    cp.max_points_per_centroid = int(max_points_per_centroid)
    cp.verbose = False
    cp.min_points_per_centroid = 1  # only a warning threshold in faiss; small samples are fine for us
    clus = faiss.Clustering(d, int(k), cp)
    if gpu and gpu_available():
        res = faiss.StandardGpuResources()
        quantizer = faiss.GpuIndexFlatL2(res, d)
    else:
        quantizer = faiss.IndexFlatL2(d)
    clus.train(x, quantizer)
    return faiss.vector_to_array(clus.centroids).reshape(k, d).astype(np.float32), quantizer


def sq_distances(x: np.ndarray, centroids: np.ndarray, centroid_norms: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 distances float32 (n, k) between ``x`` (n, d) and ``centroids`` (k, d), via BLAS.

    ``centroid_norms`` (k,), the centroids' squared norms, may be passed by callers that keep them (for a few
    queries against many centroids computing them costs as much as the product).
    """
    d = x @ centroids.T
    d *= -2.0
    d += np.einsum("ij,ij->i", x, x)[:, None]
    d += (np.einsum("ij,ij->i", centroids, centroids) if centroid_norms is None else centroid_norms)[None, :]
    np.maximum(d, 0.0, out=d)
    return d.astype(np.float32, copy=False)


def assign(x, centroids: np.ndarray, bias: np.ndarray | None = None, *, block: int = 16384) -> np.ndarray:
    """Nearest centroid of each row (``argmin ||x - c||^2 - bias``), int64 (n,), computed in blocks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], block):
        dist = sq_distances(x[s:s + block], centroids)
        if bias is not None:
            dist -= bias[None, :].astype(np.float32)
        out[s:s + block] = np.argmin(dist, axis=1)
    return out


def balanced_kmeans(x, k: int, *, niter: int = 20, rounds: int = 4, eps: float = 0.2, sinkhorn_iters: int = 30,
                    batch_size: int = 8192, seed: int = 0, max_points_per_centroid: int = 256, gpu: bool = False,
                    init: np.ndarray | None = None, max_balance_points: int = 32768
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Balanced k-means: every centroid receives about ``n / k`` points in training (RepCONC's constraint).

    Parameters
    ----------
    x : float32 (n, d)
    k : int
    niter : int
        Iterations of the plain k-means that initialises the centroids (ignored when ``init`` is given).
    rounds : int
        Sinkhorn-assign / centroid-update rounds.
    eps : float
        Sinkhorn temperature (in units of the mean distance to the nearest centroid).
    sinkhorn_iters : int
    batch_size : int
        Points per Sinkhorn batch (RepCONC used 2k-49k); a batch of at least ``4 k`` points is used.
    seed : int
    init : float32 (k, d), optional
        Starting centroids.
    max_balance_points : int
        The Sinkhorn rounds use a seeded sample of at most this many points (at least ``4 k`` are kept).

    Returns
    -------
    centroids : float32 (k, d)
    bias : float32 (k,)
        Per-centroid bias measured for the final centroids (mean over batches): ``assign(x, centroids, bias)`` gives
        the balanced assignment for new points.
    """
    x = _check_training(x, k)
    n = x.shape[0]
    if init is None:
        cent = kmeans(x, k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid, gpu=gpu)
    else:
        cent = np.array(init, dtype=np.float32)
    bias = np.zeros(k, dtype=np.float64)
    if k == 1 or rounds <= 0:
        return cent, bias.astype(np.float32)
    rng = np.random.default_rng(seed)
    keep = max(max_balance_points, 4 * k)
    if n > keep:
        # Sinkhorn costs O(n k) per iteration: balance on a seeded sample (k-means above saw all points)
        x = x[np.sort(rng.choice(n, keep, replace=False))]
        n = keep
    bs = min(n, max(batch_size, 4 * k))
    starts = list(range(0, max(n - bs, 0) + 1, bs)) if n >= bs else [0]
    for r in range(rounds + 1):
        # ``rounds`` rounds of assign + update, then one pass that only measures the bias of the final centroids
        last = r == rounds
        perm = rng.permutation(n)
        sums = np.zeros((k, x.shape[1]), dtype=np.float64)
        counts = np.zeros(k, dtype=np.int64)
        bias_acc = np.zeros(k, dtype=np.float64)
        for i, s in enumerate(starts):
            # the last partial batch joins the previous one so no batch is too small to balance
            xb = x[perm[s:n if i == len(starts) - 1 else s + bs]]
            # warm start from the previous batch: later batches converge in a few iterations
            codes, bias = sinkhorn_assign(sq_distances(xb, cent), eps=eps, init_bias=bias,
                                          n_iter=sinkhorn_iters * (2 if last else 1), tol=1e-3 if last else 1e-2)
            bias_acc += bias
            if not last:
                np.add.at(sums, codes, xb)
                counts += np.bincount(codes, minlength=k)
        bias = bias_acc / len(starts)
        if not last:
            filled = counts > 0
            cent[filled] = (sums[filled] / counts[filled, None]).astype(np.float32)
    return cent, bias.astype(np.float32)


def capped_kmeans(x, k: int, capacity: np.ndarray, *, niter: int = 10, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """k-means whose clusters hold at most ``capacity`` points each.

    Starts from ``k`` seeded random points; the first half of the ``niter`` Lloyd iterations assign each point to its
    nearest centroid, the later ones to its nearest centroid with room left (:func:`capped_assign`, points that
    lose most by moving choose first). An empty cluster restarts from a random point.

    Parameters
    ----------
    x : float32 (n, d)
    k : int
    capacity : int64 (k,)
        Most points per cluster; ``sum(capacity) >= n``.
    niter : int
    seed : int

    Returns
    -------
    centroids : float32 (k, d)
    assignment : int64 (n,)
    """
    x = _check_training(x, k)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(n, k, replace=False)].copy()
    assign = np.zeros(n, dtype=np.int64)
    for it in range(max(1, int(niter))):
        dist = sq_distances(x, cent)
        # plain Lloyd steps first, the size-limited assignment for the last ones
        assign = capped_assign(dist, capacity) if it >= niter // 2 else dist.argmin(1)
        for p in range(k):
            sel = assign == p
            if sel.any():
                cent[p] = x[sel].mean(axis=0)
            else:
                cent[p] = x[rng.integers(n)]
    return cent, assign


def capped_assign(dist: np.ndarray, capacity) -> np.ndarray:
    """Each row's nearest centroid that still has room, int64 (n,), for ``dist`` float32 (n, k) and ``capacity``
    (k,) with ``sum(capacity) >= n`` (greedy: rows with the largest gap between their two nearest choose first)."""
    return balanced_assign(dist, np.asarray(capacity, dtype=np.int64))


def usage_entropy(codes: np.ndarray, k: int) -> np.ndarray:
    """Codeword-usage entropy in bits of each column of ``codes`` (n, m) over ``k`` codewords; max is ``log2 k``.

    Returns
    -------
    float64 (m,)
    """
    codes = np.asarray(codes)
    if codes.ndim == 1:
        codes = codes[:, None]
    out = np.zeros(codes.shape[1])
    for j in range(codes.shape[1]):
        counts = np.bincount(codes[:, j].astype(np.int64), minlength=k).astype(np.float64)
        p = counts[counts > 0] / counts.sum() if counts.sum() else np.ones(1)
        out[j] = float(-(p * np.log2(p)).sum())
    return out
