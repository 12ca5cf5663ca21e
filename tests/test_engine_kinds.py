"""Collections over the other index kinds: native tenants (Curator), native filters (OSQ), IVF-PQ parameters and
train_kwargs. The engine dispatch is generic; these check it end to end."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from shoal.engine import Database
from shoal.errors import InvalidArgument, NotFound


def clustered(rng, n, d, centers=8):
    c = rng.standard_normal((centers, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centers, n)] + rng.standard_normal((n, d))).astype(np.float32)


def exact(q, x, ids, k):
    dist = ((q[:, None] - x[None]) ** 2).sum(-1)
    return ids[np.argsort(dist, axis=1, kind="stable")[:, :k]]


def recall(got, want):
    return np.mean([len(set(g[g >= 0]) & set(w)) / len(w) for g, w in zip(got, want)])


def test_curator_native_tenants(tmp_path, rng):
    n, d = 1500, 8
    x = clustered(rng, n, d)
    tenants = [[f"t{i % 5}"] + (["shared"] if i % 7 == 0 else []) for i in range(n)]
    db = Database(tmp_path / "d")
    col = db.create_collection("mt", dim=d, multi_tenant=True, index="Curator(branch=4,leaf=32)",
                               schema={"k": "int"}, exact_threshold=0)
    col.upsert(np.arange(n), x, attrs={"k": np.arange(n) % 10}, tenants=tenants)
    col.build()
    assert col.info()["index_description"].startswith("Curator")
    q = clustered(rng, 20, d)
    res = col.search(q, k=10, tenant="t2", params={"gamma": 64})
    assert res.stats.plan.startswith("index(Curator)[tenant]")
    own = np.flatnonzero(np.arange(n) % 5 == 2)
    assert np.isin(res.ids[res.ids >= 0], own).all()
    assert recall(res.ids, exact(q, x[own], own, 10)) >= 0.9
    # tenant + filter: the filter goes in as an allowed mask, inside Curator's scan
    res = col.search(q, k=10, tenant="t2", filter="k < 5")
    keep = own[own % 10 < 5]
    assert np.isin(res.ids[res.ids >= 0], keep).all()
    # grants / revokes / deletes on indexed rows go through to the index
    col.grant([1, 3], "t2")
    col.revoke(own[:50], "t2")
    col.delete(own[50:60])
    res = col.search(x[[1, 3]], k=1, tenant="t2")
    assert list(res.ids[:, 0]) == [1, 3]
    res = col.search(x[own[:60]], k=5, tenant="t2")
    assert not np.isin(res.ids, own[:60]).any()
    # a tenant only in the tail (not in the index yet)
    col.upsert([5000], x[:1], tenants=[["fresh"]])
    assert col.search(x[:1], k=3, tenant="fresh").ids[0].tolist() == [5000, -1, -1]
    col.drop_tenant("shared")
    with pytest.raises(NotFound):
        col.search(q, k=3, tenant="shared")
    with pytest.raises(InvalidArgument):
        col.search(q, k=3, tenant="t1", params={"nprobe": 2})
    # background extend of a Curator index (copied through save/load: it holds a lock)
    col.upsert(np.arange(6000, 6300), clustered(rng, 300, d), tenants=[["t1"]] * 300)
    col._start_auto().wait(60)
    assert col.build_status()["error"] is None and col.info()["tail"] == 0
    got = col.search(x[[1]], k=1, tenant="t2")
    assert got.ids[0, 0] == 1
    db.close()
    col2 = Database(tmp_path / "d").collection("mt")
    assert col2.tenants_of(1) == ["t1", "t2"]
    assert col2.search(x[[1]], k=1, tenant="t2").ids[0, 0] == 1


def test_osq_native_filters(tmp_path, rng):
    n, d = 2000, 16
    x = clustered(rng, n, d)
    price = rng.integers(0, 1000, n)
    color = [["red", "green", "blue"][i % 3] for i in range(n)]
    db = Database(tmp_path / "d")
    col = db.create_collection("f", dim=d, index="OSQ(partitions=4)", schema={"price": "int", "color": "keyword"},
                               exact_threshold=50)
    col.upsert(np.arange(n), x, attrs={"price": price, "color": color})
    col.build()
    q = clustered(rng, 10, d)
    flt = 'price < 500 and color != "blue"'
    generous = {"nprobe": 4, "keep_frac": 1.0, "rerank": 2000}  # OSQ's own accuracy is tested in its own tests
    res = col.search(q, k=10, filter=flt, params=generous)
    assert res.stats.plan.startswith("index(OSQ")
    keep = np.flatnonzero((price < 500) & (np.array(color) != "blue"))
    assert np.isin(res.ids[res.ids >= 0], keep).all()
    assert (res.ids >= 0).all()
    assert recall(res.ids, exact(q, x[keep], keep, 10)) >= 0.8
    # very selective filter: the engine's planner scans the matching rows exactly
    res = col.search(q, k=5, filter="price < 20")
    sel = np.flatnonzero(price < 20)
    assert res.stats.plan.startswith("exact(filter")  # by the threshold, or as the calibration advised
    np.testing.assert_array_equal(res.ids, exact(q, x[sel], sel, 5))
    # replaced rows leave the index and are found in the tail with their new attributes
    col.upsert([int(keep[0])], x[keep[:1]], attrs={"price": [999], "color": ["red"]})
    res = col.search(x[keep[:1]], k=3, filter=flt)
    assert keep[0] not in res.ids
    db.close()


@pytest.mark.skipif(importlib.util.find_spec("shoal.index.ivfpq") is None, reason="IVF-PQ kind not available")
def test_ivfpq_params_train_kwargs_and_failed_autobuild(tmp_path, rng):
    n, d = 3000, 16
    x = clustered(rng, n, d)
    db = Database(tmp_path / "d")
    col = db.create_collection("ivf", dim=d, index="IVF256,PQ4x4,Refine", tail_limit=100)
    # too few vectors to train IVF256: the automatic build fails, is reported, and search stays exact on the tail
    with pytest.warns(RuntimeWarning, match="background index build failed"):
        col.upsert(np.arange(120), x[:120])
        col.wait_for_build(60)
    assert col.build_status()["error"] is not None
    res = col.search(x[:3], k=5)
    assert res.stats.plan == "tail"
    np.testing.assert_array_equal(res.ids, exact(x[:3], x[:120], np.arange(120), 5))
    col.upsert(np.arange(120, 150), x[120:150])  # no retry until the tail has doubled
    assert col.build_status()["error"] is not None
    col.auto_build = False
    col.upsert(np.arange(150, n), x[150:])
    with pytest.raises(InvalidArgument):
        col.build(index="IVF16,PQ4x4,Refine", train_kwargs={"no_such_option": 1})
    assert col.index_spec == "IVF256,PQ4x4,Refine" and col.info()["index_built"] is False
    col.build(index="IVF16,PQ4x4,Refine")
    assert col.index_spec == "IVF16,PQ4x4,Refine"
    q = clustered(rng, 20, d)
    want = exact(q, x, np.arange(n), 10)
    low = col.search(q, k=10, params={"nprobe": 1})
    high = col.search(q, k=10, params={"nprobe": 16, "rerank": 100})
    assert high.stats.plan == "index(IVFPQ)"
    assert recall(high.ids, want) >= 0.9 and recall(high.ids, want) >= recall(low.ids, want)
    db.close()


@pytest.mark.parametrize("spec", ["Flat", "Curator(branch=4,leaf=32)", "OSQ(partitions=2)", "IVF8,PQ4x4,Refine"])
def test_index_served_memory_mapped_after_snapshot(tmp_path, rng, spec):
    """With ``mmap_index`` (the default) a built collection serves its index from the snapshot just written, large
    arrays mapped; results equal an in-memory twin's, updates keep working, and a reopen maps again."""
    n, d = 1200, 8
    x = clustered(rng, n, d)
    tenants = [[f"t{i % 3}"] for i in range(n)]
    q = clustered(rng, 15, d)
    db = Database(tmp_path / "d")
    cols = {}
    for name, mm in (("mapped", True), ("heap", False)):
        col = cols[name] = db.create_collection(name, dim=d, index=spec, multi_tenant=True, schema={"k": "int"},
                                                exact_threshold=0, mmap_index=mm)
        col.upsert(np.arange(n), x, attrs={"k": np.arange(n) % 10}, tenants=tenants)
        col.build()
    mapped, heap = cols["mapped"], cols["heap"]
    st, sh = mapped.stats()["memory_bytes"], heap.stats()["memory_bytes"]
    assert st["index_mapped"] >= n * d * 4 and sh["index_mapped"] == 0
    assert st["index"] < sh["index"]
    assert mapped.info()["mmap_index"] is True and heap.info()["mmap_index"] is False
    tenant = "t1" if "Curator" in spec else None
    flt = "k < 5" if "OSQ" in spec else None
    for col in (mapped, heap):
        col.delete([3, 4])
        if tenant:
            col.revoke([1], tenant)
    # the same explicit settings on both: each twin's build calibrated its own defaults, and where the index and an
    # exact scan cost about the same, timings on a loaded machine can pick either
    primary, secondary = mapped._view.index.calibration_ladder(10)
    params = {**primary[-1], **(secondary[-1] if secondary else {})} if primary else None
    a = mapped.search(q, k=10, tenant=tenant, filter=flt, params=params)
    b = heap.search(q, k=10, tenant=tenant, filter=flt, params=params)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    # writes after the mapping and a rebuild that extends the mapped index
    mapped.upsert(np.arange(n, n + 50), x[:50] + 0.1, attrs={"k": np.zeros(50, int)}, tenants=tenants[:50])
    mapped.build()
    assert mapped.count() == n - 2 + 50
    db.close()
    db = Database(tmp_path / "d")
    again = db.collection("mapped")
    assert again.stats()["memory_bytes"]["index_mapped"] > 0
    assert db.collection("heap").stats()["memory_bytes"]["index_mapped"] == 0
    res = again.search(x[n - 1:n], k=1, tenant=tenants[n - 1][0] if tenant else None)
    assert res.ids[0, 0] == n - 1
    db.close()


def test_mmap_index_setting_is_checked(tmp_path):
    db = Database(tmp_path / "d")
    with pytest.raises(InvalidArgument, match="mmap_index"):
        db.create_collection("c", dim=4, mmap_index=1)
