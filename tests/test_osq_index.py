"""OSQIndex: filtered search equals exact filtered search at maximal settings, min(k, matches) in one pass,
results always satisfy the filter, factory strings, tombstones, save -> load -> search (local and S3), and the
serverless split (level 0 on a level-0-only load, levels 1-3 on single loaded partitions)."""

from __future__ import annotations

import numpy as np
import pytest

from shoal import filters
from shoal.errors import InvalidArgument
from shoal.index.factory import describe, index_factory, load_index
from shoal.index.osq import OSQIndex
from shoal.index.topk import merge_topk
from shoal.storage import LocalStore, S3Store

N, DIM = 3000, 16
MAX = {"nprobe": 64, "keep_frac": 1.0, "keep_min": 10**6, "rerank": 10**6, "mode": "multilevel"}
_WORDS = ["red", "green", "blue"]


def make_data(seed=0, n=N, d=DIM):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(12, d)) * 4
    x = (c[rng.integers(12, size=n)] + rng.normal(size=(n, d))).astype(np.float32)
    q = (c[rng.integers(12, size=25)] + rng.normal(size=(25, d))).astype(np.float32)
    price = rng.uniform(0, 100, n)
    price[rng.random(n) < 0.05] = np.nan
    cols = {"price": filters.NumericColumn(price),
            "year": filters.NumericColumn(rng.integers(1990, 2025, n).astype(np.int64)),
            "color": filters.KeywordColumn(rng.integers(-1, 3, n).astype(np.int32), _WORDS),
            "tags": filters.TagsColumn.from_lists([list(rng.choice(["a", "b", "c"], rng.integers(0, 3), replace=False))
                                                   for _ in range(n)])}
    return x, q, cols


def build(metric="l2", seed=0, **settings):
    x, q, cols = make_data(seed)
    settings = {"partitions": 5, "attr_bits": 4, **settings}
    index = OSQIndex(DIM, metric, **settings)
    index.train(x)
    ids = np.arange(N, dtype=np.int64) * 3 + 7
    index.add(x, ids, attrs=cols)
    return index, x, q, cols, ids


def exact_filtered(x, q, ids, mask, k, metric):
    xs, qs = x.astype(np.float64), q.astype(np.float64)
    if metric == "cosine":
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        qs = qs / np.linalg.norm(qs, axis=1, keepdims=True)
    keys = ((qs[:, None, :] - xs[None]) ** 2).sum(-1) if metric == "l2" else -(qs @ xs.T)
    keys[:, ~mask] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    kd = np.take_along_axis(keys, order, axis=1)
    return kd, np.where(np.isfinite(kd), ids[order], -1)


FILTERS = [
    None,
    'price < 30',
    'price between 20 and 60 and color in ("red", "blue")',
    'not (price >= 50) or tags contains "a"',
    'year > 2010 and not color = "green"',
    'year = 1999 and price < 10',            # a handful of matches
    'price > 1000',                           # none
]


@pytest.fixture(scope="module", params=["l2", "ip", "cosine"])
def built(request):
    return build(request.param)


@pytest.mark.parametrize("text", FILTERS)
@pytest.mark.parametrize("level2", ["bounds", "exact"])
def test_maximal_settings_equal_exact_filtered_search(built, text, level2):
    index, x, q, cols, ids = built
    expr = None if text is None else filters.parse(text)
    mask = filters.evaluate(expr, cols, N)
    k = 10
    D, I = index.search(q, k, filter=expr, params={**MAX, "level2": level2})
    kd, ki = exact_filtered(x, q, ids, mask, k, index.metric)
    assert np.array_equal(I >= 0, ki >= 0)  # min(k, matches) results
    np.testing.assert_allclose(D[I >= 0], kd[ki >= 0], rtol=1e-4, atol=1e-3)
    # ids equal up to ties in the distance
    for i in range(len(q)):
        if not np.array_equal(I[i], ki[i]):
            assert set(I[i]) ^ set(ki[i]) <= set(I[i][np.isclose(D[i], D[i][I[i] >= 0].max())]) | \
                set(ki[i][np.isclose(kd[i], kd[i][ki[i] >= 0].max())])


