"""Engine integrity: nothing acknowledged is lost, no half-built collection is visible, no stale index is used, in any
process and on any path around the write path (a second process, a failed or interrupted build, a drop during a
build, a copy-on-write build, close racing writes, damage in the middle of the log, huge k, short lists). Each
section is one of the reproductions of the engine-integrity issue."""

from __future__ import annotations

import gc
import json
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import numpy as np
import pytest

from shoal.engine import BuildCancelled, Database, WALDamaged
from shoal.errors import AlreadyExists, FailedPrecondition, InvalidArgument

D = 8


def vectors(n, seed=0, d=D):
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def tree_digest(path) -> dict[str, str]:
    """sha256 of every file under ``path`` (owner-lock files aside: they record who holds them)."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if d != ".locks"]
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


def make_collection(path, n=200, name="docs", index="Flat", **kw):
    db = Database(path)
    col = db.create_collection(name, dim=D, schema={"price": "float"}, index=index, **kw)
    col.upsert(np.arange(n), vectors(n), attrs={"price": np.arange(n, dtype=float)})
    col.build()
    db.close()


def run_child(script: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ---------------------------------------------------------------------------------------------------- 1. ownership
HOLDER = """
    import sys
    import numpy as np
    from shoal.engine import Database
    db = Database(sys.argv[1])
    col = db.collection("docs")
    print("ready", flush=True)
    for line in sys.stdin:
        cmd, *rest = line.split()
        if cmd == "upsert":
            i = int(rest[0])
            col.upsert([i], np.full((1, 8), i, np.float32), attrs={"price": [float(i)]})
            print("ack", i, flush=True)
        elif cmd == "close":
            db.close()
            print("closed", flush=True)
            break
