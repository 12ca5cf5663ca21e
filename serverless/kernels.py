"""Compiled numba kernels before the first invocation: build them once, load them in a container's init phase.

numba compiles a kernel the first time it is called with new argument types (the serverless roles' set takes ~15 s
on this 2-core machine) and, for ``cache=True`` kernels, keeps the machine code on disk. The cache is keyed by the
source file's directory path and contents, the argument types, and the CPU the code was compiled for (name and
features). A Lambda container that compiles inside an invocation pays for it on the clock, and a timeout kills it
before the cache is written, so the next container compiles again. This module moves that work out of invocations:

- :func:`build` (``python -m shoal.serverless.kernels build DIR [--cpu generic]``): in fresh processes whose numba
  cache is ``DIR/numba``, builds small indexes of every backend (OSQ with numeric, keyword and tags attributes under
  l2 and cosine, Flat, k-means partitions of IVF-PQ), runs the serverless search paths over them (router and
  processors, both OSQ plans, filtered and not, one and several queries), and records the signature of every cached
  kernel those searches used in a manifest next to the cache. The container image runs it at build time for the
  generic CPU of the target architecture; the local emulator runs it before it reports ready.
- :func:`load` / :func:`init_container`: a container's init phase (the handler's import; the emulator's forkserver)
  asks numba for each recorded signature, which reads it from the cache instead of compiling.
- :data:`COMPILES`: counts numba compilations in this process (a listener on numba's ``numba:compile`` event), so
  that the handler reports, per invocation, how many kernels were compiled inside it and for how long.

Why ``--cpu generic`` for an image: a cache entry compiled for the build machine's CPU (here ``znver4``) would not
match a Lambda host's CPU name and features, and every container would compile again; ``NUMBA_CPU_NAME=generic``
(with no extra features) makes code that runs and matches on every x86_64 (or aarch64) host. The serverless search
measured the same with generic and host code here (``bench/serverless.py --kernels``: their loops are scalar gathers
and bit counts, not wide SIMD).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from .. import config

#: single-threaded numba and BLAS, as in a Lambda container of 1-2 vCPUs and in the emulator's workers
SINGLE_THREAD = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                 "MKL_NUM_THREADS": "1"}
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: this package's import name and this module's (also right when run as ``python -m``, where ``__name__`` is
#: ``__main__``)
_PACKAGE = __package__.rsplit(".", 1)[0]
_MODULE = f"{__package__}.kernels"


class CompileCounter:
    """Counts numba compilations in this process and the seconds they took (outermost compile per thread: a kernel
    that compiles its callees counts each, but their time once)."""

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._installed = False

    def install(self) -> None:
        from numba.core import event

        counter = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                stack = getattr(counter._local, "starts", None)
                if stack is None:
                    stack = counter._local.starts = []
                stack.append(time.perf_counter())

            def on_end(self, ev):
                stack = counter._local.starts
                t0 = stack.pop()
                with counter._lock:
                    counter.count += 1
                    if not stack:
                        counter.seconds += time.perf_counter() - t0

        with self._lock:
            if self._installed:
                return
            self._installed = True
        event.register("numba:compile", _Listener())

    def snapshot(self) -> tuple[int, float]:
        with self._lock:
            return self.count, self.seconds


#: compilations in this process (installed at import: numba's events need no compiled code)
COMPILES = CompileCounter()
COMPILES.install()

#: what this container's init phase did about kernels (:func:`init_container`), or None when it did nothing
INIT: dict | None = None


# ---------------------------------------------------------------------------------------------------- identity


def cpu_name() -> str:
    """The CPU numba compiles for in this process: ``$NUMBA_CPU_NAME``, else the host's."""
    from numba.core import config as nconfig

    if nconfig.CPU_NAME:
        return str(nconfig.CPU_NAME)
    import llvmlite.binding as ll

    return ll.get_host_cpu_name()


def manifest_path(kernels_dir: str) -> str:
    """The manifest of kernels built in ``kernels_dir`` for this package's sources, numba version and CPU: the numba
    cache itself is keyed by source path and CPU, so several checkouts or CPU targets can share a directory."""
    import numba

    tag = f"{_PACKAGE_DIR}|{numba.__version__}|{sys.version_info[:2]}|{cpu_name()}"
    return os.path.join(kernels_dir, f"kernels-{hashlib.sha1(tag.encode()).hexdigest()[:12]}.pkl")


