"""IVF-PQ growth buffers: chunked adds, reserve, compact, views after growth, copies, save/load and mmap adds."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

from shoal.errors import InvalidArgument
from shoal.index import index_factory, load_index
from shoal.index import growth
from shoal.storage import LocalStore

N, D, CHUNK = 3000, 16, 257
SPECS = ["IVF16,PQ8x8,Refine", "IVF16,PQ8x4,Refine"]
ROW_ARRAYS = ("row_ids", "deleted", "vectors", "offsets", "block_offsets")


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(5).normal(size=(20, D)) * 3
    # rows in cluster order, as a collection often adds them
    return (centers[np.sort(rng.integers(0, 20, n))] + rng.normal(size=(n, D))).astype(np.float32)


X = clustered(N, 0)
Q = clustered(40, 1)
IDS = np.arange(N, dtype=np.int64) * 5 + 1


@pytest.fixture(scope="module")
def trained():
    out = {}
    for spec in SPECS:
        idx = index_factory(D, spec)
        idx.train(X)
        out[spec] = idx
    return out


def fresh(trained, spec):
    return copy.deepcopy(trained[spec])


def add_chunks(idx, x=X, ids=IDS, chunk=CHUNK):
    for s in range(0, x.shape[0], chunk):
        idx.add(x[s:s + chunk], ids[s:s + chunk])
    return idx


def codes_of(idx):
    return idx.blocks if idx.fastscan else idx._codes


def assert_same_state(a, b):
    for name in ROW_ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(codes_of(a), codes_of(b))


def assert_same_results(a, b, rerank_params=({"nprobe": 4, "rerank": 30}, {"nprobe": 16, "rerank": 0})):
    for params in rerank_params:
        Da, Ia = a.search(Q, 10, params=params)
        Db, Ib = b.search(Q, 10, params=params)
        np.testing.assert_array_equal(Da, Db)
        np.testing.assert_array_equal(Ia, Ib)


def by_id(idx):
    """Each id's vector and sub-quantizer codes, in id order (independent of the row numbering)."""
    order = np.argsort(idx.row_ids)
    return idx.vectors[order], idx.sub_codes(order)


