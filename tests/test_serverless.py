"""Serverless fan-out: tree ids, cache, payloads, cost, in-process tree, and end to end through boto3 against the
local Lambda emulator with S3 on the moto server (results, per-role invocation counts, warm reuse, faults,
throttling, >6 MB payloads), plus the deploy control plane against moto."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest

from shoal.errors import InvalidArgument, ResourceExhausted
from shoal.index.flat import exact_search
from shoal.serverless import client
from shoal.serverless.backends import search_inprocess
from shoal.serverless.cache import LRUCache
from shoal.serverless.cost import invocation_cost, summarize
from shoal.serverless.invokers import LambdaInvoker, RemoteError
from shoal.serverless.local import LocalInvoker
from shoal.serverless.manifest import current_version, list_versions
from shoal.serverless.partitioned import FlatBackend
from shoal.serverless.payload import decode, dumps, encode, loads, spill_if_large, unspill
from shoal.serverless.tree import Tree
from shoal.storage import LocalStore, S3Store

D_DIM = 16
N = 2400
P = 6


def make_data(seed=7):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((P, D_DIM)).astype(np.float32) * 4
    x = (centers[rng.integers(0, P, N)] + rng.standard_normal((N, D_DIM))).astype(np.float32)
    ids = (np.arange(N, dtype=np.int64) * 3 + 11)
    q = (centers[rng.integers(0, P, 24)] + rng.standard_normal((24, D_DIM))).astype(np.float32)
    return x, ids, q


# ---------------------------------------------------------------------------------------------------- units


@pytest.mark.parametrize("b,L", [(1, 1), (2, 1), (2, 2), (3, 2), (2, 3), (4, 2), (3, 0)])
def test_tree_preorder_ids_and_shares(b, L):
    tree = Tree(b, L)
    for nq in (0, 1, 7, 100):  # query slices: contiguous, disjoint, covering; a subtree's rows are its nodes' rows
        own = [tree.query_range(n, nq) for n in range(tree.n_nodes)]
        assert sum(h - lo for lo, h in own) == nq and all(lo <= h for lo, h in own)
        for n in range(tree.n_nodes):
            lo, hi = tree.subtree_query_range(n, nq)
            assert sum(own[m][1] - own[m][0] for m in tree.subtree(n)) == hi - lo
    assert tree.n_allocators == sum(b ** j for j in range(1, L + 1))
    # walking children from the root visits every node once, in pre-order
    order, stack = [], [0]
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(tree.children(node)))
    assert order == list(range(tree.n_nodes))
    for node in range(tree.n_nodes):
        sub = tree.subtree(node)
        assert list(sub) == sorted(sub) and all(c in sub for c in tree.children(node))
        assert len(tree.children(node)) == (b if tree.depth_of(node) < L else 0)
    for n_parts in (1, 4, 13):
        owners = [tree.owner(p) for p in range(n_parts)]
        shares = sum((tree.share(n, n_parts) for n in range(tree.n_nodes)), [])
        assert sorted(shares) == list(range(n_parts))  # every partition has exactly one owner
        assert all(p in tree.share(owners[p], n_parts) for p in range(n_parts))
        assert tree.subtree_partitions(0, n_parts) == list(range(n_parts))


def test_tree_rejects_bad_settings():
    for b, L in [(0, 1), (2, -1), (True, 1), (2.0, 1)]:
        with pytest.raises(InvalidArgument):
            Tree(b, L)
    with pytest.raises(InvalidArgument):
        Tree(2, 2).children(7)


def test_lru_cache_bound_eviction_and_single_load():
    cache = LRUCache(3000)
    loads_ = []

    def loader(n, size):
        def f():
            loads_.append(n)
            return np.zeros(size, dtype=np.uint8)
        return f

    assert cache.get_or_load(("s", "v", "a"), loader("a", 1000))[1] is False
    assert cache.get_or_load(("s", "v", "a"), loader("a", 1000))[1] is True
    cache.get_or_load(("s", "v", "b"), loader("b", 1000))
    cache.get_or_load(("s", "v", "a"), loader("a", 1000))  # a is now most recent
    cache.get_or_load(("s", "v", "c"), loader("c", 1500))  # evicts b
    assert ("s", "v", "b") not in cache and ("s", "v", "a") in cache and cache.used <= 3000
    big, hit = cache.get_or_load(("s", "v", "huge"), loader("huge", 5000))
    assert big.size == 5000 and not hit and ("s", "v", "huge") not in cache
    # a new version is a different key: a rebuild never serves stale data
    assert cache.get_or_load(("s", "v2", "a"), loader("a2", 10))[1] is False
    # concurrent callers of one key load it once
    cache2 = LRUCache(10_000)
    gate = threading.Event()

    def slow():
        gate.wait(2)
        loads_.append("slow")
        return np.zeros(10)

    threads = [threading.Thread(target=cache2.get_or_load, args=(("k",), slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert loads_.count("slow") == 1 and cache2.hits == 3


def test_remote_rows_read_blocks_by_range_and_keep_them(tmp_path, rng):
    from shoal.index.persist import npy_header, save_arrays
    from shoal.serverless.cache import Reader, RemoteRows

    store = LocalStore(tmp_path / "rows")
    a = rng.standard_normal((1000, 8)).astype(np.float32)  # 32 B rows
    save_arrays(store, "v/x", {"kind": "t"}, {"a": a})
    reads = []
    get_range = store.get_range
    store.get_range = lambda key, lo, hi: reads.append((lo, hi)) or get_range(key, lo, hi)
    header = npy_header(store, "v/x/a.npy")
    reads.clear()

    def rows_of(reader, **kw):
        return RemoteRows(reader, "v/x/a.npy", header, block_bytes=320, **kw)  # 10 rows a block
    reader = Reader(store, "v1", LRUCache(1 << 20))
    want = np.array([5, 3, 998, 12, 5, 400], dtype=np.int64)
    np.testing.assert_array_equal(rows_of(reader, max_gap_bytes=0).take(want), a[want])
    # blocks 0, 1, 40, 99: runs 0-1, 40 and 99, each one ranged GET of whole blocks
    assert sorted(hi - lo for lo, hi in reads) == [320, 320, 640]
    assert reader.metrics()["bytes_fetched"] == 1280 and reader.metrics()["cache_misses"] == 4
    # warm: nothing read; a new block only
    reads.clear()
    r2 = Reader(store, "v1", reader.cache)
    np.testing.assert_array_equal(rows_of(r2).take(np.array([999, 0, 401, 19])), a[[999, 0, 401, 19]])
    assert reads == [] and r2.metrics()["bytes_fetched"] == 0 and r2.metrics()["cache_hits"] == 4
    # gaps up to max_gap_bytes are read along: blocks 50 and 53 in one GET of 4 blocks
    reads.clear()
    np.testing.assert_array_equal(rows_of(r2, max_gap_bytes=640).take(np.array([535, 500])), a[[535, 500]])
    assert [hi - lo for lo, hi in reads] == [4 * 320]
    assert rows_of(r2).take(np.array([], dtype=np.int64)).shape == (0, 8)
    with pytest.raises(InvalidArgument, match="rows must be in 0..999"):
        rows_of(r2).take(np.array([1000]))
    with pytest.raises(InvalidArgument, match="block > 0"):
        rows_of(r2, max_gap_bytes=-1)


def test_cluster_major_codes_read_by_range_fill_only_the_clusters_asked(tmp_path, rng):
    """osq_lists: a partition's records and head round-trip, in position order and not; ranged reads fill exactly the
    asked clusters (neighbours closer than the gap share a GET), once; a short read is an error, not garbage."""
    import copy as copy_

    from shoal.index.osq import OSQIndex
    from shoal.index.osq_partition import OSQPartition
    from shoal.serverless import osq_lists as L
    from shoal.serverless.cache import Reader

    x = rng.standard_normal((1500, D_DIM)).astype(np.float32)
    index = OSQIndex(D_DIM, "l2", partitions=1)
    index.train(x)
    index.add(x, np.arange(1500, dtype=np.int64) * 7)
    src = index.parts[0]
    perm = rng.permutation(src.size)  # the same partition with its positions out of cluster order
    shuffled = OSQPartition(0, src.rows[perm], src.ids[perm], src.book, np.ascontiguousarray(src.segs[:, perm]),
                            src.binary[perm], src.vectors[perm], src.metric, src.centroids, src.cluster[perm])
    assert src.contiguous and not shuffled.contiguous
    for part in (src, shuffled):
        store = LocalStore(tmp_path / f"lists{int(part.contiguous)}")
        store.put("v/lists/p0000.bin", L.pack(part))
        head = L.load_head(L.pack_head(part, (np.dtype("<f4"), (part.size, D_DIM), 128)), "h")
        np.testing.assert_array_equal(head["cluster"], part.cluster)
        assert head["vectors_header"] == (np.dtype("<f4"), (part.size, D_DIM), 128)
        assert all(np.array_equal(head["book"][k], v) for k, v in part.book.arrays().items())
        blank = copy_.copy(part)
        blank.segs, blank.binary = np.zeros_like(part.segs), np.zeros_like(part.binary)
        blank.ids = np.full(part.size, -1, dtype=np.int64)
        lists = L.ClusterLists("v/lists/p0000.bin", blank)
        reader = Reader(store, "v1", LRUCache(1 << 20))
        want = np.array([0, 1, 5, part.nclusters - 1])
        gets = lists.ensure(reader, want)
        # clusters 0 and 1 are neighbours: one GET for both; 5 and the last are far apart
        assert gets == len(lists.runs(want)) <= 3
        read = np.flatnonzero(lists.loaded & (np.diff(part.list_indptr) > 0))
        assert set(want) <= set(read) and len(read) < part.nclusters
        rows = np.isin(part.cluster, read)
        np.testing.assert_array_equal(blank.ids[rows], part.ids[rows])
        np.testing.assert_array_equal(blank.segs[:, rows], part.segs[:, rows])
        np.testing.assert_array_equal(blank.binary[rows], part.binary[rows])
        assert (blank.ids[~rows] == -1).all()
        assert reader.metrics()["bytes_fetched"] == sum(lists.sizes[c0:c1].sum() for c0, c1 in lists.runs(want))
        assert reader.metrics()["cache_misses"] == gets  # cold reads, counted as such in the metrics
        assert lists.ensure(reader, want) == 0  # read once
    store.put("v/lists/p0000.bin", L.pack(part)[:100])  # truncated object
    lists = L.ClusterLists("v/lists/p0000.bin", copy_.copy(part))
    with pytest.raises(RuntimeError, match="read .* bytes, expected"):
        lists.ensure(Reader(store, "v1", LRUCache(1 << 20)), [part.nclusters - 1])


def test_payload_roundtrip_and_spill(tmp_path, rng):
    obj = {"role": "processor", "a": rng.standard_normal((50, 8)).astype(np.float32),
           "i": np.arange(-1, 30, dtype=np.int64), "z": np.zeros(5000, np.float32), "n": np.int64(3), "s": "x",
           "inf": np.array([np.inf, -1.0], np.float32), "nested": [{"b": np.ones(2, bool)}]}
    back = loads(dumps(obj))
    for key in ("a", "i", "z", "inf"):
        assert back[key].dtype == obj[key].dtype and np.array_equal(back[key], obj[key])
    assert back["n"] == 3 and back["nested"][0]["b"].dtype == bool
    assert len(dumps({"z": np.zeros(100_000, np.float32)})) < 4000  # compressible arrays are compressed
    store = LocalStore(tmp_path / "s")
    enc = encode(obj)
    same, key = spill_if_large(enc, store.uri, limit=10**7)
    assert key is None and same is enc
    ref, key = spill_if_large(enc, store.uri, limit=100)
    assert key and ref["role"] == "processor" and store.exists(key)
    got, nbytes = unspill(ref, delete=True)
    assert nbytes > 0 and not store.exists(key)
    assert np.array_equal(decode(got)["a"], obj["a"])
    with pytest.raises(ResourceExhausted):
        spill_if_large(enc, None, limit=100)
    with pytest.raises(InvalidArgument):
        decode({"__nd__": {"dtype": "<f4", "shape": [3], "z": False, "b64": "AAAA"}})


def test_cost_model():
    c = invocation_cost(100.2, 2048)
    assert c == pytest.approx(0.101 * 2 * 0.0000166667 + 0.2e-6)
    metrics = [{"role": "coordinator", "ms": 10, "memory_mb": 1024, "cold": True},
               {"role": "processor", "ms": 5, "memory_mb": 1024, "bytes_fetched": 100, "get_requests": 2},
               {"role": "processor", "ms": 50, "memory_mb": 1024, "inline": True}]
    s = summarize(metrics)
    assert s["invocations"] == {"coordinator": 1, "processor": 1} and s["inline"] == {"processor": 1}
    assert s["cold"] == {"coordinator": 1} and s["warm"] == {"processor": 1} and s["bytes_fetched"] == 100
    assert s["gb_s"] == pytest.approx(0.015)
    assert s["cost_usd"] == pytest.approx(0.015 * 0.0000166667 + 2 * 0.2e-6 + 2 * 0.0004 / 1000)


# ---------------------------------------------------------------------------------------------------- in-process


def test_inprocess_tree_equals_exact_and_survives_tiny_concurrency(tmp_path):
    x, ids, q = make_data()
    store = LocalStore(tmp_path / "idx")
    m = FlatBackend.build(store, x, ids, n_partitions=P)
    assert sum(m["partition_counts"]) == N and min(m["partition_counts"]) > 0
    De, Ie = exact_search(q, x, 10, "l2", labels=ids)
    D0, I0 = search_inprocess(store, q, 10)
    assert np.array_equal(I0, Ie)
    np.testing.assert_allclose(D0, De, rtol=1e-4, atol=1e-3)
    for limit in (None, 1, 3):
        inv = LocalInvoker(max_concurrency=limit)
        r = client.search(q, 10, index=store.uri, function="f", invoker=inv, b=2, L=2)
        assert np.array_equal(r.I, I0)
        tot = {k: r.stats["invocations"].get(k, 0) + r.stats["inline"].get(k, 0) for k in
               ("coordinator", "allocator", "processor")}
        assert tot == {"coordinator": 1, "allocator": 6, "processor": P}
        if limit == 1:  # nothing but the coordinator could be invoked: the whole tree ran inline, no deadlock
            assert r.stats["invocations"] == {"coordinator": 1} and inv.throttled > 0
    # split="queries": each allocator routes its own slice of the batch (SQUASH); same answer
    for b, L in ((2, 1), (2, 2), (3, 2)):
        r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=b, L=L, split="queries")
        assert np.array_equal(r.I, I0), (b, L)
        nodes = sorted(m["node"] for m in r.metrics if m["role"] in ("allocator", "coordinator"))
        assert nodes == list(range(Tree(b, L).n_nodes))
        assert sum(m["nq"] for m in r.metrics if m["role"] == "allocator") == q.shape[0]
    r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(max_concurrency=2), b=2, L=2,
                      split="queries")
    assert np.array_equal(r.I, I0)
    # chunks of 5 queries per processor invocation: more, smaller invocations, the same answer
    r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1, chunk=5)
    assert np.array_equal(r.I, I0) and r.stats["invocations"]["processor"] == P * 5  # 24 queries -> 5 chunks
    # nprobe routes each query to fewer partitions; still exactly what the in-process search returns
    r = client.search(q, 5, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1, params={"nprobe": 2})
    D2, I2 = search_inprocess(store, q, 5, params={"nprobe": 2})
    assert np.array_equal(r.I, I2)
    # a rebuild is a new version; a search pinned to the old one still reads the old data only
    old = current_version(store)
    FlatBackend.build(store, x[:100], ids[:100], n_partitions=2)
    assert len(list_versions(store)) == 2 and current_version(store) != old
    r_old = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), version=old)
    assert np.array_equal(r_old.I, I0) and r_old.version == old
    r_new = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker())
    assert np.isin(r_new.I[r_new.I >= 0], ids[:100]).all()


def test_kmeans_partitions_of_ivfpq_indexes(tmp_path):
    from shoal.serverless.partitioned import KMeansBackend

    x, ids, q = make_data()
    store = LocalStore(tmp_path / "ivf")
    m = KMeansBackend.build(store, x, ids, n_partitions=4, factory="IVF8,PQ4x4")
    assert m["kind"] == "kmeans" and m["factory"] == "IVF8,PQ4x4"
    for params in ({"nprobe": 8}, {"nprobe": 2, "visit": 2}):
        D0, I0 = search_inprocess(store, q, 10, params=params)
        r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1, params=params)
        assert np.array_equal(r.I, I0) and np.isin(r.I[r.I >= 0], ids).all()
    with pytest.raises(RemoteError, match="nprobe|parameter|unknown"):
        client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), params={"bogus": 1})


def test_inprocess_response_spill(tmp_path, monkeypatch):
    x, ids, q = make_data()
    store = LocalStore(tmp_path / "idx")
    FlatBackend.build(store, x, ids, n_partitions=4)
    D0, I0 = search_inprocess(store, q, 10)
    monkeypatch.setenv("SHOAL_PAYLOAD_LIMIT", "1500")  # every request and response spills to the store
    r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1)
    assert np.array_equal(r.I, I0)
    assert r.stats["spilled_requests"] > 0 and r.stats["spilled_responses"] > 0
    assert store.list("_spill") == []  # spills are cleaned up after each call


# ---------------------------------------------------------------------------------------------------- emulator


@pytest.fixture(scope="module")
def s3_index(moto_endpoint):
    import uuid

    import boto3

    bucket = "shoal-sls-" + uuid.uuid4().hex[:10]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    x, ids, q = make_data()
    store = S3Store(bucket, "idx", endpoint_url=moto_endpoint)
    FlatBackend.build(store, x, ids, n_partitions=P)
    return store, x, ids, q


@pytest.fixture(scope="module")
def emulator(moto_endpoint, tmp_path_factory, kernels_dir):
    from shoal.serverless.emulator import Emulator

    faults_file = tmp_path_factory.mktemp("faults") / "faults.json"
    faults_file.write_text("[]")
    emu = Emulator(max_workers=16, timeout=60, env={"SHOAL_S3_ENDPOINT": moto_endpoint,
                                                    "SHOAL_FAULTS_FILE": str(faults_file)},
                   functions={"shoal-p*": {"timeout": 10}}, kernels_dir=kernels_dir)
    emu.start()
    emu.faults_file = faults_file
    yield emu
    emu.stop()


@pytest.fixture
def faults(emulator):
    path = emulator.faults_file

    def set_faults(specs):
        for f in path.parent.glob(path.name + ".fired.*"):
            f.unlink()
        path.write_text(json.dumps(specs))

    yield set_faults
    set_faults([])


def run_search(emulator, store, q, **kw):
    kw.setdefault("b", 2)
    kw.setdefault("L", 2)
    return client.search(q, kw.pop("k", 10), index=store, function="shoal", allocator="shoal-a",
                         processor="shoal-p{partition}", invoker=LambdaInvoker(emulator.url), **kw)


def no_compiles(r) -> None:
    """Every invocation of a search reports that it compiled no numba kernel (the init phase loaded them)."""
    assert all(m["compiles"] == 0 for m in r.metrics if not m.get("inline")), \
        [(m["role"], m["compiles"]) for m in r.metrics if m.get("compiles")]


def test_end_to_end_tree_through_boto3_and_warm_second_batch(emulator, s3_index, record_property):
    store, x, ids, q = s3_index
    D0, I0 = search_inprocess(store, q, 10)
    emulator.reset_stats()
    r = run_search(emulator, store, q)
    assert np.array_equal(r.I, I0)
    # the emulator started from an empty kernels directory: it compiled them before reporting ready, and the first
    # batch's fresh containers loaded instead of compiling (the times are recorded, not asserted)
    init = emulator.stats()["init"]
    assert init["build"]["compiled"] > 0 and init["build"]["kernels"] > 0
    assert init["preload"]["loaded"] == init["build"]["kernels"] and init["preload"]["compiled"] == 0
    no_compiles(r)
    assert all(m["cold"] for m in r.metrics if not m.get("inline"))
    record_property("emulator_ready_s", init["ready_s"])
    record_property("first_batch_ms", r.elapsed_ms)
    record_property("container_init_ms", emulator.stats()["container_init_ms"])
    np.testing.assert_allclose(r.D, D0, rtol=1e-5, atol=1e-4)
    st = emulator.stats()
    # the tree: 1 coordinator, b + b^2 = 6 allocators, and each partition processed exactly once
    assert st["by_role"] == {"coordinator": 1, "allocator": 6, "processor": P}
    assert all(st["invocations"][f"shoal-p{p}"] == 1 for p in range(P))
    assert r.stats["invocations"] == {"coordinator": 1, "allocator": 6, "processor": P}
    assert r.stats["bytes_fetched"] > 0 and r.stats["cost_usd"] > 0
    assert sorted(m["partition"] for m in r.metrics if m["role"] == "processor") == list(range(P))
    nodes = sorted(m["node"] for m in r.metrics if m["role"] == "allocator")
    assert nodes == list(range(1, 7))
    # second batch: same containers, nothing fetched from S3
    emulator.reset_stats()
    r2 = run_search(emulator, store, q[::-1].copy())
    assert np.array_equal(r2.I, I0[::-1])
    assert emulator.stats().get("cold_starts", 0) == 0
    assert r2.stats["cold"] == {} and r2.stats["bytes_fetched"] == 0 and r2.stats["cache_misses"] == 0
    assert r2.stats["cache_hits"] > 0


def test_osq_on_s3_through_boto3_reads_vector_rows_by_range(emulator, moto_endpoint):
    """OSQ partitions on (moto) S3 through the emulator: processors read vector rows with ranged GETs against the
    S3 API, results equal the in-process search, filtered too, and a repeated batch is served from warm caches."""
    import uuid

    import boto3

    from shoal import filters
    from shoal.index.osq import OSQIndex
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(11)
    x, ids, q = make_data(seed=11)
    index = OSQIndex(D_DIM, "l2", partitions=4)
    index.train(x)
    index.add(x, ids, attrs={"u": rng.random(N)})
    bucket = "shoal-osq-" + uuid.uuid4().hex[:10]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    store = S3Store(bucket, "osq", endpoint_url=moto_endpoint)
    OSQBackend.publish(store, index)
    flt = filters.to_json(filters.parse("u < 0.3"))
    # start from no containers: the module's emulator is shared, and with earlier tests' containers still warm a
    # tree can hit its 16-container limit, whose throttling fallback runs work inline in cold allocators
    emulator.kill_idle()
    for f in (None, flt):
        D0, I0 = search_inprocess(store, q, 10, filter=f)
        assert np.array_equal(I0, index.search(q, 10, filter=None if f is None else "u < 0.3",
                                               params={"level2": "bounds"})[1])
        emulator.reset_stats()
        r = run_search(emulator, store, q, filter=f, L=1)
        assert np.array_equal(r.I, I0)
        np.testing.assert_allclose(r.D, D0, rtol=1e-5, atol=1e-4)
        assert r.stats["invocations"]["processor"] >= 1
        no_compiles(r)  # OSQ's kernels came with the init phase too
        # level 0 ran once, in the coordinator, whose container read the router data; the allocators' containers
        # read only the manifest
        assert [m["role"] for m in r.metrics if m.get("route_ms", 0) > 0] == ["coordinator"]
        assert all(m["bytes_fetched"] < 2000 for m in r.metrics if m["role"] == "allocator")
        if f is None:
            assert r.metrics[0]["role"] == "coordinator" and r.metrics[0]["bytes_fetched"] > 10_000
    # warm: the same batch again reads nothing from S3
    r2 = run_search(emulator, store, q, filter=flt, L=1)
    assert np.array_equal(r2.I, I0) and r2.stats["bytes_fetched"] == 0


def test_image_init_phase_seeds_and_loads_the_shipped_kernels(emulator, tmp_path):
    """What a container of the image does: kernels built into a directory at image build time (here: by the emulator
    fixture, from an empty directory) are copied into an empty, writable numba cache and loaded when the handler is
    imported (the init phase), in a fresh process; searches through every OSQ plan then compile nothing."""
    import os
    import subprocess
    import sys

    from shoal.index.osq import OSQIndex
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(12)
    x, ids, q = make_data(seed=12)
    index = OSQIndex(D_DIM, "l2", partitions=3)
    index.train(x)
    index.add(x, ids, attrs={"u": rng.random(N)})
    OSQBackend.publish(LocalStore(tmp_path / "osq"), index)
    np.save(tmp_path / "q.npy", q)
    script = f"""
