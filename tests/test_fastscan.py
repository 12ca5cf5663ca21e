"""4-bit fast scan: SIMD block sums (every instruction set this CPU runs), blocked layout, quantized tables, packed
(key, index) selection, the search kernel against a numpy reference, and the IVF index on the fast path (masks,
removes, save/load, the old row-major format, the collection API)."""

from __future__ import annotations

import copy

import llvmlite.binding as llvm_binding
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from shoal.index import index_factory, load_index
from shoal.index.flat import exact_search
from shoal.quantization import fastscan
from shoal.quantization._fastscan_kernels import ivf_fastscan_search, quantize_table
from shoal.quantization._select_kernels import pack_key, smallest_sorted, unpack_key
from shoal.quantization._simd import LEVELS, SIMD_LEVEL, block_sums_at
from shoal.quantization.pq import pack_codes
from shoal.storage import LocalStore

_HOST = llvm_binding.get_host_cpu_features()
RUNNABLE = [lv for lv in LEVELS if lv == "portable" or (lv == "avx2" and _HOST.get("avx2"))
            or (lv == "avx512" and _HOST.get("avx512bw"))]


def _block_sums_driver(level):
    fn = block_sums_at(level)

    @njit
    def run(blocks, lut, ngroups, thr):
        nb = blocks.shape[0] // (64 * ngroups)
        out = np.zeros(32, np.uint16)
        sums = np.zeros(nb * 32, np.int64)
        bits = np.zeros(nb, np.int64)
        for b in range(nb):
            bits[b] = fn(blocks, b * 64 * ngroups, lut, ngroups, thr, out)
            for i in range(32):
                sums[b * 32 + i] = out[i]
        return sums, bits

    return run


_DRIVERS = {lv: _block_sums_driver(lv) for lv in RUNNABLE}


def _reference_sums(sub, lut, M):
    return lut.reshape(-1, 16)[np.arange(M), sub].astype(np.int64).sum(axis=1)


