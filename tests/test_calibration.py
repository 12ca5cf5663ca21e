"""Calibrated defaults (issue 13): a user who passes no params gets recall@10 >= 0.95 through Database ->
create_collection -> upsert in batches -> build() -> search(), for every approximate kind, filter band and tenant
size, on data of several shapes in a meaningful order; the table is saved with the index, shown by info(), chosen
per call by ``recall`` and overridden by explicit params; adding in chunks equals one add."""

from __future__ import annotations

import numpy as np
import pytest

from shoal.engine import Database, builder
from shoal.errors import InvalidArgument
from shoal.index import index_factory
from shoal.index.calibrate import calibrate
from shoal.index.calibration import Calibration, format_table
from shoal.index.flat import exact_search

K = 10


# ---------------------------------------------------------------------------------------------------- data
def clustered(rng, n, d, centers=40, spread=3.0):
    c = rng.standard_normal((centers, d)).astype(np.float32) * spread
    lab = rng.integers(0, centers, n)
    return (c[lab] + rng.standard_normal((n, d))).astype(np.float32), c


def shapes(rng, n, d):
    """Base and query sets of three shapes; bases sorted along a direction (the adversarial order for chunked
    adds), queries drawn from the same distribution but not in the base."""
    out = {}
    x, c = clustered(rng, n + 200, d)
    out["clustered"] = x
    scale = np.exp(rng.uniform(-2, 1, d)).astype(np.float32)  # anisotropic: a few directions dominate
    out["anisotropic"] = (rng.standard_normal((n + 200, d)) * scale).astype(np.float32)
    lab = rng.integers(0, 8, n + 200)  # few broad, overlapping clusters
    out["broad"] = (rng.standard_normal((8, d)).astype(np.float32)[lab] * 1.5
                    + rng.standard_normal((n + 200, d))).astype(np.float32)
    res = {}
    for name, v in out.items():
        perm = rng.permutation(v.shape[0])
        q, base = v[perm[:200]], v[perm[200:]]
        base = base[np.argsort(base @ rng.standard_normal(d).astype(np.float32))]
        res[name] = (base, q)
    return res


def recall(got, want):
    return float(np.mean([len(set(g[g >= 0]) & set(w[w >= 0])) / max(1, int((w >= 0).sum()))
                          for g, w in zip(got, want)]))


def truth(q, x, rows=None):
    rows = np.arange(x.shape[0]) if rows is None else rows
    return exact_search(q, x[rows], K, "l2", labels=rows)[1]


def load(col, x, batch=2500, attrs=None, tenants=None):
    for lo in range(0, x.shape[0], batch):
        hi = min(x.shape[0], lo + batch)
        col.upsert(np.arange(lo, hi), x[lo:hi], attrs=None if attrs is None else {k: v[lo:hi] for k, v in attrs.items()},
                   tenants=None if tenants is None else tenants[lo:hi])


# ---------------------------------------------------------------------------------------------------- defaults
SPECS = ["IVF64,PQ8x8,Refine", "OSQ(partitions=4)"]


@pytest.mark.parametrize("spec", SPECS)
def test_defaults_reach_the_target_on_every_shape_and_filter_band(tmp_path, rng, spec):
    n, d = 12000, 16
    db = Database(tmp_path / "d")
    for name, (x, q) in shapes(rng, n, d).items():
        u = rng.random(n)
        col = db.create_collection(name, dim=d, index=spec, schema={"u": "float"}, tail_limit=10**9,
                                   exact_threshold=600)
        load(col, x, attrs={"u": u})
        summary = col.build()
        assert summary["calibration"]["seconds"] > 0 and not summary["calibration"]["reused"]
        assert 0 < summary["calibration"]["share"] == pytest.approx(summary["calibration"]["seconds"]
                                                                 / summary["calibration"]["build_seconds"], rel=0.05, abs=2e-3)
        res = col.search(q, k=K)
        # the index, or its exact scan where the build timed that cheaper (on a loaded machine, 12,000 x 16 can be)
        assert res.stats.plan.startswith(("index(", "exact(calibrated)")), res.stats
        assert res.stats.band == "fraction>=1" and res.stats.calibrated_recall >= 0.95
        got = recall(res.ids, truth(q, x))
        assert got >= 0.95, (name, got, res.stats)
        # filters in several bands: uncorrelated ('u < s') and correlated with the vectors (rows sorted along a
        # direction: 'id-range' keeps one end of the space)
        for s in (0.08, 0.3, 0.7):
            rows = np.flatnonzero(u < s)
            res = col.search(q, k=K, filter=f"u < {s}")
            assert recall(res.ids, truth(q, x, rows)) >= 0.95, (name, s, res.stats)
            assert res.stats.band is not None and np.all(np.isin(res.ids[res.ids >= 0], rows))
        db.drop_collection(name)
    db.close()