import json, numpy as np
from shoal import filters
from shoal.serverless import handler, kernels
from shoal.serverless.backends import search_inprocess
from shoal.storage import LocalStore
c0 = kernels.COMPILES.snapshot()[0]
q = np.load({str(tmp_path / "q.npy")!r})
for flt in (None, "u < 0.5", "u < 0.002"):
    for mode in ("auto", "multilevel", "exact"):
        search_inprocess(LocalStore({str(tmp_path / "osq")!r}), q, 10, params={{"mode": mode}},
                         filter=None if flt is None else filters.to_json(filters.parse(flt)))
print(json.dumps({{"init": kernels.INIT, "search_compiles": kernels.COMPILES.snapshot()[0] - c0}}))
"""
    env = dict(os.environ, SHOAL_KERNELS=emulator.kernels_dir, NUMBA_CACHE_DIR=str(tmp_path / "numba"),
               NUMBA_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    init = got["init"]
    assert "error" not in init and init["copied_bytes"] > 0
    assert init["kernels"] > 0 and init["loaded"] == init["kernels"] and init["compiled"] == 0
    assert got["search_compiles"] == 0


def test_processor_failures_are_retried_then_name_the_partition(emulator, s3_index, faults):
    store, x, ids, q = s3_index
    I0 = search_inprocess(store, q, 10)[1]
    # fails once, then succeeds: retried transparently
    faults([{"role": "processor", "partition": 2, "mode": "raise", "times": 1}])
    emulator.reset_stats()
    r = run_search(emulator, store, q)
    assert np.array_equal(r.I, I0) and emulator.stats()["invocations"]["shoal-p2"] == 2
    # always raises: 1 + 2 retries, then an error naming the partition
    faults([{"role": "processor", "partition": 2, "mode": "raise", "message": "disk on fire"}])
    emulator.reset_stats()
    with pytest.raises(RemoteError, match="partition 2") as err:
        run_search(emulator, store, q)
    assert "disk on fire" in str(err.value)
    assert emulator.stats()["invocations"]["shoal-p2"] == 3
    # malformed answers are detected and retried like failures
    faults([{"role": "processor", "partition": 4, "mode": "malformed"}])
    with pytest.raises(RemoteError, match=r"partition 4.*expected D float32"):
        run_search(emulator, store, q, b=2, L=1)
    faults([{"role": "processor", "partition": 4, "mode": "malformed", "times": 2}])
    assert np.array_equal(run_search(emulator, store, q, b=2, L=1).I, I0)


def test_processor_timeout_is_retried_then_named(emulator, s3_index, faults):
    store, x, ids, q = s3_index
    I0 = search_inprocess(store, q, 10)[1]
    run_search(emulator, store, q, b=2, L=1)  # warm
    faults([{"role": "processor", "partition": 1, "mode": "sleep", "seconds": 30, "times": 1}])
    emulator.reset_stats()
    r = run_search(emulator, store, q, b=2, L=1)
    assert np.array_equal(r.I, I0)
    st = emulator.stats()
    assert st["timeouts"] == 1 and st["invocations"]["shoal-p1"] == 2
    faults([{"role": "processor", "partition": 1, "mode": "sleep", "seconds": 30}])
    with pytest.raises(RemoteError, match=r"partition 1.*timed out"):
        run_search(emulator, store, q, b=2, L=1, retries=0)


def test_throttling_inline_fallback_and_client_retry(moto_endpoint, s3_index, tmp_path, kernels_dir):
    from shoal.serverless.emulator import Emulator

    store, x, ids, q = s3_index
    I0 = search_inprocess(store, q, 10)[1]
    with Emulator(max_workers=2, env={"SHOAL_S3_ENDPOINT": moto_endpoint}, kernels_dir=kernels_dir) as emu:
        # the tree needs 13 concurrent invocations; with 2 the allocators run refused children inline
        r = run_search(emu, store, q)
        assert np.array_equal(r.I, I0)
        assert emu.stats()["throttled"] > 0 and sum(r.stats["inline"].values()) > 0
        done = {k: r.stats["invocations"].get(k, 0) + r.stats["inline"].get(k, 0)
                for k in ("coordinator", "allocator", "processor")}
        assert done == {"coordinator": 1, "allocator": 6, "processor": P}
        # two clients at once on one container: the second is refused (429) and retried with backoff; each
        # coordinator call holds the container for 2 s so that the two calls overlap however fast a search is and
        # however late the second thread gets to its invoke on a loaded machine (0.5 s was once not enough in CI)
        slow = tmp_path / "slow-coordinator.json"
        slow.write_text(json.dumps([{"role": "coordinator", "mode": "sleep", "seconds": 2.0}]))
        with Emulator(max_workers=1, env={"SHOAL_S3_ENDPOINT": moto_endpoint, "SHOAL_FAULTS_FILE": str(slow)},
                      kernels_dir=kernels_dir) as one:
            invokers = [LambdaInvoker(one.url, seed=i, base_delay=0.2, max_attempts=12) for i in range(2)]
            client.search(q, 10, index=store.uri, function="shoal", invoker=invokers[0], b=2, L=1)  # warm it
            results = [None, None]

            def go(i):
                results[i] = client.search(q, 10, index=store.uri, function="shoal", invoker=invokers[i], b=2, L=1)

            threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(res is not None and np.array_equal(res.I, I0) for res in results)
            assert sum(inv.retries["throttle"] for inv in invokers) > 0
            assert one.stats()["throttled"] > 0


def test_payload_over_6mb(emulator, s3_index):
    store, x, ids, q = s3_index
    rng = np.random.default_rng(3)
    # wide vectors so that a >6 MB batch is only a few thousand queries
    wide = S3Store(store.bucket, "wide", endpoint_url=store.endpoint_url)
    FlatBackend.build(wide, rng.standard_normal((300, 512)).astype(np.float32), np.arange(300), n_partitions=2)
    big = rng.standard_normal((3300, 512)).astype(np.float32)  # 6.8 MB raw, ~9 MB as JSON
    # the emulator enforces Lambda's limit on raw requests
    with pytest.raises(ResourceExhausted, match="too large"):
        LambdaInvoker(emulator.url).invoke("shoal", {"role": "coordinator", "blob": "x" * (6 * 1024 * 1024 + 10)})
    # the client spills the batch to S3 and passes it by reference; allocators do the same for their children
    r = run_search(emulator, wide, big, k=1, b=1, L=1, params={"nprobe": 1})
    Ir = search_inprocess(wide, big, 1, params={"nprobe": 1})[1]
    assert np.array_equal(r.I, Ir)
    assert r.stats["spilled_requests"] >= 1 and r.stats["max_req_bytes"] < 6 * 1024 * 1024
    assert wide.list("_spill") == []


# ---------------------------------------------------------------------------------------------------- deploy


def test_the_lambda_zip_holds_every_module_the_handler_imports(tmp_path):
    """deploy.py lists the package's folders by hand: a new package left out of the zip fails here, not on Lambda."""
    import io
    import os
    import subprocess
    import sys
    import zipfile

    from shoal.serverless.deploy import build_zip

    zipfile.ZipFile(io.BytesIO(build_zip())).extractall(tmp_path)
    # every shoal module loaded must come from the zip (an editable install would otherwise fill the gaps)
    code = ("import sys, shoal, shoal.serverless.handler, shoal.serverless.warmup, shoal.serverless.faults\n"
            "print('\\n'.join(sorted(getattr(m, '__file__', None) or '?' for n, m in list(sys.modules.items())\n"
            "                          if n == 'shoal' or n.startswith('shoal.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    files = out.stdout.split()
    assert str(tmp_path / "shoal" / "storage" / "__init__.py") in files
    assert [f for f in files if not f.startswith(str(tmp_path / "shoal") + "/")] == []


def test_deploy_control_plane_against_moto(moto_endpoint, tmp_path, capsys):
    import uuid

    import boto3

    from shoal.serverless.deploy import DeploySpec, build_zip, deploy

    iam = boto3.client("iam", endpoint_url=moto_endpoint)
    trust = {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"},
                            "Action": "sts:AssumeRole"}]}
    role_name = "shoal-exec-" + uuid.uuid4().hex[:6]
    arn = iam.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    zipped = build_zip()
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(zipped)).namelist()
    assert "shoal/serverless/handler.py" in names and not any("tests/" in n or ".venv" in n for n in names)
    bucket = "shoal-deploy-" + uuid.uuid4().hex[:6]
    fn = "shoal-" + uuid.uuid4().hex[:6]
    spec = DeploySpec(function=fn, role_arn=arn, bucket=bucket, zip_bytes=zipped, memory_mb=1769, timeout_s=90,
                      env={"SHOAL_CACHE_MB": "512"}, partitions=2)
    rep = deploy(spec, endpoint_url=moto_endpoint, log=lambda *_: None)
    assert [f["action"] for f in rep["functions"]] == ["created"] * 3
    lam = boto3.client("lambda", endpoint_url=moto_endpoint)
    cfg = lam.get_function_configuration(FunctionName=fn)
    assert cfg["MemorySize"] == 1769 and cfg["Timeout"] == 90 and cfg["Role"] == arn
    assert cfg["Handler"] == "shoal.serverless.handler.handler"
    assert cfg["Environment"]["Variables"]["SHOAL_CACHE_MB"] == "512"
    assert lam.get_function(FunctionName=f"{fn}-p1")["Configuration"]["FunctionName"] == f"{fn}-p1"
    boto3.client("s3", endpoint_url=moto_endpoint).head_bucket(Bucket=bucket)
    spec.memory_mb = 3008
    rep = deploy(spec, endpoint_url=moto_endpoint, log=lambda *_: None)
    assert [f["action"] for f in rep["functions"]] == ["updated"] * 3
    assert lam.get_function_configuration(FunctionName=f"{fn}-p0")["MemorySize"] == 3008
    with pytest.raises(InvalidArgument):
        deploy(DeploySpec(function=fn, role_arn="not-an-arn"), endpoint_url=moto_endpoint)
    # the CLI front end: a zip from a file, SHOAL_INDEX from --index
    from shoal.cli import main

    zpath = tmp_path / "shoal.zip"
    zpath.write_bytes(zipped)
    fn2 = fn + "-cli"
    capsys.readouterr()
    assert main(["deploy", "--function", fn2, "--role-arn", arn, "--zip", str(zpath), "--memory", "1024",
                 "--index", "s3://bucket/idx", "--env", "SHOAL_CACHE_MB=256", "--endpoint-url", moto_endpoint,
                 "--json"]) == 0
    out, err = capsys.readouterr()  # --json: one document on stdout, the progress on stderr
    assert [f["name"] for f in json.loads(out)["functions"]] == [fn2] and f"function {fn2}: created" in err
    assert main(["deploy", "--function", fn2, "--role-arn", arn, "--zip", str(zpath), "--memory", "1024",
                 "--index", "s3://bucket/idx", "--env", "SHOAL_CACHE_MB=256", "--endpoint-url", moto_endpoint]) == 0
    assert capsys.readouterr().out.strip() == f"deployed 1 function (1024 MB, 120 s): {fn2} (updated)"
    env = lam.get_function_configuration(FunctionName=fn2)["Environment"]["Variables"]
    assert env == {"SHOAL_INDEX": "s3://bucket/idx", "SHOAL_CACHE_MB": "256"}
    assert main(["deploy", "--role-arn", arn, "--memory", "64", "--endpoint-url", moto_endpoint]) == 2


