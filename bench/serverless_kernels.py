"""The cold-start part of ``bench/serverless.py``: compiled kernels as a container image ships them.

Measured here, each in fresh processes:

- the image's build step (``python -m shoal.serverless.kernels build DIR --cpu generic``) from an empty directory;
- a container's init phase as the image runs it: an interpreter that imports numpy, numba and boto3 (what any image
  with these libraries pays), then the handler, whose import seeds an empty ``NUMBA_CACHE_DIR`` from the shipped
  directory and loads every kernel (``$SHOAL_KERNELS``); the handler's import time less the kernels' part, and the
  kernels' part, feed :func:`shoal.serverless.cost.lambda_init_ms`;
- the serverless search with kernels compiled for the generic CPU against kernels compiled for this host (CPU time,
  the same warm search in both, rounds alternated): the price of an image that runs on every host.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

_INIT_SCRIPT = """
import json, time
t0 = time.perf_counter()
import numpy, numba, boto3  # noqa: F401  (any image with these libraries pays for them)
t1 = time.perf_counter()
import shoal.serverless.handler  # noqa: F401  (the init phase: seeds and loads the kernels)
t2 = time.perf_counter()
from shoal.serverless import kernels
print(json.dumps({"libraries_ms": (t1 - t0) * 1e3, "handler_ms": (t2 - t1) * 1e3, "init": kernels.INIT}))
"""

_SEARCH_SCRIPT = """
import json, sys, time
import numpy as np
from shoal import filters
from shoal.serverless.backends import search_inprocess
from shoal.serverless.cache import LRUCache, Reader, store_for
from shoal.serverless.kernels import COMPILES, cpu_name
from shoal.serverless.manifest import current_version
store = store_for(sys.argv[1])
q = np.load(sys.argv[2])
reader = Reader(store, current_version(store), LRUCache(1 << 32))
out = {}
for text in (None, sys.argv[3]):
    flt = None if text is None else filters.to_json(filters.parse(text))
    search_inprocess(store, q, 10, filter=flt, reader=reader)  # loads data and kernels
    best = float("inf")
    for _ in range(int(sys.argv[4])):
        t = time.process_time()
        search_inprocess(store, q, 10, filter=flt, reader=reader)
        best = min(best, time.process_time() - t)
    out[text or "none"] = best * 1e3
print(json.dumps({"cpu": cpu_name(), "cpu_ms": out, "compiles": COMPILES.snapshot()[0]}))
"""


def _run(script_or_args, env, timeout=900) -> dict:
    args = [sys.executable, "-c", script_or_args] if isinstance(script_or_args, str) else script_or_args
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _env(**extra) -> dict:
    from shoal.serverless.kernels import SINGLE_THREAD

    env = dict(os.environ, **SINGLE_THREAD)
    for k in ("SHOAL_KERNELS", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NUMBA_CACHE_DIR"):
        env.pop(k, None)
    env.update(extra)
    return env


def kernel_phase(*, host_kernels: str, index_uri: str, queries: np.ndarray, filter_text: str, s3_endpoint: str,
                 rounds: int = 3, repeats: int = 5, inits: int = 3) -> list[dict]:
    """Records ``{"phase": "kernels-build" | "kernels-init" | "kernels-speed", ...}`` (see the module docstring).

    ``host_kernels`` is a kernels directory already built for this host (the emulator's); ``index_uri`` a published
    index the search runs over.
    """
    from shoal.serverless.cost import INIT_LIMIT_MS, InitAssumptions, lambda_init_ms
    from shoal.serverless.kernels import build

    out = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-kernels-") as tmp:
        generic = os.path.join(tmp, "generic")
        rep = build(generic, cpu="generic")
        out.append({"phase": "kernels-build", "cpu": rep["cpu"], "seconds": rep["seconds"],
                    "compiled": rep["compiled"], "compile_s": rep["compile_s"], "kernels": rep["kernels"],
                    "bytes": sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(generic)
                                 for f in fs)})
        print(f"kernels for the generic CPU built in {rep['seconds']:.1f} s ({rep['compiled']} compilations, "
              f"{rep['kernels']} kernels, {out[-1]['bytes'] / 1e6:.1f} MB)", flush=True)
        for i in range(inits):
            cache = os.path.join(tmp, f"numba-init-{i}")  # empty, as /tmp in a new container
            got = _run(_INIT_SCRIPT, _env(SHOAL_KERNELS=generic, NUMBA_CACHE_DIR=cache, NUMBA_CPU_NAME="generic"))
            init = got["init"]
            import_ms = got["libraries_ms"] + got["handler_ms"] - init["init_ms"]
            est = lambda_init_ms(import_ms, init["init_ms"])
            rec = {"phase": "kernels-init", "import_ms": import_ms, "kernels_init_ms": init["init_ms"],
                   "load_ms": init["load_ms"], "copy_ms": init["copy_ms"], "copied_bytes": init["copied_bytes"],
                   "loaded": init["loaded"], "compiled": init["compiled"], "lambda_init_estimate_ms": est,
                   "init_limit_ms": INIT_LIMIT_MS, "init_assumptions": InitAssumptions().__dict__}
            out.append(rec)
            print(f"init phase (fresh process): import {import_ms:.0f} ms + kernels {init['init_ms']:.0f} ms "
                  f"(copy {init['copy_ms']:.0f}, load {init['load_ms']:.0f}; {init['loaded']} loaded, "
                  f"{init['compiled']} compiled) -> Lambda init estimate {est / 1e3:.1f} s", flush=True)
        qfile = os.path.join(tmp, "q.npy")
        np.save(qfile, queries)
        targets = {"host": _env(NUMBA_CACHE_DIR=os.path.join(os.path.abspath(host_kernels), "numba"),
                                SHOAL_S3_ENDPOINT=s3_endpoint),
                   "generic": _env(NUMBA_CACHE_DIR=os.path.join(generic, "numba"), NUMBA_CPU_NAME="generic",
                                   SHOAL_S3_ENDPOINT=s3_endpoint)}
        speed: dict[str, list[dict]] = {t: [] for t in targets}
        for _ in range(rounds):
            for target, env in targets.items():
                speed[target].append(_run([sys.executable, "-c", _SEARCH_SCRIPT, index_uri, qfile, filter_text,
                                           str(repeats)], env))
        for name in ("none", filter_text):
            ms = {t: float(np.median([r["cpu_ms"][name] for r in speed[t]])) for t in targets}
            rec = {"phase": "kernels-speed", "filter": name, "nq": int(queries.shape[0]),
                   "host_cpu": speed["host"][0]["cpu"], "host_cpu_ms": ms["host"], "generic_cpu_ms": ms["generic"],
                   "generic_over_host": ms["generic"] / ms["host"], "rounds": rounds,
                   "compiles": {t: [r["compiles"] for r in speed[t]] for t in targets}}
            out.append(rec)
            print(f"search CPU ms ({name}, {queries.shape[0]} queries, median of {rounds} alternated rounds): "
                  f"{speed['host'][0]['cpu']} {ms['host']:.1f}, generic {ms['generic']:.1f} "
                  f"({rec['generic_over_host']:.2f}x)", flush=True)
    return out