def numba_cache_dir() -> str | None:
    """Where numba reads and writes its cache in this process (``$NUMBA_CACHE_DIR``), or None (next to sources)."""
    from numba.core import config as nconfig

    return nconfig.CACHE_DIR or None


# ---------------------------------------------------------------------------------------------------- signatures


def cached_signatures() -> list[tuple[str, str, tuple]]:
    """``(module, name, signature)`` of every compiled signature of a cached (``cache=True``) kernel defined in a
    module of this package that is loaded in this process."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    prefix = _PACKAGE + "."
    out = []
    for modname, mod in sorted(sys.modules.items()):
        if not modname.startswith(prefix) or mod is None:
            continue
        for name, obj in sorted(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and obj.__module__ == modname and \
                    not isinstance(obj._cache, NullCache):
                out.extend((modname, name, sig) for sig in obj.signatures)
    return out


def load(kernels_dir: str) -> dict:
    """Load every kernel signature :func:`build` recorded in ``kernels_dir`` from numba's cache.

    Returns ``{"kernels", "loaded", "compiled", "load_ms", "cpu"}``; ``compiled > 0`` means some entries were not in
    the cache for this process (another CPU target, numba version or source tree) and were compiled instead;
    ``error`` is set when there is no manifest for this package, numba and CPU.
    """
    t0 = time.perf_counter()
    c0, s0 = COMPILES.snapshot()
    path = manifest_path(kernels_dir)
    out = {"kernels": 0, "loaded": 0, "compiled": 0, "compile_ms": 0.0, "cpu": cpu_name(), "dir": kernels_dir}
    try:
        with open(path, "rb") as f:
            entries = pickle.load(f)["signatures"]
    except FileNotFoundError:
        out["error"] = (f"no compiled kernels for this package, numba and CPU {cpu_name()!r} in {kernels_dir} (run "
                        f"`python -m shoal.serverless.kernels build {kernels_dir}`)")
        out["load_ms"] = (time.perf_counter() - t0) * 1e3
        return out
    for modname, name, sig in entries:
        getattr(importlib.import_module(modname), name).compile(sig)
    c1, s1 = COMPILES.snapshot()
    out.update(kernels=len(entries), compiled=c1 - c0, loaded=max(0, len(entries) - (c1 - c0)),
               compile_ms=(s1 - s0) * 1e3, load_ms=(time.perf_counter() - t0) * 1e3)
    return out


def seed_cache(kernels_dir: str) -> dict:
    """Copy the compiled kernels shipped in ``kernels_dir/numba`` into numba's cache directory of this process when
    that is elsewhere (a container image is read-only, and numba only uses a cache directory it can write to: the
    image sets ``NUMBA_CACHE_DIR=/tmp/numba``). Returns ``{"copied_bytes", "copy_ms"}``."""
    t0 = time.perf_counter()
    src = os.path.join(kernels_dir, "numba")
    dst = numba_cache_dir()
    copied = 0
    if dst and os.path.isdir(src) and os.path.realpath(src) != os.path.realpath(dst):
        for root, _dirs, files in os.walk(src):
            rel = os.path.relpath(root, src)
            os.makedirs(os.path.join(dst, rel), exist_ok=True)
            for f in files:
                target = os.path.join(dst, rel, f)
                if not os.path.exists(target):
                    shutil.copy2(os.path.join(root, f), target)
                    copied += os.path.getsize(target)
    return {"copied_bytes": copied, "copy_ms": (time.perf_counter() - t0) * 1e3}


def init_container() -> dict | None:
    """A container's init phase: when ``$SHOAL_KERNELS`` names a directory made by :func:`build`, seed numba's cache
    from it and load every recorded kernel, so no invocation compiles. Sets and returns :data:`INIT`."""
    global INIT
    kernels_dir = config.kernels_dir()
    if not kernels_dir:
        return None
    t0 = time.perf_counter()
    try:
        seeded = seed_cache(kernels_dir)
        INIT = {**load(kernels_dir), **seeded}
    except Exception as exc:  # noqa: BLE001  (kernels then compile on first use, as without this step: reported)
        INIT = {"error": f"loading compiled kernels from {kernels_dir} failed: {exc!r}", "dir": kernels_dir}
    # a process forked after this (the emulator's workers) inherits the loaded kernels and this record: ``pid`` tells
    # the init phase of a container from one it inherited
    INIT.update(init_ms=(time.perf_counter() - t0) * 1e3, pid=os.getpid())
    return INIT


# ---------------------------------------------------------------------------------------------------- build


def _exercise_indexes(root: str) -> None:
    """Small indexes of every serverless backend under ``root`` (one LocalStore each); deterministic."""
    import numpy as np

    from .. import filters
    from ..index.osq import OSQIndex
    from ..storage import LocalStore
    from .osq_backend import OSQBackend
    from .partitioned import FlatBackend, KMeansBackend

    rng = np.random.default_rng(0)
    n, d = 1200, 16
    x = (rng.standard_normal((8, d))[rng.integers(0, 8, n)] * 3 + rng.standard_normal((n, d))).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    tags = [["a", "b", "c"][: i % 4] for i in range(n)]
    vocab = ["a", "b", "c"]
    indptr = np.concatenate([[0], np.cumsum([len(t) for t in tags])]).astype(np.int64)
    codes = np.array([vocab.index(t) for ts in tags for t in ts], dtype=np.int32)
    attrs = {"price": rng.uniform(0, 100, n), "year": rng.integers(1990, 2030, n).astype(np.int64),
             "color": filters.KeywordColumn(rng.integers(0, 3, n).astype(np.int32), ["red", "green", "blue"]),
             "tags": filters.TagsColumn(indptr, codes, vocab)}
    for metric in ("l2", "cosine"):
        index = OSQIndex(d, metric, partitions=3)
        index.train(x)
        index.add(x, ids, attrs=attrs)
        OSQBackend.publish(LocalStore(os.path.join(root, f"osq-{metric}")), index)
    FlatBackend.build(LocalStore(os.path.join(root, "flat")), x, ids, n_partitions=3, metric="l2")
    FlatBackend.build(LocalStore(os.path.join(root, "flat-ip")), x, ids, n_partitions=3, metric="ip")
    KMeansBackend.build(LocalStore(os.path.join(root, "ivfpq")), x, ids, n_partitions=2, factory="IVF8,PQ4x4,Refine")
    np.save(os.path.join(root, "queries.npy"), x[:5] + 0.01)


#: filters the exercise runs: numeric (int and float), keyword and tags predicates, negation, a very selective one
#: (the exact plan), and their combinations
EXERCISE_FILTERS = (None, "price < 50", "year between 2000 and 2010", 'color = "red"', 'tags contains "b"',
                    'not (price < 20) or color in ("red", "blue")', 'tags contains any ("a", "c") and year > 2000',
                    "price < 1")


def _exercise_searches(root: str) -> None:
    """The serverless search paths (router, processors, merge) over the indexes of :func:`_exercise_indexes`."""
    import numpy as np

    from .. import filters
    from ..storage import LocalStore
    from .backends import search_inprocess
    from .cache import LRUCache, Reader
    from .manifest import current_version

    q = np.load(os.path.join(root, "queries.npy"))
    for name in sorted(os.listdir(root)):
        if not os.path.isdir(os.path.join(root, name)):
            continue
        store = LocalStore(os.path.join(root, name))
        reader = Reader(store, current_version(store), LRUCache(1 << 28))
        osq = name.startswith("osq")
        for text in EXERCISE_FILTERS if osq else (None,):
            flt = None if text is None else filters.to_json(filters.parse(text))
            for params in ({}, {"mode": "multilevel"}, {"mode": "exact"}) if osq else ({},):
                for nq in (1, q.shape[0]):
                    search_inprocess(store, q[:nq], 10, params=params, filter=flt, reader=reader)


def _child_env(kernels_dir: str | None, cpu: str | None) -> dict:
    """The build processes' environment: single-threaded, no kernels to load (the build makes them), and for the
    search step the kernels' cache directory and CPU target (the index step keeps the caller's numba cache: its
    kernels are not recorded, and a warm cache there saves its compile time)."""
    env = dict(os.environ)
    env.update(SINGLE_THREAD)
    env.pop("SHOAL_KERNELS", None)
    if kernels_dir is not None:
        env["NUMBA_CACHE_DIR"] = os.path.join(kernels_dir, "numba")
        if cpu:
            env["NUMBA_CPU_NAME"] = cpu
            env.pop("NUMBA_CPU_FEATURES", None)
    return env


def build(kernels_dir: str, *, cpu: str | None = None, log=None) -> dict:
    """Compile (or find in the cache) every kernel the serverless roles run, in ``kernels_dir``.

    Two fresh processes: the first builds the small indexes of :func:`_exercise_indexes` in a temporary directory
    (with the caller's numba cache: its kernels, k-means and encoding, are not recorded), the second, with
    ``NUMBA_CACHE_DIR=kernels_dir/numba`` (and ``NUMBA_CPU_NAME=cpu`` when given), runs :func:`_exercise_searches`
    over them and writes the manifest of the signatures they used. A second build over a full cache compiles
    nothing.

    Returns
    -------
    dict
        ``seconds`` (wall time of the whole build), ``index_s`` and ``search_s`` (each process), ``compiled`` (kernels
        the search process compiled; 0 when the cache was complete), ``compile_s``, ``kernels`` (signatures recorded),
        ``cpu``, ``manifest``.
    """
    kernels_dir = os.path.abspath(kernels_dir)
    os.makedirs(os.path.join(kernels_dir, "numba"), exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shoal-kernels-") as tmp:
        def step(name: str) -> dict:
            if log:
                log(f"kernels: {name} ...")
            t = time.perf_counter()
            env = _child_env(kernels_dir if name == "searches" else None, cpu)
            proc = subprocess.run([sys.executable, "-m", _MODULE, f"_{name}", kernels_dir, tmp], env=env,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"building kernels failed in step {name!r}:\n{proc.stderr[-4000:]}")
            lines = proc.stdout.strip().splitlines()
            return {**(json.loads(lines[-1]) if lines else {}), "s": time.perf_counter() - t}

        index_s = step("indexes")["s"]
        report = step("searches")
        if report["compiled"]:
            # a process that compiled also holds the callees it compiled along; one that finds everything in the
            # cache holds only the kernels Python calls, the ones worth recording: record from a second run
            again = step("searches")
            report.update(manifest=again["manifest"], kernels=again["kernels"])
    report.update(index_s=index_s, search_s=report.pop("s"), seconds=time.perf_counter() - t0)
    return report


def _run_searches(kernels_dir: str, root: str) -> dict:
    _exercise_searches(root)
    count, seconds = COMPILES.snapshot()
    sigs = cached_signatures()
    path = manifest_path(kernels_dir)
    import numba

    blob = pickle.dumps({"signatures": sigs, "numba": numba.__version__, "cpu": cpu_name(), "package": _PACKAGE_DIR})
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, path)  # concurrent builders (two emulators) each write a whole manifest
    return {"kernels": len(sigs), "compiled": count, "compile_s": seconds, "cpu": cpu_name(), "manifest": path}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shoal.serverless.kernels", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile every serverless kernel into DIR (the container image's build step)")
    b.add_argument("dir")
    b.add_argument("--cpu", help="numba CPU target, e.g. 'generic' for an image that runs on any host of its "
                                 "architecture (default: this host's CPU)")
    ld = sub.add_parser("load", help="load DIR's kernels in this process and report the time (an init phase)")
    ld.add_argument("dir")
    for step in ("_indexes", "_searches"):
        s = sub.add_parser(step)
        s.add_argument("dir")
        s.add_argument("root")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        print(json.dumps(build(args.dir, cpu=args.cpu, log=lambda m: print(m, file=sys.stderr, flush=True))))
    elif args.cmd == "load":
        print(json.dumps({**seed_cache(args.dir), **load(args.dir)}))
    elif args.cmd == "_indexes":
        _exercise_indexes(args.root)
    else:
        print(json.dumps(_run_searches(args.dir, args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