# ---------------------------------------------------------------------------------------------------- OSQ + CLI


def test_osq_partitions_through_the_tree_match_in_process(tmp_path):
    from shoal import filters
    from shoal.index.osq import OSQIndex
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(5)
    n = 3000
    x = rng.standard_normal((n, D_DIM)).astype(np.float32)
    attrs = {"price": rng.uniform(0, 100, n),
             "color": filters.KeywordColumn(rng.integers(0, 3, n).astype(np.int32), ["red", "green", "blue"])}
    index = OSQIndex(D_DIM, "l2", partitions=5)
    index.train(x)
    index.add(x, np.arange(n, dtype=np.int64) * 5, attrs=attrs)
    store = LocalStore(tmp_path / "osq")
    OSQBackend.publish(store, index)
    q = rng.standard_normal((16, D_DIM)).astype(np.float32)
    for text in (None, 'price < 30 and color = "red"', "price < 0.4"):  # multilevel, filtered, exact plan
        flt = None if text is None else filters.to_json(filters.parse(text))
        # processors hold codes, not vectors: level 2 ranks by code bounds, as a memory-mapped index does
        D0, I0, st = index.search_with_stats(q, 10, filter=text, params={"level2": "bounds"})
        assert st.get("short_fixed", 0) == 0
        assert np.array_equal(search_inprocess(store, q, 10, filter=flt)[1], I0), text
        r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=2, filter=flt)
        assert np.array_equal(r.I, I0), text
        rc = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=1, L=1, filter=flt,
                           chunk=3)
        assert np.array_equal(rc.I, I0), text
        rs = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=2, filter=flt,
                           split="queries")
        assert np.array_equal(rs.I, I0), text
        np.testing.assert_allclose(r.D, D0, rtol=1e-5, atol=1e-4)
        if text is not None:
            ok = index.exact_rows(filters.parse(text), np.flatnonzero(np.isin(index.row_ids, r.I[r.I >= 0])))
            assert ok.all()
    # processors loaded only their own partition's objects
    r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1)
    assert r.stats["invocations"]["processor"] == 5
    # keys that read every candidate's vector are refused up front (at the coordinator), by name, typed
    with pytest.raises(InvalidArgument, match="level2=.exact. is not served by processors"):
        client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1,
                      params={"level2": "exact"})


