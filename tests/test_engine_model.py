"""Model-based test (hypothesis stateful), for every index kind: upsert / delete / get / search (with filters and
tenants) / build (foreground and background) / grant / revoke / drop_tenant against a dict model, across reopen (clean
close, and a crash-like reopen that abandons the in-memory state and relies on the WAL).

Searches run with each kind's exhaustive settings, so every kind must return exactly brute force's results (tie
tolerant): what is checked is the engine around the index (ids, deletes, tail, masks, native tenants and filters, the
copy-on-write builds), not the kind's recall at cheap settings.
"""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shoal.engine import Database
from shoal.errors import InvalidArgument, NotFound

D = 4
IDS = st.integers(0, 15)
#: ids of the base records written first, so every kind has enough rows to train on
BASE = list(range(100, 140))
ALL_IDS = np.array(list(range(16)) + BASE)
TENANTS = st.sampled_from(["a", "b", "c"])
FILTERS = st.sampled_from([None, "k < 3", 'c = "a"', 'k >= 2 and c = "b"', "not (k = 1)"])


def matches(flt, attrs) -> bool:
    """The model's own evaluation of the filters above (a comparison with a missing attribute is false; ``not`` of it
    is true, docs/filters.md)."""
    if flt is None:
        return True
    k, c = attrs.get("k"), attrs.get("c")
    return {"k < 3": k is not None and k < 3, 'c = "a"': c == "a",
            'k >= 2 and c = "b"': k is not None and k >= 2 and c == "b",
            "not (k = 1)": not (k is not None and k == 1)}[flt]