@pytest.mark.parametrize("text", FILTERS)
@pytest.mark.parametrize("mode", ["auto", "multilevel", "exact"])
def test_default_settings_satisfy_filter_and_never_short(built, text, mode):
    index, x, q, cols, ids = built
    expr = None if text is None else filters.parse(text)
    mask = filters.evaluate(expr, cols, N)
    D, I = index.search(q, 10, filter=expr, params={"mode": mode, "level2": "bounds" if mode == "auto" else "auto"})
    got = I[I >= 0]
    assert np.isin(got, ids[mask]).all()
    assert np.all((I >= 0).sum(1) == min(10, int(mask.sum())))
    valid = I[:, 1:] >= 0
    assert np.all(D[:, 1:][valid] >= D[:, :-1][valid])
    _, ki = exact_filtered(x, q, ids, mask, 10, index.metric)
    hits = sum(len(set(I[i][I[i] >= 0]) & set(ki[i][ki[i] >= 0])) for i in range(len(q)))
    assert hits >= 0.9 * (ki >= 0).sum()


def test_fewer_sure_than_k_resolves_maybe_rows():
    index, x, q, cols, ids = build("l2", attr_bits=1)  # two cells: almost everything is maybe
    expr = filters.parse("price between 41.5 and 43")
    sure, maybe = index.estimate_matches(expr)
    mask = filters.evaluate(expr, cols, N)
    assert sure < 10 and sure + maybe >= mask.sum() > 10
    D, I, st = index.search_with_stats(q, 10, filter=expr, params={"mode": "multilevel"})
    assert st["resolved"]
    assert np.all((I >= 0).sum(1) == 10) and np.isin(I, ids[mask]).all()


def test_planner_scans_few_matches_exactly_without_rotating():
    index, x, q, cols, ids = build("cosine")
    expr = filters.parse("year = 1999 and price < 10")  # a handful of matches
    D, I, st = index.search_with_stats(q, 10, filter=expr)
    assert st["plan"] == "exact"
    mask = filters.evaluate(expr, cols, N)
    kd, ki = exact_filtered(x, q, ids, mask, 10, "cosine")
    assert np.array_equal(I >= 0, ki >= 0) and np.isin(I[I >= 0], ids[mask]).all()
    np.testing.assert_allclose(D[I >= 0], kd[ki >= 0], rtol=1e-4, atol=1e-4)
    # the exact plan reads the unrotated copy: a broken rotation does not change its answer
    R = index.rotation
    index.rotation = np.zeros_like(R)
    try:
        assert np.array_equal(index.search(q, 10, filter=expr)[1], I)
    finally:
        index.rotation = R
    # a positive exact_below replaces the cost model by a plain threshold
    assert index.search_with_stats(q, 10, filter=expr, params={"exact_below": 1e-9})[2]["plan"] == "multilevel"
    # the allocator's level 0 (no exact numbers loaded) plans on the codes and rotates for its processors
    lv = index.level0(q, 10, {"mode": "exact"}, filter=expr)
    assert lv.plan == "exact" and lv.qrot is not None and np.allclose(lv.qrot, index.rotate(q), atol=1e-5)


def test_allowed_masks_and_remove():
    index, x, q, cols, ids = build("l2")
    expr = filters.parse("price < 50")
    allowed = np.random.default_rng(1).random(N) < 0.5
    mask = filters.evaluate(expr, cols, N) & allowed
    D, I = index.search(q, 10, filter=expr, allowed=allowed, params=MAX)
    _, ki = exact_filtered(x, q, ids, mask, 10, "l2")
    assert np.array_equal(np.sort(I, 1), np.sort(ki, 1))
    per_query = np.stack([allowed if i % 2 else ~allowed for i in range(len(q))])
    D, I = index.search(q, 10, filter=expr, allowed=per_query, params=MAX)
    for i in range(len(q)):
        m = filters.evaluate(expr, cols, N) & per_query[i]
        assert np.isin(I[i][I[i] >= 0], ids[m]).all() and (I[i] >= 0).sum() == min(10, m.sum())
    # warm the remembered live mask with an exact-plan search first: a remove must invalidate it
    index.search(q, 10, filter=expr, params={"mode": "exact"})
    gone = I[0, :5]
    assert index.remove(gone) == 5
    D2, I2 = index.search(q, 10, filter=expr, params={"mode": "multilevel"})
    assert not np.isin(I2, gone).any()
    for mode in ("exact", "auto"):
        _, I3 = index.search(q, 10, filter=expr, params={"mode": mode})
        assert not np.isin(I3, gone).any()
        _, I4 = index.search(q, 10, params={"mode": mode})
        assert not np.isin(I4, gone).any()
    assert index.estimate_matches(None)[0] == N - 5
    # and an add (a new tombstone array) is seen too
    new_id = int(ids.max()) + 1
    index.add(q[:1], np.array([new_id]), attrs={name: col.take(np.array([0])) for name, col in cols.items()})
    _, I5 = index.search(q[:1], 1, params={"mode": "exact"})
    assert I5[0, 0] == new_id