"""


def test_a_second_process_cannot_drop_replace_or_write_an_open_collection(tmp_path):
    path = tmp_path / "d"
    make_collection(path, n=10)
    holder = run_child(HOLDER, str(path))
    try:
        assert holder.stdout.readline().strip() == "ready"
        other = Database(path)
        for attempt in (lambda: other.drop_collection("docs"),
                        lambda: other.stage_collection("docs", dim=D, replace=True),
                        lambda: other.collection("docs"),
                        lambda: other.repair_collection("docs")):
            with pytest.raises(FailedPrecondition, match=f"pid {holder.pid}"):
                attempt()
        # read-only opens work beside the writer, and see its acknowledged writes
        holder.stdin.write("upsert 50\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["ack", "50"]
        ro = Database(path, read_only=True)
        assert ro.collection("docs").count() == 11
        ro.close()
        holder.stdin.write("close\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "closed"
    finally:
        holder.stdin.close()
        holder.wait(30)
    db = Database(path)
    col = db.collection("docs")
    assert col.count() == 11 and col.get([50])[0]["attrs"] == {"price": 50.0}
    db.close()


def test_one_database_handle_per_writer_in_a_process(tmp_path):
    path = tmp_path / "d"
    make_collection(path, n=5)
    a, b = Database(path), Database(path)
    col = a.collection("docs")
    with pytest.raises(FailedPrecondition, match="in use"):
        b.collection("docs")
    with pytest.raises(FailedPrecondition, match="in use"):
        b.drop_collection("docs")
    col.close()
    assert b.collection("docs").count() == 5  # released on close
    a.close()
    b.close()


# ---------------------------------------------------------------------------------------------------- 2. atomic builds
def test_a_failed_staged_build_leaves_the_old_collection_byte_for_byte(tmp_path):
    path = tmp_path / "d"
    make_collection(path, n=100)
    before = tree_digest(path)
    db = Database(path)
    bad = vectors(100, seed=1)
    bad[55, 3] = np.nan
    st = db.stage_collection("docs", dim=D, replace=True)
    with pytest.raises(InvalidArgument, match="row 55"):
        st.upsert(np.arange(100), bad)
    st.abort()
    # an index that can never train on this data: the build fails, nothing switches
    st = db.stage_collection("docs", dim=D, index="IVF99999,PQ2x4", replace=True)
    st.upsert(np.arange(100), vectors(100, seed=2))
    with pytest.raises(InvalidArgument):
        st.build()
    st.abort()
    # leaving a with-block without commit discards too
    with db.stage_collection("docs", dim=D, replace=True) as st:
        st.upsert(np.arange(3), vectors(3, seed=3))
    assert tree_digest(path) == before
    assert db.collection("docs").count() == 100
    db.close()
    # a new name never becomes visible from a failed build
    db = Database(path)
    st = db.stage_collection("fresh", dim=D, index="IVF99999,PQ2x4")
    st.upsert(np.arange(10), vectors(10))
    with pytest.raises(InvalidArgument):
        st.build()
    st.abort()
    assert db.list_collections() == ["docs"] and not db.exists("fresh")
    with pytest.raises(AlreadyExists):
        db.stage_collection("docs", dim=D)
    db.close()


def test_a_committed_staged_build_replaces_in_one_step(tmp_path):
    path = tmp_path / "d"
    make_collection(path, n=100)
    db = Database(path)
    st = db.stage_collection("docs", dim=D, metric="cosine", schema={"color": "keyword"}, index="Flat",
                             replace=True)
    st.upsert(np.arange(1000, 1040), vectors(40, seed=5), attrs={"color": ["red"] * 40})
    st.build()
    # until the commit, other readers see the old collection only
    ro = Database(path, read_only=True)
    assert ro.collection("docs").count() == 100
    ro.close()
    info = st.commit()
    assert info["count"] == 40 and info["metric"] == "cosine"
    col = db.collection("docs")
    assert col.count() == 40 and col.get([1000])[0]["attrs"] == {"color": "red"} and not col.get([5])
    col.upsert([7], vectors(1, seed=6), attrs={"color": ["blue"]})  # writes go to the new collection's own log
    db.close()
    db = Database(path)
    col = db.collection("docs")
    assert col.count() == 41 and col.schema.to_json() == {"color": "keyword"}
    # only the new generation and the new log are left
    files = sorted(os.listdir(path / "docs"))
    assert sum(f.startswith("wal") for f in files) == 1 and sum(f.startswith("gen-") for f in files) == 1
    db.close()


STAGED_LOADER = """
    import sys, time
    import numpy as np
    from shoal.engine import Database
    db = Database(sys.argv[1])
    st = db.stage_collection(sys.argv[2], dim=8, index="Flat", replace=True)
    try:
        i = 0
        while True:
            st.upsert(np.arange(i, i + 500), np.random.default_rng(i).standard_normal((500, 8)).astype(np.float32))
            i += 500
            if i == 5000:
                print("loading", flush=True)
    finally:
        st.abort()
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_staged_build_changes_nothing(tmp_path, sig):
    path = tmp_path / "d"
    make_collection(path, n=100)
    before = tree_digest(path)
    for name in ("docs", "fresh"):
        proc = run_child(STAGED_LOADER, str(path), name)
        assert proc.stdout.readline().strip() == "loading"
        proc.send_signal(sig)
        proc.wait(30)
        assert proc.returncode != 0
        assert tree_digest(path) == before
    db = Database(path)
    assert db.list_collections() == ["docs"] and db.collection("docs").count() == 100
    db.close()


