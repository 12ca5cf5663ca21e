"""k-means, Sinkhorn-balanced and capped k-means, and codeword-usage entropy."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.errors import InvalidArgument
from shoal.quantization.kmeans import (assign, balanced_kmeans, capped_assign, capped_kmeans, kmeans,
                                      kmeans_with_labels, sq_distances, usage_entropy)
from shoal.quantization.sinkhorn import imbalance, sinkhorn_assign


def skewed(n: int, d: int, seed: int, nclus: int = 40) -> np.ndarray:
    """Zipf-weighted Gaussian clusters: a few dense clusters hold most points, many sparse ones far apart."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, nclus + 1) ** 1.2
    w /= w.sum()
    centers = rng.normal(size=(nclus, d)) * 3
    lab = rng.choice(nclus, n, p=w)
    return (centers[lab] + rng.normal(size=(n, d)) * 0.5).astype(np.float32)


def test_kmeans_seeded_and_reproducible():
    x = skewed(3000, 4, 0)
    a = kmeans(x, 16, seed=3)
    b = kmeans(x, 16, seed=3)
    assert a.shape == (16, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # every point's nearest centroid is what assign() says
    lab = assign(x, a)
    np.testing.assert_array_equal(lab, np.argmin(sq_distances(x, a), axis=1))


def test_kmeans_errors():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(InvalidArgument, match="at least 16 training points"):
        kmeans(x, 16)
    with pytest.raises(InvalidArgument, match="positive integer"):
        kmeans(x, 0)


def test_sinkhorn_balances_a_batch_and_bias_reproduces_it():
    rng = np.random.default_rng(0)
    x = skewed(4096, 4, 1)
    c = x[rng.choice(4096, 16, replace=False)]
    dist = sq_distances(x, c)
    plain = np.argmin(dist, axis=1)
    codes, bias = sinkhorn_assign(dist, eps=0.2, n_iter=100)
    assert imbalance(codes, 16) < 0.5 * imbalance(plain, 16)
    assert usage_entropy(codes, 16)[0] >= 0.97 * 4
    np.testing.assert_array_equal(codes, np.argmin(dist - bias[None, :], axis=1))


@pytest.mark.parametrize("eps", [1e-4, 0.05, 5.0])
def test_sinkhorn_is_finite_for_any_temperature(eps):
    rng = np.random.default_rng(1)
    dist = (rng.random((512, 32)) * 1e6).astype(np.float32)   # large costs: exp(-D/eps) would underflow unshifted
    codes, bias = sinkhorn_assign(dist, eps=eps)
    assert codes.shape == (512,) and np.all((codes >= 0) & (codes < 32))
    assert np.all(np.isfinite(bias))


def test_sinkhorn_rejects_bad_eps():
    with pytest.raises(ValueError):
        sinkhorn_assign(np.zeros((4, 2)), eps=0.0)


def test_balanced_kmeans_reaches_uniform_usage_where_plain_kmeans_does_not():
    x = skewed(8000, 4, 2)
    K = 16
    plain = kmeans(x, K, seed=0)
    h_plain = usage_entropy(assign(x, plain), K)[0]
    cent, bias = balanced_kmeans(x, K, seed=0)
    h_bal = usage_entropy(assign(x, cent, bias), K)[0]
    assert h_plain < 0.97 * np.log2(K)
    assert h_bal >= 0.97 * np.log2(K)
    # held-out points from the same distribution are balanced too (the bias generalises)
    y = skewed(8000, 4, 2)[::-1][:4000] + np.float32(0.01)
    assert usage_entropy(assign(y, cent, bias), K)[0] >= 0.95 * np.log2(K)


def test_usage_entropy_bounds():
    assert usage_entropy(np.zeros((100, 2), np.uint8), 16).tolist() == [0.0, 0.0]
    codes = np.tile(np.arange(16, dtype=np.uint8), 10)[:, None]
    assert usage_entropy(codes, 16)[0] == pytest.approx(4.0)


def test_gpu_kmeans_and_ground_truth_match_the_cpu():
    """With faiss-gpu and a GPU (``make gpu``), k-means and bench ground truth run there and agree with the CPU;
    without one, asking for the GPU is an error that names the fix."""
    from bench.datasets import compute_groundtruth
    from shoal.errors import InvalidArgument
    from shoal.quantization.kmeans import gpu_available, kmeans

    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(c, 0.05, (300, 8)) for c in rng.uniform(-3, 3, (8, 8))]).astype(np.float32)
    q = rng.standard_normal((20, 8)).astype(np.float32)
    if not gpu_available():
        with pytest.raises(InvalidArgument, match="faiss-gpu-cu12"):
            compute_groundtruth(x, q, 5, "l2", gpu=True)
        return
    D0, I0 = compute_groundtruth(x, q, 5, "l2")
    D1, I1 = compute_groundtruth(x, q, 5, "l2", gpu=True)
    np.testing.assert_array_equal(I0, I1)  # the float64 re-rank makes both exact
    c_cpu = np.sort(kmeans(x, 8, seed=1), axis=0)
    c_gpu = np.sort(kmeans(x, 8, seed=1, gpu=True), axis=0)
    np.testing.assert_allclose(c_gpu, c_cpu, atol=0.05)  # eight well-separated blobs: same centres


def test_capped_kmeans_holds_every_cluster_to_its_capacity():
    x = skewed(4000, 8, 2)  # Zipf clusters: plain k-means gives the dense ones far more than n / k points
    k = 8
    plain = np.bincount(assign(x, kmeans(x, k, seed=0)), minlength=k)
    cap = np.full(k, int(np.ceil(4000 / k * 1.1)), dtype=np.int64)
    cent, lab = capped_kmeans(x, k, cap, niter=10, seed=0)
    sizes = np.bincount(lab, minlength=k)
    assert plain.max() > cap[0] and sizes.max() <= cap[0] and sizes.sum() == 4000
    np.testing.assert_array_equal(capped_kmeans(x, k, cap, niter=10, seed=0)[1], lab)  # seeded
    # the assignment alone: rows go to their nearest centroid while it has room
    d = sq_distances(x, cent)
    got = capped_assign(d, np.full(k, 500))
    assert np.bincount(got, minlength=k).max() <= 500
    assert np.mean(got == d.argmin(1)) > 0.5
    with pytest.raises(InvalidArgument):
        capped_kmeans(x[:3], k, cap)


def test_kmeans_with_labels_gives_the_centroids_of_kmeans_and_each_point_its_nearest():
    x = skewed(2000, 6, 4)
    cent, lab = kmeans_with_labels(x, 12, seed=5)
    np.testing.assert_array_equal(cent, kmeans(x, 12, seed=5))
    assert lab.dtype == np.int64 and lab.shape == (2000,)
    d = sq_distances(x, cent)
    # faiss's own distances may break near-ties differently from numpy's
    assert np.allclose(d[np.arange(2000), lab], d.min(axis=1), rtol=1e-4, atol=1e-4)
    c, l = kmeans_with_labels(x[:5], 5)
    np.testing.assert_array_equal(l, np.arange(5))