def test_factory_and_describe():
    index = index_factory(DIM, "OSQ(partitions=4,bits=64)", "l2")
    assert isinstance(index, OSQIndex) and index.settings["partitions"] == 4 and index.budget == 64
    again = index_factory(DIM, describe(index), "l2")
    assert describe(again) == describe(index)
    with pytest.raises(InvalidArgument, match="valid settings"):
        index_factory(DIM, "OSQ(parts=4)", "l2")
    with pytest.raises(InvalidArgument):
        index_factory(DIM, "OSQ16", "l2")
    with pytest.raises(InvalidArgument, match="unknown search parameter"):
        build("l2")[0].search(np.zeros((1, DIM), np.float32), 3, params={"bogus": 1})


def test_bad_filters_and_bytes_per_vector():
    index, x, q, cols, ids = build("l2", bits=64)
    for _ in range(2):  # valid predicates are remembered; a bad one is refused every time, also after good ones
        with pytest.raises(InvalidArgument, match="color"):
            index.search(q, 5, filter=filters.parse('color < 3'))
        index.search(q[:2], 5, filter=filters.parse('color = "red"'))
    with pytest.raises(InvalidArgument, match="year"):
        index.search(q, 5, filter=filters.parse('year = "red"'))
    # an attribute the index has never seen is missing everywhere, so its predicates are false
    _, I = index.search(q, 5, filter=filters.parse("unknown_attr < 3"))
    assert (I < 0).all()
    _, I = index.search(q[:2], 5, filter='price < 50 and color = "red"')  # text form accepted
    assert (I >= 0).all()
    assert index.memory_bytes() > index.code_bytes_per_vector() * N
    # codes + binary + quantized numeric attributes, without the re-rank vectors: <= 1/4 of float32
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2000, 32)).astype(np.float32)
    small = OSQIndex(32, "l2", partitions=2)
    small.train(x)
    small.add(x, np.arange(2000), attrs={"a": rng.uniform(size=2000), "b": rng.integers(0, 9, 2000)})
    assert small.code_bytes_per_vector() <= 32 * 4 / 4


def _roundtrip(index, store, q, cols):
    index.save(store, "idx")
    loaded = load_index(store, "idx")
    assert isinstance(loaded, OSQIndex)
    for text in FILTERS[:5]:
        expr = None if text is None else filters.parse(text)
        for params in ({"mode": "multilevel"}, {"mode": "multilevel", "level2": "bounds"}, MAX, {"mode": "exact"}):
            a = index.search(q, 10, filter=expr, params=params)
            b = loaded.search(q, 10, filter=expr, params=params)
            assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    # the serverless split: level 0 from the allocator's share, levels 1-3 from single partitions
    alloc = OSQIndex.load_level0(store, "idx")
    assert all(p is None for p in alloc.parts)
    expr = filters.parse('price < 60 and tags contains "b"')
    lv = alloc.level0(q, 10, {"mode": "multilevel"}, filter=expr)
    parts_out = []
    for p in range(alloc.nparts):
        qs = np.flatnonzero(lv.visit[:, p])
        part = OSQIndex.load_partition(store, "idx", p)
        d_, i_, st = part.search(lv.qrot[qs], lv.status[:, part.rows], 10, {"mode": "multilevel"}, expr=expr,
                                 sidx=lv.sidx[qs])
        assert st["bytes"] >= 0
        full_d = np.full((len(q), 10), np.inf, np.float32)
        full_i = np.full((len(q), 10), -1, np.int64)
        full_d[qs], full_i[qs] = d_, i_
        parts_out.append((full_d, full_i))
    Dm, Im = merge_topk(parts_out, 10)
    Da, Ia = index.search(q, 10, filter=expr, params={"mode": "multilevel"})
    assert np.array_equal(Ia, Im)


