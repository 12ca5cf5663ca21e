"""Issue 18, one interface, below the CLI: reads create nothing, read-only databases catch up (refresh), a read-only
file system is explained, files get one mode, tags come back as lists, one ``attributes=`` keyword and typed errors
from the Python client before anything is sent."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import shoal
from shoal import errors
from shoal.engine import Database
from shoal.engine.wal import WALDamaged
from shoal.storage import LocalStore, open_store

SCHEMA = {"price": "float", "color": "keyword", "tags": "tags"}


def make(db, name="c", n=50, rng=None, **kw):
    rng = rng or np.random.default_rng(0)
    col = db.create_collection(name, dim=4, schema=SCHEMA, **kw)
    attrs = [{"price": float(i), "color": ("red", "blue")[i % 2], "tags": ["even"] if i % 2 == 0 else []}
             for i in range(n)]
    col.upsert(np.arange(n), rng.standard_normal((n, 4)).astype(np.float32), attrs=attrs)
    return col


# ---------------------------------------------------------------------------------------------------- reads
def test_reads_never_create_directories(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(errors.NotFound, match="does not exist"):
        Database(missing, read_only=True)
    with pytest.raises(errors.NotFound):
        Database(f"file://{missing}", read_only=True)
    # opening a store creates nothing; reading a missing one is NotFound (what a serverless --index-uri does)
    store = open_store(f"file://{missing}")
    with pytest.raises(errors.NotFound):
        store.get("manifest.json")
    assert store.list("") == [] and LocalStore(missing).exists("x") is False
    with pytest.raises(errors.NotFound):
        LocalStore(missing, create=False)
    # a writable database creates its directory with its first collection, not before
    db = Database(missing)
    assert db.list_collections() == [] and not missing.exists()
    make(db)
    assert (missing / "c" / "MANIFEST").is_file()
    db.close()


def test_every_file_gets_the_same_mode_manifest_included(tmp_path):
    old = os.umask(0o022)
    try:
        db = Database(tmp_path / "d")
        col = make(db)
        col.build()
        db.close()
    finally:
        os.umask(old)
    modes = {}
    for root, _, files in os.walk(tmp_path / "d"):
        for f in files:
            if ".locks" not in root:
                modes[os.path.relpath(os.path.join(root, f), tmp_path / "d")] = stat.S_IMODE(
                    os.stat(os.path.join(root, f)).st_mode)
    assert modes["c/MANIFEST"] == 0o644, modes
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------------------------------------------- refresh
def test_read_only_database_refreshes(tmp_path, rng):
    path = tmp_path / "d"
    db = Database(path)
    col = make(db, rng=rng)
    ro = Database(path, read_only=True)
    rc = ro.collection("c")
    q = rng.standard_normal((1, 4)).astype(np.float32)
    assert rc.count() == 50
    assert ro.refresh() == {"reloaded": [], "dropped": [], "failed": {}}  # nothing changed
    # appended log records are applied
    col.upsert([100], q, attrs=[{"price": 1.0}])
    col.delete([0])
    assert rc.count() == 50 and ro.refresh()["reloaded"] == ["c"]
    assert rc.count() == 50 and rc.search(q, k=1).ids[0, 0] == 100 and rc.get([0]) == []
    # a snapshot (new generation, emptied log), then more records on the new log
    generation = rc.info()["generation"]
    col.build()
    col.upsert([101], q, attrs=[{"price": 2.0}])
    assert ro.refresh()["reloaded"] == ["c"]
    assert rc.info()["generation"] == generation + 1
    assert rc.count() == 51 and set(rc.search(q, k=2).ids[0]) == {100, 101}
    db.close()
    # a collection replaced by a staged build (a new MANIFEST and a new log)
    db = Database(path)
    with db.stage_collection("c", dim=4, schema=SCHEMA, replace=True) as staged:
        staged.upsert([7], q, attrs=[{"color": "green"}])
        staged.commit()
    assert ro.refresh()["reloaded"] == ["c"] and rc.count() == 1
    assert rc.search(q, k=1, attributes=True).attrs == [[{"color": "green", "tags": []}]]
    # a dropped collection is closed and forgotten: the next open is NotFound
    db.drop_collection("c")
    assert ro.refresh()["dropped"] == ["c"]
    with pytest.raises(errors.NotFound):
        ro.collection("c")
    # a writable handle is always current
    assert db.refresh() == {"reloaded": [], "dropped": [], "failed": {}}
    db.close()
    ro.close()


def test_refresh_reports_a_damaged_log_and_keeps_the_last_state(tmp_path, rng):
    path = tmp_path / "d"
    db = Database(path)
    col = make(db, n=10, rng=rng)
    ro = Database(path, read_only=True)
    rc = ro.collection("c")
    for i in range(3):  # three more records in the log; then damage the first of them
        col.upsert([200 + i], rng.standard_normal((1, 4)))
    col._abandon()
    log = path / "c" / col._wal_name
    data = bytearray(log.read_bytes())
    data[12] ^= 0xFF
    log.write_bytes(bytes(data))
    out = ro.refresh()
    assert list(out["failed"]) == ["c"] and "is damaged at byte" in out["failed"]["c"]
    assert rc.count() == 10  # the last state it had
    with pytest.raises(WALDamaged):
        Database(path, read_only=True).collection("c")
    ro.close()


# ---------------------------------------------------------------------------------------------------- read-only fs
def test_not_writable_directory_suggests_read_only(tmp_path, monkeypatch):
    db = Database(tmp_path / "d")
    make(db)
    db.close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(tmp_path)) and
                        mode == os.W_OK else real_access(p, mode, **kw))
    with pytest.raises(errors.FailedPrecondition, match=r"read_only=True"):
        Database(tmp_path / "d")
    assert Database(tmp_path / "d", read_only=True).collection("c").count() == 50


def test_lock_on_a_read_only_file_system_is_a_clear_error(tmp_path, monkeypatch):
    from shoal.engine import locks

    def refuse(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(locks.os, "makedirs", refuse)
    with pytest.raises(errors.FailedPrecondition, match=r"Read-only file system.*read_only=True"):
        locks.collection_lock(str(tmp_path), "c").acquire()


RO_SCRIPT = """
import numpy as np, sys
from shoal import errors
from shoal.engine import Database
from shoal.server.app import LocalServer
from shoal.server.client import Client
data = sys.argv[1]
try:
    Database(data)