# ---------------------------------------------------------------------------------------------------- 3. drop vs build
def test_dropping_during_a_build_cancels_it_and_nothing_comes_back(tmp_path):
    path = tmp_path / "d"
    db = Database(path)
    col = db.create_collection("docs", dim=D, index="IVF16,PQ4x8")
    col.upsert(np.arange(40_000), vectors(40_000))
    started, outcome = threading.Event(), {}

    def progress(done, total, stage):
        if stage == "add" and not started.is_set():
            started.set()
            deadline = time.time() + 30
            while col._job._cancel is None and time.time() < deadline:  # hold the build until the drop cancels it
                time.sleep(0.01)

    def build():
        try:
            outcome["result"] = col.build(progress=progress)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc

    t = threading.Thread(target=build)
    t.start()
    assert started.wait(60)
    db.drop_collection("docs")
    t.join(60)
    assert isinstance(outcome.get("error"), BuildCancelled), outcome
    assert not db.exists("docs") and db.list_collections() == []
    assert not (path / "docs").exists()
    with pytest.raises(FailedPrecondition, match="closed"):
        col.upsert([1], vectors(1))
    db.close()
    assert Database(path).list_collections() == []


# ---------------------------------------------------------------------------------------------------- 4. copy-on-write
KINDS = [
    ("Flat", [None]),
    ("IVF8,PQ4x8,Refine", [{"nprobe": 8, "rerank": 2000}]),
    ("Curator(branch=4,leaf=32)", [{"gamma": 100_000, "rerank": 2000}]),
    ("OSQ(partitions=4)", [{"nprobe": 1000, "rerank": 2000, "mode": m} for m in ("auto", "exact", "multilevel")]
     + [{"nprobe": 1000, "rerank": 2000, "mode": "multilevel", "level2": l2} for l2 in ("bounds", "exact", "head")]),
]


@pytest.mark.parametrize("spec, modes", KINDS, ids=[k[0].split("(")[0].split(",")[0] for k in KINDS])
def test_an_automatic_extend_build_keeps_results_exact_and_frees_the_old_index(tmp_path, spec, modes):
    n0, n1 = 1500, 700
    x = vectors(n0 + n1, seed=11)
    price = np.random.default_rng(3).uniform(0, 1000, n0 + n1)
    tenants = [["t1"] if i % 3 == 0 else ["t2"] for i in range(n0 + n1)]
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=D, schema={"price": "float"}, index=spec, multi_tenant=True,
                               tail_limit=600, exact_threshold=0)
    col.upsert(np.arange(n0), x[:n0], attrs={"price": price[:n0]}, tenants=tenants[:n0])
    col.build()
    old = weakref.ref(col._view.index)
    col.upsert(np.arange(n0, n0 + n1), x[n0:], attrs={"price": price[n0:]}, tenants=tenants[n0:])
    assert col.wait_for_build(120)
    assert col.build_status()["full"] is False and col.build_status()["error"] is None
    assert col._view.boundary == n0 + n1  # the tail went into a copy of the index, swapped in
    gc.collect()
    assert old() is None, "the replaced index is still referenced"
    q = vectors(5, seed=12)
    for flt in (None, "price < 430"):
        for tenant in (None, "t1"):
            ok = np.ones(n0 + n1, bool)
            if flt:
                ok &= price < 430
            if tenant:
                ok &= np.array(["t1" in t for t in tenants])
            rows = np.flatnonzero(ok)
            dist = ((x[rows][None, :, :] - q[:, None, :]) ** 2).sum(-1)
            truth = rows[np.argsort(dist, axis=1)[:, :10]]
            for params in modes:
                res = col.search(q, 10, filter=flt, tenant=tenant, params=params)
                assert (res.ids >= 0).all(), (flt, tenant, params, res.stats)
                for qi in range(5):
                    assert set(res.ids[qi]) == set(truth[qi]), (spec, flt, tenant, params, res.stats.plan)
    db.close()