def test_filters_and_settings_are_checked_at_the_coordinator_before_fan_out(tmp_path):
    """The published manifest carries the schema: the coordinator fails a typo'd or mistyped filter, or a setting
    the kind does not serve, with the embedded search's message and type, before it invokes any child."""
    import json as json_

    from shoal import Database, filters
    from shoal.engine.schema import FilterAttributeError
    from shoal.index.osq import OSQIndex
    from shoal.serverless.manifest import read_manifest
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(8)
    n = 900
    x = rng.standard_normal((n, D_DIM)).astype(np.float32)
    attrs = {"price": rng.uniform(0, 100, n),
             "color": filters.KeywordColumn(rng.integers(0, 2, n).astype(np.int32), ["red", "blue"])}
    index = OSQIndex(D_DIM, "l2", partitions=3)
    index.train(x)
    index.add(x, np.arange(n, dtype=np.int64), attrs=attrs)
    store = LocalStore(tmp_path / "osq")
    manifest = OSQBackend.publish(store, index)
    assert manifest["schema"] == {"price": "float", "color": "keyword"}
    flat = LocalStore(tmp_path / "flat")
    FlatBackend.build(flat, x, np.arange(n, dtype=np.int64), n_partitions=2)
    # the embedded search's message for the same typo
    db = Database(str(tmp_path / "db"))
    col = db.create_collection("c", dim=D_DIM, schema={"price": "float", "color": "keyword"})
    with pytest.raises(FilterAttributeError) as embedded:
        col.search(x[:1], 3, filter="prce < 5")
    db.close()
    q = x[:4]
    cases = [(store, filters.to_json(filters.parse("prce < 5")), {},
              re.escape("invalid filter: unknown attribute 'prce' (did you mean 'price'?); known: color, price")),
             (store, {"op": "<", "attr": "color", "value": 3}, {}, "invalid filter: 'color'"),
             (store, None, {"nprob": 4}, r"unknown OSQ search parameter\(s\) \['nprob'\]"),
             (flat, filters.to_json(filters.parse("price < 5")), {}, "index kind 'flat' takes no filter"),
             (flat, None, {"rerank": 5}, r"unknown search parameter\(s\) \['rerank'\] for flat")]
    assert re.match(cases[0][3], str(embedded.value))
    for where, flt, params, message in cases:
        for split in ("partitions", "queries"):
            inv = LocalInvoker()
            with pytest.raises(InvalidArgument, match=message):
                client.search(q, 5, index=where.uri, function="f", invoker=inv, filter=flt, params=params,
                              split=split, b=2, L=2)
            assert dict(inv.counts) == {"f": 1}  # the coordinator alone: nothing fanned out
    # a version published before manifests carried the schema: the saved index's attribute kinds serve instead
    old = read_manifest(store)
    old.pop("schema")
    store.put(f"versions/{old['version']}/manifest.json", json_.dumps(old).encode())
    with pytest.raises(InvalidArgument, match="did you mean 'price'"):
        client.search(q, 5, index=store.uri, function="f", invoker=LocalInvoker(),
                      filter=filters.to_json(filters.parse("prce < 5")))
    ok = client.search(q, 5, index=store.uri, function="f", invoker=LocalInvoker(),
                       filter=filters.to_json(filters.parse('price < 50 and color = "red"')))
    assert np.array_equal(ok.I, search_inprocess(store, q, 5, filter='price < 50 and color = "red"')[1])


