"""A local AWS Lambda emulator: the Invoke REST API on loopback, handlers in warm worker processes.

``shoal lambda-local --port P`` (or :class:`Emulator` from Python) serves ``POST
/2015-03-31/functions/{name}/invocations`` so boto3's Lambda client (``endpoint_url=http://127.0.0.1:P``) runs its
real code path against it. Like Lambda:

- each function has its own pool of worker processes ("containers"), started lazily and kept warm between
  invocations, so module-level caches survive; a new one is a cold start;
- the account has a concurrency limit (``max_workers``): when every worker is busy and none can be started the
  answer is HTTP 429 ``TooManyRequestsException`` (idle workers of other functions are reclaimed first);
- requests over 6 MB get 413 ``RequestTooLargeException``; responses over 6 MB become a
  ``Function.ResponseSizeTooLarge`` function error;
- a handler that raises answers 200 with ``X-Amz-Function-Error: Unhandled`` and ``{"errorMessage", "errorType",
  "stackTrace"}``; one that runs past its timeout is killed ("Task timed out after N seconds") and its container is
  gone.

Workers are forked from a forkserver that has already imported the handler, numpy and boto3 and loaded the compiled
numba kernels, so a cold start costs tens of milliseconds here rather than the seconds of a real Lambda cold start;
reported cold/warm counts are exact, cold-start *times* are not representative. Before it reports ready, the emulator
builds those kernels (:func:`shoal.serverless.kernels.build`: compiled once into ``kernels_dir``, found in the cache
afterwards), as a container image does at build time, and the forkserver loads them, as a container's init phase
does: no invocation compiles. ``GET /_shoal/stats`` returns invocation counts per function and per role, and the
init phase: the kernels' build and load, and each container's start-up time.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from .. import config
from ..errors import InvalidArgument
from .kernels import SINGLE_THREAD
from .payload import LAMBDA_PAYLOAD_LIMIT

_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
_ROLE = re.compile(rb'^\s*\{\s*"role"\s*:\s*"([A-Za-z_]+)"')
DEFAULT_HANDLER = "shoal.serverless.handler.handler"
#: Lambda's documented limits: 6 MB request (6291456 bytes); the response limit is reported as 6291556 bytes
REQUEST_LIMIT = LAMBDA_PAYLOAD_LIMIT
RESPONSE_LIMIT = LAMBDA_PAYLOAD_LIMIT + 100
#: the forkserver of this process (multiprocessing keeps one per process): the kernels it loaded and its init record
_FORKSERVER: dict | None = None
_FORKSERVER_LOCK = threading.Lock()


def default_kernels_dir() -> str:
    """Where ``shoal lambda-local`` keeps compiled kernels: ``~/.cache/shoal/kernels``."""
    return os.path.join(os.path.expanduser("~"), ".cache", "shoal", "kernels")


class _Context:
    def __init__(self, name: str, memory_mb: int, timeout: float, request_id: str):
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self._deadline - time.monotonic()) * 1000)


def _worker_main(conn, handler_path: str, env: dict, name: str, memory_mb: int, timeout: float) -> None:
    """A container: import the handler once, then serve invocations from the pipe until told to stop."""
    os.environ.update(env)
    module, _, attr = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module), attr)
    if config.faults_file():  # tests and chaos drills: the handler itself never reads faults
        from . import faults

        faults.install()
    conn.send(("ready", None))  # the end of this container's init phase
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        request_id, body = msg
        try:
            event = json.loads(body) if body else {}
            out = handler(event, _Context(name, memory_mb, timeout, request_id))
            conn.send((True, json.dumps(out, separators=(",", ":")).encode()))
        except Exception as exc:  # noqa: BLE001  (reported as the function's error, like the Lambda runtime)
            err = {"errorMessage": str(exc), "errorType": type(exc).__name__,
                   "stackTrace": traceback.format_exception(exc)[-8:]}
            conn.send((False, json.dumps(err).encode()))


class _Worker:
    def __init__(self, ctx, function: str, handler_path: str, env: dict, memory_mb: int, timeout: float):
        self.function = function
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, handler_path, env, function, memory_mb, timeout),
                                daemon=True, name=f"lambda-{function}")
        self.started = time.perf_counter()
        self.proc.start()
        child.close()
        self.ready = False
        self.last_used = time.monotonic()

    def wait_ready(self, timeout: float) -> float | None:
        """Wait for the container's init phase; its duration in ms, or None if it did not finish in time."""
        if not self.conn.poll(timeout):
            return None
        msg = self.conn.recv()
        if msg[0] != "ready":
            raise RuntimeError(f"container sent {msg[0]!r} before it was ready")
        self.ready = True
        return (time.perf_counter() - self.started) * 1e3

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.join(5)
        except (OSError, ValueError):
            pass
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
            self.proc.join(2)
        except (OSError, ValueError, BrokenPipeError):
            pass
        if self.proc.is_alive():
            self.kill()
        else:
            self.conn.close()


