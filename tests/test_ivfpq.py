"""IVFPQIndex: recall with re-ranking, factory strings, allowed masks, remove, save/load (mmap), tuning, errors."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.errors import FailedPrecondition, InvalidArgument
from shoal.index import describe, index_factory, load_index
from shoal.index.flat import exact_search
from shoal.storage import LocalStore


def clustered(n: int, d: int, seed: int, nclus: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(size=(nclus, d)) * 2
    return (centers[rng.integers(0, nclus, n)] + rng.normal(size=(n, d))).astype(np.float32)


N, D = 6000, 32
X = clustered(N, D, 0)
Q = clustered(300, D, 1)
IDS = np.arange(N, dtype=np.int64) * 3 + 7


def recall(I, gt):
    return float(np.mean([np.intersect1d(a[a >= 0], b).size / b.size for a, b in zip(I, gt)]))


@pytest.fixture(scope="module")
def built():
    """One trained and filled index per configuration (training dominates the file's run time)."""
    out = {}
    for spec, metric in [("IVF32,PQ8x8,Refine", "l2"), ("IVF32(balanced),PQ16x4(balanced,residual=0),Refine", "ip"),
                         ("IVF32,PQ8x8", "cosine")]:
        idx = index_factory(D, spec, metric)
        idx.train(X)
        idx.add(X, IDS)
        out[(spec, metric)] = idx
    return out


@pytest.mark.parametrize("key", [("IVF32,PQ8x8,Refine", "l2"),
                                 ("IVF32(balanced),PQ16x4(balanced,residual=0),Refine", "ip")])
def test_recall_with_reranking(built, key):
    idx = built[key]
    gt = exact_search(idx.prepare(Q), idx.prepare(X), 10, key[1], labels=IDS)[1]
    D_, I = idx.search(Q, 10, params={"nprobe": 8, "rerank": 100})
    assert recall(I, gt) >= 0.9
    assert D_.dtype == np.float32 and I.dtype == np.int64 and np.all(np.diff(D_, axis=1) >= 0)
    # without re-ranking the codes alone are worse, and more probes never hurt much
    _, I0 = idx.search(Q, 10, params={"nprobe": 8, "rerank": 0})
    assert recall(I0, gt) < recall(I, gt)


def test_exact_keys_after_rerank_match_flat(built):
    idx = built[("IVF32,PQ8x8,Refine", "l2")]
    D_, I = idx.search(Q[:20], 5, params={"nprobe": 32, "rerank": 200})
    rows = np.searchsorted(IDS, I)
    exact = ((Q[:20, None, :] - X[rows]) ** 2).sum(-1)
    np.testing.assert_allclose(D_, exact, rtol=1e-4, atol=1e-3)


def test_search_with_stats_counts_this_calls_codes(built):
    """Per-call counts come back with the results (nothing kept on the shared index): the 8-bit path scores every
    row of each probed list, so probing all lists scores every row once, and the results equal search()'s."""
    idx = built[("IVF32,PQ8x8,Refine", "l2")]
    D1, I1, st1 = idx.search_with_stats(Q[:40], 10, params={"nprobe": 4})
    D_, I = idx.search(Q[:40], 10, params={"nprobe": 4})
    np.testing.assert_array_equal(I1, I)
    np.testing.assert_array_equal(D1, D_)
    assert st1["nscanned"].shape == (40,) and st1["ndis"] == int(st1["nscanned"].sum()) > 0
    _, _, sta = idx.search_with_stats(Q[:40], 10, params={"nprobe": 32})
    np.testing.assert_array_equal(sta["nscanned"], np.full(40, idx.ntotal))
    assert idx.search_with_stats(Q[:0], 10)[2]["ndis"] == 0
    assert not hasattr(idx, "last_nscanned")


def test_collection_stats_carry_the_index_count(tmp_path):
    from shoal.engine import Database

    db = Database(tmp_path / "db")
    col = db.create_collection("c", dim=D, index="IVF16,PQ8x8,Refine", exact_threshold=0)
    col.upsert(IDS[:3000], X[:3000])
    col.build()
    res = col.search(Q[:5], k=10, params={"nprobe": 16})
    assert res.stats.plan == "index(IVFPQ)" and res.stats.ndis == 5 * 3000


def test_factory_strings_round_trip():
    for spec in ["IVF1024,PQ16x8", "IVF1024(balanced),PQ16x8(balanced,residual=0)", "OPQ16,IVF1024,PQ16x4(balanced),Refine",
                 "IVF64,PQ8x4(residual=0,rounds=2)"]:
        idx = index_factory(32, spec)
        assert describe(idx) == spec
        assert describe(index_factory(32, describe(idx))) == spec
    assert describe(index_factory(32, "IVF8,PQ8")) == "IVF8,PQ8x8"


@pytest.mark.parametrize("spec,match", [
    ("IVF16,PQ5x8", "does not divide"),
    ("IVF16,PQ8x6", "nbits must be 4 or 8"),
    ("IVF16", "needs a code stage"),
    ("IVF16,PQ8x8(fast)", "unknown setting 'fast'"),
    ("PQ8x8,IVF16", "order"),
    ("OPQ5,IVF16,PQ8x8", "do not divide"),
    ("IVF16,PQ8x8,HNSW", "cannot be combined"),
    ("IVF16,PQ8x8,Flat", "several index kinds"),
])
def test_bad_factory_strings(spec, match):
    with pytest.raises(InvalidArgument, match=match):
        index_factory(32, spec)


def test_untrained_and_training_errors():
    idx = index_factory(D, "IVF64,PQ8x8")
    with pytest.raises(FailedPrecondition, match="not trained"):
        idx.search(Q, 10)
    with pytest.raises(FailedPrecondition, match="not trained"):
        idx.add(X[:10], IDS[:10])
    with pytest.raises(InvalidArgument, match="64 lists need at least 64 training vectors"):
        idx.train(X[:50])
    with pytest.raises(InvalidArgument, match="need at least 256 training vectors"):
        index_factory(D, "IVF4,PQ8x8").train(X[:100])
    trained = index_factory(D, "IVF8,PQ8x4")
    trained.train(X[:1000])
    trained.add(X[:100], IDS[:100])
    with pytest.raises(InvalidArgument, match="needs stored vectors"):
        trained.search(Q, 5, params={"rerank": 50})
    with pytest.raises(InvalidArgument, match="unknown search parameter"):
        trained.search(Q, 5, params={"nprobes": 2})
    with pytest.raises(InvalidArgument, match="nprobe must be"):
        trained.search(Q, 5, params={"nprobe": 0})


def test_allowed_masks_and_remove_are_honoured(built):
    idx = built[("IVF32,PQ8x8", "cosine")]
    rng = np.random.default_rng(5)
    allowed = rng.random(N) < 0.1
    _, I = idx.search(Q, 10, params={"nprobe": 32}, allowed=allowed)
    # masks are over internal rows; row_ids maps rows to user ids (the index orders rows by list)
    assert np.all(np.isin(I[I >= 0], idx.row_ids[allowed]))
    per_query = rng.random((Q.shape[0], N)) < 0.05
    _, I = idx.search(Q, 10, params={"nprobe": 32}, allowed=per_query)
    for row, m in zip(I, per_query):
        assert np.all(np.isin(row[row >= 0], idx.row_ids[m]))
    # a mask that allows nothing pads
    D_, I = idx.search(Q[:3], 4, allowed=np.zeros(N, bool))
    assert np.all(I == -1) and np.all(np.isinf(D_))


def test_remove_then_search_never_returns_removed_ids():
    idx = index_factory(D, "IVF16,PQ8x8,Refine")
    idx.train(X[:3000])
    idx.add(X[:3000], IDS[:3000])
    _, before = idx.search(Q, 10, params={"nprobe": 16})
    gone = np.unique(before[:, :5])
    assert idx.remove(gone) == gone.size
    assert idx.nlive == 3000 - gone.size
    for rerank in (0, 50):
        _, I = idx.search(Q, 10, params={"nprobe": 16, "rerank": rerank})
        assert not np.isin(I, gone).any()
    # add after remove: a second segment, searched together with the first
    idx.add(X[3000:4000], IDS[3000:4000])
    _, I = idx.search(X[3000:3010], 1, params={"nprobe": 16, "rerank": 20})
    assert np.array_equal(I[:, 0], IDS[3000:3010])


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_search_bit_identical(tmp_path, mmap):
    idx = index_factory(D, "OPQ8,IVF16(balanced),PQ8x8(balanced),Refine" if mmap else "IVF16,PQ16x4,Refine", "l2")
    idx.train(X[:2000])
    idx.add(X[:2000], IDS[:2000])
    idx.add(X[2000:3000], IDS[2000:3000])
    idx.remove(IDS[:50])
    store = LocalStore(str(tmp_path))
    idx.save(store, "ix")
    back = load_index(store, "ix", mmap=mmap)
    assert describe(back) == describe(idx)
    for params in ({"nprobe": 4, "rerank": 0}, {"nprobe": 16, "rerank": 40}):
        a = idx.search(Q, 10, params=params)
        b = back.search(Q, 10, params=params)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    if mmap:
        assert back.mapped_bytes() == 3000 * D * 4
        core = back.codes.nbytes + back.row_ids.nbytes + back.coarse.nbytes + back.pq.centroids.nbytes
        assert back.memory_bytes() <= 1.2 * core + 3000 + 5000  # + tombstones, offsets, bias, rotation
    else:
        assert back.mapped_bytes() == 0


@pytest.mark.parametrize("spec", ["IVF16,PQ8x8,Refine", "IVF16,PQ16x4,Refine"])
def test_precomputed_tables_give_the_direct_path_results(tmp_path, spec):
    idx = index_factory(D, spec, "l2")
    idx.train(X[:3000])
    idx.add(X[:2000], IDS[:2000])
    idx.add(X[2000:3000], IDS[2000:3000])  # two segments
    idx.remove(IDS[:40])
    pre = index_factory(D, spec.replace(",Refine", "(precomputed),Refine"), "l2")
    assert describe(pre) == spec.replace(",Refine", "(precomputed),Refine")
    pre.train(X[:3000])  # training is seeded: same centroids and codes
    pre.add(X[:2000], IDS[:2000])
    pre.add(X[2000:3000], IDS[2000:3000])
    pre.remove(IDS[:40])
    pre.compact()  # the loaded copy below holds exactly its rows: compare with the built one shrunk to fit
    idx.compact()
    assert np.array_equal(pre.codes, idx.codes)
    table = pre.list_table()
    assert table.shape == (16, pre.pq.M, pre.pq.K) and idx.list_table() is None
    assert pre.memory_bytes() == idx.memory_bytes() + table.nbytes
    allowed = np.random.default_rng(3).random(idx.ntotal) < 0.5
    for params, mask in [({"nprobe": 1, "rerank": 0}, None), ({"nprobe": 4, "rerank": 0}, None),
                         ({"nprobe": 4, "rerank": 30}, None), ({"nprobe": 16, "rerank": 0}, allowed)]:
        a = idx.search(Q[:50], 10, params=params, allowed=mask)
        b = pre.search(Q[:50], 10, params=params, allowed=mask)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
    # one query at a time uses the per-call terms of just its probed lists: still the same keys
    one = idx.search(Q[:1], 10, params={"nprobe": 3, "rerank": 0})
    np.testing.assert_array_equal(one[0], pre.search(Q[:1], 10, params={"nprobe": 3, "rerank": 0})[0])
    # the table is not stored: rebuilt on load, identical, and switchable on a loaded plain index
    store = LocalStore(str(tmp_path))
    pre.save(store, "pre")
    idx.save(store, "plain")
    back = load_index(store, "pre", mmap=True)
    assert back.precomputed and np.array_equal(back.list_table(), table)
    assert back.memory_bytes() == pre.memory_bytes() - pre.vectors.nbytes
    plain = load_index(store, "plain")
    plain.set_precomputed(True)
    for other in (back, plain):
        np.testing.assert_array_equal(other.search(Q, 10, params={"nprobe": 4})[0],
                                      pre.search(Q, 10, params={"nprobe": 4})[0])
    plain.set_precomputed(False)
    assert plain.list_table() is None and plain.memory_bytes() == idx.memory_bytes()


def test_precomputed_tables_only_for_residual_l2():
    for spec, metric in [("IVF16,PQ8x8(precomputed)", "ip"), ("IVF16,PQ8x8(precomputed,residual=0)", "l2")]:
        with pytest.raises(InvalidArgument, match="residual codes with the l2 metric only"):
            index_factory(D, spec, metric)


def _ip_recall_of_codes(idx, x, q):
    gt = exact_search(q, x, 10, "ip")[1]
    return recall(idx.search(q, 10, params={"nprobe": idx.nlist})[1], gt)


def test_tuning_raises_recall_when_queries_differ_from_documents():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 16)).astype(np.float32)
    dirs = rng.normal(size=(4, 16))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)

    def queries(m):
        return (dirs[rng.integers(0, 4, m)] * 3 + 0.3 * rng.normal(size=(m, 16))).astype(np.float32)

    qtr, qte = queries(500), queries(300)
    idx = index_factory(16, "IVF4,PQ4x4(residual=0)", "ip")
    idx.train(x)
    idx.add(x, np.arange(4000))
    before = _ip_recall_of_codes(idx, x, qte)
    report = idx.tune(qtr, exact_search(qtr, x, 10, "ip")[1], epochs=5, nprobe=4)
    after = _ip_recall_of_codes(idx, x, qte)
    assert report.best_epoch > 0 and report.recall_after > report.recall_before
    assert after >= before + 0.05