def test_level0_runs_once_per_batch_and_allocators_check_the_routes_they_get(tmp_path):
    """With the partition split the coordinator routes the batch once and hands each allocator its subtree's routes:
    no allocator routes or loads router data; a payload without routes, or with routes outside the subtree, is
    refused."""
    from shoal.index.osq import OSQIndex
    from shoal.serverless import handler
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, D_DIM)).astype(np.float32)
    index = OSQIndex(D_DIM, "l2", partitions=6)
    index.train(x)
    index.add(x, np.arange(3000, dtype=np.int64), attrs={"u": rng.random(3000)})
    store = LocalStore(tmp_path / "osq")
    OSQBackend.publish(store, index)
    q = rng.standard_normal((12, D_DIM)).astype(np.float32)
    I0 = search_inprocess(store, q, 10)[1]
    r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=2)
    assert np.array_equal(r.I, I0)
    routed = [m for m in r.metrics if m.get("route_ms", 0) > 0]
    assert [m["role"] for m in routed] == ["coordinator"]
    assert all(m.get("route_ms", 0) == 0 for m in r.metrics if m["role"] == "allocator")
    # the query split routes each slice in its allocator, once per query too
    rq = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1, split="queries")
    assert np.array_equal(rq.I, I0)
    assert sum(m["nq"] for m in rq.metrics if m.get("route_ms", 0) > 0) == q.shape[0]
    ctx = {"index": store.uri, "version": current_version(store), "k": 10, "tree": {"b": 2, "L": 1},
           "functions": {"allocator": "f", "processor": "f"}}
    with pytest.raises(InvalidArgument, match="needs 'routes'"):
        handler.handler({"role": "allocator", "node": 1, "ctx": ctx, "queries": q})
    bad = [[1, np.arange(3, dtype=np.int64), {}]]  # node 1 of b=2, L=1 owns partitions 0, 2, 4
    with pytest.raises(InvalidArgument, match="malformed route"):
        handler.handler(json.loads(json.dumps(encode({"role": "allocator", "node": 1, "ctx": ctx, "queries": q,
                                                      "routes": bad}))))
    bad = [[0, np.array([0, 12], dtype=np.int64), {}]]
    with pytest.raises(InvalidArgument, match="query rows outside"):
        handler.handler(json.loads(json.dumps(encode({"role": "allocator", "node": 1, "ctx": ctx, "queries": q,
                                                      "routes": bad}))))


