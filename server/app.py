"""``shoal serve``: the gRPC server process.

Start-up order matters to callers: the port is bound and ``grpc.health.v1`` answers NOT_SERVING first, then the server
takes the data directory's lock (waiting while another shoal server still holds it, e.g. one draining after SIGTERM),
loads every collection, and only then reports SERVING; data calls made before that get UNAVAILABLE, which the client
retries. SIGTERM or SIGINT: health goes NOT_SERVING, new calls are refused, in-flight calls get ``--grace`` seconds to
finish, background builds likewise, then the database is closed (flushed) and the process exits 0.

Safe default: without API keys the server binds loopback only and says so; binding another address without keys
refuses to start unless ``--insecure`` is given.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import numpy as np

from .. import config
from ..errors import ShoalError

# grpc and the servicers are imported in run(): `shoal --help` builds this module's parser and should stay fast
log = logging.getLogger("shoal.server")

DEFAULT_PORT = 50051
LOCK_NAME = ".shoal-serve.lock"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``serve`` options (shared by ``shoal serve`` and ``python -m shoal.server.app``)."""
    p.add_argument("--data", required=True, metavar="DIR",
                   help="database directory (created if missing; with --read-only it must exist)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind; anything but loopback needs API keys (--keys) or --insecure")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on; 0 picks a free one")
    p.add_argument("--port-file", default=None, metavar="FILE", help="write the bound port to this file once listening")
    p.add_argument("--workers", type=int, default=8, metavar="N", help="threads serving calls")
    p.add_argument("--max-message-mb", type=float, default=64.0, metavar="MB",
                   help="largest request or response in MiB; larger ones get RESOURCE_EXHAUSTED")
    p.add_argument("--keys", default=None, metavar="FILE",
                   help="JSON file of hashed API keys (python -m shoal.server.auth new-key); $SHOAL_API_KEYS adds "
                        "plain keys KEY:ROLE[:TENANT],...")
    p.add_argument("--tls-cert", default=None, metavar="PEM", help="certificate chain: serve TLS (needs --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--insecure", action="store_true", help="allow a non-loopback address without API keys")
    p.add_argument("--read-only", action="store_true",
                   help="open nothing for writing (no owner locks; calls that write get FAILED_PRECONDITION): serves "
                        "beside a writer process or from a read-only file system, and picks up the writer's changes "
                        "every --refresh seconds")
    p.add_argument("--refresh", type=float, default=2.0, metavar="SECONDS",
                   help="with --read-only: how often to load what writers changed (0: never)")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS", help="time in-flight calls get on shutdown")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   type=str.upper, help="detail of the server log on stderr")
    return p


def _say(msg: str) -> None:
    print(f"shoal serve: {msg}", file=sys.stderr, flush=True)