class CollectionModel(RuleBasedStateMachine):
    spec = "Flat"
    params: dict | None = None

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="shoal-model-")
        self.db = Database(self.dir)
        self.col = self.db.create_collection("m", dim=D, schema={"k": "int", "c": "keyword"}, tail_limit=10**9,
                                             multi_tenant=True, index=self.spec, exact_threshold=0)
        self.model: dict[int, tuple[np.ndarray, dict]] = {}
        self.access: dict[int, set[str]] = {}     # id -> tenants that can see it
        self.tenants: set[str] = set()            # tenants that exist (from their first grant until dropped)

    @initialize(seed=st.integers(0, 2**16))
    def base(self, seed):
        rng = np.random.default_rng(seed)
        x = rng.integers(-4, 5, size=(len(BASE), D)).astype(np.float32)
        attrs = [{"k": int(rng.integers(0, 5)), "c": "ab"[i % 2]} for i in range(len(BASE))]
        names = [["abc"[i % 3]] if i % 4 else [] for i in range(len(BASE))]
        self.col.upsert(BASE, x, attrs=attrs, tenants=names)
        for i, u in enumerate(BASE):
            self.model[u] = (x[i], attrs[i])
            self.access[u] = set(names[i])
        self.tenants.update(t for n in names for t in n)

    def teardown(self):
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(ids=st.lists(IDS, min_size=1, max_size=5, unique=True), seed=st.integers(0, 2**16),
          with_attrs=st.booleans(), tenants=st.none() | st.lists(TENANTS, max_size=2, unique=True))
    def upsert(self, ids, seed, with_attrs, tenants):
        x = np.random.default_rng(seed).integers(-4, 5, size=(len(ids), D)).astype(np.float32)
        attrs = [{"k": seed % 7, "c": "ab"[i % 2]} for i in range(len(ids))] if with_attrs else None
        names = None if tenants is None else [tenants] * len(ids)
        assert self.col.upsert(ids, x, attrs=attrs, tenants=names) == len(ids)
        for i, u in enumerate(ids):
            self.model[u] = (x[i], attrs[i] if attrs else {})
            if tenants is not None:          # None keeps a replaced record's tenants
                self.access[u] = set(tenants)
            self.access.setdefault(u, set())
        self.tenants.update(tenants or ())

    @rule(ids=st.lists(IDS, min_size=2, max_size=4))
    def upsert_duplicates_rejected(self, ids):
        ids = ids + ids[:1]
        try:
            self.col.upsert(ids, np.zeros((len(ids), D), np.float32))
            raise AssertionError("duplicate ids accepted")
        except InvalidArgument:
            pass

    @rule(ids=st.lists(IDS, max_size=5))
    def delete(self, ids):
        expected = len(set(ids) & set(self.model))
        assert self.col.delete(ids) == expected
        for u in ids:
            self.model.pop(u, None)
            self.access.pop(u, None)

    @rule(ids=st.lists(IDS, min_size=1, max_size=4), tenant=TENANTS)
    def grant(self, ids, tenant):
        if not set(ids) <= set(self.model):
            try:
                self.col.grant(ids, tenant)
                raise AssertionError("grant to an unknown id accepted")
            except NotFound:
                return
        assert self.col.grant(ids, tenant) == len(set(ids))
        for u in ids:
            self.access[u].add(tenant)
        self.tenants.add(tenant)

    @rule(ids=st.lists(IDS, min_size=1, max_size=4), tenant=TENANTS)
    def revoke(self, ids, tenant):
        if tenant not in self.tenants or not set(ids) <= set(self.model):
            try:
                self.col.revoke(ids, tenant)
                raise AssertionError("revoke of an unknown tenant or id accepted")
            except NotFound:
                return
        self.col.revoke(ids, tenant)
        for u in ids:
            self.access[u].discard(tenant)

    @rule(tenant=TENANTS)
    def drop_tenant(self, tenant):
        if tenant not in self.tenants:
            try:
                self.col.drop_tenant(tenant)
                raise AssertionError("dropping an unknown tenant accepted")
            except NotFound:
                return
        assert self.col.drop_tenant(tenant) == sum(tenant in a for a in self.access.values())
        self.tenants.discard(tenant)
        for a in self.access.values():
            a.discard(tenant)

    @rule()
    def build(self):
        self.col.build()

    @rule(wait=st.booleans())
    def background_build(self, wait):
        """What a full tail starts: an extend build on a copy of the index, swapped in when done."""
        job = self.col._start_auto()
        if wait:
            assert job.wait(60) and job.error is None, job.error

    @rule()
    def reopen_clean(self):
        self.db.close()
        self.db = Database(self.dir)
        self.col = self.db.collection("m")

    @rule()
    def reopen_after_crash(self):
        # abandon the process state: no snapshot, no close; only the fsynced WAL (and earlier snapshots) remain
        self.col._abandon()
        self.col._closed = True
        self.db._open.clear()
        self.db = Database(self.dir)
        self.col = self.db.collection("m")

    @rule(seed=st.integers(0, 2**16), k=st.integers(1, 6), tenant=st.none() | TENANTS, flt=FILTERS)
    def search_matches_model(self, seed, k, tenant, flt):
        q = np.random.default_rng(seed).standard_normal((2, D)).astype(np.float32)
        if tenant is not None and tenant not in self.tenants:
            try:
                self.col.search(q, k=k, tenant=tenant)
                raise AssertionError("search in an unknown tenant accepted")
            except NotFound:
                return
        res = self.col.search(q, k=k, tenant=tenant, filter=flt, params=self.params)
        ids = np.array(sorted(u for u in self.model if (tenant is None or tenant in self.access[u])
                              and matches(flt, self.model[u][1])), dtype=np.int64)
        assert res.stats.matched in (None, len(ids))  # None: not counted (full lists from a native filter)
        for qi in range(2):
            got = [u for u in res.ids[qi] if u >= 0]
            assert len(got) == min(k, len(ids)) and len(set(got)) == len(got), (got, ids)
            assert set(got) <= set(ids.tolist())  # live, visible to the tenant, matching the filter
            if not len(ids):
                continue
            x = np.stack([self.model[u][0] for u in ids])
            dist = ((x - q[qi]) ** 2).sum(1)
            # tie-tolerant: the k-th distance must match and every returned id must be within it
            kth = np.sort(dist)[len(got) - 1]
            d_got = np.array([dist[np.searchsorted(ids, u)] for u in got])
            assert np.all(d_got <= kth + 1e-4), (self.col.index_spec, res.stats)
            np.testing.assert_allclose(res.scores[qi, :len(got)], np.sqrt(np.sort(dist)[:len(got)]), atol=1e-3)

    @invariant()
    def get_matches_model(self):
        got = self.col.get(ALL_IDS)
        assert sorted(r["id"] for r in got) == sorted(self.model)
        for r in got:
            x, attrs = self.model[r["id"]]
            np.testing.assert_array_equal(r["vector"], x)
            assert r["attrs"] == attrs
            assert r["tenants"] == sorted(self.access[r["id"]])
        assert self.col.count() == len(self.model)
        assert sorted(self.col.list_tenants()) == sorted(self.tenants)
        for t in self.tenants:
            visible = sorted(u for u, a in self.access.items() if t in a)
            assert [r["id"] for r in self.col.get(ALL_IDS, tenant=t)] == visible
            assert self.col.count(tenant=t) == len(visible)


SETTINGS = settings(max_examples=20, stateful_step_count=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _machine(name: str, spec: str, params: dict | None):
    cls = type(name, (CollectionModel,), {"spec": spec, "params": params})
    case = cls.TestCase
    case.settings = SETTINGS
    return case


# each kind with its exhaustive search settings (so results must equal brute force)
TestFlatModel = _machine("FlatModel", "Flat", None)
TestIVFPQModel = _machine("IVFPQModel", "IVF2,PQ2x4,Refine", {"nprobe": 2, "rerank": 1000})
TestCuratorModel = _machine("CuratorModel", "Curator(branch=2,leaf=8)", {"gamma": 10_000, "rerank": 1000})
TestOSQModel = _machine("OSQModel", "OSQ(partitions=2)", {"nprobe": 1000, "rerank": 1000})