class Emulator:
    """The Lambda Invoke API on loopback, backed by warm worker processes.

    Parameters
    ----------
    host, port : str, int
        Where to listen; port 0 picks a free one (see :attr:`url` after :meth:`start`). Loopback only by default.
    max_workers : int
        Account concurrency: total worker processes across functions.
    timeout : float
        Seconds a handler may run (per invocation) before its worker is killed.
    memory_mb : int
        Reported to handlers as the function's memory (``AWS_LAMBDA_FUNCTION_MEMORY_SIZE``).
    env : dict
        Environment for every worker (e.g. ``SHOAL_S3_ENDPOINT``); ``SHOAL_LAMBDA_ENDPOINT`` is set to this emulator.
    functions : dict, optional
        Per-function overrides ``{name or glob: {"timeout", "memory_mb", "env"}}``. With ``strict=True`` only these
        names exist (others get 404 ``ResourceNotFoundException``); otherwise any name is a function running
        ``handler``.
    handler : str
        Dotted path of the handler.
    kernels_dir : str or None
        Where compiled numba kernels are built and loaded from before the emulator reports ready (default:
        :func:`default_kernels_dir`); ``None`` leaves kernels to compile on first use, inside invocations. One process
        has one forkserver: the first emulator started in a process decides its kernels.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, max_workers: int = 8, timeout: float = 60.0,
                 memory_mb: int = 1024, env: dict | None = None, functions: dict | None = None, strict: bool = False,
                 handler: str = DEFAULT_HANDLER, request_limit: int = REQUEST_LIMIT,
                 response_limit: int = RESPONSE_LIMIT, kernels_dir: str | None = "default", log=None):
        if max_workers < 1:
            raise InvalidArgument("max_workers must be >= 1")
        self.host, self.port = host, port
        self.max_workers = max_workers
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.env = dict(env or {})
        self.functions = dict(functions or {})
        self.strict = strict
        self.handler = handler
        self.request_limit = request_limit
        self.response_limit = response_limit
        self._mp = mp.get_context("forkserver")
        self._idle: dict[str, list[_Worker]] = {}
        self._busy = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.counts: Counter = Counter()
        self.role_counts: Counter = Counter()
        self.events: Counter = Counter()  # cold_starts, throttled, timeouts, errors, too_large, evicted
        self.kernels_dir = default_kernels_dir() if kernels_dir == "default" else kernels_dir
        self.log = log
        self.init: dict = {}
        self.container_init_ms: list[float] = []
        self.url = ""
        self._t0 = 0.0
        self._ready = threading.Event()
        self._init_error: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def listen(self) -> str:
        """Bind the port and serve in a background thread; returns the endpoint URL. Invocations that arrive before
        :meth:`start` has finished the init phase wait for it (as a first request waits for Lambda's init)."""
        if self._server is None:
            self._t0 = time.perf_counter()
            emulator = self

            class Handler(_RequestHandler):
                pass

            Handler.emulator = emulator
            self._server = ThreadingHTTPServer((self.host, self.port), Handler)
            self._server.daemon_threads = True
            self.port = self._server.server_address[1]
            self.url = f"http://{self.host}:{self.port}"
            self._thread = threading.Thread(target=self._server.serve_forever, name="lambda-local", daemon=True)
            self._thread.start()
        return self.url

    def start(self) -> str:
        """:meth:`listen`, then the init phase (kernels built and loaded, forkserver ready); returns the endpoint
        URL once ready. :attr:`init` records the init phase (``ready_s``: from listening to ready)."""
        self.listen()
        try:
            self.init = self._start_forkserver()
        except BaseException as exc:
            self._init_error = f"the emulator's init phase failed: {exc!r}"
            self._ready.set()
            raise
        self.init["ready_s"] = time.perf_counter() - self._t0
        self._ready.set()
        return self.url

    def _start_forkserver(self) -> dict:
        """Build the kernels (when :attr:`kernels_dir` is set), then start the forkserver with the handler preloaded,
        the kernels loaded, and one thread per worker for numba/BLAS (a Lambda container has one or two vCPUs; here
        many workers share the machine's cores); wait until it has finished. Returns the init record."""
        global _FORKSERVER
        from multiprocessing import forkserver

        from . import kernels

        with _FORKSERVER_LOCK:
            if _FORKSERVER is not None:
                if _FORKSERVER["kernels_dir"] != self.kernels_dir:
                    raise InvalidArgument(f"this process's forkserver already serves kernels from "
                                          f"{_FORKSERVER['kernels_dir']!r}; start the emulator in another process")
                return {**_FORKSERVER["init"], "reused": True}
            init: dict = {"kernels_dir": self.kernels_dir}
            env = dict(SINGLE_THREAD)
            if self.kernels_dir:
                init["build"] = kernels.build(self.kernels_dir, log=self.log)
                env.update(NUMBA_CACHE_DIR=os.path.join(os.path.abspath(self.kernels_dir), "numba"),
                           SHOAL_KERNELS=os.path.abspath(self.kernels_dir))
            self._mp.set_forkserver_preload(["numpy", "boto3", "shoal.serverless.warmup",
                                             self.handler.rpartition(".")[0]])
            t0 = time.perf_counter()
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                forkserver.ensure_running()
            finally:
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            # the forkserver preloads after it starts: a first child waits for that, and reports what was loaded
            parent, child = self._mp.Pipe(duplex=False)
            probe = self._mp.Process(target=_probe, args=(child,), daemon=True, name="lambda-local-probe")
            probe.start()
            child.close()
            init["preload"] = parent.recv()
            probe.join(10)
            parent.close()
            init["forkserver_s"] = time.perf_counter() - t0
            _FORKSERVER = {"kernels_dir": self.kernels_dir, "init": init}
            return dict(init)

    def stop(self) -> None:
        if not self._ready.is_set():  # invocations still waiting for an init phase that will not finish
            self._init_error = "the emulator stopped before its init phase finished"
            self._ready.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            workers = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
        for w in workers:
            w.stop()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def reset_stats(self) -> None:
        with self._lock:
            self.container_init_ms.clear()
            self.counts.clear()
            self.role_counts.clear()
            self.events.clear()

    def stats(self) -> dict:
        with self._lock:
            inits = sorted(self.container_init_ms)
            return {"invocations": dict(self.counts), "by_role": dict(self.role_counts), **dict(self.events),
                    "workers_idle": sum(len(v) for v in self._idle.values()), "workers_busy": self._busy,
                    "max_workers": self.max_workers, "init": self.init,
                    "container_init_ms": {"count": len(inits), "median": inits[len(inits) // 2] if inits else None,
                                          "max": inits[-1] if inits else None}}

    def kill_idle(self) -> int:
        """Stop every idle worker (forces the next invocations to be cold); returns how many."""
        with self._lock:
            workers = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
        for w in workers:
            w.stop()
        return len(workers)

    # ------------------------------------------------------------------ workers
    def _config(self, function: str) -> tuple[float, int, dict]:
        cfg = self.functions.get(function)
        if cfg is None:
            cfg = next((c for pat, c in self.functions.items() if fnmatch.fnmatchcase(function, pat)), {})
        env = dict(self.env)
        env.update(cfg.get("env", {}))
        memory = int(cfg.get("memory_mb", self.memory_mb))
        timeout = float(cfg.get("timeout", self.timeout))
        env.update({"SHOAL_LAMBDA_ENDPOINT": self.url, "AWS_LAMBDA_FUNCTION_NAME": function,
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory), "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST"})
        return timeout, memory, env

    def _acquire(self, function: str) -> _Worker | None:
        victim = None
        with self._lock:
            idle = self._idle.get(function)
            if idle:
                self._busy += 1
                return idle.pop()
            n_idle = sum(len(v) for v in self._idle.values())
            if self._busy + n_idle >= self.max_workers:
                if n_idle == 0:
                    self.events["throttled"] += 1
                    return None
                # reclaim the least recently used idle container of another function, as Lambda does over time
                fn, ws = min(((f, ws) for f, ws in self._idle.items() if ws), key=lambda t: t[1][0].last_used)
                victim = ws.pop(0)
                self.events["evicted"] += 1
            self._busy += 1
            self.events["cold_starts"] += 1
        if victim is not None:
            victim.stop()
        timeout, memory, env = self._config(function)
        try:
            return _Worker(self._mp, function, self.handler, env, memory, timeout)
        except Exception:
            with self._lock:
                self._busy -= 1
            raise

    def _release(self, worker: _Worker, alive: bool) -> None:
        with self._lock:
            self._busy -= 1
            if alive and self._server is not None:
                worker.last_used = time.monotonic()
                self._idle.setdefault(worker.function, []).append(worker)
                return
        if alive:
            worker.stop()
        else:
            worker.kill()

    def invoke(self, function: str, body: bytes) -> tuple[int, dict, bytes]:
        """Run one invocation; returns ``(HTTP status, headers, body)`` as the Lambda API would."""
        request_id = str(uuid.uuid4())
        headers = {"x-amzn-RequestId": request_id}
        self._ready.wait()
        if self._init_error:
            return _error(500, "ServiceException", self._init_error, headers)
        if self.strict and not any(fnmatch.fnmatchcase(function, pat) for pat in self.functions):
            return _error(404, "ResourceNotFoundException", f"Function not found: {function}", headers)
        if len(body) > self.request_limit:
            with self._lock:
                self.events["too_large"] += 1
            return _error(413, "RequestTooLargeException",
                          f"Request must be smaller than {self.request_limit} bytes for the InvokeFunction operation",
                          headers)
        try:
            worker = self._acquire(function)
        except Exception as exc:  # noqa: BLE001  (a container that cannot start is the service's fault: 5xx)
            with self._lock:
                self.events["errors"] += 1
            return _error(500, "ServiceException", f"could not start a worker: {exc!r}", headers)
        if worker is None:
            return _error(429, "TooManyRequestsException", "Rate Exceeded.", headers,
                          extra={"Reason": "ConcurrentInvocationLimitExceeded"})
        m = _ROLE.match(body[:200])
        with self._lock:
            self.counts[function] += 1
            self.role_counts[m.group(1).decode() if m else "unknown"] += 1
        timeout = self._config(function)[0]
        alive = True
        try:
            if not worker.ready:
                # a new container: its init phase first (on Lambda: at most 10 s, billed, before the invocation)
                init_ms = worker.wait_ready(timeout)
                if init_ms is None:
                    alive = False
                    with self._lock:
                        self.events["timeouts"] += 1
                    return _function_error({"errorMessage": f"RequestId: {request_id} Error: init phase timed out "
                                                            f"after {timeout:.2f} seconds",
                                            "errorType": "Sandbox.Timedout"}, headers)
                with self._lock:
                    self.container_init_ms.append(init_ms)
            worker.conn.send((request_id, body))
            if not worker.conn.poll(timeout):
                alive = False
                with self._lock:
                    self.events["timeouts"] += 1
                err = {"errorMessage": f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {request_id} "
                                       f"Task timed out after {timeout:.2f} seconds", "errorType": "Sandbox.Timedout"}
                return _function_error(err, headers)
            ok, out = worker.conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            alive = False
            with self._lock:
                self.events["errors"] += 1
            return _function_error({"errorMessage": f"RequestId: {request_id} Error: Runtime exited ({exc!r})",
                                    "errorType": "Runtime.ExitError"}, headers)
        finally:
            self._release(worker, alive)
        if not ok:
            with self._lock:
                self.events["errors"] += 1
            return _function_error(json.loads(out), headers)
        if len(out) > self.response_limit:
            with self._lock:
                self.events["too_large"] += 1
            return _function_error({"errorMessage": f"Response payload size ({len(out)} bytes) exceeded maximum "
                                                    f"allowed payload size ({self.response_limit} bytes).",
                                    "errorType": "Function.ResponseSizeTooLarge"}, headers)
        headers["X-Amz-Executed-Version"] = "$LATEST"
        return 200, headers, out


def _probe(conn) -> None:
    """Forked from the forkserver once it has preloaded: report what its init phase did with the kernels."""
    from . import kernels

    conn.send(kernels.INIT)
    conn.close()


def _error(status: int, code: str, message: str, headers: dict, extra: dict | None = None):
    body = {"__type": code, "Type": "User", "message": message, **(extra or {})}
    return status, {**headers, "x-amzn-ErrorType": code}, json.dumps(body).encode()


def _function_error(err: dict, headers: dict):
    return 200, {**headers, "X-Amz-Function-Error": "Unhandled", "X-Amz-Executed-Version": "$LATEST"}, \
        json.dumps(err).encode()


class _RequestHandler(BaseHTTPRequestHandler):
    emulator: Emulator
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet: one line per invocation would drown test output
        pass

    def _send(self, status: int, headers: dict, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/") == "/_shoal/stats":
            return self._send(200, {}, json.dumps(self.emulator.stats()).encode())
        self._send(404, {}, b'{"message": "not found"}')

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if self.path.rstrip("/") == "/_shoal/reset":
            self.rfile.read(length)
            self.emulator.reset_stats()
            return self._send(200, {}, b"{}")
        m = _PATH.match(self.path.split("?")[0])
        if not m:
            self.rfile.read(length)
            return self._send(404, {}, b'{"message": "unknown path"}')
        name = unquote(m.group(1))
        if ":function:" in name:  # a function ARN: keep the name
            name = name.split(":function:")[1].split(":")[0]
        body = self.rfile.read(length)
        if self.headers.get("X-Amz-Invocation-Type", "RequestResponse") not in ("RequestResponse", ""):
            return self._send(*_error(400, "InvalidParameterValueException",
                                      "the emulator serves RequestResponse invocations only", {}))
        status, headers, out = self.emulator.invoke(name, body)
        self._send(status, headers, out)


def main(argv=None) -> int:
    """``shoal lambda-local``: serve the Lambda Invoke API on loopback until interrupted."""
    ap = argparse.ArgumentParser(prog="shoal lambda-local", description=__doc__.split("\n")[0])
    add_arguments(ap)
    return run(ap.parse_args(argv))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--max-workers", type=int, default=8, help="account concurrency: worker processes in total")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per invocation")
    ap.add_argument("--memory-mb", type=int, default=1024, help="memory size reported to handlers")
    ap.add_argument("--s3-endpoint", default=None, help="S3 endpoint for handlers (sets SHOAL_S3_ENDPOINT)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment for handlers")
    ap.add_argument("--kernels", default=default_kernels_dir(), metavar="DIR",
                    help="compiled numba kernels: built here before the emulator is ready (once; later starts find "
                         "them in the cache) and loaded by every container (default: %(default)s; 'none': compile "
                         "on first use, inside invocations)")


def describe_init(init: dict) -> str:
    """One line about an emulator's init phase (:attr:`Emulator.init`)."""
    build, pre = init.get("build"), init.get("preload")
    if not build:
        return f"ready in {init.get('ready_s', 0):.1f} s; kernels compile on first use (no kernels directory)"
    line = (f"ready in {init.get('ready_s', 0):.1f} s: kernels built in {build['seconds']:.1f} s "
            f"({build['compiled']} compiled, {build['kernels']} recorded) in {init['kernels_dir']}")
    if pre:
        line += f", loaded by the forkserver in {pre.get('load_ms', 0) / 1e3:.2f} s ({pre.get('compiled', 0)} compiled)"
        if pre.get("error"):
            line += f"; {pre['error']}"
    return line


def run(args) -> int:
    env = {}
    for item in args.env:
        if "=" not in item:
            raise InvalidArgument(f"--env expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        env[k] = v
    if args.s3_endpoint:
        env["SHOAL_S3_ENDPOINT"] = args.s3_endpoint
    emu = Emulator(host=args.host, port=args.port, max_workers=args.max_workers, timeout=args.timeout,
                   memory_mb=args.memory_mb, env=env, kernels_dir=None if args.kernels == "none" else args.kernels,
                   log=lambda msg: print(f"shoal lambda-local: {msg}", file=sys.stderr, flush=True))
    try:
        url = emu.listen()
        print(f"shoal lambda-local: Lambda Invoke API at {url} (max {args.max_workers} workers, "
              f"timeout {args.timeout:g} s); Ctrl-C to stop", flush=True)
        print("shoal lambda-local: init phase: kernels (the first start compiles them, later ones find them); "
              "invocations wait for it", file=sys.stderr, flush=True)
        emu.start()
        print(f"shoal lambda-local: {describe_init(emu.init)}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def start_moto_server(timeout: float = 60.0):
    """Start moto's server (S3, Lambda, IAM, ...) in a child process on a free loopback port: the local S3 of the
    tests and benchmarks. Needs the ``dev`` extra (``moto[server]``).

    Returns
    -------
    (subprocess.Popen, str)
        The process (the caller terminates it) and its endpoint URL, ``http://127.0.0.1:PORT``.

    Raises
    ------
    RuntimeError
        When the server exits or does not answer within ``timeout`` seconds.
    """
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not start on {url} (is the dev extra, moto[server], installed?)")
            time.sleep(0.2)