# ---------------------------------------------------------------------------------------------------- 5. close vs writes
def test_closing_while_writers_append_loses_no_acknowledged_write(tmp_path):
    path = tmp_path / "d"
    for round_ in range(5):
        db = Database(path)
        col = db.create_collection("c", dim=D, exist_ok=True)
        acked: list[int] = []
        errors: list[BaseException] = []

        def writer(start):
            for i in range(start, start + 10_000, 10):
                try:
                    col.upsert(np.arange(i, i + 10), vectors(10, seed=i))
                except FailedPrecondition as exc:
                    assert "closed" in str(exc)
                    return
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)
                    return
                acked.extend(range(i, i + 10))

        threads = [threading.Thread(target=writer, args=(round_ * 100_000 + w * 20_000,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        col.close()
        for t in threads:
            t.join(30)
        assert not errors, errors
        db.close()
        db = Database(path)
        col = db.collection("c")
        got = {r["id"] for r in col.get(acked)}
        assert got == set(acked), f"round {round_}: {len(set(acked) - got)} acknowledged writes lost"
        db.close()


# ---------------------------------------------------------------------------------------------------- 6. WAL damage
def test_damage_before_intact_records_refuses_to_open_and_repair_keeps_them(tmp_path):
    path = tmp_path / "d"
    db = Database(path)
    col = db.create_collection("c", dim=D, schema={"price": "float"})
    for i in range(3):
        col.upsert([i], vectors(1, seed=i), attrs={"price": [float(i)]})
    wal = col.wal_path
    col._abandon()  # as after a crash: the three records are only in the log
    db.close()
    data = bytearray(open(wal, "rb").read())
    data[40] ^= 0x01  # one flipped bit inside the first record
    with open(wal, "wb") as f:
        f.write(data)
    with pytest.raises(WALDamaged) as err:
        Database(path).collection("c")
    msg = str(err.value)
    assert wal in msg and "byte 0" in msg and "2 intact record(s)" in msg and "shoal repair" in msg
    assert open(wal, "rb").read() == bytes(data)  # refusing changed nothing
    report = Database(path).repair_collection("c")
    assert report["kept"] == 2 and report["damaged_bytes"] > 0
    assert open(report["moved_to"], "rb").read() == bytes(data)  # the damaged bytes are moved aside, not deleted
    col = Database(path).collection("c")
    assert sorted(r["id"] for r in col.get([0, 1, 2])) == [1, 2]
    assert col.get([2])[0]["attrs"] == {"price": 2.0}
    col.close()


# ---------------------------------------------------------------------------------------------------- 7. limits
def test_k_and_request_size_are_checked_before_any_allocation(tmp_path):
    db = Database(tmp_path / "d")
    col = db.create_collection("c", dim=D, max_k=500, max_results=10_000)
    col.upsert(np.arange(100), vectors(100))
    q = vectors(50)
    for k, what in ((10**9, "max_k"), (-1, "positive"), (0, "positive"), (True, "positive"), (2.5, "positive"),
                    (501, "max_k")):
        t0 = time.perf_counter()
        with pytest.raises(InvalidArgument, match=what):
            col.search(q[:1], k=k)
        assert time.perf_counter() - t0 < 1.0
    with pytest.raises(InvalidArgument, match="max_results"):
        col.search(q, k=201)  # 50 x 201 > 10,000
    assert col.search(q, k=200).ids.shape == (50, 200)  # within both limits; 100 live records, -1 padded
    assert col.info()["max_k"] == 500
    with pytest.raises(InvalidArgument, match="max_k"):
        db.create_collection("bad", dim=D, max_k=0)
    db.close()


# ---------------------------------------------------------------------------------------------------- 8. short lists
def test_no_silent_short_lists_and_stats_describe_the_call(tmp_path):
    db = Database(tmp_path / "d")
    n = 4000
    col = db.create_collection("c", dim=D, schema={"price": "float"}, index="IVF32,PQ4x8,Refine",
                               exact_threshold=0)
    price = np.random.default_rng(2).uniform(0, 100, n)
    col.upsert(np.arange(n), vectors(n, seed=21), attrs={"price": price})
    col.build()
    q = vectors(20, seed=22)
    # 2% of the rows match; one probed list of 32 rarely holds 10 of them
    res = col.search(q, 10, filter="price < 2", params={"nprobe": 1})
    matched = int(np.count_nonzero(price < 2))
    assert res.stats.matched == matched and matched >= 10
    assert (res.ids >= 0).all(), "a short list came back while enough records match"
    assert res.stats.exact_fallback > 0 and "exact_fallback" in res.stats.plan
    assert set(res.ids.ravel()) <= set(np.flatnonzero(price < 2).tolist())
    # fewer matches than k: exactly the matches, padded, and said so
    res = col.search(q[:1], 10, filter="price < 0.1", params={"nprobe": 1})
    few = int(np.count_nonzero(price < 0.1))
    assert res.stats.matched == few and int(np.count_nonzero(res.ids >= 0)) == min(10, few)
    # stats travel with each result: concurrent calls with different plans keep their own
    plans: dict[str, set[str]] = {"a": set(), "b": set()}

    def run(label, flt):
        for _ in range(30):
            plans[label].add(col.search(q[:2], 5, filter=flt).stats.plan)

    ts = [threading.Thread(target=run, args=("a", None)), threading.Thread(target=run, args=("b", "price < 50"))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all("[filter]" not in p for p in plans["a"]) and all("[filter]" in p for p in plans["b"])
    db.close()


# ---------------------------------------------------------------------------------------------------- crash points
CRASHER = """
    import os, sys
    import numpy as np
    from shoal.engine import Database
    import shoal.engine.collection as C, shoal.engine.snapshot as S, shoal.engine.wal as W, shoal.index.flat as F
    point = sys.argv[2]

    def die(*a, **k):
        print("dying", flush=True)
        os._exit(9)

    db = Database(sys.argv[1])
    col = db.collection("c")
    ids = np.arange(1000, 1100)
    col.upsert(ids, np.full((100, 8), 3.0, np.float32), attrs={"price": ids.astype(float)})
    print("acked", flush=True)
    if point == "manifest-to-wal-reset":
        W.WriteAheadLog.reset = die
        col.compact()
    elif point == "index-save":
        F.FlatIndex.save = die
        col.build()
    elif point == "build-swap":
        C.replay = die
        col.build()
    elif point == "staged-commit":
        col.close()
        S.write_manifest = die
        st = db.stage_collection("c", dim=8, replace=True)
        st.upsert([1], np.zeros((1, 8), np.float32))
        st.commit()
"""


@pytest.mark.parametrize("point", ["manifest-to-wal-reset", "index-save", "build-swap", "staged-commit"])
def test_kill_9_at_each_crash_point_keeps_every_acknowledged_write(tmp_path, point):
    path = tmp_path / "d"
    make_collection(path, n=200, name="c")
    proc = run_child(CRASHER, str(path), point)
    out, err = proc.communicate(timeout=60)
    assert out.split() == ["acked", "dying"], err
    db = Database(path)
    col = db.collection("c")
    assert col.count() == 300, point  # the 200 built + the 100 acknowledged, once each
    got = col.get(np.arange(1000, 1100))
    assert len(got) == 100 and all(r["attrs"] == {"price": float(r["id"])} for r in got)
    res = col.search(np.full((1, 8), 3.0, np.float32), 5)
    assert set(res.ids[0]) <= set(range(1000, 1100))
    col.build()
    col.compact()
    db.close()
    assert Database(path).collection("c").count() == 300


# ---------------------------------------------------------------------------------------------------- the CLI's build
def shoal(*argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shoal.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, **kw)


def test_shoal_build_overwrite_is_all_or_nothing(tmp_path):
    data = tmp_path / "data"
    good = tmp_path / "good.npy"
    np.save(good, vectors(2000, seed=1))
    r = shoal("build", good, "--data", data, "--name", "docs", "--quiet")
    assert r.returncode == 0, r.stderr
    before = tree_digest(data)
    # NaN deep in the file: refused before anything is staged, naming the row of the file (not of a batch)
    bad = vectors(60_000, seed=2)
    bad[55_000, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = shoal("build", tmp_path / "nan.npy", "--data", data, "--name", "docs", "--overwrite", "--batch", "5000",
              "--quiet")
    assert r.returncode == 2 and "row 55000" in r.stderr, r.stderr
    # an index that can never train on this data
    r = shoal("build", good, "--data", data, "--name", "docs", "--overwrite", "--index", "IVF99999,PQ8x8", "--quiet")
    assert r.returncode == 2, r.stderr
    # duplicate ids across batches are refused like duplicates within one, naming both rows
    ids = np.arange(2000)
    ids[1500] = 3
    np.save(tmp_path / "ids.npy", ids)
    r = shoal("build", good, "--ids", tmp_path / "ids.npy", "--data", data, "--name", "docs", "--overwrite",
              "--batch", "500", "--quiet")
    assert r.returncode == 2 and "id 3 appears twice (rows 3 and 1500)" in r.stderr, r.stderr
    assert tree_digest(data) == before
    r = shoal("info", "--data", data, "--json")
    assert r.returncode == 0
    # Ctrl-C while loading: exit 130, old collection as it was, the new name invisible and buildable again
    big = tmp_path / "big.npy"
    np.save(big, vectors(600_000, seed=3))
    for name, extra in (("docs", ["--overwrite"]), ("fresh", [])):
        proc = subprocess.Popen([sys.executable, "-m", "shoal.cli", "build", str(big), "--data", str(data),
                                 "--name", name, "--batch", "2000", *extra], stderr=subprocess.PIPE, text=True)
        seen = ""
        while "load [" not in seen:
            ch = proc.stderr.read(1)
            assert ch, "the build ended before it loaded anything"
            seen += ch
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        assert proc.wait(60) == 130, seen + rest
        assert "interrupted" in rest
        assert tree_digest(data) == before
    db = Database(data)
    assert db.list_collections() == ["docs"] and db.collection("docs").count() == 2000
    db.close()
    r = shoal("build", good, "--data", data, "--name", "fresh", "--quiet")
    assert r.returncode == 0, r.stderr


def test_shoal_build_overwrite_refuses_while_another_process_holds_the_collection(tmp_path):
    data = tmp_path / "data"
    make_collection(data, n=10)
    good = tmp_path / "good.npy"
    np.save(good, vectors(50, seed=1))
    holder = run_child(HOLDER, str(data))
    try:
        assert holder.stdout.readline().strip() == "ready"
        r = shoal("build", good, "--data", data, "--name", "docs", "--overwrite", "--quiet")
        assert r.returncode == 2 and f"pid {holder.pid}" in r.stderr, r.stderr
        # the holder's writes after the refusal are acknowledged and kept
        holder.stdin.write("upsert 77\nclose\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["ack", "77"]
        assert holder.stdout.readline().strip() == "closed"
    finally:
        holder.stdin.close()
        holder.wait(30)
    db = Database(data)
    assert db.collection("docs").count() == 11
    db.close()
    r = shoal("build", good, "--data", data, "--name", "docs", "--overwrite", "--quiet")
    assert r.returncode == 0, r.stderr
    assert Database(data, read_only=True).collection("docs").count() == 50


def test_shoal_repair(tmp_path):
    data = tmp_path / "data"
    db = Database(data)
    col = db.create_collection("c", dim=D)
    for i in range(3):
        col.upsert([i], vectors(1, seed=i))
    wal = col.wal_path
    col._abandon()
    db.close()
    raw = bytearray(open(wal, "rb").read())
    raw[40] ^= 0x01
    open(wal, "wb").write(bytes(raw))
    r = shoal("info", "--data", data, "--name", "c")
    assert r.returncode == 2 and "shoal repair" in r.stderr
    r = shoal("repair", "--data", data, "--name", "c", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["kept"] == 2 and os.path.exists(report["moved_to"])
    assert shoal("info", "--data", data, "--name", "c", "--json").returncode == 0
    r = shoal("repair", "--data", data, "--name", "c")
    assert r.returncode == 0 and "nothing to repair" in r.stdout