except errors.FailedPrecondition as exc:
    assert "read-only file system" in str(exc) and "read_only=True" in str(exc), exc
    print("writable open refused")
ro = Database(data, read_only=True)
assert ro.collection("c").count() == 50 and ro.refresh()["failed"] == {}
ro.close()
with LocalServer(data, "--read-only") as srv, Client(srv.address, timeout=60) as c:
    c.wait_until_serving(60)
    assert c.search("c", np.ones(4), k=3).ids.shape == (1, 3)
    try:
        c.upsert("c", [1], np.ones((1, 4)))
    except errors.FailedPrecondition:
        print("served read-only")
"""


def test_a_real_read_only_file_system(tmp_path):
    """A tmpfs remounted read-only in a private mount namespace (skipped where mounts are not allowed)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs unshare -m (root or user namespaces)")
    src = tmp_path / "src"
    db = Database(src)
    make(db)
    db.close()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "ro.py"
    script.write_text(RO_SCRIPT)
    shell = textwrap.dedent(f"""
        set -e
        mount -t tmpfs tmpfs {mnt}
        cp -a {src}/. {mnt}/
        mount -o remount,ro {mnt}
        {sys.executable} {script} {mnt}
        """)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", shell], capture_output=True,
                       text=True, timeout=300)
    if r.returncode and "mount:" in r.stderr:
        pytest.skip(f"mount not permitted here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "writable open refused" in r.stdout and "served read-only" in r.stdout


# ---------------------------------------------------------------------------------------------------- attributes
def test_get_and_search_keep_empty_tag_lists(tmp_path):
    db = Database(tmp_path / "d")
    col = make(db, n=4)
    col.upsert([9], np.ones((1, 4)), attrs=[{"price": 1.0}])  # no tags given: the empty set, like []
    assert [r["attrs"]["tags"] for r in col.get([0, 1, 9])] == [["even"], [], []]
    res = col.search(np.ones((1, 4)), k=5, attributes=True)
    assert all(isinstance(a["tags"], list) for a in res.attrs[0])
    db.close()


def test_one_attributes_keyword(tmp_path):
    db = Database(tmp_path / "d")
    col = make(db, n=20)
    q = np.ones((2, 4), np.float32)
    plain = col.search(q, k=3)
    assert plain.attrs is None
    full = col.search(q, k=3, attributes=True)
    assert isinstance(full, shoal.SearchResult) and set(full.attrs[0][0]) == {"price", "color", "tags"}
    some = col.search(q, k=3, attributes=["price"])
    assert [[set(a) for a in row] for row in some.attrs] == [[{"price"}] * 3] * 2
    assert col.search(q, k=3, attributes="color").attrs[0][0].keys() == {"color"}
    assert col.search(q, k=3, attributes=[]).attrs is None
    np.testing.assert_array_equal(some.ids, full.ids)
    with pytest.raises(errors.SchemaError, match="unknown attribute 'size'"):
        col.search(q, k=3, attributes=["size"])
    with pytest.raises(errors.InvalidArgument):
        col.search(q, k=3, attributes=5)
    # the old keyword still works, with a DeprecationWarning, and cannot be mixed with the new one
    with pytest.warns(DeprecationWarning, match="attributes=True"):
        old = col.search(q, k=3, include_attrs=True)
    assert old.attrs == full.attrs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(errors.InvalidArgument, match="not both"):
            col.search(q, k=3, attributes=True, include_attrs=True)
    # padding rows carry {} (k larger than the collection)
    assert col.search(q, k=25, attributes=True).attrs[0][-1] == {}
    db.close()


# ---------------------------------------------------------------------------------------------------- client
BAD_CALLS = [
    ("search k=-1", lambda c: c.search("c", np.ones(4), k=-1), "k must be"),
    ("search k=0", lambda c: c.search("c", np.ones(4), k=0), "k must be"),
    ("search k float", lambda c: c.search("c", np.ones(4), k=2.5), "k must be"),
    ("search k too large", lambda c: c.search("c", np.ones(4), k=2 ** 40), "too large"),
    ("search queries text", lambda c: c.search("c", "abc"), "queries"),
    ("search queries 3-d", lambda c: c.search("c", np.ones((2, 2, 2))), "queries"),
    ("search no collection", lambda c: c.search("", np.ones(4)), "collection"),
    ("search collection int", lambda c: c.search(3, np.ones(4)), "collection"),
    ("search tenant int", lambda c: c.search("c", np.ones(4), tenant=5), "tenant"),
    ("search attributes int", lambda c: c.search("c", np.ones(4), attributes=3), "attributes"),
    ("search attributes [1]", lambda c: c.search("c", np.ones(4), attributes=[1]), "attributes"),
    ("search params list", lambda c: c.search("c", np.ones(4), params=[1]), "params"),
    ("search params key", lambda c: c.search("c", np.ones(4), params={1: 2}), "params"),
    ("search params value", lambda c: c.search("c", np.ones(4), params={"nprobe": [1]}), "nprobe"),
    ("search filter int", lambda c: c.search("c", np.ones(4), filter=3), "filter"),
    ("search timeout", lambda c: c.search("c", np.ones(4), timeout=-1), "timeout"),
    ("create dim -1", lambda c: c.create_collection("c", -1), "dim"),
    ("create dim huge", lambda c: c.create_collection("c", 2 ** 33), "dim"),
    ("create schema", lambda c: c.create_collection("c", 4, schema={"a": 1}), "schema"),
    ("create multi_tenant", lambda c: c.create_collection("c", 4, multi_tenant="yes"), "multi_tenant"),
    ("upsert negative id", lambda c: c.upsert("c", [-1], np.ones((1, 4))), "non-negative"),
    ("upsert text id", lambda c: c.upsert("c", ["a"], np.ones((1, 4))), "ids"),
    ("upsert vectors text", lambda c: c.upsert("c", [1], [["a", "b"]]), "vectors"),
    ("upsert tenants", lambda c: c.upsert("c", [1], np.ones((1, 4)), tenants=["acme"]), "tenants"),
    ("upsert attrs", lambda c: c.upsert("c", [1], np.ones((1, 4)), attrs=[{"a": object()}]), "attribute value"),
    ("upsert batch_size", lambda c: c.upsert("c", [1], np.ones((1, 4)), batch_size=0), "batch_size"),
    ("get negative id", lambda c: c.get("c", [-3]), "non-negative"),
    ("get include_vectors", lambda c: c.get("c", [1], include_vectors="no"), "include_vectors"),
    ("delete ids", lambda c: c.delete("c", [1.5]), "integers"),
    ("count filter", lambda c: c.count("c", filter=[1]), "filter"),
    ("grant no tenant", lambda c: c.grant("c", [1], None), "tenant"),
    ("revoke ids", lambda c: c.revoke("c", [-1], "t"), "non-negative"),
    ("drop_tenant", lambda c: c.drop_tenant("c", 3), "tenant"),
    ("describe", lambda c: c.describe_collection(None), "name"),
    ("build index", lambda c: c.build("c", index=3), "index"),
    ("operation id", lambda c: c.get_operation(7), "operation id"),
]


@pytest.mark.parametrize("label,call,needle", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_client_checks_arguments_before_sending(label, call, needle):
    """A client on a port where nothing listens: a call that got as far as sending would fail Unavailable."""
    with shoal.Client("127.0.0.1:9", retries=0, timeout=2) as c:
        with pytest.raises(errors.InvalidArgument, match=needle) as ei:
            call(c)
    assert isinstance(ei.value, errors.ShoalError) and type(ei.value).__module__ == "shoal.errors"


def test_filter_hint_suggests_no_backquoted_names():
    from shoal import filters

    with pytest.raises(filters.FilterSyntaxError) as ei:
        filters.parse("in = 3")
    assert "reserved word" in str(ei.value) and "`" not in str(ei.value)