def test_osq_fan_out_equals_the_full_index_with_bounds_keys_under_filters(tmp_path):
    """The fan-out answers what ``OSQIndex.search(..., level2="bounds")`` answers, filtered too: under a filter that
    passes at most half the rows, level 0 tells the processors to keep every level-1 candidate, as the full index
    does. Without that (issue 15: 'not (length < 9)' matched 18 of 20 queries) a filter that excludes the queries'
    own clusters matched 6 of these 20: its passing rows lie far away, where sign codes rank poorly."""
    from shoal import filters
    from shoal.index.osq import OSQIndex
    from shoal.serverless.osq_backend import OSQBackend

    rng = np.random.default_rng(15)
    n, d = 4000, 64
    centers = rng.standard_normal((20, d)).astype(np.float32) * 3
    label = rng.integers(0, 20, n)
    x = (centers[label] + rng.standard_normal((n, d))).astype(np.float32)
    index = OSQIndex(d, "l2", partitions=4)
    index.train(x)
    index.add(x, np.arange(n, dtype=np.int64), attrs={"c": label.astype(np.int64), "u": rng.random(n)})
    store = LocalStore(tmp_path / "osq")
    OSQBackend.publish(store, index)
    q = (centers[rng.integers(0, 10, 20)] + rng.standard_normal((20, d))).astype(np.float32)
    for text in (None, "not (c < 12)", "c >= 10", "u < 0.5", "u > 0.3 and c > 15", "c = 3 and u < 0.2"):
        flt = None if text is None else filters.to_json(filters.parse(text))
        for mode in ("auto", "multilevel"):  # small data: auto mostly picks the exact plan
            _, I0, st = index.search_with_stats(q, 10, filter=text, params={"level2": "bounds", "mode": mode})
            assert st.get("short_fixed", 0) == 0
            r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=2, L=1, filter=flt,
                              params={"mode": mode})
            assert np.array_equal(r.I, I0), (text, mode, np.mean(np.all(r.I == I0, axis=1)))


