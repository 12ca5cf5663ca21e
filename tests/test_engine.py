"""Engine: collections through the public API (CRUD, search vs numpy, filters, tenants, bad input, reopen, S3)."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.engine import Database
from shoal.errors import (AlreadyExists, DimensionMismatch, FailedPrecondition, InvalidArgument, NotFound,
                          SchemaError)
from shoal.storage import S3Store

SCHEMA = {"price": "float", "color": "keyword", "tags": "tags", "year": "int"}
COLORS = ["red", "green", "blue"]


def make_attrs(n, rng):
    return [{"price": float(rng.integers(0, 100)), "color": COLORS[i % 3],
             "tags": ["sale"] if i % 4 == 0 else ["new", "hot"][: i % 3], "year": 2000 + i % 20} for i in range(n)]


def numpy_knn(q, x, ids, k, metric):
    if metric == "l2":
        d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return ids[order], np.sqrt(np.take_along_axis(d, order, 1))
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(s, order, 1)


@pytest.fixture
def db(tmp_path):
    d = Database(tmp_path / "data")
    yield d
    d.close()


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("built", [False, True])
def test_search_equals_numpy(db, rng, metric, built):
    x = rng.standard_normal((300, 8)).astype(np.float32)
    ids = rng.choice(10**12, 300, replace=False).astype(np.int64)
    col = db.create_collection("c", dim=8, metric=metric)
    col.upsert(ids, x)
    if built:
        col.build()
    q = rng.standard_normal((7, 8)).astype(np.float32)
    res = col.search(q, k=10)
    ref_ids, ref_scores = numpy_knn(q, x, ids, 10, metric)
    np.testing.assert_array_equal(res.ids, ref_ids)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-4, atol=1e-4)
    assert res.score_kind == ("distance" if metric == "l2" else "similarity")
    assert res.stats.plan == ("index(Flat)" if built else "tail")


def test_index_plus_tail_with_deletes_and_replacements(db, rng):
    x = rng.standard_normal((200, 6)).astype(np.float32)
    col = db.create_collection("c", dim=6)
    col.upsert(np.arange(200), x)
    col.build()
    # replace some indexed rows, delete others, add new tail rows
    x2 = rng.standard_normal((30, 6)).astype(np.float32)
    col.upsert(np.arange(30), x2)
    col.delete(np.arange(30, 60))
    x3 = rng.standard_normal((20, 6)).astype(np.float32)
    col.upsert(np.arange(1000, 1020), x3)
    live_ids = np.concatenate([np.arange(30), np.arange(60, 200), np.arange(1000, 1020)])
    live_x = np.concatenate([x2, x[60:200], x3])
    q = rng.standard_normal((5, 6)).astype(np.float32)
    res = col.search(q, k=15)
    ref_ids, _ = numpy_knn(q, live_x, live_ids, 15, "l2")
    np.testing.assert_array_equal(res.ids, ref_ids)
    assert res.stats.plan == "index(Flat)+tail"
    assert col.count() == 190


def test_crud_get_count_and_attrs(db, rng):
    col = db.create_collection("c", dim=4, schema=SCHEMA)
    x = rng.standard_normal((10, 4)).astype(np.float32)
    attrs = make_attrs(10, rng)
    assert col.upsert(np.arange(10), x, attrs=attrs) == 10
    got = col.get([3, 99, 1])
    assert [g["id"] for g in got] == [3, 1]
    np.testing.assert_array_equal(got[0]["vector"], x[3])
    assert got[0]["attrs"]["color"] == attrs[3]["color"]
    assert got[0]["attrs"]["year"] == attrs[3]["year"]
    # columnar attrs and missing values
    col.upsert([3], x[:1], attrs={"price": [None], "color": ["red"]})
    g = col.get([3], include_vectors=False)[0]
    assert g["attrs"] == {"color": "red", "tags": []} and "vector" not in g  # tags: always a list
    assert col.count(filter='color = "red"') == sum(a["color"] == "red" for i, a in enumerate(attrs) if i != 3) + 1
    assert col.delete([3, 3, 77]) == 1
    assert col.count() == 9


def test_filtered_search_is_exact_and_matches(db, rng):
    col = db.create_collection("c", dim=8, schema=SCHEMA, exact_threshold=0)
    n = 400
    x = rng.standard_normal((n, 8)).astype(np.float32)
    attrs = make_attrs(n, rng)
    col.upsert(np.arange(n), x, attrs=attrs)
    col.build()
    col.upsert(np.arange(n, n + 50), rng.standard_normal((50, 8)).astype(np.float32), attrs=make_attrs(50, rng))
    flt = 'price < 50 and color in ("red", "blue") and not tags contains "sale"'
    q = rng.standard_normal((4, 8)).astype(np.float32)
    res = col.search(q, k=10, filter=flt, attributes=True)
    assert res.stats.plan.startswith("index(Flat)[filter]")
    allrec = col.get(np.arange(n + 50))
    keep = [r for r in allrec if r["attrs"].get("price", 1e9) < 50 and r["attrs"].get("color") in ("red", "blue")
            and "sale" not in r["attrs"].get("tags", [])]
    ref_ids, _ = numpy_knn(q, np.stack([r["vector"] for r in keep]), np.array([r["id"] for r in keep]), 10, "l2")
    np.testing.assert_array_equal(res.ids, ref_ids)
    for row in res.attrs:
        for a in row:
            assert a["price"] < 50 and a["color"] in ("red", "blue")
    # the same filter as a JSON AST, and the exact planner for selective filters
    from shoal import filters

    col.exact_threshold = 10**9
    res2 = col.search(q, k=10, filter=filters.to_json(filters.parse(flt)))
    np.testing.assert_array_equal(res2.ids, ref_ids)
    assert res2.stats.plan == "exact(filter)"
    assert col.delete_where('color = "green"') == sum(1 for r in allrec if r["attrs"]["color"] == "green")
    assert col.count(filter='color = "green"') == 0


def test_tenants(db, rng):
    col = db.create_collection("mt", dim=4, multi_tenant=True, schema={"k": "int"})
    x = rng.standard_normal((20, 4)).astype(np.float32)
    col.upsert(np.arange(20), x, attrs={"k": list(range(20))},
               tenants=[["a"] if i < 10 else ["b", "a"] if i < 15 else ["b"] for i in range(20)])
    assert sorted(col.list_tenants()) == ["a", "b"]
    assert col.tenants_of(12) == ["a", "b"]
    assert col.count(tenant="a") == 15 and col.count(tenant="b") == 10
    res = col.search(x, k=20, tenant="b")
    assert set(res.ids[0][res.ids[0] >= 0]) == set(range(10, 20))
    col.grant([0, 1], "c")
    assert col.count(tenant="c") == 2 and col.tenants_of(0) == ["a", "c"]
    col.revoke([0], "c")
    assert col.count(tenant="c") == 1
    col.build()
    res = col.search(x, k=20, tenant="c")
    assert set(res.ids[0][res.ids[0] >= 0]) == {1}
    assert col.get([0, 1], tenant="c")[0]["id"] == 1
    # upsert without tenants keeps the grants; with tenants replaces them
    col.upsert([1], x[:1])
    assert col.tenants_of(1) == ["a", "c"]
    col.upsert([1], x[:1], tenants=[["b"]])
    assert col.tenants_of(1) == ["b"]
    assert col.drop_tenant("b") == 11
    with pytest.raises(NotFound):
        col.search(x[:1], k=3, tenant="b")
    with pytest.raises(NotFound):
        col.grant([999], "a")
    with pytest.raises(NotFound):
        col.revoke([1], "nobody")
    assert col.count(tenant="c") == 0  # c exists (granted once), now empty
    assert col.delete_where("k < 5", tenant="a") == 4  # 1 lost tenant a when re-upserted with ["b"]


def test_reopen_restores_everything(tmp_path, rng):
    path = tmp_path / "d"
    db = Database(path)
    col = db.create_collection("c", dim=5, metric="ip", schema=SCHEMA, multi_tenant=True)
    x = rng.standard_normal((50, 5)).astype(np.float32)
    col.upsert(np.arange(50), x, attrs=make_attrs(50, rng), tenants=[["t%d" % (i % 3)] for i in range(50)])
    col.build()
    col.upsert([100], x[:1], attrs=[{"color": "red"}])
    col.delete([7])
    col.grant([8], "t9")
    q = rng.standard_normal((3, 5)).astype(np.float32)
    before = col.search(q, k=7, filter='color != "blue"', tenant="t1")
    snap = col.get(np.arange(200))
    # reopen WITHOUT close (no final snapshot): the WAL must carry the writes
    col._abandon()
    db2 = Database(path)
    col2 = db2.collection("c")
    after = col2.search(q, k=7, filter='color != "blue"', tenant="t1")
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    snap2 = col2.get(np.arange(200))
    assert [(r["id"], r["attrs"], r["tenants"]) for r in snap] == [(r["id"], r["attrs"], r["tenants"]) for r in snap2]
    db2.close()
    db3 = Database(path)
    assert db3.collection("c").count() == 50
    assert db3.collection("c").info()["wal_bytes"] == 0
    db3.close()


def test_database_management(tmp_path):
    db = Database(tmp_path / "d")
    db.create_collection("a", dim=3)
    db.create_collection("b", dim=3, metric="cosine")
    assert db.list_collections() == ["a", "b"]
    with pytest.raises(AlreadyExists):
        db.create_collection("a", dim=3)
    assert db.create_collection("a", dim=3, exist_ok=True) is db.collection("a")
    with pytest.raises(NotFound):
        db.collection("zzz")
    db.drop_collection("a")
    assert db.list_collections() == ["b"]
    with pytest.raises(NotFound):
        db.drop_collection("a")
    c = db.create_collection("a", dim=4)  # re-create after drop starts empty
    assert c.count() == 0
    db.close()
    with pytest.raises(FailedPrecondition):
        db.collection("a")


def test_read_only_and_write_lock(tmp_path, rng):
    db = Database(tmp_path / "d")
    col = db.create_collection("a", dim=3)
    col.upsert([1, 2], rng.standard_normal((2, 3)))
    with pytest.raises(FailedPrecondition):
        Database(tmp_path / "d").collection("a")  # another writer
    ro = Database(tmp_path / "d", read_only=True).collection("a")
    assert ro.count() == 2
    with pytest.raises(FailedPrecondition):
        ro.upsert([3], [[1, 2, 3]])
    db.close()


def bad_inputs():
    x = np.ones((2, 4), np.float32)
    return [
        ("wrong dim", lambda c: c.upsert([1, 2], np.ones((2, 5))), DimensionMismatch),
        ("nan", lambda c: c.upsert([1, 2], np.array([[1, 2, 3, np.nan], [1, 1, 1, 1]])), InvalidArgument),
        ("inf", lambda c: c.upsert([1, 2], np.array([[1, 2, 3, np.inf], [1, 1, 1, 1]])), InvalidArgument),
        ("float ids", lambda c: c.upsert([1.5, 2], x), InvalidArgument),
        ("negative id", lambda c: c.upsert([-1, 2], x), InvalidArgument),
        ("string id", lambda c: c.upsert(["a", 2], x), InvalidArgument),
        ("duplicate ids", lambda c: c.upsert([7, 7], x), InvalidArgument),
        ("id count", lambda c: c.upsert([1, 2, 3], x), InvalidArgument),
        ("unknown attribute", lambda c: c.upsert([1, 2], x, attrs=[{"nope": 1}, {}]), SchemaError),
        ("wrong type int", lambda c: c.upsert([1, 2], x, attrs=[{"year": "x"}, {}]), SchemaError),
        ("wrong type float", lambda c: c.upsert([1, 2], x, attrs={"price": ["cheap", 1.0]}), SchemaError),
        ("wrong type keyword", lambda c: c.upsert([1, 2], x, attrs=[{"color": 3}, {}]), SchemaError),
        ("wrong type tags", lambda c: c.upsert([1, 2], x, attrs=[{"tags": "sale"}, {}]), SchemaError),
        ("bool int", lambda c: c.upsert([1, 2], x, attrs=[{"year": True}, {}]), SchemaError),
        ("malformed filter", lambda c: c.search(x, filter="price < "), InvalidArgument),
        ("filter unknown attr", lambda c: c.search(x, filter="weight < 3"), SchemaError),
        ("filter wrong type", lambda c: c.search(x, filter='price = "x"'), SchemaError),
        ("delete_where malformed", lambda c: c.delete_where("color ="), InvalidArgument),
        ("query dim", lambda c: c.search(np.ones((1, 3))), DimensionMismatch),
        ("bad k", lambda c: c.search(x, k=0), InvalidArgument),
        ("bad param", lambda c: c.search(x, params={"nprobe": 3}), InvalidArgument),
        ("tenant on single-tenant", lambda c: c.search(x, tenant="a"), InvalidArgument),
        ("tenants on single-tenant", lambda c: c.upsert([1, 2], x, tenants=[["a"], []]), InvalidArgument),
        ("bad delete ids", lambda c: c.delete([-3]), InvalidArgument),
    ]


@pytest.mark.parametrize("case", bad_inputs(), ids=[b[0] for b in bad_inputs()])
def test_bad_input_raises_and_changes_nothing(tmp_path, rng, case):
    _, call, exc = case
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=4, schema=SCHEMA)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    col.upsert(np.arange(5), x, attrs=make_attrs(5, rng))
    before = (col.get(np.arange(10)), col.wal.size, col.info())
    with pytest.raises(exc) as info:
        call(col)
    assert str(info.value)  # a message, not a bare class
    after = (col.get(np.arange(10)), col.wal.size, col.info())
    assert repr(before) == repr(after)
    db.close()


def tenant_bad_inputs():
    x = np.ones((2, 4), np.float32)
    return [
        ("grant unknown id", lambda c: c.grant([1, 999], "a"), NotFound),
        ("revoke unknown tenant", lambda c: c.revoke([1], "ghost"), NotFound),
        ("revoke unknown id", lambda c: c.revoke([999], "a"), NotFound),
        ("drop unknown tenant", lambda c: c.drop_tenant("ghost"), NotFound),
        ("search unknown tenant", lambda c: c.search(x, tenant="ghost"), NotFound),
        ("get unknown tenant", lambda c: c.get([1], tenant="ghost"), NotFound),
        ("delete_where unknown tenant", lambda c: c.delete_where("k < 3", tenant="ghost"), NotFound),
        ("tenants length", lambda c: c.upsert([1, 2], x, tenants=[["a"]]), InvalidArgument),
        ("tenant name type", lambda c: c.upsert([1, 2], x, tenants=[[3], []]), InvalidArgument),
        ("empty tenant name", lambda c: c.grant([1], ""), InvalidArgument),
        ("tenants_of unknown id", lambda c: c.tenants_of(12345), NotFound),
    ]


@pytest.mark.parametrize("case", tenant_bad_inputs(), ids=[b[0] for b in tenant_bad_inputs()])
def test_bad_tenant_input_raises_and_changes_nothing(tmp_path, rng, case):
    _, call, exc = case
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=4, schema={"k": "int"}, multi_tenant=True)
    col.upsert(np.arange(5), rng.standard_normal((5, 4)), attrs={"k": list(range(5))},
               tenants=[["a"], ["a", "b"], [], ["b"], ["a"]])
    before = (col.get(np.arange(10)), col.wal.size, col.list_tenants(), col.count(tenant="a"))
    with pytest.raises(exc) as info:
        call(col)
    assert str(info.value)
    assert repr(before) == repr((col.get(np.arange(10)), col.wal.size, col.list_tenants(), col.count(tenant="a")))
    db.close()


def test_bad_create_and_unknowns(tmp_path):
    db = Database(tmp_path / "d")
    with pytest.raises(InvalidArgument):
        db.create_collection("x", dim=0)
    with pytest.raises(InvalidArgument):
        db.create_collection("x", dim=3, metric="hamming")
    with pytest.raises(SchemaError):
        db.create_collection("x", dim=3, schema={"a": "string"})
    with pytest.raises(SchemaError):
        db.create_collection("x", dim=3, schema={"and": "int"})
    with pytest.raises(InvalidArgument):
        db.create_collection("x", dim=3, index="Nope12")
    with pytest.raises(InvalidArgument):
        db.create_collection("../x", dim=3)
    assert db.list_collections() == []
    col = db.create_collection("mt", dim=3, multi_tenant=True)
    with pytest.raises(NotFound):
        col.search(np.ones((1, 3)), tenant="ghost")
    with pytest.raises(NotFound):
        col.count(tenant="ghost")
    db.close()


def test_save_load_search_identical_local_and_s3(tmp_path, rng, s3_bucket):
    endpoint, bucket = s3_bucket
    x = rng.standard_normal((120, 6)).astype(np.float32)
    q = rng.standard_normal((4, 6)).astype(np.float32)
    results = []
    for store in (str(tmp_path / "local"), S3Store(bucket, "dbroot", endpoint_url=endpoint)):
        db = Database(store, wal_dir=str(tmp_path / ("wal-" + type(store).__name__)))
        col = db.create_collection("c", dim=6, metric="cosine", schema=SCHEMA)
        col.upsert(np.arange(120), x, attrs=make_attrs(120, np.random.default_rng(5)))
        col.build()
        col.upsert([500], x[:1])
        before = col.search(q, k=8, filter="price < 70")
        db.close()
        db2 = Database(store, wal_dir=str(tmp_path / "other-wal"))  # the snapshot alone carries everything
        assert db2.list_collections() == ["c"]
        after = db2.collection("c").search(q, k=8, filter="price < 70")
        np.testing.assert_array_equal(before.ids, after.ids)
        np.testing.assert_array_equal(before.scores, after.scores)
        results.append(after)
        db2.close()
    np.testing.assert_array_equal(results[0].ids, results[1].ids)
    np.testing.assert_array_equal(results[0].scores, results[1].scores)


def test_compact_rebuilds_a_mostly_deleted_index(tmp_path, rng):
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=4)
    x = rng.standard_normal((400, 4)).astype(np.float32)
    col.upsert(np.arange(400), x)
    col.build()
    col.delete(np.arange(0, 300))
    assert col._view.index.ntotal == 400
    info = col.compact()
    assert col._view.index.ntotal == 100 and info["count"] == 100 and info["wal_bytes"] == 0
    np.testing.assert_array_equal(col.search(x[350:353], k=1).ids[:, 0], [350, 351, 352])
    db.close()