def test_save_load_local(tmp_path):
    index, x, q, cols, ids = build("cosine")
    _roundtrip(index, LocalStore(tmp_path), q, cols)
    # one array per segment per partition, readable by ranged GETs
    store = LocalStore(tmp_path)
    keys = store.list("idx/p0000/")
    assert any(k.endswith("seg0000.npy") for k in keys)
    from shoal.index.persist import read_npy_rows
    seg = read_npy_rows(store, "idx/p0000/seg0001.npy", 3, 9)
    assert np.array_equal(seg, index.parts[0].segs[1, 3:9])
    mm = load_index(store, "idx", mmap=True)
    assert mm.mapped_bytes() >= 2 * index.ntotal * index.d * 4  # rotated and unrotated float32 vectors
    assert mm.memory_bytes() <= index.memory_bytes() - mm.mapped_bytes()
    for level2 in ("bounds", "exact", "auto"):
        assert np.array_equal(mm.search(q, 5, params={"level2": level2})[1],
                              index.search(q, 5, params={"level2": level2})[1])
    # the default plan does not depend on how the index was opened (a mapped file in the page cache is memory)
    expr = filters.parse("price < 60")
    for mode in ("multilevel", "auto"):
        a = mm.search_with_stats(q, 5, filter=expr, params={"mode": mode})
        b = index.search_with_stats(q, 5, filter=expr, params={"mode": mode})
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
        assert a[2]["plan"] == b[2]["plan"] and a[2]["query_bytes"] == b[2]["query_bytes"]


def test_save_load_s3(s3_bucket):
    endpoint, bucket = s3_bucket
    index, x, q, cols, ids = build("l2", partitions=3, bits=48)
    _roundtrip(index, S3Store(bucket, "osq", endpoint_url=endpoint), q, cols)


def test_incremental_add_keeps_attributes():
    x, q, cols = make_data(4)
    index = OSQIndex(DIM, "l2", partitions=4)
    index.train(x)
    half = N // 2
    index.add(x[:half], np.arange(half), attrs={k: v.take(np.arange(half)) for k, v in cols.items()})
    rest = np.arange(half, N)
    index.add(x[half:], rest, attrs={"price": cols["price"].take(rest), "color": filters.KeywordColumn(
        cols["color"].codes[rest], _WORDS)})
    expr = filters.parse('price < 40 and color = "blue"')
    merged = {"price": cols["price"], "color": cols["color"]}
    mask = filters.evaluate(expr, merged, N)
    D, I = index.search(q, 10, filter=expr, params=MAX)
    _, ki = exact_filtered(x, q, np.arange(N), mask, 10, "l2")
    assert np.array_equal(np.sort(I, 1), np.sort(ki, 1))
    # rows added without tags have none
    assert not index.exact_rows(filters.parse('tags contains "a"'), rest).any()