def test_osq_cold_loads_fetch_only_what_the_roles_read(tmp_path, monkeypatch):
    """A cold tree fetches level 0 once (the coordinator routes) and, per visited partition, its head (cluster sizes,
    codebook, centroids, vectors header) whole, the codes of the clusters its queries visit by range of the
    cluster-major records, and the vectors as the blocks of rows level 3 re-ranks; never the full index's unrotated
    copy, the segment-major codes, ids or (without maybe rows) attributes. A warm repeat reads nothing; a version
    published without cluster-major codes is read whole and answers the same."""
    from shoal import filters
    from shoal.index.osq import OSQIndex
    from shoal.index.persist import load_meta
    from shoal.serverless import handler
    from shoal.serverless.osq_backend import OSQBackend
    from shoal.serverless.osq_lists import head_key, lists_key, record_sizes

    rng = np.random.default_rng(6)
    n = 6000
    x = rng.standard_normal((n, D_DIM)).astype(np.float32)
    index = OSQIndex(D_DIM, "l2", partitions=3)
    index.train(x)
    index.add(x, np.arange(n, dtype=np.int64), attrs={"u": rng.random(n)})
    store = LocalStore(tmp_path / "osq")
    OSQBackend.publish(store, index)
    fetched, ranged = [], []
    get, get_range = LocalStore.get, LocalStore.get_range
    monkeypatch.setattr(LocalStore, "get", lambda self, key: fetched.append(key) or get(self, key))
    monkeypatch.setattr(LocalStore, "get_range",
                        lambda self, key, a, b: ranged.append((key, a, b)) or get_range(self, key, a, b))
    monkeypatch.setenv("SHOAL_ROW_BLOCK_KB", "1")
    monkeypatch.setenv("SHOAL_ROW_GAP_KB", "0")
    q = rng.standard_normal((2, D_DIM)).astype(np.float32)
    params = {"nprobe": 2}  # a query re-ranks ~50 rows in the few clusters it visits, out of 2,000 a partition
    version = current_version(store)
    lv = index.level0(q, 10, params)
    for flt in (None, "u < 0.5"):
        fj = None if flt is None else filters.to_json(filters.parse(flt))
        handler.CACHE.clear()
        ref = search_inprocess(store, q, 10, params=params, filter=fj)
        handler.CACHE.clear()
        fetched.clear(), ranged.clear()
        r = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=1, L=1, params=params,
                          filter=fj)
        assert np.array_equal(r.I, ref[1])
        names = sorted({k.split("/osq/", 1)[1][:-4] for k in fetched if k.endswith(".npy")})
        assert "raw_vectors" not in names
        arrays = load_meta(store, f"versions/{version}/osq")["arrays"]
        expected = set(OSQIndex.level0_array_names(arrays))
        visited = sorted({m["partition"] for m in r.metrics if m["role"] == "processor"})
        assert visited and r.stats["invocations"]["processor"] == len(visited)
        attrs = {a for p in visited for a in arrays if a.startswith(f"p{p:04d}/attr/")}
        assert sorted(k.split("/lists/")[1] for k in fetched if "/lists/" in k) == \
            [head_key(p).split("/")[1] for p in visited]
        if flt is None:
            assert set(names) == expected
        else:  # u < 0.5 leaves maybe rows to re-check: partitions with some read the exact values, whole
            assert expected < set(names) <= expected | attrs
        # codes: ranged reads of the records of the clusters the queries visit, much less than the whole objects
        code_reads = [(key, a, b) for key, a, b in ranged if "/lists/" in key]
        assert {key.rsplit("/", 1)[1] for key, _, _ in code_reads} == {lists_key(p).rsplit("/", 1)[1]
                                                                         for p in visited}
        for p in visited:
            part = index.parts[p]
            sizes = record_sizes(np.diff(part.list_indptr), part.segs.shape[0], part.binary.shape[1])
            offsets = np.concatenate([[0], np.cumsum(sizes)])
            want = np.flatnonzero(lv.clusters[:, p].any(axis=0) if flt is None else np.ones(part.nclusters, bool))
            got = [(a, b) for key, a, b in code_reads if key.endswith(lists_key(p))]
            covered = {c for a, b in got for c in range(part.nclusters) if offsets[c] >= a and offsets[c + 1] <= b}
            if flt is None:
                assert set(want.tolist()) <= covered
                assert sum(b - a for a, b in got) < offsets[-1] / 2, (got, offsets[-1])
        # vectors: ranged reads of row blocks (the header came with the head), far less than the whole objects
        vec = [(key, a, b) for key, a, b in ranged if key.endswith("/vectors.npy")]
        whole = sum(store.size(f"versions/{version}/osq/{OSQIndex.partition_vectors_name(p)}.npy")
                    for p in visited)
        data = sum(b - a for key, a, b in vec)
        assert all(a > 0 for _, a, _ in vec) and 0 < data < whole / 2, (data, whole)
        assert r.stats["bytes_fetched"] >= data
        # warm: the same queries read nothing again
        ranged.clear(), fetched.clear()
        r2 = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=1, L=1, params=params,
                           filter=fj)
        assert np.array_equal(r2.I, ref[1])
        assert ranged == [] and [k for k in fetched if k.endswith(".npy")] == []
        assert r2.stats["bytes_fetched"] == 0
    # a version without cluster-major codes (published before them): codes, ids and attributes read whole
    OSQBackend.publish(store, index, lists=False)
    before = search_inprocess(store, q, 10, params=params, version=version)[1]
    handler.CACHE.clear()
    fetched.clear(), ranged.clear()
    r3 = client.search(q, 10, index=store.uri, function="f", invoker=LocalInvoker(), b=1, L=1, params=params)
    assert r3.version != version and np.array_equal(r3.I, before)
    assert not any("/lists/" in key for key, _, _ in ranged)
    assert any(k.endswith("/binary.npy") for k in fetched) and any(k.endswith("/ids.npy") for k in fetched)