@pytest.mark.parametrize("M", [1, 4, 7, 50])
@pytest.mark.parametrize("level", RUNNABLE)
def test_block_sums_equal_reference_on_every_instruction_set(level, M):
    rng = np.random.default_rng(M)
    n = 100  # 4 blocks, the last one partial
    sub = rng.integers(0, 16, (n, M)).astype(np.uint8)
    blocks = fastscan.pack_segment(sub, np.array([0, n]), M)
    Mp = fastscan.padded_subspaces(M)
    qmax = min(255, 65535 // M)
    lut = np.zeros(16 * Mp, np.uint8)
    lut[:16 * M] = rng.integers(0, qmax + 1, 16 * M)
    ref = _reference_sums(sub, lut, M)
    thr = int(np.median(ref))
    sums, bits = _DRIVERS[level](blocks.reshape(-1), lut, Mp // 4, thr)
    np.testing.assert_array_equal(sums[:n], ref)
    # padding rows hold code 0 in every sub-quantizer
    np.testing.assert_array_equal(sums[n:], int(lut.reshape(-1, 16)[:M, 0].astype(np.int64).sum()))
    got = np.array([(bits[r // 32] >> (r % 32)) & 1 for r in range(n)], bool)
    np.testing.assert_array_equal(got, ref <= thr)


def test_block_sums_reach_the_top_of_16_bits():
    # 257 sub-quantizers at the largest entry 65535 // 257 = 255: the sum is exactly 65535, no wrap-around
    M = 257
    sub = np.full((32, M), 15, np.uint8)
    blocks = fastscan.pack_segment(sub, np.array([0, 32]), M)
    Mp = fastscan.padded_subspaces(M)
    lut = np.zeros(16 * Mp, np.uint8)
    lut[:16 * M] = 255
    for level in RUNNABLE:
        sums, bits = _DRIVERS[level](blocks.reshape(-1), lut, Mp // 4, 65534)
        assert np.all(sums == 65535) and bits[0] == 0


def test_simd_level_is_the_widest_the_cpu_has():
    assert SIMD_LEVEL == RUNNABLE[0]


def test_layout_round_trips_with_segments_and_empty_lists():
    rng = np.random.default_rng(2)
    M = 10
    segs = [np.array([0, 0, 33, 33, 40, 105]), np.array([0, 5, 5, 5, 5, 5]), np.array([0, 0, 0, 0, 0, 31])]
    offsets = np.cumsum([0] + [s[-1] for s in segs])[:-1, None] + np.stack(segs)
    subs = [rng.integers(0, 16, (s[-1], M)).astype(np.uint8) for s in segs]
    blocks = np.concatenate([fastscan.pack_segment(s, o, M) for s, o in zip(subs, segs)])
    bo = fastscan.block_offsets(offsets)
    assert blocks.shape == (int(bo[-1, -1]), fastscan.block_bytes(M))
    assert np.all(np.diff(bo.ravel()) >= 0)
    every = np.concatenate(subs)
    np.testing.assert_array_equal(fastscan.unpack_all(blocks, offsets, M), every)
    rows = rng.permutation(every.shape[0])[:40]
    np.testing.assert_array_equal(fastscan.unpack_rows(blocks, offsets, bo, M, rows), every[rows])


@settings(deadline=None, max_examples=60)
@given(st.integers(1, 40), st.floats(1e-3, 1e6), st.floats(-1e6, 1e6), st.integers(0, 2**31 - 1))
def test_quantized_tables_stay_within_half_a_step(M, span, shift, seed):
    rng = np.random.default_rng(seed)
    t = (rng.random((M, 16)) * span + shift).astype(np.float32)
    lut = np.zeros(16 * fastscan.padded_subspaces(M), np.uint8)
    qmax = min(255, 65535 // M)
    bias, scale = quantize_table(t, qmax, lut)
    q = lut[:16 * M].reshape(M, 16).astype(np.float64)
    assert q.max() <= qmax and np.all(lut[16 * M:] == 0)
    assert bias == pytest.approx(float(t.astype(np.float64).min(axis=1).sum()), rel=1e-6, abs=1e-3)
    back = t.min(axis=1, keepdims=True).astype(np.float64) + q / scale
    assert np.all(np.abs(back - t) <= 0.5 / scale * (1 + 1e-6) + 1e-6 * np.abs(t))


@settings(deadline=None, max_examples=60)
@given(st.lists(st.floats(-2.0**100, 2.0**100, width=32), min_size=1, max_size=300), st.integers(1, 80))
def test_packed_selection_orders_by_key_then_index(values, k):
    keys = np.array(values, dtype=np.float32)
    keys[keys == 0] = 0.0  # -0.0 and 0.0 compare equal as floats but not as bit patterns
    n = keys.size
    out, work = np.empty(n, np.int64), np.empty(n, np.uint64)
    got = smallest_sorted(keys, k, out, work)
    np.testing.assert_array_equal(out[:got], np.lexsort((np.arange(n), keys))[:min(k, n)])
    packed = np.array([pack_key(v, i) for i, v in enumerate(keys)], dtype=np.uint64)
    assert np.array_equal(np.argsort(packed, kind="stable"), np.lexsort((np.arange(n), keys)))
    assert np.array_equal(np.array([unpack_key(p) for p in packed], np.float32), keys)


def _kernel_reference(probe, nprobe, base, use_base, tables, offsets, sub, mask, mode, kk, k):
    """The fast-scan result in plain numpy: quantized tables (the kernel's own quantize_table), 16-bit sums, keys,
    the top kk by (key, row), then the top k of those."""
    nq = probe.shape[0]
    M = sub.shape[1]
    D = np.full((nq, k), np.inf, np.float32)
    R = np.full((nq, k), -1, np.int64)
    for q in range(nq):
        lists = np.lexsort((np.arange(probe.shape[1]), probe[q]))[:nprobe]
        keys, rows = [], []
        for l in lists:
            t = tables[q] if tables.ndim == 3 else tables[q, l]
            lut = np.zeros(16 * fastscan.padded_subspaces(M), np.uint8)
            bias, scale = quantize_table(np.ascontiguousarray(t, np.float32), min(255, 65535 // M), lut)
            b0 = bias + (np.float64(base[q, l]) if use_base else 0.0)
            for seg in offsets:
                r = np.arange(seg[l], seg[l + 1])
                if mode:
                    r = r[mask[0 if mode == 1 else q, r]]
                s = _reference_sums(sub[r], lut, M)
                keys.append((b0 + s.astype(np.float64) * (1.0 / scale)).astype(np.float32))
                rows.append(r)
        keys, rows = np.concatenate(keys), np.concatenate(rows)
        top = np.lexsort((rows, keys))[:min(kk, k)]
        D[q, :top.size], R[q, :top.size] = keys[top], rows[top]
    return D, R


@pytest.mark.parametrize("table_mode", [0, 1, 2])
@pytest.mark.parametrize("mask_mode", [0, 1, 2])
def test_search_kernel_equals_numpy_reference(table_mode, mask_mode):
    rng = np.random.default_rng(10 * table_mode + mask_mode)
    nq, nlist, M, dsub, k, kk = 7, 6, 6, 2, 5, 12
    segs = [rng.multinomial(150, np.ones(nlist) / nlist), rng.multinomial(47, np.ones(nlist) / nlist)]
    rel = [np.concatenate([[0], np.cumsum(s)]) for s in segs]
    offsets = np.stack([rel[0], rel[1] + 150]).astype(np.int64)
    ntotal = 197
    sub = rng.integers(0, 16, (ntotal, M)).astype(np.uint8)
    blocks = np.concatenate([fastscan.pack_segment(sub[o[0]:o[-1]], r, M) for o, r in zip(offsets, rel)])
    dots = rng.standard_normal((nq, M, 16)).astype(np.float32)
    cn = rng.random((M, 16)).astype(np.float32)
    qsub = rng.random((nq, M)).astype(np.float32) * 3 if table_mode == 1 else np.zeros((0, M), np.float32)
    coarse_ip = rng.standard_normal((nq, nlist)).astype(np.float32)
    qnorms = (rng.random(nq) * 4).astype(np.float32)
    coarse_norms = (rng.random(nlist) * 4).astype(np.float32)
    cbias = (rng.random(nlist) * 0.5).astype(np.float32)
    balanced = mask_mode == 1  # balanced lists shift the probe keys by a per-list bias
    # the kernel's probe and base keys, as numpy computes them for the byte-table kernel
    cl2 = coarse_ip * np.float32(-2.0)
    cl2 += qnorms[:, None]
    cl2 += coarse_norms[None, :]
    np.maximum(cl2, 0.0, out=cl2)
    probe = cl2 - cbias[None, :] if balanced else cl2
    l2 = table_mode != 0
    base = cl2 if l2 else -coarse_ip
    coarse = rng.standard_normal((nlist, M * dsub)).astype(np.float32)
    cent = rng.standard_normal((M, 16, dsub)).astype(np.float32)
    # residual l2: lists 0-2 take their terms from a table, the others are computed in the kernel
    slots = np.array([0, 1, 2, -1, -1, -1], np.int64) if table_mode == 2 else np.zeros(0, np.int64)
    terms = rng.standard_normal((3, M, 16)).astype(np.float32)
    mask = {0: np.zeros((1, 0), bool), 1: rng.random((1, ntotal)) < 0.6, 2: rng.random((nq, ntotal)) < 0.6}[mask_mode]
    D, R, _ = ivf_fastscan_search(coarse_ip, qnorms, coarse_norms, cbias, balanced, 4, True, dots, cn, qsub,
                                  table_mode, coarse, cent, terms, slots, offsets, fastscan.block_offsets(offsets),
                                  blocks.reshape(-1), fastscan.padded_subspaces(M) // 4, mask, mask_mode, kk, k,
                                  False, np.zeros((0, M * dsub), np.float32), np.zeros((nq, M * dsub), np.float32),
                                  l2)
    # the float tables the kernel builds (see _ivf_kernels._query_table)
    if table_mode == 0:
        tables = -dots
    elif table_mode == 1:
        tables = (qsub[:, :, None] - np.float32(2) * dots) + cn[None]
    else:
        q_t = cn[None] - np.float32(2) * dots
        tables = np.empty((nq, nlist, M, 16), np.float32)
        for l in range(nlist):
            if slots[l] >= 0:
                tables[:, l] = q_t + terms[slots[l]][None]
            else:
                prod = np.zeros((M, 16), np.float32)
                for m in range(M):
                    for t in range(dsub):  # the kernel's float32 accumulation order
                        prod[m] += coarse[l, m * dsub + t] * cent[m, :, t]
                tables[:, l] = q_t + np.float32(2.0) * prod[None]
    Dr, Rr = _kernel_reference(probe, 4, base, True, tables, offsets, sub, mask, mask_mode, kk, k)
    np.testing.assert_array_equal(R, Rr)
    np.testing.assert_array_equal(D, Dr)
    # 7 queries x 4 probes >= 2 x 6 lists: the batch was scanned list by list; one query alone is scanned query by
    # query (nearest list first): the same results
    for q in range(nq):
        one = slice(q, q + 1)
        D1, R1, _ = ivf_fastscan_search(coarse_ip[one], qnorms[one], coarse_norms, cbias, balanced, 4, True, dots[one],
                                        cn, qsub[one] if table_mode == 1 else qsub, table_mode, coarse, cent, terms,
                                        slots, offsets, fastscan.block_offsets(offsets), blocks.reshape(-1),
                                        fastscan.padded_subspaces(M) // 4, mask[one] if mask_mode == 2 else mask,
                                        mask_mode, kk, k, False, np.zeros((0, M * dsub), np.float32),
                                        np.zeros((1, M * dsub), np.float32), l2)
        np.testing.assert_array_equal(R1[0], Rr[q])
        np.testing.assert_array_equal(D1[0], Dr[q])


# ---------------------------------------------------------------------------------------------- the index
def gaussian_mixture(sizes, d, seed):
    """Arrays of ``sizes`` float32 rows drawn around the same 40 seeded centres (data sets and their queries)."""
    rng = np.random.default_rng(seed)
    centres = 2 * np.random.default_rng(99).normal(size=(40, d))
    return [(centres[rng.integers(0, 40, n)] + rng.normal(size=(n, d))).astype(np.float32) for n in sizes]


N, D = 4000, 24
X, Q = gaussian_mixture((N, 60), D, 0)
IDS = np.arange(N, dtype=np.int64) * 5 + 3


@pytest.fixture(scope="module", params=[("IVF16,PQ12x4,Refine", "l2"), ("IVF16,PQ24x4(residual=0),Refine", "cosine"),
                                        ("IVF16(balanced),PQ6x4(balanced),Refine", "ip")])
def fast(request):
    spec, metric = request.param
    idx = index_factory(D, spec, metric)
    idx.train(X)
    idx.add(X[:2500], IDS[:2500])
    idx.add(X[2500:], IDS[2500:])  # two segments
    return idx


def _x_in_row_order(idx):
    return X[(idx.row_ids - 3) // 5]


def test_four_bit_codes_take_the_fast_path(fast):
    assert fast.fastscan and fast.codes_nbytes() == fast.blocks.nbytes
    assert fast.blocks.shape[1] == fastscan.block_bytes(fast.pq.M) and fast._codes.size == 0
    # the blocks hold exactly the codes the quantizer gives each row
    y = fast._rotate(fast.prepare(_x_in_row_order(fast)))
    np.testing.assert_array_equal(fast.codes, fast.pq.encode(fast._pq_input(y, fast._lists_of(y)), rotated=True))


def test_full_probe_and_rerank_equal_exact_search_under_masks_and_removes(fast):
    idx = copy.deepcopy(fast)
    gone = IDS[::7]
    assert idx.remove(gone) == gone.size
    rng = np.random.default_rng(4)
    live = ~idx.deleted
    shared = rng.random(idx.ntotal) < 0.3
    per_query = rng.random((Q.shape[0], idx.ntotal)) < 0.2
    everything = {"nprobe": idx.nlist, "rerank": idx.ntotal}
    qs, xrows = idx.prepare(Q), idx.prepare(_x_in_row_order(idx))
    for allowed in (None, shared, per_query):
        m = live if allowed is None else (allowed & live)
        Dg, Ig = idx.search(Q, 10, params=everything, allowed=allowed)
        De, Ie = exact_search(qs, xrows, 10, idx.metric, labels=idx.row_ids, allowed=m)
        # every candidate is re-ranked exactly: the exact top 10 (ids may differ only between near-equal keys)
        np.testing.assert_allclose(Dg, De, rtol=1e-4, atol=1e-3)
        assert np.mean(Ig == Ie) >= 0.99
        for qi, row in enumerate(Ig):
            assert np.isin(row[row >= 0], idx.row_ids[m if m.ndim == 1 else m[qi]]).all()
        assert not np.isin(Ig, gone).any()
        # and the codes alone never return a removed or masked row either
        _, I0 = idx.search(Q, 10, params={"nprobe": 4, "rerank": 0}, allowed=allowed)
        for qi, row in enumerate(I0):
            ok = m if m.ndim == 1 else m[qi]
            assert np.isin(row[row >= 0], idx.row_ids[ok]).all()


def test_fast_path_is_deterministic_and_batch_independent(fast):
    params = {"nprobe": 5, "rerank": 30}
    a = fast.search(Q, 10, params=params)
    b = fast.search(Q, 10, params=params)
    one = [fast.search(Q[i:i + 1], 10, params=params) for i in range(0, Q.shape[0], 7)]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    for j, (d1, i1) in zip(range(0, Q.shape[0], 7), one):
        np.testing.assert_array_equal(d1[0], a[0][j])
        np.testing.assert_array_equal(i1[0], a[1][j])
    # codes alone: the keys are ascending, and more probes scan more codes
    D0, _ = fast.search(Q, 10, params={"nprobe": 2, "rerank": 0})
    assert np.all(np.diff(D0, axis=1) >= 0)
    _, _, st2 = fast.search_with_stats(Q, 10, params={"nprobe": 2, "rerank": 0})
    _, _, st8 = fast.search_with_stats(Q, 10, params={"nprobe": 8, "rerank": 0})
    assert st2["nscanned"].shape == (Q.shape[0],) and st2["ndis"] == st2["nscanned"].sum()
    assert st8["ndis"] > st2["ndis"]
    # every list probed: a query scores each row at most once (a list is left early once none of its remaining
    # rows can enter the candidates)
    _, _, sta = fast.search_with_stats(Q, 10, params={"nprobe": fast.nlist, "rerank": 0})
    assert np.all(sta["nscanned"] > 0) and np.all(sta["nscanned"] <= fast.ntotal)


def test_codes_alone_rank_better_than_chance_and_match_the_float_tables(fast):
    """The 8-bit tables lose little: the fast path's codes-only recall is close to the same codes scanned with float
    tables (the byte-table kernel over the unpacked codes)."""
    gt = exact_search(fast.prepare(Q), fast.prepare(X), 10, fast.metric, labels=IDS)[1]
    _, Ifast = fast.search(Q, 10, params={"nprobe": 16, "rerank": 0})
    C = fast.pq.score_centroids()
    q = fast._rotate(fast.prepare(Q))
    _, R, _ = fast._kernel(q, C, 10, 16, 0, fast.offsets, pack_codes(fast.sub_codes(), 4), None, 0, rotated=True)
    Ifloat = np.where(R >= 0, fast.row_ids[np.maximum(R, 0)], -1)

    def rec(I):
        return np.mean([np.intersect1d(a, b).size / 10 for a, b in zip(I, gt)])

    assert rec(Ifast) >= rec(Ifloat) - 0.03 and rec(Ifast) > 0.2


def test_save_load_is_bit_identical_and_reads_the_row_major_format(tmp_path, fast):
    fast = copy.deepcopy(fast)
    fast.remove(IDS[:30])
    store = LocalStore(str(tmp_path))
    fast.save(store, "ix")
    back = load_index(store, "ix", mmap=True)
    assert back.fastscan and np.array_equal(back.blocks, fast.blocks)
    assert back.memory_bytes() == fast.memory_bytes() - fast.vectors.nbytes
    allowed = np.random.default_rng(1).random(fast.ntotal) < 0.5
    for params, mask in (({"nprobe": 3, "rerank": 0}, None), ({"nprobe": 8, "rerank": 40}, allowed)):
        a = fast.search(Q, 10, params=params, allowed=mask)
        b = back.search(Q, 10, params=params, allowed=mask)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    # an index saved before the blocked layout kept row-major packed codes: it loads into blocks, same results
    from shoal.index.persist import load_arrays, save_arrays
    meta, arrays = load_arrays(store, "ix", kind="IVFPQ", mmap=False)
    arrays = dict(arrays)
    arrays["codes"] = fast.codes
    del arrays["blocks"]
    save_arrays(store, "old", meta, arrays)
    old = load_index(store, "old")
    np.testing.assert_array_equal(old.blocks, fast.blocks)
    np.testing.assert_array_equal(old.search(Q, 10, params={"nprobe": 3, "rerank": 0})[1],
                                  fast.search(Q, 10, params={"nprobe": 3, "rerank": 0})[1])


def test_reconstruct_and_entropy_read_the_blocks(fast):
    rows = np.array([0, 17, fast.ntotal - 1])
    np.testing.assert_array_equal(fast.sub_codes(rows), fast.sub_codes()[rows])
    ent = fast.code_entropy()
    assert ent.shape == (fast.pq.M,) and np.all(ent <= 4.0 + 1e-9) and np.all(ent > 1.0)


def test_collection_with_a_four_bit_index_filters_through_masks(tmp_path):
    from shoal.engine import Database

    rng = np.random.default_rng(6)
    n, d = 1500, 16
    x, q = gaussian_mixture((n, 15), d, 7)
    db = Database(tmp_path / "db")
    col = db.create_collection("c", dim=d, index="IVF8,PQ8x4,Refine", schema={"k": "int"}, exact_threshold=0)
    col.upsert(np.arange(n), x, attrs={"k": np.arange(n) % 10})
    col.build()
    assert "PQ8x4" in col.info()["index_description"]
    col.delete(np.arange(0, n, 11))
    res = col.search(q, k=10, filter="k < 3", params={"nprobe": 8, "rerank": n})
    keep = np.flatnonzero((np.arange(n) % 10 < 3) & (np.arange(n) % 11 != 0))
    want = exact_search(q, x[keep], 10, "l2", labels=keep)[1]
    np.testing.assert_array_equal(res.ids, want)
    db.close()