def test_high_dimensional_level2_modes_are_exact_at_maximal_settings():
    # d > HEAD_DIMS: "head" keys (head dimensions + tail-norm bounds) and early-abandoned exact L2 keys
    rng = np.random.default_rng(5)
    d, n = 80, 1500
    x = (rng.normal(size=(n, d)) * np.linspace(3, 0.2, d)).astype(np.float32)
    q = (x[rng.integers(n, size=12)] + 0.3 * rng.normal(size=(12, d))).astype(np.float32)
    price = rng.uniform(0, 100, n)
    index = OSQIndex(d, "l2", partitions=3)
    index.train(x)
    index.add(x, np.arange(n), attrs={"price": price})
    assert index.parts[0].head.shape[1] < d
    expr = filters.parse("price < 40")
    mask = price < 40
    kd, ki = exact_filtered(x, q, np.arange(n), mask, 10, "l2")
    for level2 in ("head", "exact", "bounds"):
        D, I = index.search(q, 10, filter=expr, params={**MAX, "level2": level2})
        np.testing.assert_allclose(D, kd, rtol=1e-4, atol=1e-3)
    # early abandoning changes no result at default settings, and head keys keep recall
    D1, I1 = index.search(q, 10, filter=expr, params={"mode": "multilevel", "level2": "exact"})
    for part in index.parts:
        part.abandon = False
    D2, I2 = index.search(q, 10, filter=expr, params={"mode": "multilevel", "level2": "exact"})
    assert np.array_equal(I1, I2)
    _, Ih = index.search(q, 10, filter=expr, params={"mode": "multilevel"})
    assert np.isin(Ih, np.flatnonzero(mask)).all()
    assert sum(len(set(Ih[i]) & set(ki[i])) for i in range(len(q))) >= 0.9 * ki.size


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_streamed_exact_level2_selects_what_the_selection_pass_selects(metric):
    # levels12_exact_streamed keeps a short sorted buffer per query instead of every candidate's key; it must hand
    # level 3 the same rows as levels12_cluster_major (exact keys + _select), maybe rows and several status rows too
    from shoal.quantization import _osq_kernels as K

    rng = np.random.default_rng(7)
    n, d, C, nq, k, rerank = 3000, 12, 30, 40, 10, 25
    vectors = rng.standard_normal((n, d)).astype(np.float32)
    list_indptr = np.linspace(0, n, C + 1).astype(np.int64)
    status = rng.choice(np.array([0, 1, 2], np.uint8), size=(2, n), p=[0.3, 0.5, 0.2])
    status[1, :1500] = 0  # the second status row: few sure rows in most clusters (fewer than k for some queries)
    sidx = rng.integers(0, 2, nq).astype(np.int64)
    qcl = (rng.random((nq, C)) < 0.3).astype(np.uint8)
    qcl[0] = 0  # a query that visits nothing
    qrot = rng.standard_normal((nq, d)).astype(np.float32)
    m = K.METRIC_L2 if metric == "l2" else K.METRIC_IP
    cap = 2 * rerank + 64
    outs = []
    for streamed in (False, True):
        out = np.full((nq, cap), -7, np.int64)
        counts = np.zeros((nq, 4), np.int64)
        if streamed:
            K.levels12_exact_streamed(status, sidx, qcl, list_indptr, qrot, vectors, m, k, rerank, out, counts)
        else:
            K.levels12_cluster_major(status, sidx, qcl, list_indptr, qrot, vectors, vectors, np.zeros(n, np.float32),
                                     m, k, rerank, out, counts, K.LEVEL2_EXACT)
        outs.append((out, counts))
    (o1, c1), (o2, c2) = outs
    np.testing.assert_array_equal(c1[:, 0], c2[:, 0])  # candidates
    np.testing.assert_array_equal(c1[:, 3], c2[:, 3])  # rows written
    for i in range(nq):
        assert set(o1[i][o1[i] >= 0]) == set(o2[i][o2[i] >= 0])
        assert (o2[i] == -1).sum() == cap - c2[i, 3]
    assert c2[0, 0] == 0 and (o2[0] == -1).all()


@pytest.mark.parametrize("text", ["price < 2", "price >= 99.5", "year = 2001", "year between 1990 and 1990",
                                  "price < 3 and color = \"red\"", "year < 1991 and not tags contains \"a\"",
                                  "price between 10 and 10.5 and year > 2000", "year < 1990"])
def test_range_index_finds_exactly_the_matching_live_allowed_rows(text):
    # the exact plan's range-index path must mark exactly the rows the full evaluation marks, after removes and
    # under an allowed mask, and search them like the full path does
    index, x, q, cols, ids = build("l2")
    expr = filters.parse(text)
    gone = ids[::7]
    index.remove(gone)
    allowed = np.random.default_rng(3).random(N) < 0.8
    p = {"mode": "exact", "nprobe": 16, "exact_below": 0.0}
    lv = index._level0_indexed(q, 10, p, expr, allowed, *index._live(), False)
    assert lv is not None and lv.plan == "exact"
    want = np.flatnonzero(filters.evaluate(expr, cols, N) & ~np.isin(ids, gone) & allowed)
    np.testing.assert_array_equal(lv.rows[0], want)
    np.testing.assert_array_equal(np.flatnonzero(lv.status[0]), want)
    D, I = index.search(q, 10, filter=expr, allowed=allowed, params={"mode": "exact"})
    kd, ki = exact_filtered(x, q, ids, np.isin(np.arange(N), want), 10, "l2")
    np.testing.assert_array_equal(I >= 0, ki >= 0)
    np.testing.assert_allclose(D[I >= 0], kd[ki >= 0], rtol=1e-4, atol=1e-3)


