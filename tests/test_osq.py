"""OSQ quantizer: bit packing, dimensional extraction, bounds, bit allocation, Lloyd cells, attribute cells, and
three-valued filters on quantized attributes (hypothesis where the property is over all inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import filters
from shoal.index.osq import OSQIndex
from shoal.quantization.osq import (NumericCells, OSQCodebook, allocate_bits, assign_cells, cell_distortion,
                                    fit_rotation, lloyd_edges, pack_codes, quantile_edges, unpack_codes)

HYP = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def clustered(n, d, centers=20, seed=0, spread=3.0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)) * spread
    lab = rng.integers(centers, size=n)
    # decaying per-dimension scale, like real embeddings after PCA
    scale = np.linspace(1.5, 0.3, d)
    return ((c[lab] + rng.normal(size=(n, d))) * scale).astype(np.float32), c


# ------------------------------------------------------------------------------------------------ packing
@HYP
@given(st.lists(st.integers(0, 8), min_size=1, max_size=24), st.integers(0, 40), st.integers(0, 2**32 - 1))
def test_pack_roundtrip_and_extraction(bits, n, seed):
    rng = np.random.default_rng(seed)
    bits = np.array(bits, dtype=np.int64)
    codes = np.zeros((n, bits.size), dtype=np.uint8)
    for j, b in enumerate(bits):
        codes[:, j] = rng.integers(0, 1 << int(b), size=n)
    segs = pack_codes(codes, bits)
    assert segs.shape == ((int(bits.sum()) + 7) // 8, n)
    assert np.array_equal(unpack_codes(segs, bits), codes)
    book = OSQCodebook(bits, np.full((bits.size, 255), np.inf), np.zeros((bits.size, 256)), np.zeros((bits.size, 256)),
                       np.zeros(1, np.float32))
    rows = rng.permutation(n)[: max(0, n // 2)].astype(np.int64)
    for j in range(bits.size):
        assert np.array_equal(book.extract(segs, j), codes[:, j])
        assert np.array_equal(book.extract(segs, j, rows), codes[rows, j])


def test_pack_is_msb_first_segment_major():
    # two dims of 4 bits: codes 0xA, 0x5 -> one byte 0xA5 per row; 3 bits + 7 bits straddle a byte boundary
    segs = pack_codes(np.array([[10, 5], [1, 2]], np.uint8), np.array([4, 4]))
    assert segs.tolist() == [[0xA5, 0x12]]
    segs = pack_codes(np.array([[0b101, 0b1100110]], np.uint8), np.array([3, 7]))
    assert segs[:, 0].tolist() == [0b10111001, 0b10000000]


# ------------------------------------------------------------------------------------------------ bounds
@HYP
@given(st.integers(2, 12), st.integers(1, 120), st.integers(0, 64), st.sampled_from(["l2", "ip"]),
       st.integers(0, 2**32 - 1))
def test_bounds_bracket_exact_distance(d, n, budget, metric, seed):
    rng = np.random.default_rng(seed)
    y = (rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d)).astype(np.float32)
    book = OSQCodebook.fit(y, budget, lloyd_iters=5)
    segs = book.pack(book.encode(y))
    q = (rng.normal(size=d) * 2).astype(np.float32)
    L, U = book.bounds(segs, np.arange(n), q, metric)
    yd, qd = y.astype(np.float64), q.astype(np.float64)
    exact = ((yd - qd) ** 2).sum(1) if metric == "l2" else -(yd @ qd)
    tol = 1e-4 * (1 + np.abs(exact))
    assert np.all(L <= exact + tol)
    assert np.all(exact <= U + tol)


def test_bounds_prune_90_percent_and_keep_true_top10():
    x, c = clustered(20000, 32, seed=3)
    R, var = fit_rotation(x)
    y = x @ R
    book = OSQCodebook.fit(y, 4 * 32)  # the index's default budget
    segs = book.pack(book.encode(y))
    rng = np.random.default_rng(7)
    for qi in range(5):
        q = ((c[rng.integers(len(c))] + rng.normal(size=32)) * np.linspace(1.5, 0.3, 32)).astype(np.float32) @ R
        L, U = book.bounds(segs, np.arange(len(y)), q, "l2")
        tau = np.sort(U)[9]
        survive = L <= tau
        assert survive.mean() <= 0.10, survive.mean()
        top10 = np.argsort(((y - q) ** 2).sum(1))[:10]
        assert survive[top10].all()


# ------------------------------------------------------------------------------------------------ allocation
def test_greedy_allocation_monotone_and_beats_uniform():
    x, _ = clustered(6000, 24, seed=1)
    R, var = fit_rotation(x)
    y = (x @ R).astype(np.float64)
    for budget in (24, 48, 72, 100):
        bits = allocate_bits(var, budget)
        assert bits.sum() == budget
        assert np.all(np.diff(bits) <= 0), bits
    budget = 48
    greedy = allocate_bits(var, budget)
    uniform = np.full(24, budget // 24)

    def distortion(bits):
        total = 0.0
        for j in range(24):
            col = np.sort(y[:, j])
            if bits[j] == 0:
                total += float(((col - col.mean()) ** 2).sum())
            else:
                inner = lloyd_edges(col, quantile_edges(col, 1 << int(bits[j])))
                total += cell_distortion(col, inner)
        return total

    assert distortion(greedy) < distortion(uniform)


def test_allocation_caps_at_8_bits_and_budget():
    bits = allocate_bits(np.array([1e6, 1.0]), 20)
    assert bits.tolist() == [8, 8]
    assert allocate_bits(np.array([4.0, 1.0]), 1).tolist() == [1, 0]


def test_lloyd_lowers_distortion_against_quantile_start():
    rng = np.random.default_rng(5)
    for values in (rng.normal(size=5000), rng.exponential(size=5000), np.concatenate([rng.normal(size=3000),
                                                                                          rng.normal(8, 0.5, 2000)])):
        v = np.sort(values)
        for ncells in (4, 16):
            start = quantile_edges(v, ncells)
            refined = lloyd_edges(v, start)
            assert cell_distortion(v, refined) < cell_distortion(v, start)
            assert np.all(np.diff(refined) >= 0)


def test_quantile_edges_exact_for_few_distinct_values():
    v = np.sort(np.repeat([1.0, 2.0, 5.0], 10))
    inner = quantile_edges(v, 8)
    assert assign_cells(np.array([1.0, 2.0, 5.0]), inner).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ attributes
@pytest.mark.parametrize("bits", [4, 5, 6, 8])
def test_half_range_sure_rows_at_least_90_percent(bits):
    rng = np.random.default_rng(bits)
    v = rng.uniform(0, 1000, 50000)
    cells = NumericCells.fit(v, bits)
    codes = cells.encode(v)
    # half ranges; round constants meet snapped cell edges, 520 falls inside a cell
    for pred in (filters.Compare("a", "<", 500), filters.Between("a", 250, 750), filters.Compare("a", ">=", 520.0)):
        truth = filters.evaluate(pred, {"a": filters.NumericColumn(v)}, v.size)
        lo, hi = cells.lo.copy(), cells.hi.copy()
        empty = ~(lo <= hi)
        empty[255] = True
        lo[empty] = hi[empty] = 0
        s, m = filters.interval_predicate(pred, lo, hi, missing=empty)
        sure, maybe = s[codes], m[codes]
        assert not (sure & ~truth).any() and not (truth & ~(sure | maybe)).any()
        assert sure.sum() >= 0.9 * truth.sum()


_WORDS = ["red", "green", "blue", "teal"]
_TAGS = ["a", "b", "c", "d", "e"]


def _predicates():
    num = st.sampled_from(["f", "i"])
    val = st.one_of(st.integers(-5, 25), st.floats(-5, 25, allow_nan=False).map(lambda z: round(z, 2)))
    cmp_ = st.builds(filters.Compare, num, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), val)
    btw = st.builds(filters.Between, num, val, val)
    inn = st.builds(filters.In, num, st.lists(val, min_size=1, max_size=3).map(tuple), st.booleans())
    kw = st.builds(filters.In, st.just("k"), st.lists(st.sampled_from(_WORDS + ["nope"]), min_size=1,
                                                       max_size=2).map(tuple), st.booleans())
    kweq = st.builds(filters.Compare, st.just("k"), st.sampled_from(["=", "!="]), st.sampled_from(_WORDS))
    tag = st.builds(filters.Contains, st.just("t"), st.sampled_from(_TAGS))
    return st.one_of(cmp_, btw, inn, kw, kweq, tag)


_EXPR = st.recursive(_predicates(), lambda ch: st.one_of(
    st.builds(filters.Not, ch),
    st.builds(filters.And, st.lists(ch, min_size=1, max_size=3).map(tuple)),
    st.builds(filters.Or, st.lists(ch, min_size=1, max_size=3).map(tuple))), max_leaves=6)


@pytest.fixture(scope="module")
def attr_index():
    rng = np.random.default_rng(11)
    n = 3000
    f = rng.normal(10, 6, n)
    f[rng.random(n) < 0.1] = np.nan
    i = rng.integers(-5, 400, n).astype(np.int64)
    cols = {"f": filters.NumericColumn(f), "i": filters.NumericColumn(i),
            "k": filters.KeywordColumn(rng.integers(-1, 4, n).astype(np.int32), _WORDS),
            "t": filters.TagsColumn.from_lists([list(rng.choice(_TAGS, rng.integers(0, 3), replace=False))
                                                for _ in range(n)])}
    x = rng.normal(size=(n, 8)).astype(np.float32)
    index = OSQIndex(8, partitions=3, attr_bits=3)  # few cells: many maybe rows
    index.train(x)
    index.add(x, np.arange(n), attrs=cols)
    return index, cols, n


@HYP
@given(_EXPR)
def test_three_valued_filter_brackets_truth(attr_index, expr):
    index, cols, n = attr_index
    truth = filters.evaluate(expr, cols, n)
    sure, maybe = index.filter_status(expr)
    assert not (sure & maybe).any()
    assert not (sure & ~truth).any()
    assert not (truth & ~(sure | maybe)).any()
    assert np.array_equal(index.exact_rows(expr, np.arange(n)), truth)
    s, m = index.estimate_matches(expr)
    assert s <= truth.sum() <= s + m