def test_tuning_without_labels_never_lowers_recall(tmp_path):
    x = clustered(3000, 16, 3)
    qte = clustered(300, 16, 4)
    for spec in ("IVF8,PQ4x8", "IVF8,PQ8x4(residual=0)"):
        plain = index_factory(16, spec, "ip")
        plain.train(x)
        tuned = index_factory(16, spec, "ip")
        tuned.train(x, tune={"epochs": 3})
        assert tuned.tune_report is not None
        for idx in (plain, tuned):
            idx.add(x, np.arange(3000))
        r_plain, r_tuned = _ip_recall_of_codes(plain, x, qte), _ip_recall_of_codes(tuned, x, qte)
        assert r_tuned >= r_plain - 0.005, (spec, r_plain, r_tuned)
        # tuned centroids persist
        tuned.save(LocalStore(str(tmp_path)), spec)
        back = load_index(LocalStore(str(tmp_path)), spec)
        np.testing.assert_array_equal(back.search(qte, 5)[1], tuned.search(qte, 5)[1])


def test_train_with_labelled_queries_and_tune_api_errors():
    x = clustered(3000, 16, 5)
    q = clustered(100, 16, 6)
    pos = exact_search(q, x, 10, "l2")[1]
    idx = index_factory(16, "IVF8,PQ4x8", "l2")
    idx.train(x, train_queries=q, train_positives=pos, tune={"epochs": 2})
    assert idx.tune_report is not None and idx.tune_report.n_train_queries + idx.tune_report.n_val_queries == 100
    with pytest.raises(InvalidArgument, match="need train_positives"):
        idx.train(x, train_queries=q)
    idx.add(x, np.arange(3000))
    with pytest.raises(FailedPrecondition, match="needs stored vectors"):
        idx.tune(q)
    with pytest.raises(InvalidArgument, match="unknown tuning setting"):
        idx.tune(q, pos, speed=3)
