"""gRPC server and client against real `shoal serve` processes on loopback ports.

One shared server (API keys from the environment, 4 MiB message limit) serves the happy paths, roles, tenant isolation,
bad requests and concurrency tests; separate short-lived servers cover deadlines (one worker), SIGKILL + restart,
health before load, graceful SIGTERM and the safe-default refusal.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

import shoal
from shoal import errors
from shoal.server import gen_proto
from shoal.server.app import LocalServer
from shoal.server.client import Client
from shoal.server.errors import Unavailable

ROOT = Path(__file__).resolve().parent.parent
KEYS = {
    "admin": "shoal_test_admin_key_0123456789",
    "rw": "shoal_test_rw_key_0123456789abc",
    "ro": "shoal_test_ro_key_0123456789abc",
    "acme": "shoal_test_acme_key_0123456789a",
    "globex": "shoal_test_globex_key_012345678",
}
ENV_KEYS = ",".join([f"{KEYS['admin']}:admin", f"{KEYS['rw']}:read-write", f"{KEYS['ro']}:read-only",
                     f"{KEYS['acme']}:read-write:acme", f"{KEYS['globex']}:read-write:globex"])
DIM = 16
SCHEMA = {"price": "float", "color": "keyword", "tags": "tags", "year": "int"}


class Server(LocalServer):
    """A `shoal serve` child process on a free loopback port, its output in a log file beside the data."""

    def __init__(self, data: Path, *args: str, env_keys: str | None = None, wait: bool = True):
        super().__init__(data, *args, env={"SHOAL_API_KEYS": env_keys} if env_keys else None,
                         log=data.parent / f"{data.name}.log")
        if wait:
            with self.client() as c:
                c.wait_until_serving(60)

    def client(self, key: str | None = "admin", **kw) -> Client:
        return Client(self.address, api_key=KEYS.get(key, key) if key else None, **kw)


def make_points(rng, n: int, start: int = 0, tenants=None):
    ids = np.arange(start, start + n, dtype=np.int64)
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    colors = ["red", "green", "blue"]
    attrs = [{"price": float(i % 50), "color": colors[i % 3], "tags": ["even" if i % 2 == 0 else "odd"],
              "year": 2000 + i % 20} for i in range(start, start + n)]
    return ids, x, attrs


def exact_l2(x, ids, q, k):
    d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return ids[order], np.sqrt(np.take_along_axis(d, order, 1))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("grpc") / "main", "--max-message-mb", "4", "--workers", "8",
                 env_keys=ENV_KEYS)
    yield srv
    code = srv.terminate()
    assert code == 0, srv.output()
    assert "stopped" in srv.output()
    assert "Traceback" not in srv.output()  # no unexpected failure was logged while serving the tests


# ---------------------------------------------------------------------------------------------------- generated code
def test_generated_code_is_current():
    if importlib.metadata.version("grpcio-tools") != gen_proto.GRPCIO_TOOLS_VERSION:
        pytest.skip(f"needs grpcio-tools=={gen_proto.GRPCIO_TOOLS_VERSION}")
    assert gen_proto.stale_files() == [], "run `make proto` and commit the result"


def _import_generated_from(site: Path, cwd: Path) -> None:
    """Import the generated modules from ``site`` in a fresh interpreter (not from the checkout)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from shoal.server.proto.shoal.v1 import shoal_pb2, shoal_pb2_grpc;"
            "assert shoal_pb2_grpc.__file__.startswith(sys.argv[1]), shoal_pb2_grpc.__file__;"
            "assert shoal_pb2.DESCRIPTOR.package == 'shoal.v1';"
            "print(shoal_pb2_grpc.SearchStub.__name__)")
    run = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "SearchStub"


def test_generated_modules_import_from_the_installed_layout(tmp_path):
    """Lay the package out as pyproject's package list installs it and import the generated modules from there."""
    import tomllib

    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = conf.get("package-data", {})
    site = tmp_path / "site"
    for package in conf["packages"]:
        rel = Path(*package.split(".")[1:])
        dest = site / "shoal" / rel
        dest.mkdir(parents=True, exist_ok=True)
        for pattern in ["*.py", *data.get(package, [])]:
            for f in (ROOT / rel).glob(pattern):
                shutil.copy2(f, dest / f.name)
    assert (site / "shoal/server/proto/shoal/v1/shoal.proto").exists()
    assert (site / "shoal/server/proto/shoal/v1/shoal_pb2.pyi").exists()
    _import_generated_from(site, tmp_path)