def test_curator_defaults_reach_the_target_for_every_tenant_size(tmp_path, rng):
    n, d = 16000, 16
    v, _ = clustered(rng, n + 200, d)
    x, q = v[:n], v[n:]
    x = x[np.argsort(x[:, 0])]
    # tenants of several sizes: uniform ones and topical ones (a slab of the space), ~1.5 per vector
    sizes = {"t8000": 8000, "t4000": 4000, "t2000": 2000, "t1000": 1000}
    members = {}
    tenants = [[] for _ in range(n)]
    for i, (t, size) in enumerate(sizes.items()):
        rows = np.sort(rng.choice(n, size, replace=False)) if i % 2 == 0 else \
            np.arange(n // 4 * (i % 4), n // 4 * (i % 4) + size) % n
        members[t] = np.sort(rows)
        for r in rows:
            tenants[r].append(t)
    db = Database(tmp_path / "d")
    col = db.create_collection("mt", dim=d, index="Curator(branch=8,leaf=64)", multi_tenant=True,
                               tail_limit=10**9, exact_threshold=300)
    load(col, x, tenants=tenants)
    col.build()
    cal = col.info()["calibration"]
    assert cal["axis"] == "tenant_size" and len(cal["bands"]) >= 2
    for t, rows in members.items():
        res = col.search(q, k=K, tenant=t)
        assert res.stats.band.startswith("tenant_size>=")
        assert recall(res.ids, truth(q, x, rows)) >= 0.95, (t, res.stats)
        assert np.all(np.isin(res.ids[res.ids >= 0], rows))
    db.close()


# ---------------------------------------------------------------------------------------------------- the table
def test_table_is_saved_shown_overridden_and_chosen_per_call(tmp_path, rng):
    n, d = 10000, 16
    x, _ = clustered(rng, n, d)
    q = x[:50] + 0.05
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=d, index="IVF64,PQ8x8,Refine", tail_limit=10**9, target_recall=0.9)
    load(col, x)
    col.build()
    info = col.info()
    assert info["target_recall"] == 0.9 and info["calibration"]["target"] == 0.9
    lines = format_table(info["calibration"])
    assert "fraction>=1" in "\n".join(lines) and "nprobe=" in "\n".join(lines)
    base = col.search(q, k=K)
    assert base.stats.calibrated_recall >= 0.9
    # a higher target per call picks a more expensive row of the same table
    hi = col.search(q, k=K, params={"recall": 0.99})
    assert hi.stats.calibrated_recall >= 0.99 and hi.stats.params != base.stats.params
    # explicit params override (and the recall of the table no longer applies); all of them bypass the table
    own = col.search(q, k=K, params={"nprobe": 1})
    assert own.stats.calibrated_recall is None and own.stats.band == base.stats.band
    full = col.search(q, k=K, params={"nprobe": 1, "rerank": 0})
    assert full.stats.band is None and full.stats.calibrated_recall is None
    with pytest.raises(InvalidArgument, match="recall"):
        col.search(q, k=K, params={"recall": 1.5})
    with pytest.raises(InvalidArgument, match="target_recall"):
        col.build(target_recall=0)
    with pytest.raises(InvalidArgument, match="target_recall"):
        db.create_collection("bad", dim=d, target_recall=2)
    db.close()
    # save -> load keeps the table and the choices
    db = Database(tmp_path / "d")
    col = db.collection("c")
    assert col.info()["calibration"] == info["calibration"]
    again = col.search(q, k=K)
    np.testing.assert_array_equal(again.ids, base.ids)
    assert again.stats.params == base.stats.params
    # a build with a new target becomes the collection's
    col.build(target_recall=0.97)
    assert col.info()["target_recall"] == 0.97 and col.search(q, k=K).stats.calibrated_recall >= 0.97
    db.close()


def test_index_api_calibration_round_trips_and_copies(rng):
    from shoal.storage.memory import MemoryStore
    from shoal.index.factory import load_index

    n, d = 6000, 16
    x, _ = clustered(rng, n, d)
    ix = index_factory(d, "IVF32,PQ8x8,Refine")
    ix.train(x[:5000])
    ix.add(x, np.arange(n))
    cal = calibrate(ix, x, np.arange(n), query_ids=np.arange(5000, n))
    assert cal is ix.calibration and cal.axis == "fraction" and cal.reached
    # the index's own searches use it (no params)
    q = x[5000:5100] + 0.01
    D, I = ix.search(q, K)
    D2, I2 = ix.search(q, K, params=cal.bands[-1].pick(0.95)[0].params)
    np.testing.assert_array_equal(I, I2)
    store = MemoryStore()
    ix.save(store, "p")
    back = load_index(store, "p")
    assert back.calibration.to_json() == cal.to_json()
    assert ix.copy().calibration.to_json() == cal.to_json()
    assert Calibration.from_json(cal.to_json()).to_json() == cal.to_json()
    with pytest.raises(InvalidArgument, match="cover"):
        calibrate(ix, x[:10], np.arange(10))
    # exact kinds have nothing to calibrate
    flat = index_factory(d, "Flat")
    flat.add(x, np.arange(n))
    assert calibrate(flat, x, np.arange(n)) is None
    assert flat.search(q, K, params={"recall": 0.99})[1].shape == (100, K)


