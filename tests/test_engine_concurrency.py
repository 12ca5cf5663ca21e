"""The tail moves into the index in the background while readers keep getting complete, exact results."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from shoal.engine import Database


def exact_ids(q, x, k):
    d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_tail_moves_to_index_while_readers_search(tmp_path, rng):
    n, batch, d, k = 3000, 100, 8, 10
    x = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((3, d)).astype(np.float32)
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=d, tail_limit=400)
    acked = [0]
    errors, checks = [], [0]
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            lo = acked[0]
            res = col.search(q, k=k)
            hi = acked[0]
            # the visible set is ids < m for one m in [lo, hi + batch] (a batch becomes visible just before its
            # acknowledgement is recorded here): the result must be the exact top-k of that prefix
            ok = False
            for m in range(lo, min(hi + batch, n) + 1, batch):
                if m == 0:
                    continue
                want = exact_ids(q, x[:m], min(k, m))
                got = res.ids[:, :min(k, m)]
                if np.array_equal(want, got) and (m >= k or np.all(res.ids[:, m:] == -1)):
                    ok = True
                    break
            if lo and not ok:
                errors.append((lo, hi, res.ids.copy(), res.stats))
            checks[0] += 1

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    tails = []
    try:
        for lo in range(0, n, batch):
            col.upsert(np.arange(lo, lo + batch), x[lo:lo + batch])
            acked[0] = lo + batch
            tails.append(col.info()["tail"])
        col.wait_for_build(60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:2]
    assert checks[0] > 20
    assert col.counters["builds"] >= 2
    info = col.info()
    assert info["indexed"] > 0 and info["tail"] < 400
    assert max(tails) >= 400 and min(tails[5:]) < 400  # the tail grew past the limit and shrank again
    # an explicit background rebuild, readers still exact
    job = col.build(background=True)
    while job.running:
        np.testing.assert_array_equal(col.search(q, k=k).ids, exact_ids(q, x, k))
    assert job.error is None and job.progress == 1.0
    np.testing.assert_array_equal(col.search(q, k=k).ids, exact_ids(q, x, k))
    db.close()


@pytest.mark.parametrize("mode", ["rebuild", "extend"])
def test_writes_during_background_build_are_not_lost(tmp_path, rng, mode):
    d = 6
    x = rng.standard_normal((2000, d)).astype(np.float32)
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=d, tail_limit=10**9)
    if mode == "extend":  # an index over the first 1000, the rest in the tail
        col.upsert(np.arange(1000), x[:1000])
        col.build()
        col.upsert(np.arange(1000, 1500), x[1000:1500])
    else:
        col.upsert(np.arange(1500), x[:1500])
    in_build, go_on = threading.Event(), threading.Event()

    def progress(done, total, stage):  # runs in the build thread, after it has copied the records
        in_build.set()
        assert go_on.wait(30)

    if mode == "extend":
        job = col._start_auto(progress)  # what the tail limit triggers
    else:
        job = col.build(background=True, progress=progress)
    assert in_build.wait(30)
    # while the build holds its copy: replace, delete and add (replayed on the new index at the swap)
    col.upsert(np.arange(0, 50), x[1500:1550])
    col.delete(np.arange(50, 100))
    col.upsert(np.arange(1500, 1950), x[1550:2000])
    assert col.search(x[:1], k=1).stats.plan == ("tail" if mode == "rebuild" else "index(Flat)+tail")
    go_on.set()
    job.wait(60)
    assert job.error is None and col.info()["tail"] == 500 and col.info()["indexed"] == 1400
    live_ids = np.concatenate([np.arange(0, 50), np.arange(100, 1500), np.arange(1500, 1950)])
    live_x = np.concatenate([x[1500:1550], x[100:1500], x[1550:2000]])
    q = rng.standard_normal((4, d)).astype(np.float32)
    res = col.search(q, k=20)
    dd = ((q[:, None, :] - live_x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(res.ids, live_ids[np.argsort(dd, axis=1, kind="stable")[:, :20]])
    assert col.count() == live_ids.size
    db.close()
    col2 = Database(tmp_path / "d").collection("c")
    np.testing.assert_array_equal(col2.search(q, k=20).ids, res.ids)


def test_read_only_openers_never_miss_acknowledged_writes(tmp_path, rng):
    """A read-only opener (shoal search / info next to a writer) races snapshots: WAL emptied, generations deleted."""
    path = tmp_path / "d"
    db = Database(path)
    col = db.create_collection("c", dim=4, tail_limit=10**9)
    acked = [0]
    stop = threading.Event()
    errors = []

    def writer():
        i = 0
        while not stop.is_set() and i < 20000:
            col.upsert(np.arange(i, i + 50), rng.standard_normal((50, 4)))
            acked[0] = i + 50
            i += 50
            if (i // 50) % 2 == 0:
                col.compact()

    t = threading.Thread(target=writer)
    t.start()
    opened = 0
    try:
        while t.is_alive() and opened < 150:
            before = acked[0]
            ro = Database(path, read_only=True)
            try:
                n = ro.collection("c").count()
                if n < before:
                    errors.append((before, n))
            finally:
                ro.close()
            opened += 1
    finally:
        stop.set()
        t.join()
    assert not errors, errors[:3]
    assert opened >= 5
    db.close()