def _write_port_file(path: str, port: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    Path(tmp).write_text(f"{port}\n")
    os.replace(tmp, path)  # readers never see a half-written file


def _lock_data_dir(data: str, stop: threading.Event) -> int | None:
    """Hold an exclusive lock on the data directory, waiting while another server holds it; None if stopped."""
    os.makedirs(data, exist_ok=True)
    fd = os.open(os.path.join(data, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    said = False
    while not stop.is_set():
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if not said:
                _say(f"waiting for another shoal server using {data} to exit")
                said = True
            stop.wait(0.1)
    os.close(fd)
    return None


def _open_database(data: str, read_only: bool = False):
    """The database and its collections, each opened now (WAL replay, index load) so the first call does not pay
    for it; a collection that fails to open is left out and reported (``{name: error}``), so one damaged collection
    does not keep the others from being served (calls naming it get its error)."""
    from ..engine import Database

    db = Database(data, read_only=read_only)
    names, failed = [], {}
    for name in db.list_collections():
        try:
            col = db.collection(name)
        except ShoalError as exc:
            failed[name] = str(exc)
            log.error("collection %s is not served: %s", name, exc)
            continue
        names.append(name)
        if col.count():  # and run one search: loads the compiled kernels and touches the index
            try:
                col.search(np.zeros((1, col.dim), np.float32), k=1)
            except ShoalError as exc:  # e.g. an index that needs a build first: serving still works for the rest
                log.warning("warm-up search on %s failed: %s", name, exc)
    return db, names, failed


def _keep_refreshing(db, every: float, stop: threading.Event) -> threading.Thread:
    """A read-only server's thread that loads what writers changed (:meth:`Database.refresh`) every ``every`` s."""
    def loop():
        reported: dict[str, str] = {}
        while not stop.wait(every):
            try:
                out = db.refresh()
            except ShoalError as exc:  # the database was closed under us: shutting down
                log.debug("refresh stopped: %s", exc)
                return
            for name in out["reloaded"]:
                log.info("collection %s: loaded the latest changes", name)
            for name in out["dropped"]:
                log.info("collection %s: dropped by its writer", name)
            for name, msg in out["failed"].items():
                if reported.get(name) != msg:
                    log.error("collection %s: cannot load the latest changes: %s", name, msg)
            reported = dict(out["failed"])

    t = threading.Thread(target=loop, name="shoal-refresh", daemon=True)
    t.start()
    return t


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit status."""
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from .auth import KeyRing
    from .servicer import SERVICE_NAMES, ServerState, add_services

    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        keys = KeyRing.load(args.keys)
    except ShoalError as exc:
        _say(f"error: {exc}")
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        _say("error: --tls-cert and --tls-key go together")
        return 2
    if not len(keys):
        if not is_loopback(args.host) and not args.insecure:
            _say(f"refusing to serve {args.host} without API keys: configure --keys or $SHOAL_API_KEYS, "
                 "or pass --insecure to accept unauthenticated access from the network")
            return 2
        _say("no API keys configured: every caller is admin" +
             ("" if not is_loopback(args.host) else " (loopback only)"))
    elif not args.tls_cert and not is_loopback(args.host):
        _say("warning: API keys will cross the network in clear text; serve TLS with --tls-cert/--tls-key")

    max_bytes = int(args.max_message_mb * (1 << 20))
    pool = futures.ThreadPoolExecutor(max_workers=args.workers, thread_name_prefix="shoal-rpc")
    server = grpc.server(pool, options=[("grpc.max_receive_message_length", max_bytes),
                                        ("grpc.max_send_message_length", max_bytes),
                                        ("grpc.so_reuseport", 0)])
    state = ServerState(keys=keys)
    add_services(server, state)
    # health answers from its own small pool so probes are never stuck behind busy workers
    health_servicer = health.HealthServicer(
        experimental_non_blocking=True, experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("",) + SERVICE_NAMES:
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(SERVICE_NAMES + (health.SERVICE_NAME, reflection.SERVICE_NAME), server)

    address = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        if args.tls_cert:
            creds = grpc.ssl_server_credentials([(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())])
            port = server.add_secure_port(address, creds)
        else:
            port = server.add_insecure_port(address)
    except (RuntimeError, OSError) as exc:
        _say(f"error: cannot bind {address}: {exc}")
        return 2
    if not port:
        _say(f"error: cannot bind {address}")
        return 2

    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    if args.port_file:
        _write_port_file(args.port_file, port)
    _say(f"listening on {args.host}:{port} ({'TLS' if args.tls_cert else 'plaintext'}); loading {args.data}")

    read_only = bool(getattr(args, "read_only", False))
    # a read-only server writes nothing, so it needs no lock against another server (nor could it take one on a
    # read-only file system)
    lock_fd = None if read_only else _lock_data_dir(args.data, stop)
    db = refresher = None
    status = 0
    try:
        if lock_fd is not None or (read_only and not stop.is_set()):
            t0 = time.perf_counter()
            try:
                db, names, failed = _open_database(args.data, read_only)
            except Exception as exc:  # noqa: BLE001 - a start-up failure ends the process with a message
                log.exception("cannot load %s", args.data)
                _say(f"error: cannot load {args.data}: {exc}")
                stop.set()
                status = 2 if isinstance(exc, (ShoalError, ValueError, KeyError)) else 1
            else:
                state.db = db
                state.ready.set()
                for name in ("",) + SERVICE_NAMES:
                    health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
                _say(f"serving {len(names)} collection(s){' read-only' if read_only else ''} after "
                     f"{time.perf_counter() - t0:.2f}s")
                for name, msg in failed.items():
                    _say(f"error: collection {name!r} is not served: {msg}")
                if read_only and args.refresh > 0:
                    refresher = _keep_refreshing(db, args.refresh, stop)
        while not stop.wait(0.5):
            pass
    finally:
        _say("shutting down: refusing new calls, draining")
        health_servicer.enter_graceful_shutdown()
        state.shutting_down = True
        server.stop(args.grace).wait()
        if not state.operations.join(args.grace):
            _say("warning: a background operation was still running at exit")
        if refresher is not None:
            refresher.join(args.grace)  # stop is set: it finishes the refresh in progress, if any
        if db is not None:
            db.close()
        if lock_fd is not None:
            os.close(lock_fd)
        _say("stopped")
    return status


class LocalServer:
    """A ``shoal serve`` child process on a free loopback port (for demos, benchmarks and tests).

    ``with LocalServer(data) as srv: shoal.Client(srv.address)``; leaving the block sends SIGTERM and waits.
    ``env`` replaces the child's environment additions (e.g. ``{"SHOAL_API_KEYS": ...}``); ``log`` is a file path
    that receives the server's output (default: inherited stderr).
    """

    def __init__(self, data, *args: str, env: dict | None = None, log=None, start_timeout: float = 60.0):
        import subprocess

        self.data = Path(data)
        self.data.mkdir(parents=True, exist_ok=True)
        self.port_file = self.data.parent / f".{self.data.name}.port"
        self.port_file.unlink(missing_ok=True)
        self.log_path = None if log is None else Path(log)
        out = None if log is None else open(log, "ab")
        child_env = {k: v for k, v in os.environ.items() if k != config.API_KEYS}
        child_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "shoal.server.app", "--data", str(self.data),
                                      "--port", "0", "--port-file", str(self.port_file), *args],
                                     stdout=out, stderr=out, env=child_env)
        if out is not None:
            out.close()
        deadline = time.monotonic() + start_timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"shoal serve did not start (exit status {self.proc.returncode})"
                                   + (f":\n{self.output()}" if self.log_path else ""))
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        self.address = f"127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait (graceful shutdown); returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def __enter__(self) -> "LocalServer":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="shoal serve", description="Serve shoal over gRPC."))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