def test_extend_builds_reuse_the_calibration_until_the_index_grows(tmp_path, rng):
    n, d = 8000, 16
    x, _ = clustered(rng, n + 4000, d)
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=d, index="OSQ(partitions=2)", tail_limit=10**9)
    load(col, x[:n])
    col.build()
    first = col.info()["calibration"]
    col.upsert(np.arange(n, n + 1000), x[n:n + 1000])
    col._start_auto().wait(120)
    st = col.build_status()
    assert st["error"] is None and st["calibration"]["reused"] and col.info()["calibration"] == first
    col.upsert(np.arange(n + 1000, n + 4000), x[n + 1000:n + 4000])
    col._start_auto().wait(120)
    st = col.build_status()
    assert st["error"] is None and not st["calibration"]["reused"]
    assert col.info()["calibration"]["rows"] == n + 4000
    db.close()


# ---------------------------------------------------------------------------------------------------- chunks
@pytest.mark.parametrize("spec", ["IVF64,PQ8x8,Refine", "OSQ(partitions=8)", "Curator(branch=8,leaf=64)"])
def test_chunked_adds_equal_one_add(rng, spec):
    """Rows sorted along a direction (the adversarial order) added in chunks give the recall of one add."""
    n, d = 20000, 16
    v, _ = clustered(rng, n + 300, d)
    x, q = v[:n], v[n:]
    x = x[np.argsort(x @ rng.standard_normal(d).astype(np.float32))]
    tenants = (np.arange(n + 1, dtype=np.int64), np.zeros(n, np.int32)) if "Curator" in spec else None
    gt = truth(q, x)
    params = {"nprobe": 4} if "IVF" in spec else {"nprobe": 8} if "OSQ" in spec else {"gamma": 16}
    got, results = [], []
    for chunk in (n, 2048):
        ix = index_factory(d, spec)
        ix.train(x)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            kw = {}
            if tenants is not None:
                kw["tenants"] = (tenants[0][lo:hi + 1] - lo, tenants[1][lo:hi])
            ix.add(x[lo:hi], np.arange(lo, hi), **kw)
        results.append(ix.search(q, K, params=params, **({"tenant": 0} if tenants else {}))[1])
        got.append(recall(results[-1], gt))
    assert abs(got[0] - got[1]) <= 0.005, got
    if "OSQ" in spec:  # rows are placed together at the first read: the very same partitions as one add
        np.testing.assert_array_equal(results[0], results[1])


def test_chunked_builds_through_the_collection_equal_one_add(tmp_path, rng, monkeypatch):
    n, d = 20000, 16
    v, _ = clustered(rng, n + 300, d)
    x, q = v[:n], v[n:]
    x = x[np.argsort(x @ rng.standard_normal(d).astype(np.float32))]
    gt = truth(q, x)
    got = []
    for chunk in (n, 2048):
        monkeypatch.setattr(builder, "BUILD_CHUNK", chunk)
        db = Database(tmp_path / f"d{chunk}")
        col = db.create_collection("c", dim=d, index="OSQ(partitions=8)", tail_limit=10**9)
        load(col, x)
        col.build()
        got.append(recall(col.search(q, k=K, params={"nprobe": 8}).ids, gt))
        db.close()
    assert abs(got[0] - got[1]) <= 0.005, got


def test_a_call_between_two_bands_takes_the_lower_bands_scan_while_it_is_cheaper():
    """The scan's cost grows with the rows it reads: from the lower band's measured cost, linearly in the fraction."""
    from shoal.index.calibration import Band, Rung

    def band(lo, index_cost, exact_cost):
        return Band(lo, f"fraction>={lo:g}", 100, ["random"], [Rung({"nprobe": 8}, 0.97, 0.96, index_cost)],
                    Rung({}, 1.0, 1.0, exact_cost, exact=True))

    cal = Calibration("fraction", K, 0.95, ("nprobe",), [band(0.05, 100.0, 40.0), band(0.25, 100.0, 200.0)], 10000)
    label, rung, ok = cal.choose(0.95, 0.1, exact_ok=True)      # 40 * 0.1 / 0.05 = 80 < 100: the scan
    assert rung.exact and ok and label == "fraction:0.05..0.25"
    label, rung, ok = cal.choose(0.95, 0.2, exact_ok=True)      # 160 > 100: the index setting
    assert not rung.exact and rung.params == {"nprobe": 8} and ok
    assert not cal.choose(0.95, 0.1, exact_ok=False)[1].exact   # a caller that cannot scan never gets it
    params, info = cal.settings({}, 0.1, 0.95, exact_ok=True)
    assert info["exact"] and params == {}