def test_range_index_is_skipped_for_wide_ranges_and_per_query_masks():
    index, x, q, cols, ids = build("l2")
    p = {"mode": "exact", "nprobe": 16, "exact_below": 0.0}
    live = index._live()
    assert index._level0_indexed(q, 10, p, filters.parse("price < 50"), None, *live, False) is None
    assert index._level0_indexed(q, 10, p, filters.parse("color = \"red\""), None, *live, False) is None
    assert index._level0_indexed(q, 10, p, filters.parse("price < 2 or year = 2001"), None, *live, False) is None
    # per-query masks take the full path (the search still answers exactly)
    expr = filters.parse("price < 2")
    allowed = np.ones((len(q), N), bool)
    allowed[:, ::2] = False
    D, I = index.search(q, 10, filter=expr, allowed=allowed, params={"mode": "exact"})
    want = filters.evaluate(expr, cols, N) & allowed[0]
    assert np.isin(I[I >= 0], ids[want]).all() and (I >= 0).sum(1).max() == min(10, int(want.sum()))


def _visit_reference(dc, sure, cand, sidx, k, p, per_cluster, ratio):
    """The level-0 visiting rule, query by query over all clusters in distance order (ties by cluster number)."""
    nq, G = dc.shape
    target = max(1, int(p["nprobe"])) * per_cluster
    out = np.zeros((nq, G), bool)
    for i in range(nq):
        order = np.argsort(dc[i], kind="stable")
        d0 = np.sqrt(max(dc[i, order[0]], 0))
        cum_c = cum_s = nonempty = 0
        for c in order:
            want = cum_c < target or (ratio and np.sqrt(max(dc[i, c], 0)) <= p["visit_ratio"] * d0)
            if p["max_visit"] and nonempty >= p["max_visit"]:
                want = False
            want |= cum_s < k
            if cand[sidx[i], c] > 0:
                out[i, c] = want
                nonempty += 1
            cum_c += cand[sidx[i], c]
            cum_s += sure[sidx[i], c]
    return out


def test_cluster_visiting_rule_matches_a_query_by_query_reference():
    # choose_clusters ranks only the nearest T clusters when they hold enough rows (else 4x as many, ...): for
    # these inputs that must visit exactly what walking every cluster in order would (the rule never wants a
    # farther cluster once it has enough rows and k sure ones); batches mix queries that need more with ones that
    # do not (a whole-array version once lost cluster 0 for the latter in such batches)
    from shoal.index.osq_planner import choose_clusters

    rng = np.random.default_rng(11)
    for trial in range(150):
        nq, G, ns = int(rng.integers(1, 15)), int(rng.integers(1, 400)), int(rng.integers(1, 3))
        dc = (rng.random((nq, G)) * 4).astype(np.float32)
        cand = rng.integers(0, 5, (ns, G)) * (rng.random((ns, G)) < rng.random())
        sure = np.minimum(cand, rng.integers(0, 5, (ns, G)))
        sidx = rng.integers(0, ns, nq)
        p = {"nprobe": int(rng.integers(1, 40)), "visit_ratio": 1.0, "max_visit": int(rng.choice([0, 3, 10]))}
        k, pc, ratio = int(rng.integers(1, 20)), float(rng.uniform(0.5, 5)), bool(trial % 3)
        got = choose_clusters(dc if ratio else -dc, sure, cand, sidx, k, p, pc, ratio=ratio)
        want = _visit_reference(dc if ratio else -dc, sure, cand, sidx, k, p, pc, ratio)
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


@pytest.mark.parametrize("text", FILTERS)
def test_multilevel_plan_on_exact_statuses_equals_exact_filtered_search(built, text):
    # mode=auto with the exact values in memory: the planner (forced here by a tiny exact_below) sends the batch
    # to levels 0-3, which then run on the exact filter statuses (no maybe rows) instead of the codes' three values
    index, x, q, cols, ids = built
    expr = None if text is None else filters.parse(text)
    mask = filters.evaluate(expr, cols, N)
    params = {**MAX, "mode": "auto", "exact_below": 1e-9, "level2": "exact"}
    D, I, st = index.search_with_stats(q, 10, filter=expr, params=params)
    if mask.any():
        assert st["plan"] == "multilevel" and st["maybe"] == 0
    kd, ki = exact_filtered(x, q, ids, mask, 10, index.metric)
    assert np.array_equal(I >= 0, ki >= 0)
    np.testing.assert_allclose(D[I >= 0], kd[ki >= 0], rtol=1e-4, atol=1e-3)
