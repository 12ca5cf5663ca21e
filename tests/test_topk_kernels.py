"""Exact search through the numba heap kernels (index/_topk_kernels.py) against a numpy lexsort reference."""

import numpy as np
import pytest

from shoal.index import _topk_kernels as K
from shoal.index import flat
from shoal.index.flat import distance_keys, exact_search
from shoal.index.topk import topk_from_distances


def reference(q, x, k, metric, mask=None):
    """Top-k by a full sort on (key, column), excluded / +inf entries as padding."""
    dist = distance_keys(q, x, metric) if x.shape[0] else np.zeros((q.shape[0], 0), np.float32)
    if mask is not None:
        dist = np.where(mask, dist, np.inf).astype(np.float32)
    nq, n = dist.shape
    kk = min(k, n)
    cols = np.broadcast_to(np.arange(n), dist.shape)
    order = np.lexsort((cols, dist), axis=1)[:, :kk]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    vals = np.take_along_axis(dist, order, 1)
    D[:, :kk] = np.where(np.isfinite(vals), vals, np.inf)
    I[:, :kk] = np.where(np.isfinite(vals), order, -1)
    return D, I


@pytest.fixture(params=[(256, 1024), (7, 5)], ids=["default-blocks", "tiny-blocks"])
def blocks(request, monkeypatch):
    """Run each test with the default tiles and with tiny ones, so tile edges and heaps carried across tiles are hit."""
    for suffix in ("", "_MT"):
        monkeypatch.setattr(flat, "_QUERY_BLOCK" + suffix, request.param[0])
        monkeypatch.setattr(flat, "_BASE_BLOCK" + suffix, request.param[1])
    monkeypatch.setattr(flat, "_BASE_BLOCK_SMALL_D", request.param[1])


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("nq,n,d,k", [(1, 1, 3, 1), (5, 3, 4, 10), (40, 300, 7, 10), (33, 200, 16, 64),
                                      (3, 50, 5, 50), (4, 0, 3, 2), (0, 10, 3, 3)])
def test_exact_search_matches_reference_with_ties(metric, nq, n, d, k, blocks):
    rng = np.random.default_rng(nq * 1000 + n)
    q = rng.standard_normal((nq, d)).astype(np.float32)
    x = rng.integers(-2, 3, (n, d)).astype(np.float32)  # small integers: many exactly tied keys
    D, I = exact_search(q, x, k, metric)
    Dr, Ir = reference(q, x, k, metric)
    np.testing.assert_array_equal(I, Ir)
    np.testing.assert_allclose(D, Dr, rtol=1e-5, atol=1e-5)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == (nq, k)
    D2, I2 = topk_from_distances(distance_keys(q, x, metric) if n else np.zeros((nq, 0), np.float32), k)
    np.testing.assert_array_equal(I2, Ir)
    np.testing.assert_array_equal(D2, Dr)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_masks_and_labels(metric, blocks):
    rng = np.random.default_rng(7)
    q = rng.standard_normal((23, 6)).astype(np.float32)
    x = rng.standard_normal((120, 6)).astype(np.float32)
    labels = np.arange(120, dtype=np.int64) * 10 + 3
    per_query = rng.random((23, 120)) < 0.05  # some queries keep fewer than k rows: padding
    per_query[0] = False
    D, I = exact_search(q, x, 8, metric, labels=labels, allowed=per_query)
    Dr, Ir = reference(q, x, 8, metric, per_query)
    np.testing.assert_array_equal(I, np.where(Ir >= 0, labels[np.maximum(Ir, 0)], -1))
    np.testing.assert_allclose(D, Dr, rtol=1e-5, atol=1e-5)
    assert (I[0] == -1).all() and np.isinf(D[0]).all()
    shared = rng.random(120) < 0.3
    D, I = exact_search(q, x, 8, metric, labels=labels, allowed=shared)
    Dr, Ir = reference(q, x, 8, metric, np.broadcast_to(shared, (23, 120)))
    np.testing.assert_array_equal(I, np.where(Ir >= 0, labels[np.maximum(Ir, 0)], -1))


def test_topk_from_distances_treats_inf_and_nan_as_excluded():
    dist = np.array([[3.0, np.inf, 1.0, np.nan, 1.0], [np.inf] * 5], np.float32)
    D, I = topk_from_distances(dist, 4, labels=np.array([10, 11, 12, 13, 14]))
    np.testing.assert_array_equal(I, [[12, 14, 10, -1], [-1, -1, -1, -1]])
    np.testing.assert_array_equal(D, [[1, 1, 3, np.inf], [np.inf] * 4])


def test_serial_and_parallel_kernels_agree():
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 50, (64, 700)).astype(np.float32)
    a = K.init_heaps(64, 20)
    b = K.init_heaps(64, 20)
    for c in range(0, 700, 100):
        K.heap_update_keys(keys[:, c:c + 100], c, *a)
        K.heap_update_keys_serial(keys[:, c:c + 100], c, *b)
    K.sort_heaps(*a)
    K.sort_heaps_serial(*b)
    np.testing.assert_array_equal(a[1], b[1])
    order = np.lexsort((np.broadcast_to(np.arange(700), keys.shape), keys), axis=1)[:, :20]
    np.testing.assert_array_equal(a[1], order)


@pytest.mark.parametrize("m", [0, 3, 10, 257])
def test_topk_rows_equals_a_stable_sort(m):
    from shoal.index._topk_kernels import topk_rows

    rng = np.random.default_rng(m)
    k = 10
    keys = rng.integers(0, 20, size=(30, m)).astype(np.float32)  # many ties: the smaller column must win
    keys[rng.random(keys.shape) < 0.1] = np.inf
    D = np.empty((30, k), np.float32)
    I = np.empty((30, k), np.int64)
    topk_rows(keys, D, I)
    for i in range(30):
        order = [j for j in np.argsort(keys[i], kind="stable") if np.isfinite(keys[i, j])][:k]
        np.testing.assert_array_equal(I[i, :len(order)], order)
        np.testing.assert_array_equal(D[i, :len(order)], keys[i, order])
        assert (I[i, len(order):] == -1).all() and np.isinf(D[i, len(order):]).all()
