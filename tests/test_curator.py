"""Curator (multi-tenant clustering tree): access safety under random updates, recall, persistence, errors, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shoal.errors import InvalidArgument, NotFound
from shoal.index import describe, index_factory, load_index
from shoal.index.curator import CuratorIndex
from shoal.index.flat import exact_search
from shoal.storage import LocalStore


def csr(lists):
    indptr = np.zeros(len(lists) + 1, np.int64)
    indptr[1:] = np.cumsum([len(x) for x in lists])
    tids = np.array([t for x in lists for t in x], np.int32)
    return indptr, tids


def clustered(rng, n, d, nclus=24, spread=0.35):
    centers = rng.standard_normal((nclus, d)).astype(np.float32)
    lab = rng.integers(0, nclus, n)
    x = centers[lab] + spread * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32), lab, centers


def skewed_tenants(rng, n, lab, ntenants=40, per_vector=4.0):
    """Zipf-sized tenants, even ones topical (drawn from 2 clusters), odd ones uniform."""
    raw = 1.0 / np.arange(1, ntenants + 1) ** 0.8
    sizes = np.maximum(10, np.minimum(n // 2, raw / raw.sum() * per_vector * n)).astype(int)
    members = []
    for t, s in enumerate(sizes):
        if t % 2 == 0:
            pool = np.flatnonzero(np.isin(lab, rng.choice(lab.max() + 1, 2, replace=False)))
            pool = pool if pool.size >= s else np.arange(n)
        else:
            pool = np.arange(n)
        members.append(np.sort(rng.choice(pool, min(s, pool.size), replace=False)))
    lists = [[] for _ in range(n)]
    for t, m in enumerate(members):
        for r in m:
            lists[r].append(t)
    return members, lists


@pytest.fixture(scope="module")
def built():
    rng = np.random.default_rng(7)
    n, d = 6000, 24
    x, lab, centers = clustered(rng, n, d)
    members, lists = skewed_tenants(rng, n, lab)
    ids = np.arange(n, dtype=np.int64) * 5 + 3
    ix = index_factory(d, "Curator(branch=8,leaf=64,shortlist=64)")
    ix.add(x, ids, tenants=csr(lists))
    q = (centers[rng.integers(0, len(centers), 60)] + 0.35 * rng.standard_normal((60, d))).astype(np.float32)
    return ix, x, ids, members, lists, q


# ---------------------------------------------------------------------------------------------------- basics
def test_factory_roundtrip_and_bad_settings():
    ix = index_factory(8, "Curator(branch=4,leaf=16,shortlist=32,bloom=1024)")
    assert isinstance(ix, CuratorIndex) and ix.supports_tenants
    assert describe(ix) == "Curator(branch=4,leaf=16,shortlist=32,bloom=1024)"
    assert describe(index_factory(8, describe(ix))) == describe(ix)
    with pytest.raises(InvalidArgument, match="valid settings"):
        index_factory(8, "Curator(fanout=3)")
    with pytest.raises(InvalidArgument, match="power of two"):
        index_factory(8, "Curator(bloom=1000)")
    with pytest.raises(InvalidArgument):
        index_factory(8, "Curator,Flat")


def test_recall_and_access_at_default_settings(built):
    ix, x, ids, members, _, q = built
    ix.check_invariants()
    recalls = []
    for t in range(len(members)):
        D, I = ix.search(q, 10, tenant=t)
        allowed = np.zeros(len(ids), bool)
        allowed[members[t]] = True
        assert np.isin(I[I >= 0], ids[members[t]]).all(), f"tenant {t} got an id it cannot access"
        gD, gI = exact_search(q, x, 10, "l2", labels=ids, allowed=allowed)
        recalls.append(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, gI)]))
        # keys are real squared distances of the returned ids
        rows = (I[I >= 0] - 3) // 5
        np.testing.assert_allclose(D[I >= 0], ((np.repeat(q, 10, 0)[I.ravel() >= 0] - x[rows]) ** 2).sum(1),
                                   rtol=1e-4, atol=1e-4)
    assert np.mean(recalls) >= 0.9, recalls
    assert min(recalls) >= 0.75, recalls


def test_batch_per_query_tenants_and_exhaustive_budget(built):
    ix, x, ids, members, _, q = built
    tens = np.arange(len(q)) % len(members)
    D, I = ix.search(q, 5, tenant=tens, params={"gamma": 1e6, "rerank": 0})
    for i, t in enumerate(tens):
        allowed = np.zeros(len(ids), bool)
        allowed[members[t]] = True
        gD, gI = exact_search(q[i:i + 1], x, 5, "l2", labels=ids, allowed=allowed)
        np.testing.assert_allclose(D[i], gD[0], rtol=1e-5, atol=1e-5)  # an unbounded budget is exact
    D1, I1 = ix.search(q[:3], 5, tenant=int(tens[0]))
    D2, I2 = ix.search(q[:3], 5, tenant=np.full(3, tens[0]))
    np.testing.assert_array_equal(I1, I2)


def test_allowed_mask_applies_inside_scan(built):
    ix, x, ids, members, _, q = built
    t = 0
    allowed = (np.arange(len(ids)) % 3) == 0
    D, I = ix.search(q[:10], 10, tenant=t, allowed=allowed, params={"gamma": 1e6, "rerank": 0})
    ok = ids[np.intersect1d(members[t], np.flatnonzero(allowed))]
    assert np.isin(I[I >= 0], ok).all()
    mask = np.zeros(len(ids), bool)
    mask[np.intersect1d(members[t], np.flatnonzero(allowed))] = True
    gD, gI = exact_search(q[:10], x, 10, "l2", labels=ids, allowed=mask)
    np.testing.assert_allclose(D, gD, rtol=1e-5, atol=1e-5)
    per_query = np.zeros((10, len(ids)), bool)
    per_query[np.arange(10), members[t][:10]] = True  # one row each
    D, I = ix.search(q[:10], 3, tenant=t, allowed=per_query, params={"gamma": 1e6, "rerank": 0})
    assert (I[:, 0] == ids[members[t][:10]]).all() and (I[:, 1:] == -1).all()


def test_code_ranking_with_exact_rerank(built):
    ix, x, ids, members, _, q = built
    t = 1
    allowed = np.zeros(len(ids), bool)
    allowed[members[t]] = True
    gD, gI = exact_search(q, x, 10, "l2", labels=ids, allowed=allowed)
    hits = {}
    for rerank in (0, 10, 64):
        D, I = ix.search(q, 10, tenant=t, params={"gamma": 1e6, "rerank": rerank})
        assert np.isin(I[I >= 0], ids[members[t]]).all()
        rows = (I - 3) // 5  # returned keys are exact distances whatever ranked the candidates
        np.testing.assert_allclose(D, ((q[:, None, :] - x[rows]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)
        hits[rerank] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, gI)])
    assert hits[0] == 1.0  # exact scoring of every candidate
    assert hits[64] >= 0.97 and hits[10] >= 0.6 and hits[64] >= hits[10], hits  # 4-bit codes rank well, not exactly
    with pytest.raises(InvalidArgument, match="rerank"):
        ix.search(q[:1], 3, tenant=t, params={"rerank": -1})
    with pytest.raises(InvalidArgument, match="rerank"):
        ix.search(q[:1], 3, tenant=t, params={"rerank": 2.5})


def test_high_dimensional_index_keeps_no_codes_and_scores_exactly(rng, tmp_path):
    x = rng.standard_normal((600, 130)).astype(np.float32)  # d > 128: no code store
    ix = index_factory(130, "Curator(branch=4,leaf=32,shortlist=16)")
    ix.add(x, np.arange(600), tenants=csr([[i % 2] for i in range(600)]))
    assert ix.memory_breakdown()["codes"] == 2 * 4 * 130  # only the (unused) grid, no per-row codes
    D1, I1 = ix.search(x[:5], 4, tenant=1, params={"gamma": 8})
    D0, I0 = ix.search(x[:5], 4, tenant=1, params={"gamma": 8, "rerank": 0})
    np.testing.assert_array_equal(I1, I0)
    ix.save(LocalStore(tmp_path), "hd")
    back = load_index(LocalStore(tmp_path), "hd", mmap=True)
    np.testing.assert_array_equal(back.search(x[:5], 4, tenant=1, params={"gamma": 8})[1], I1)


def test_no_tenant_searches_all_live_rows(built):
    ix, x, ids, _, _, q = built
    D, I = ix.search(q[:5], 4)
    gD, gI = exact_search(q[:5], x, 4, "l2", labels=ids)
    np.testing.assert_array_equal(I, gI)


def test_save_load_search_identical(built, tmp_path):
    ix, x, ids, members, _, q = built
    store = LocalStore(tmp_path)
    before = [ix.search(q, 10, tenant=t) for t in (0, 1, 5, 39)]
    ix.save(store, "cur")
    for mmap in (False, True):
        back = load_index(store, "cur", mmap=mmap)
        assert isinstance(back, CuratorIndex) and describe(back) == describe(ix)
        for t, (D, I) in zip((0, 1, 5, 39), before):
            D2, I2 = back.search(q, 10, tenant=t)
            np.testing.assert_array_equal(I, I2)
            np.testing.assert_array_equal(D, D2)
        assert back.tenants_of(int(ids[0])) == ix.tenants_of(int(ids[0]))
        back.check_invariants()
    # a loaded (mapped) index keeps accepting updates
    back.add(x[:3] + 1, [10**9, 10**9 + 1, 10**9 + 2], tenants=csr([[0], [0, 77], []]))
    assert back.tenants_of(10**9 + 1) == [0, 77]
    back.grant([10**9 + 2], 1)
    back.check_invariants()


def test_ids_removed_and_added_again(rng):
    """The id table holds rows only (keys read from the row ids): ids come and go many times, and stay findable."""
    x = rng.standard_normal((400, 8)).astype(np.float32)
    ix = index_factory(8, "Curator(branch=4,leaf=32,shortlist=16)")
    ix.add(x[:200], np.arange(200) * 7, tenants=csr([[i % 3] for i in range(200)]))
    size0 = ix.memory_breakdown()["id_map"]
    for r in range(6):  # tombstones pile up, the table is rebuilt, never grows past what the live ids need
        gone = (np.arange(r * 30, r * 30 + 30) % 200) * 7
        assert ix.remove(gone) == 30
        ix.add(x[200 + r * 30:230 + r * 30], gone, tenants=csr([[5]] * 30))
        assert ix.tenants_of(int(gone[0])) == [5]
    assert ix.memory_breakdown()["id_map"] <= 2 * size0
    with pytest.raises(InvalidArgument):
        ix.add(x[:1], [7], tenants=csr([[1]]))  # id 7 is live again
    ix.check_invariants()
    D, I = ix.search(x[200:201], 1, tenant=5, params={"gamma": 1e9, "rerank": 0})
    assert I[0, 0] == 0  # row 200 now carries id 0
    assert ix.remove([10**6]) == 0


def test_memory_accounting(built):
    ix, *_ = built
    br = ix.memory_breakdown()
    assert ix.memory_bytes() >= sum(br.values())
    assert br["vectors"] >= ix.ntotal * ix.d * 4
    assert ix.tenant_memory_bytes(0) > ix.tenant_memory_bytes(39) > 0



def test_compact_keeps_row_views_live(rng):
    """compact() reallocates the row buffers; row_ids / deleted (what the engine reads to know which ids the index
    holds) must follow, or a remove after compact is invisible to them (found by the engine model test)."""
    x = rng.standard_normal((1500, 8)).astype(np.float32)
    ix = index_factory(8, "Curator(branch=4,leaf=16)")
    ix.add(x[:1000], np.arange(1000))
    ix.add(x[1000:], np.arange(1000, 1500))   # grows the buffers past 1,500 rows
    ix.compact()
    assert ix.row_ids.shape == ix.deleted.shape == (1500,)
    assert ix.remove([5, 1200]) == 2
    assert set(ix.row_ids[ix.deleted].tolist()) == {5, 1200}
    with pytest.raises(NotFound, match="id 5 is not in the index"):
        ix.grant([5], 0)
    _, got = ix.search(x[5:6], 3)
    assert 5 not in got[0]

# ---------------------------------------------------------------------------------------------------- errors
def test_errors_unknown_tenant_removed_id_and_bad_input(rng):
    x = rng.standard_normal((300, 8)).astype(np.float32)
    ix = index_factory(8, "Curator(branch=4,leaf=16,shortlist=8)")
    ix.add(x, np.arange(300), tenants=csr([[i % 3] for i in range(300)]))
    with pytest.raises(NotFound, match="tenant 9"):
        ix.search(x[:1], 3, tenant=9)
    with pytest.raises(NotFound):
        ix.revoke([1], 9)
    with pytest.raises(NotFound):
        ix.drop_tenant(9)
    assert ix.remove([5, 6, 12345]) == 2
    with pytest.raises(NotFound, match="id 5"):
        ix.grant([5], 0)
    with pytest.raises(NotFound, match="id 999"):
        ix.grant([1, 999], 1)
    with pytest.raises(NotFound):
        ix.tenants_of(6)
    with pytest.raises(InvalidArgument, match="already"):
        ix.add(x[:1], [7])
    with pytest.raises(InvalidArgument, match="tenant"):
        ix.grant([1], -1)
    with pytest.raises(InvalidArgument, match="indptr"):
        ix.add(x[:2], [500, 501], tenants=(np.array([0, 2, 1]), np.array([1, 1])))
    with pytest.raises(InvalidArgument, match="gamma"):
        ix.search(x[:1], 3, tenant=0, params={"gamma": 0})
    for bad in (np.nan, np.inf):  # caught by the kernel on the fast path, reported by the checked path
        q = x[:3].copy()
        q[2, 5] = bad
        with pytest.raises(InvalidArgument, match="NaN"):
            ix.search(q, 3, tenant=0)
    with pytest.raises(InvalidArgument, match="valid"):
        ix.search(x[:1], 3, tenant=0, params={"nprobe": 3})
    ix.drop_tenant(2)
    with pytest.raises(NotFound):
        ix.search(x[:1], 3, tenant=2)
    assert all(2 not in ix.tenants_of(i) for i in range(0, 300, 7) if i not in (5, 6))
    ix.check_invariants()
    ix.grant([1, 2], 2)  # a dropped tenant can be created again
    assert ix.tenant_size(2) == 2


# ---------------------------------------------------------------------------------------------------- stateful
POOL = np.random.default_rng(3).standard_normal((400, 6)).astype(np.float32)
POOL[200:] = POOL[:200] + 0.01  # near-duplicates: ties and crowded leaves


class CuratorMachine(RuleBasedStateMachine):
    """Random add / grant / revoke / remove / drop_tenant against a dict model of who may see what."""

    @initialize()
    def setup(self):
        self.ix = index_factory(6, "Curator(branch=3,leaf=8,shortlist=4,bloom=512,hashes=2)")
        self.ix.train(POOL[:120])
        self.model: dict[int, set[int]] = {}  # live id -> tenants
        self.alive: set[int] = set()  # tenants that exist
        self.next_row = 0
        self.ids_made = 0

    def vec(self, uid):
        return POOL[uid % len(POOL)]

    @rule(count=st.integers(1, 12), tenants=st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=12,
                                                        max_size=12))
    def add(self, count, tenants):
        ids = list(range(self.ids_made, self.ids_made + count))
        self.ids_made += count
        lists = [sorted(set(tenants[i])) for i in range(count)]
        self.ix.add(np.stack([self.vec(u) for u in ids]), ids, tenants=csr(lists))
        for u, ts in zip(ids, lists):
            self.model[u] = set(ts)
            self.alive |= set(ts)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), tenant=st.integers(0, 6))
    def grant(self, data, tenant):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=10))
        self.ix.grant(ids, tenant)
        for u in ids:
            self.model[u].add(tenant)
        self.alive.add(tenant)

    @precondition(lambda self: self.model and self.alive)
    @rule(data=st.data())
    def revoke(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.alive)))
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=10))
        self.ix.revoke(ids, tenant)
        for u in ids:
            self.model[u].discard(tenant)

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data):
        ids = data.draw(st.lists(st.sampled_from(sorted(self.model)), min_size=1, max_size=6, unique=True))
        assert self.ix.remove(ids + [10**12]) == len(ids)
        for u in ids:
            del self.model[u]
        with pytest.raises(NotFound):
            self.ix.grant(ids[:1], 0)

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def drop(self, data):
        tenant = data.draw(st.sampled_from(sorted(self.alive)))
        self.ix.drop_tenant(tenant)
        self.alive.discard(tenant)
        for ts in self.model.values():
            ts.discard(tenant)

    @precondition(lambda self: self.alive)
    @rule(data=st.data(), qi=st.integers(0, len(POOL) - 1), k=st.integers(1, 6), gamma=st.sampled_from([0.5, 4.0, 1e9]),
          rerank=st.sampled_from([0, 1, 64]))
    def search(self, data, qi, k, gamma, rerank):
        tenant = data.draw(st.sampled_from(sorted(self.alive)))
        D, I = self.ix.search(POOL[qi], k, tenant=tenant, params={"gamma": gamma, "rerank": rerank})
        visible = {u for u, ts in self.model.items() if tenant in ts}
        got = [int(i) for i in I[0] if i >= 0]
        assert set(got) <= visible, f"tenant {tenant} saw {set(got) - visible}"
        assert len(set(got)) == len(got)
        if gamma >= 1e9 and rerank == 0:  # unbounded budget, exact scoring: exactly the k nearest visible vectors
            want = sorted(((float(((POOL[qi] - self.vec(u)) ** 2).sum()), u) for u in visible))[:k]
            assert len(got) == len(want)
            np.testing.assert_allclose(D[0, :len(want)], [w[0] for w in want], rtol=1e-4, atol=1e-5)

    @invariant()
    def consistent(self):
        if not hasattr(self, "ix"):
            return
        self.ix.check_invariants()
        assert sorted(self.ix.list_tenants()) == sorted(self.alive)
        for t in self.alive:
            assert self.ix.tenant_size(t) == sum(t in ts for ts in self.model.values())
        for u in list(self.model)[:5]:
            assert self.ix.tenants_of(u) == sorted(self.model[u])


TestCuratorStateful = CuratorMachine.TestCase
TestCuratorStateful.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------------------- threads
def test_concurrent_readers_and_writer(rng):
    n, d = 3000, 12
    x, lab, _ = clustered(rng, n, d, nclus=10)
    ix = index_factory(d, "Curator(branch=4,leaf=32,shortlist=16)")
    # tenant t may only ever see ids whose (id % 7) == t; the writer only grants/revokes within that rule
    lists = [[i % 7] if i % 2 == 0 else [] for i in range(n)]
    ix.add(x, np.arange(n), tenants=csr(lists))
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed):
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                t = int(r.integers(0, 7))
                _, I = ix.search(x[r.integers(0, n, 4)], 8, tenant=t, params={"gamma": float(r.choice([2, 50]))})
                got = I[I >= 0]
                if (got % 7 != t).any():
                    errors.append(AssertionError(f"tenant {t} saw {got[got % 7 != t]}"))
        except BaseException as exc:  # noqa: BLE001 - any exception in a reader is the failure we test for
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for th in threads:
        th.start()
    w = np.random.default_rng(99)
    nxt = n
    try:
        for step in range(150):
            op = step % 4
            if op == 0:
                k = int(w.integers(1, 30))
                ids = np.arange(nxt, nxt + k)
                nxt += k
                ix.add(x[w.integers(0, n, k)], ids, tenants=csr([[int(i % 7)] for i in ids]))
            elif op == 1:
                ids = w.integers(0, nxt, 40)
                ids = ids[np.isin(ids, ix.row_ids[~ix.deleted])]
                for t in range(7):
                    sel = ids[ids % 7 == t]
                    if sel.size:
                        ix.grant(sel, t)
            elif op == 2:
                ids = w.integers(0, nxt, 40)
                ids = ids[np.isin(ids, ix.row_ids[~ix.deleted])]
                for t in range(7):
                    sel = ids[ids % 7 == t]
                    if sel.size:
                        ix.revoke(sel, t)
            else:
                ix.remove(w.integers(0, nxt, 10))
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert not errors, errors[:3]
    ix.check_invariants()