def test_cli_push_lambda_local_and_search_serverless(tmp_path, moto_endpoint, monkeypatch, capsys, kernels_dir):
    import socket
    import subprocess
    import sys
    import time
    import uuid

    import boto3

    from shoal.cli import main
    from shoal.engine import Database

    rng = np.random.default_rng(9)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    db = Database(str(tmp_path / "data"))
    col = db.create_collection("docs", dim=8, metric="l2", schema={"price": "float"}, index="Flat")
    col_price = rng.uniform(0, 10, 600)
    col.upsert(np.arange(600) + 100, x, attrs={"price": list(col_price)})
    db.close()
    bucket = "shoal-cli-" + uuid.uuid4().hex[:8]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/docs"
    assert main(["push", "--data", str(tmp_path / "data"), "--name", "docs", "--to", uri, "--partitions", "4",
                 "--s3-endpoint", moto_endpoint]) == 0
    assert "600 vectors as flat with 4 partitions" in capsys.readouterr().out
    osq_uri = f"s3://{bucket}/docs-osq"
    assert main(["push", "--data", str(tmp_path / "data"), "--name", "docs", "--to", osq_uri, "--index",
                 "OSQ(partitions=2)", "--s3-endpoint", moto_endpoint]) == 0
    assert "600 vectors as osq with 2 partitions" in capsys.readouterr().out
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "lambda-local", "--port", str(port),
                             "--max-workers", "8", "--s3-endpoint", moto_endpoint, "--kernels", kernels_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # listening at once; the first search goes out during the init phase (the kernels' build or load) and waits
        assert "Lambda Invoke API at" in proc.stdout.readline()
        monkeypatch.setenv("SHOAL_S3_ENDPOINT", moto_endpoint)
        q = x[:3] + 0.01
        argv = ["search", "--serverless", "shoal", "--index-uri", uri, "--lambda-endpoint",
                f"http://127.0.0.1:{port}", "--depth", "2", "-k", "3", "--stats", "--json"]
        for v in q:
            argv.append("--vector=" + ",".join(f"{t:.6f}" for t in v))
        t0 = time.time()
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert [h["id"] for h in out["results"][0]["hits"]][:1] == [100] and time.time() - t0 < 120
        lines = []
        while not any("ready in" in line for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1], "".join(lines)
        st = out["source"]["metrics"]  # the shape of every shoal search --json (tests/test_cli_interface.py)
        done = {r: st["invocations"].get(r, 0) + st["inline"].get(r, 0) for r in ("coordinator", "allocator",
                                                                                 "processor")}
        assert done == {"coordinator": 1, "allocator": 6, "processor": 4}  # 11 > 8 workers: some ran inline
        assert st["usd_per_1000_queries"] > 0
        # without --serverless the local collection path still needs --data/--name
        assert main(["search", "--vector", "1,2,3,4,5,6,7,8"]) == 2
        # filters are checked against the published schema at the coordinator, before fan-out: one line, exit 2,
        # the embedded search's message
        base = ["search", "--serverless", "shoal", "--lambda-endpoint", f"http://127.0.0.1:{port}", "-k", "3",
                "--vector=" + ",".join(f"{t:.6f}" for t in q[0])]
        assert main(base + ["--index-uri", osq_uri, "--filter", "price < 5", "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)["results"][0]["hits"]
        assert hits and all(col_price[h["id"] - 100] < 5 for h in hits)
        for flt, message in (("prce < 5", "unknown attribute 'prce' (did you mean 'price'?)"),
                             ('price < "cheap"', "'price': '<' compares numbers")):
            assert main(base + ["--index-uri", osq_uri, "--filter", flt]) == 2
            out = capsys.readouterr()
            assert out.out == "" and out.err.count("\n") == 1 and message in out.err, out.err
            assert out.err.startswith("shoal search: error: invalid filter: ")
        assert main(base + ["--index-uri", uri, "--filter", "price < 5"]) == 2  # exact partitions take no filter
        assert "index kind 'flat' takes no filter" in capsys.readouterr().err
    finally:
        proc.terminate()
        proc.wait(20)