@pytest.mark.parametrize("spec", SPECS)
def test_chunked_adds_hold_the_same_rows_and_results_as_one_add(trained, spec):
    one = fresh(trained, spec)
    one.add(X, IDS)
    chunked = add_chunks(fresh(trained, spec))
    assert chunked.ntotal == one.ntotal == N and chunked.offsets.shape[0] == -(-N // CHUNK)
    for a, b in zip(by_id(chunked), by_id(one)):
        np.testing.assert_array_equal(a, b)
    # exact re-ranked keys do not depend on the row numbering; ADC keys neither (4-bit ties may order differently)
    for params in ({"nprobe": 4, "rerank": 30}, {"nprobe": 16, "rerank": 100}):
        Da, Ia = chunked.search(Q, 10, params=params)
        Db, Ib = one.search(Q, 10, params=params)
        np.testing.assert_array_equal(Da, Db)
        np.testing.assert_array_equal(Ia, Ib)
    np.testing.assert_array_equal(chunked.search(Q, 10, params={"nprobe": 16, "rerank": 0})[0],
                                  one.search(Q, 10, params={"nprobe": 16, "rerank": 0})[0])


@pytest.mark.parametrize("spec", SPECS)
def test_reserve_then_chunked_adds_copy_nothing_and_match_growth(trained, spec):
    grown = add_chunks(fresh(trained, spec))
    idx = fresh(trained, spec)
    idx.reserve(N)
    bufs = dict(idx._bufs)
    assert bufs["vectors"].shape == (N, D) and idx.ntotal == 0 and idx.vectors.shape == (0, D)
    add_chunks(idx, X[:CHUNK * 2], IDS[:CHUNK * 2])
    # every per-row array of 8-bit codes, and the vectors, ids and tombstones of 4-bit ones, stayed in place
    same = [n for n in ("row_ids", "deleted", "vectors", "_codes") if n in bufs]
    assert all(idx._bufs[n] is bufs[n] for n in same)
    add_chunks(idx, X[CHUNK * 2:], IDS[CHUNK * 2:])
    assert all(idx._bufs[n] is bufs[n] for n in ("row_ids", "deleted", "vectors"))
    assert_same_state(idx, grown)
    assert_same_results(idx, grown)
    # reserve(0) and reserving what is already there change nothing
    before = dict(idx._bufs)
    idx.reserve(0)
    assert all(idx._bufs[n] is before[n] for n in before)


def test_reserve_rejects_bad_counts_and_is_a_no_op_for_other_kinds(trained):
    idx = fresh(trained, SPECS[0])
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(InvalidArgument, match="reserve"):
            idx.reserve(bad)
    flat = index_factory(D, "Flat")
    flat.reserve(10_000)
    flat.add(X[:10], IDS[:10])
    assert flat.ntotal == 10


@pytest.mark.parametrize("spec", SPECS)
def test_memory_counts_spare_rows_and_compact_shrinks_to_fit(trained, spec):
    idx = add_chunks(fresh(trained, spec))
    assert idx._bufs["vectors"].shape[0] > N  # doubling left spare rows (257 * 16 > 3000)
    spare = idx.memory_bytes()
    exact = copy.deepcopy(idx)  # copies hold only the rows in use
    assert spare - exact.memory_bytes() >= (idx._bufs["vectors"].shape[0] - N) * D * 4
    idx.compact()
    assert idx.memory_bytes() == exact.memory_bytes()
    assert all(b.shape[0] == getattr(idx, n).shape[0] for n, b in idx._bufs.items())
    assert_same_state(idx, exact)
    assert_same_results(idx, exact)
    idx.compact()  # nothing spare: no copy
    bufs = dict(idx._bufs)
    idx.compact()
    assert all(idx._bufs[n] is bufs[n] for n in bufs)
    # adding after compact grows again
    extra = clustered(100, 9)
    idx.add(extra, np.arange(100, dtype=np.int64) + 10**6)
    order = np.argsort(idx.row_ids[N:])
    assert idx.ntotal == N + 100 and np.array_equal(idx.vectors[N:][order], extra)


@pytest.mark.parametrize("spec", SPECS)
def test_views_follow_every_reallocation(trained, spec):
    idx = fresh(trained, spec)
    idx.add(X[:100], IDS[:100])
    idx.remove(IDS[:10])  # before growth
    for s in range(100, N, CHUNK):  # many reallocations
        idx.add(X[s:s + CHUNK], IDS[s:s + CHUNK])
        for name in ("row_ids", "deleted", "vectors"):
            assert growth.owns(idx._bufs[name], getattr(idx, name)), name
    idx.remove(IDS[500:520])  # after growth: must reach the array the kernel masks with
    gone = np.concatenate([IDS[:10], IDS[500:520]])
    assert idx.nlive == N - 30 and np.isin(idx.row_ids[idx.deleted], gone).all()
    assert idx._bufs["deleted"][:N].sum() == 30
    _, I = idx.search(X[490:530], 10, params={"nprobe": 16, "rerank": 50})
    assert not np.isin(I, gone).any()
    # and the tombstones survive later growth
    idx.add(clustered(2 * N, 3), np.arange(2 * N, dtype=np.int64) + 10**6)
    assert idx.nlive == 3 * N - 30 and np.isin(idx.row_ids[idx.deleted], gone).all()


@pytest.mark.parametrize("spec", SPECS)
def test_save_load_round_trip_of_a_grown_index(tmp_path, trained, spec):
    idx = add_chunks(fresh(trained, spec))
    idx.remove(IDS[::7])
    store = LocalStore(str(tmp_path))
    idx.save(store, "ix")
    for mmap in (False, True):
        back = load_index(store, "ix", mmap=mmap)
        assert_same_state(back, idx)
        assert_same_results(back, idx)
    idx.compact()
    assert back.memory_bytes() + back.mapped_bytes() == idx.memory_bytes()


@pytest.mark.parametrize("spec", SPECS)
def test_add_to_a_memory_mapped_index_copies_it_into_memory_once(tmp_path, trained, spec):
    half = N // 2
    idx = add_chunks(fresh(trained, spec), X[:half], IDS[:half])
    store = LocalStore(str(tmp_path))
    idx.save(store, "ix")
    mapped = load_index(store, "ix", mmap=True)
    assert isinstance(mapped.vectors, np.memmap) and mapped.mapped_bytes() == half * D * 4
    add_chunks(mapped, X[half:], IDS[half:])
    add_chunks(idx, X[half:], IDS[half:])
    assert not isinstance(mapped.vectors, np.memmap) and mapped.mapped_bytes() == 0
    assert_same_state(mapped, idx)
    assert_same_results(mapped, idx)
    # the file it was mapped from is untouched
    np.testing.assert_array_equal(load_index(store, "ix").vectors, idx.vectors[:half])
    # compact on a mapped index keeps it mapped
    again = load_index(store, "ix", mmap=True)
    again.compact()
    again.reserve(0)
    assert isinstance(again.vectors, np.memmap)


@pytest.mark.parametrize("spec", SPECS)
def test_shallow_copies_add_independently(trained, spec):
    a = add_chunks(fresh(trained, spec), X[:1000], IDS[:1000])
    a.reserve(500)  # spare rows both could write into
    b = copy.copy(a)
    a.add(X[1000:1100], IDS[1000:1100])
    b.add(X[2000:2100], IDS[2000:2100])
    assert a.ntotal == b.ntotal == 1100
    np.testing.assert_array_equal(np.sort(a.row_ids[1000:]), IDS[1000:1100])
    np.testing.assert_array_equal(np.sort(b.row_ids[1000:]), IDS[2000:2100])
    np.testing.assert_array_equal(a.vectors[:1000], b.vectors[:1000])


def test_add_chunks_bench_child_reports_identical_results_with_and_without_reserve():
    from argparse import Namespace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not part of the package
    from bench.add_chunks import child

    runs = [child(Namespace(n=2000, d=16, chunk=300, spec="IVF8,PQ8x4,Refine", mode=mode))
            for mode in ("grow", "reserve")]
    assert runs[0]["results_md5"] == runs[1]["results_md5"]
    assert runs[0]["memory_bytes"] == runs[1]["memory_bytes"] > 2000 * 16 * 4
    assert all(r["add_s"] >= 0 and r["peak_rss_mb"] >= r["rss_before_add_mb"] > 0 for r in runs)