def test_generated_modules_import_from_an_installed_wheel(tmp_path):
    """Build a wheel (offline, with the build backend at hand), unpack it, and import the generated modules."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=170)
    if out.returncode != 0 and "bdist_wheel" in out.stderr + out.stdout:
        pytest.skip("this setuptools cannot build wheels offline (needs setuptools>=70.1 or the wheel package)")
    assert out.returncode == 0, out.stderr
    import zipfile

    (wheel,) = (tmp_path / "wheel").glob("shoal-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "shoal/server/proto/shoal/v1/shoal.proto").exists()
    assert (site / "shoal/server/proto/shoal/v1/shoal_pb2.pyi").exists()
    _import_generated_from(site, tmp_path)


# ---------------------------------------------------------------------------------------------------- happy paths
def test_every_rpc_happy_path(server, rng):
    from shoal import filters

    with server.client("admin") as c:
        info = c.create_collection("happy", DIM, metric="l2", schema=SCHEMA, multi_tenant=True)
        assert info["dim"] == DIM and info["multi_tenant"] and info["schema"]["color"] == "keyword"
        assert "happy" in c.list_collections()
        ids, x, attrs = make_points(rng, 300)
        tenants = [["acme"] if i % 2 == 0 else ["globex"] for i in range(300)]
        assert c.upsert("happy", ids[:100], x[:100], attrs=attrs[:100], tenants=tenants[:100], stream=False) == 100
        # a client stream of several batches
        assert c.upsert("happy", ids[100:], x[100:], attrs=attrs[100:], tenants=tenants[100:], batch_size=37) == 200
        assert c.describe_collection("happy")["count"] == 300
        assert c.count("happy") == 300
        assert c.count("happy", tenant="acme") == 150
        assert c.count("happy", filter="color = 'red'") == 100

        q = rng.standard_normal((5, DIM)).astype(np.float32)
        res = c.search("happy", q, k=7)
        want_ids, want_d = exact_l2(x, ids, q, 7)
        assert res.ids.dtype == np.int64 and res.scores.dtype == np.float32 and res.ids.shape == (5, 7)
        np.testing.assert_array_equal(res.ids, want_ids)
        np.testing.assert_allclose(res.scores, want_d, rtol=1e-4, atol=1e-4)
        assert res.score_kind == "distance" and res.stats.nscanned > 0

        # filter as expression and as JSON AST; tenant; attributes to return
        expr = "price < 10 and color in ('red', 'blue')"
        mask = np.array([a["price"] < 10 and a["color"] in ("red", "blue") for a in attrs])
        by_text = c.search("happy", q, k=5, filter=expr, attributes=["price", "color"])
        by_ast = c.search("happy", q, k=5, filter=filters.to_json(filters.parse(expr)))
        np.testing.assert_array_equal(by_text.ids, by_ast.ids)
        np.testing.assert_array_equal(by_text.ids, exact_l2(x[mask], ids[mask], q, 5)[0])
        for row_ids, row_attrs in zip(by_text.ids, by_text.attrs):
            for uid, a in zip(row_ids, row_attrs):
                assert a == {"price": attrs[uid]["price"], "color": attrs[uid]["color"]}
        all_attrs = c.search("happy", q[:1], k=1, attributes=True).attrs[0][0]
        assert set(all_attrs) == set(SCHEMA)
        acme = c.search("happy", q, k=5, tenant="acme")
        amask = np.array([t == ["acme"] for t in tenants])
        np.testing.assert_array_equal(acme.ids, exact_l2(x[amask], ids[amask], q, 5)[0])

        got = c.get("happy", [3, 4, 999999])
        assert [p["id"] for p in got] == [3, 4]
        np.testing.assert_array_equal(got[0]["vector"], x[3])
        assert got[0]["attrs"]["color"] == attrs[3]["color"] and got[0]["tenants"] == ["globex"]
        assert c.get("happy", [3], include_vectors=False)[0]["vector"] is None

        # tenants
        assert c.grant("happy", [3, 5], "acme") == 2
        assert sorted(c.get("happy", [3])[0]["tenants"]) == ["acme", "globex"]
        assert c.revoke("happy", [3], "acme") == 1
        assert c.grant("happy", [7], "initech") == 1
        assert c.list_tenants("happy") == ["acme", "globex", "initech"]
        assert c.drop_tenant("happy", "initech") is True
        assert c.list_tenants("happy") == ["acme", "globex"]

        # deletes
        assert c.delete("happy", [0, 1, 2]) == 3
        assert c.delete("happy", filter="year = 2019") == 15
        assert c.count("happy") == 300 - 3 - 15

        # admin: background build with progress, compaction, stats
        seen = []
        op = c.build("happy", "Flat", wait=True, progress=seen.append)
        assert op["state"] == "DONE" and op["progress"] == 1.0 and seen and seen[-1]["state"] == "DONE"
        assert c.get_operation(op["id"])["state"] == "DONE"
        assert c.describe_collection("happy")["index_built"] is True
        live = (ids > 2) & (ids % 20 != 19)
        np.testing.assert_array_equal(c.search("happy", q, k=3).ids, exact_l2(x[live], ids[live], q, 3)[0])
        with pytest.raises(errors.InvalidArgument):
            c.build("happy", "NoSuchKind(3)")
        assert c.compact("happy")["count"] == 282
        stats = c.stats("happy")
        assert stats["collection"]["count"] == 282 and stats["server"]["counters"]["rpc.Search"] >= 4
        assert c.drop_collection("happy") is True
        assert "happy" not in c.list_collections()


def test_health_and_reflection(server):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with server.client(None) as c:
        assert c.health() == "SERVING" and c.health("shoal.v1.Search") == "SERVING"
    with grpc.insecure_channel(server.address) as ch:
        services = set(ProtoReflectionDescriptorDatabase(ch).get_services())
    assert {"shoal.v1.Collections", "shoal.v1.Points", "shoal.v1.Search", "shoal.v1.Tenants", "shoal.v1.Admin",
            "grpc.health.v1.Health"} <= services


# ---------------------------------------------------------------------------------------------------- keys and tenants
def test_roles_and_authentication(server, rng):
    ids, x, attrs = make_points(rng, 10)
    with server.client("admin") as admin:
        admin.create_collection("roles", DIM, schema=SCHEMA)
        admin.upsert("roles", ids, x, attrs=attrs)
    with server.client(None) as anon, pytest.raises(errors.Unauthenticated):
        anon.list_collections()
    with server.client("shoal_not_a_configured_key_000") as bad, pytest.raises(errors.Unauthenticated):
        bad.search("roles", x[:1], k=1)
    with server.client("ro") as ro:
        assert ro.search("roles", x[:1], k=1).ids[0, 0] == 0
        with pytest.raises(errors.PermissionDenied):
            ro.upsert("roles", ids[:1], x[:1])
        with pytest.raises(errors.PermissionDenied):
            ro.delete("roles", [1])
    with server.client("rw") as rw:
        assert rw.upsert("roles", ids[:2], x[:2]) == 2
        with pytest.raises(errors.PermissionDenied):
            rw.create_collection("nope", DIM)
        with pytest.raises(errors.PermissionDenied):
            rw.drop_collection("roles")
        with pytest.raises(errors.PermissionDenied):
            rw.build("roles")


def test_tenant_bound_keys_never_cross_tenants(server, rng):
    n = 60
    ids, x, attrs = make_points(rng, n)
    # even ids: acme, odd ids: globex; ids 0 and 1 are shared by both
    tenants = [["acme"] if i % 2 == 0 else ["globex"] for i in range(n)]
    tenants[0] = tenants[1] = ["acme", "globex"]
    with server.client("admin") as admin:
        admin.create_collection("iso", DIM, schema=SCHEMA, multi_tenant=True)
        admin.upsert("iso", ids, x, attrs=attrs, tenants=tenants)
    acme_ids = {i for i in range(n) if "acme" in tenants[i]}
    globex_only = [i for i in range(n) if tenants[i] == ["globex"]]

    with server.client("acme") as acme:
        # searches are confined to acme whatever the request says, filters included
        res = acme.search("iso", x, k=10)
        assert set(res.ids[res.ids >= 0].tolist()) <= acme_ids
        res = acme.search("iso", x[globex_only[:5]], k=5, filter="color in ('red', 'green', 'blue')")
        assert set(res.ids[res.ids >= 0].tolist()) <= acme_ids
        with pytest.raises(errors.PermissionDenied):
            acme.search("iso", x[:1], k=1, tenant="globex")
        assert acme.count("iso") == len(acme_ids)
        assert acme.count("iso", filter="price >= 0") == len(acme_ids)
        # get-by-id: globex points are invisible; a shared point shows only acme
        got = acme.get("iso", [0, 1, 3, 5])
        assert [p["id"] for p in got] == [0, 1] and all(p["tenants"] == ["acme"] for p in got)
        assert acme.list_tenants("iso") == ["acme"]
        desc = acme.describe_collection("iso")
        assert desc["count"] == len(acme_ids) and "tenants" not in desc
        # writes: no taking over another tenant's id, no writing into another tenant, no grants
        with pytest.raises(errors.PermissionDenied):
            acme.upsert("iso", [3], x[:1])
        with pytest.raises(errors.PermissionDenied):
            acme.upsert("iso", [1000], x[:1], tenants=[["globex"]])
        with pytest.raises(errors.PermissionDenied):
            acme.grant("iso", [3], "acme")
        with pytest.raises(errors.PermissionDenied):
            acme.drop_tenant("iso", "globex")
        with pytest.raises(errors.PermissionDenied):
            acme.stats("iso")
        # a new point written by a bound key belongs to its tenant only
        assert acme.upsert("iso", [1000], x[:1]) == 1
        # deletes: by id, a globex id is untouched; by filter, the shared point is only revoked from acme
        assert acme.delete("iso", [3, 5]) == 0
        assert acme.delete("iso", filter="price >= 0") == len(acme_ids)
        assert acme.count("iso") == 1  # point 1000 has no price, so the filter did not match it
    with server.client("admin") as admin:
        assert admin.count("iso", tenant="globex") == len(globex_only) + 2
        left = admin.get("iso", [0, 1, 3, 1000], include_vectors=False)
        assert [(p["id"], p["tenants"]) for p in left] == [(0, ["globex"]), (1, ["globex"]), (3, ["globex"]),
                                                          (1000, ["acme"])]
        with pytest.raises(errors.NotFound):
            admin.search("iso", x[:1], k=1, tenant="acme-typo")
        # any tenant-scoped delete (unbound key too) leaves other tenants' view alone
        admin.grant("iso", [3], "acme")
        assert admin.delete("iso", filter="price >= 0", tenant="acme") == 1
        assert admin.get("iso", [3], include_vectors=False)[0]["tenants"] == ["globex"]


# ---------------------------------------------------------------------------------------------------- bad requests
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(server, rng):
    ids, x, attrs = make_points(rng, 20)
    with server.client("admin") as c:
        c.create_collection("bad", DIM, schema=SCHEMA)
        c.upsert("bad", ids, x, attrs=attrs)

        def still_serving():
            assert c.search("bad", x[:1], k=1).ids[0, 0] == 0

        with pytest.raises(errors.DimensionMismatch):
            c.search("bad", np.zeros((2, DIM + 3), np.float32), k=1)
        still_serving()
        with pytest.raises(errors.DimensionMismatch):
            c.upsert("bad", [1], np.zeros((1, DIM - 1), np.float32))
        still_serving()
        with pytest.raises(errors.InvalidArgument) as e:
            c.search("bad", x[:1], k=1, filter="price << 3")
        assert "Traceback" not in str(e.value)
        still_serving()
        with pytest.raises(errors.InvalidArgument):
            c.search("bad", x[:1], k=1, filter={"op": "nonsense"})
        with pytest.raises(errors.SchemaError):
            c.search("bad", x[:1], k=1, filter="weight < 3")
        with pytest.raises(errors.SchemaError):
            c.search("bad", x[:1], k=1, attributes=["weight"])
        with pytest.raises(errors.InvalidArgument):
            c.search("bad", x[:1], k=0)
        with pytest.raises(errors.InvalidArgument):
            c.search("bad", x[:1], k=1, params={"no_such_param": 3})
        still_serving()
        with pytest.raises(errors.NotFound):
            c.search("no_such_collection", x[:1], k=1)
        with pytest.raises(errors.NotFound):
            c.describe_collection("no_such_collection")
        with pytest.raises(errors.AlreadyExists):
            c.create_collection("bad", DIM)
        with pytest.raises(errors.InvalidArgument):
            c.upsert("bad", [-5], x[:1])
        still_serving()
        # a 6 MiB message against the server's 4 MiB limit
        big = np.zeros((6 * (1 << 20) // (4 * DIM), DIM), np.float32)
        with pytest.raises(errors.ResourceExhausted):
            c.upsert("bad", np.arange(big.shape[0]) + 10_000, big, stream=False, batch_size=big.shape[0])
        still_serving()
        # the same data in client batches goes through
        assert c.upsert("bad", np.arange(big.shape[0]) + 10_000, big) == big.shape[0]
        still_serving()


def test_k_is_bounded_at_the_client_and_the_server(server, rng):
    ids, x, _ = make_points(rng, 100)
    with server.client("ro") as ro, server.client("admin") as c:
        c.create_collection("limits", DIM)
        c.upsert("limits", ids, x)
        for k in (-1, 0, 2.5, True, 2 ** 40):  # refused by the client before anything is serialised or sent
            with pytest.raises(errors.InvalidArgument):
                ro.search("limits", x[:1], k=k)
        t0 = time.perf_counter()
        with pytest.raises(errors.InvalidArgument, match="max_k"):
            ro.search("limits", x[:1], k=5 * 10 ** 7)  # any read-only key: refused before the server allocates
        with pytest.raises(errors.InvalidArgument, match="max_results"):
            ro.search("limits", np.repeat(x[:1], 1000, axis=0), k=10_000)
        assert time.perf_counter() - t0 < 5.0
        res = ro.search("limits", x[:2], k=10_000)  # within both limits: padded, and the stats say how many match
        assert res.ids.shape == (2, 10_000) and (res.ids[:, :100] >= 0).all() and (res.ids[:, 100:] < 0).all()
        assert res.stats.matched == 100 and res.stats.exact_fallback == 0


def test_client_and_embedded_search_share_one_keyword_and_one_result(server, rng):
    """``attributes=`` means the same in Collection.search and Client.search, and both return a SearchResult."""
    from shoal.engine import Database

    ids, x, attrs = make_points(rng, 60)
    attrs[3]["tags"] = []
    with server.client("admin") as c:
        c.create_collection("same", DIM, schema=SCHEMA)
        c.upsert("same", ids, x, attrs=attrs)
        q = x[:3] + 0.01
        ro = Database(server.data, read_only=True)  # beside the serving process, which holds the owner lock
        try:
            col = ro.collection("same")
            for want in (True, ["price", "tags"], "color", False):
                remote = c.search("same", q, k=5, attributes=want)
                local = col.search(q, k=5, attributes=want)
                assert type(remote) is type(local) is shoal.SearchResult
                np.testing.assert_array_equal(remote.ids, local.ids)
                np.testing.assert_allclose(remote.scores, local.scores, rtol=1e-6)
                assert remote.attrs == local.attrs and remote.score_kind == local.score_kind
            assert c.get("same", [3])[0]["attrs"]["tags"] == [] == col.get([3])[0]["attrs"]["tags"]
            for bad in (["size"], 7):
                with pytest.raises(errors.InvalidArgument):  # SchemaError (unknown name) or a wrong type
                    c.search("same", q, k=5, attributes=bad)
                with pytest.raises(errors.InvalidArgument):
                    col.search(q, k=5, attributes=bad)
        finally:
            ro.close()


def test_serve_skips_a_damaged_collection_and_serves_the_rest(tmp_path, rng):
    from shoal.engine import Database

    data = tmp_path / "mixed"
    db = Database(data)
    ids, x, _ = make_points(rng, 20)
    for name in ("good", "bad"):
        db.create_collection(name, DIM).upsert(ids, x)
    db.close()
    (data / "bad" / "MANIFEST").write_text("{not json")
    srv = Server(data)
    try:
        with srv.client() as c:
            assert c.search("good", x[:1], k=1).ids[0, 0] == 0
            with pytest.raises(errors.FailedPrecondition, match=r"bad/MANIFEST is damaged"):
                c.search("bad", x[:1], k=1)
    finally:
        assert srv.terminate() == 0
    assert "collection 'bad' is not served" in srv.output() and "MANIFEST is damaged" in srv.output()


def test_read_only_server_follows_a_writer(tmp_path, rng):
    from shoal.engine import Database

    data = tmp_path / "followed"
    writer = Database(data)
    col = writer.create_collection("live", DIM, schema=SCHEMA)
    ids, x, attrs = make_points(rng, 30)
    col.upsert(ids, x, attrs=attrs)
    srv = Server(data, "--read-only", "--refresh", "0.1")  # beside a writer that holds the owner lock
    try:
        with srv.client(timeout=10) as c:
            assert c.count("live") == 30
            with pytest.raises(errors.FailedPrecondition, match="read-only"):
                c.upsert("live", [99], x[:1])
            col.upsert([99], x[:1] * 3, attrs=[{"price": 1.0}])
            deadline = time.monotonic() + 20
            while c.count("live") != 31 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.count("live") == 31 and c.get("live", [99])[0]["attrs"] == {"price": 1.0, "tags": []}
            writer.create_collection("later", DIM).upsert([1], x[:1])  # a new collection is served on first use
            assert c.count("later") == 1
            writer.drop_collection("later")
            assert "later" not in c.list_collections()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # the next refresh closes it; then it is unknown
                try:
                    c.count("later")
                except errors.NotFound:
                    break
                time.sleep(0.05)
            with pytest.raises(errors.NotFound):
                c.count("later")
    finally:
        writer.close()
        assert srv.terminate() == 0
    assert not (data / ".shoal-serve.lock").exists()  # a read-only server writes nothing into the directory


def test_drop_during_a_grpc_build_cancels_it_and_the_collection_stays_dropped(tmp_path, rng):
    srv = Server(tmp_path / "dropbuild")
    try:
        with srv.client() as c:
            c.create_collection("docs", DIM, index="IVF64,PQ4x8")
            x = rng.standard_normal((60_000, DIM)).astype(np.float32)
            c.upsert("docs", np.arange(60_000), x)
            op = c.build("docs")
            assert c.drop_collection("docs")
            final = c.get_operation(op["id"])
            for _ in range(600):
                if final["finished_at"]:
                    break
                time.sleep(0.1)
                final = c.get_operation(op["id"])
            assert final["finished_at"] and final["state"] == "FAILED" and "CANCELLED" in final["error"], final
            assert "docs" not in c.list_collections()
        assert srv.terminate() == 0
        srv = Server(tmp_path / "dropbuild")  # after a restart too: nothing brought it back
        with srv.client() as c:
            assert "docs" not in c.list_collections()
            with pytest.raises(errors.NotFound):
                c.count("docs")
    finally:
        srv.terminate()


# ---------------------------------------------------------------------------------------------------- concurrency
def test_concurrent_writers_and_readers_lose_no_acknowledged_write(server, rng):
    threads, rounds, per = 8, 12, 25
    with server.client("admin") as c:
        c.create_collection("conc", DIM)
    acked: list[list[int]] = [[] for _ in range(threads)]
    failures: list[BaseException] = []
    data = rng.standard_normal((threads * rounds * per, DIM)).astype(np.float32)

    def worker(t: int):
        try:
            with server.client("rw") as c:
                for r in range(rounds):
                    lo = (t * rounds + r) * per
                    ids = np.arange(lo, lo + per)
                    assert c.upsert("conc", ids, data[lo:lo + per], stream=(r % 2 == 1)) == per
                    acked[t].extend(ids.tolist())
                    res = c.search("conc", data[lo:lo + 2], k=1)
                    assert res.ids[:, 0].tolist() == [lo, lo + 1]  # read-your-writes
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert not failures, failures[:3]
    every = sorted(i for a in acked for i in a)
    assert every == list(range(threads * rounds * per))
    with server.client("ro") as c:
        assert c.count("conc") == len(every)
        got = c.get("conc", every)
        assert [p["id"] for p in got] == every
        np.testing.assert_array_equal(np.stack([p["vector"] for p in got]), data)


# ---------------------------------------------------------------------------------------------------- process life
def test_deadline_stops_the_search_and_sigterm_drains(tmp_path, rng):
    """One worker: the call after an expired search is answered promptly only if the server stopped working on it."""
    srv = Server(tmp_path / "deadline", "--workers", "1")
    d, n = 32, 5_000
    x = rng.standard_normal((n, d)).astype(np.float32)
    try:
        with srv.client(timeout=60) as c:
            c.create_collection("big", d)
            c.upsert("big", np.arange(n), x)
            probe = rng.standard_normal((512, d)).astype(np.float32)
            c.search("big", probe[:64], k=10)  # warm up
            # cost per query of a whole batch (fixed costs included, so never underestimated), the fastest of three
            # tries on a busy machine; the whole search below: 12 s or more
            runs = []
            for _ in range(3):
                t0 = time.perf_counter()
                c.search("big", probe, k=10)
                runs.append((time.perf_counter() - t0) / probe.shape[0])
            per_query = min(runs)
            nq = int(min(200_000, max(2_000, 12.0 / per_query)))
            queries = rng.standard_normal((nq, d)).astype(np.float32)
            t0 = time.monotonic()
            with pytest.raises(errors.DeadlineExceeded):
                c.search("big", queries, k=10, timeout=0.5)
            assert c.describe_collection("big")["count"] == n  # needs the only worker
            elapsed = time.monotonic() - t0
            assert elapsed < 0.5 + 2.0, f"next call waited {elapsed:.2f}s; full search ~{nq * per_query:.1f}s"
            counters = c.stats()["server"]["counters"]
            assert counters["search.abandoned"] == 1
            assert counters["search.queries_abandoned"] > nq // 2

            # SIGTERM while a search (~1.5 s) is in flight: health watchers see NOT_SERVING, the search completes,
            # new calls are refused, exit 0
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            channel = grpc.insecure_channel(srv.address)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=30)
            seen: list[str] = []

            def follow():
                try:
                    for msg in watch:
                        seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(msg.status))
                except grpc.RpcError:
                    pass  # the server ends the stream when it stops

            watcher = threading.Thread(target=follow)
            watcher.start()
            mid = queries[: max(8, min(int(1.5 / per_query), 50_000))]
            result: dict = {}
            t = threading.Thread(target=lambda: result.update(res=c.search("big", mid, k=3, timeout=120)))
            t.start()
            time.sleep(0.3)
            assert seen == ["SERVING"]
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            with srv.client(retries=0, timeout=5) as late, pytest.raises((Unavailable, errors.DeadlineExceeded)):
                late.count("big")
            t.join(60)
            assert result["res"].ids.shape == (mid.shape[0], 3) and (result["res"].ids >= 0).all()
        assert srv.terminate() == 0
        watcher.join(30)
        channel.close()
        assert seen[:2] == ["SERVING", "NOT_SERVING"]
        assert "stopped" in srv.output() and "Traceback" not in srv.output()
    finally:
        if srv.proc.poll() is None:
            srv.kill()


def test_sigkill_restart_keeps_acknowledged_upserts_and_health_waits_for_load(tmp_path, rng):
    data = tmp_path / "durable"
    srv = Server(data)
    ids, x, attrs = make_points(rng, 400)
    with srv.client() as c:
        c.create_collection("dur", DIM, schema=SCHEMA)
        for lo in range(0, 400, 50):
            assert c.upsert("dur", ids[lo:lo + 50], x[lo:lo + 50], attrs=attrs[lo:lo + 50],
                            stream=(lo // 50) % 2 == 1) == 50
        assert c.delete("dur", [7]) == 1
    srv.kill()  # SIGKILL: no flush, no snapshot, no goodbye

    # the restarted server binds at once but cannot load while the data directory is locked (here: by the test)
    lock = os.open(data / ".shoal-serve.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)
    srv2 = Server(data, wait=False)
    try:
        with srv2.client(retries=0, timeout=5) as c:
            deadline = time.time() + 30
            while "waiting for another shoal server" not in srv2.output():
                assert time.time() < deadline, srv2.output()
                time.sleep(0.05)
            assert c.health() == "NOT_SERVING"
            assert c.health("shoal.v1.Search") == "NOT_SERVING"
            with pytest.raises(Unavailable):
                c.count("dur")
        # a retrying client started now rides out UNAVAILABLE until the lock is released and the data loaded
        threading.Timer(1.0, os.close, args=(lock,)).start()
        with srv2.client(timeout=60) as c:
            t0 = time.monotonic()
            assert c.count("dur") == 399
            assert time.monotonic() - t0 >= 0.9
            assert c.health() == "SERVING"
            got = c.get("dur", ids)
            assert [p["id"] for p in got] == [i for i in ids.tolist() if i != 7]
            np.testing.assert_array_equal(np.stack([p["vector"] for p in got]), np.delete(x, 7, axis=0))
            assert got[10]["attrs"]["color"] == attrs[11]["color"]
        assert srv2.terminate() == 0
    finally:
        if srv2.proc.poll() is None:
            srv2.kill()


def test_unexpected_errors_are_internal_without_a_traceback(caplog):
    from shoal.server.errors import status_of

    def boom():
        raise ZeroDivisionError("secret detail")

    try:
        boom()
    except ZeroDivisionError as exc:
        code, message = status_of(exc)
    assert code == grpc.StatusCode.INTERNAL
    assert message.startswith("internal error (id ") and "secret detail" not in message and "Traceback" not in message
    assert "secret detail" in caplog.text  # the server log keeps the details
    assert status_of(errors.DimensionMismatch("dim 3 != 4")) == (grpc.StatusCode.INVALID_ARGUMENT, "dim 3 != 4")
    assert status_of(errors.NotFound("no 'x'"))[0] == grpc.StatusCode.NOT_FOUND


def test_network_address_without_keys_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "shoal.cli", "serve", "--data", str(tmp_path / "d"), "--host", "0.0.0.0",
           "--port", "0"]  # through the `shoal serve` subcommand
    env = {k: v for k, v in os.environ.items() if k != "SHOAL_API_KEYS"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2
    assert "refusing to serve 0.0.0.0 without API keys" in out.stderr and "--insecure" in out.stderr


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs the openssl command to make a test certificate")
def test_tls_with_api_key(tmp_path, rng):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    srv = Server(tmp_path / "tls", "--tls-cert", str(cert), "--tls-key", str(key), env_keys=f"{KEYS['admin']}:admin",
                 wait=False)
    try:
        with Client(srv.address, api_key=KEYS["admin"], root_certificates=str(cert)) as c:
            c.wait_until_serving(60)
            c.create_collection("tls", DIM)
            assert c.upsert("tls", [1, 2], rng.standard_normal((2, DIM))) == 2
            assert c.count("tls") == 2
        with Client(srv.address, api_key=KEYS["admin"], retries=0, timeout=3) as plain:
            with pytest.raises((Unavailable, errors.DeadlineExceeded)):
                plain.count("tls")
        assert srv.terminate() == 0
    finally:
        if srv.proc.poll() is None:
            srv.kill()


def test_grpc_demo_runs_end_to_end(tmp_path, monkeypatch, rng):
    """``make demo``'s server half on synthetic words (no data package needed): server process, stream upsert,
    plain / filtered / tenant-scoped queries, clean shutdown."""
    import io

    import shoal.cli.demo as demo
    from shoal.cli.demo_grpc import run_grpc_demo

    words = ["the", "king", "queen", "paris", "london", "lyon", "computer", "laptop"] + [f"w{i}" for i in range(3000)]
    x = rng.standard_normal((len(words), 50)).astype(np.float32)
    x[2] = x[1] + 0.05  # queen next to king
    x[4] = x[3] + 0.05  # london next to paris
    monkeypatch.setattr(demo, "load_glove", lambda limit=None: (x[:limit], words[:limit]))
    out = io.StringIO()
    assert run_grpc_demo(str(tmp_path / "demo"), limit=len(words), out=out) == 0
    text = out.getvalue()
    assert f"upserted {len(words):,} words" in text
    after = text.split("nearest to 'paris' where first = \"l\"")[1].split("\n")[1]
    assert after.split()[0] == "london" and "paris" not in after
    assert "nearest to 'king' in tenant 'common'" in text
    assert text.split("nearest to 'king' in tenant 'common'")[1].split("\n")[1].split()[0] == "queen"
    assert "server shut down (exit status 0)" in text
