"""gRPC server and client against real `shoal serve` processes on loopback ports.

One shared server (API keys from the environment, 4 MiB message limit) serves the happy paths, roles, tenant isolation,
bad requests and concurrency tests; separate short-lived servers cover deadlines (one worker), SIGKILL + restart,
health before load, graceful SIGTERM and the safe-default refusal.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from shoal import errors
from shoal.server import gen_proto
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


class Server:
    """A `shoal serve` child process on a free loopback port."""

    def __init__(self, data: Path, *args: str, env_keys: str | None = None, wait: bool = True):
        self.data = data
        self.port_file = data.parent / f"{data.name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log = open(data.parent / f"{data.name}.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(ROOT.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("SHOAL_API_KEYS", None)
        if env_keys:
            env["SHOAL_API_KEYS"] = env_keys
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal.server.app", "--data", str(data), "--port", "0",
                                      "--port-file", str(self.port_file), *args],
                                     stdout=self.log, stderr=self.log, env=env, cwd=str(data.parent))
        deadline = time.time() + 60
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start:\n{self.output()}")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        self.address = f"127.0.0.1:{self.port}"
        if wait:
            with self.client() as c:
                c.wait_until_serving(60)

    def client(self, key: str | None = "admin", **kw) -> Client:
        return Client(self.address, api_key=KEYS.get(key, key) if key else None, **kw)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.data.parent / f"{self.data.name}.log").read_text(errors="replace")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.log.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.log.close()


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


def test_generated_modules_import_from_an_installed_wheel(tmp_path):
    """Build a wheel, unpack it, and import the generated modules from there (not from the checkout)."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path / "wheel"), str(ROOT)], capture_output=True, text=True, timeout=170)
    assert out.returncode == 0, out.stderr
    import zipfile

    (wheel,) = (tmp_path / "wheel").glob("shoal-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "shoal/server/proto/shoal/v1/shoal.proto").exists()
    assert (site / "shoal/server/proto/shoal/v1/shoal_pb2.pyi").exists()
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from shoal.server.proto.shoal.v1 import shoal_pb2, shoal_pb2_grpc;"
            "assert shoal_pb2_grpc.__file__.startswith(sys.argv[1]), shoal_pb2_grpc.__file__;"
            "assert shoal_pb2.DESCRIPTOR.package == 'shoal.v1';"
            "print(shoal_pb2_grpc.SearchStub.__name__)")
    run = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "SearchStub"


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
        assert res.score_kind == "distance" and res.stats["nscanned"] > 0

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
