"""Model-based test (hypothesis stateful): upsert / delete / get / search / build against a dict model, across
reopen (clean close, and a crash-like reopen that abandons the in-memory state and relies on the WAL)."""

from __future__ import annotations

import shutil
import tempfile

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shoal.engine import Database
from shoal.errors import InvalidArgument

D = 3
IDS = st.integers(0, 15)


class CollectionModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="shoal-model-")
        self.db = Database(self.dir)
        self.col = self.db.create_collection("m", dim=D, schema={"k": "int", "c": "keyword"}, tail_limit=10**9)
        self.model: dict[int, tuple[np.ndarray, dict]] = {}

    def teardown(self):
        try:
            self.db.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(ids=st.lists(IDS, min_size=1, max_size=5, unique=True), seed=st.integers(0, 2**16),
          with_attrs=st.booleans())
    def upsert(self, ids, seed, with_attrs):
        x = np.random.default_rng(seed).integers(-4, 5, size=(len(ids), D)).astype(np.float32)
        attrs = [{"k": seed % 7, "c": "ab"[i % 2]} for i in range(len(ids))] if with_attrs else None
        assert self.col.upsert(ids, x, attrs=attrs) == len(ids)
        for i, u in enumerate(ids):
            self.model[u] = (x[i], attrs[i] if attrs else {})

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

    @rule()
    def build(self):
        self.col.build()

    @rule()
    def reopen_clean(self):
        self.db.close()
        self.db = Database(self.dir)
        self.col = self.db.collection("m")

    @rule()
    def reopen_after_crash(self):
        # abandon the process state: no snapshot, no close; only the fsynced WAL (and earlier snapshots) remain
        self.col.wal.close()
        self.col._closed = True
        self.db._open.clear()
        self.db = Database(self.dir)
        self.col = self.db.collection("m")

    @rule(seed=st.integers(0, 2**16), k=st.integers(1, 6))
    def search_matches_model(self, seed, k):
        q = np.random.default_rng(seed).standard_normal((2, D)).astype(np.float32)
        res = self.col.search(q, k=k)
        ids = np.array(sorted(self.model), dtype=np.int64)
        for qi in range(2):
            got = [u for u in res.ids[qi] if u >= 0]
            assert len(got) == min(k, len(ids))
            if not len(ids):
                continue
            x = np.stack([self.model[u][0] for u in ids])
            dist = ((x - q[qi]) ** 2).sum(1)
            # tie-tolerant: the k-th distance must match and every returned id must be within it
            kth = np.sort(dist)[len(got) - 1]
            d_got = np.array([dist[np.searchsorted(ids, u)] for u in got])
            assert np.all(d_got <= kth + 1e-4)
            np.testing.assert_allclose(res.scores[qi, :len(got)], np.sqrt(np.sort(dist)[:len(got)]), atol=1e-3)

    @invariant()
    def get_matches_model(self):
        got = self.col.get(np.arange(16))
        assert [r["id"] for r in got] == sorted(self.model)
        for r in got:
            x, attrs = self.model[r["id"]]
            np.testing.assert_array_equal(r["vector"], x)
            assert r["attrs"] == attrs
        assert self.col.count() == len(self.model)


TestCollectionModel = CollectionModel.TestCase
TestCollectionModel.settings = settings(max_examples=20, stateful_step_count=20, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
