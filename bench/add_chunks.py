"""Chunked adds to an IVF-PQ index: add time and peak memory with growth buffers, with ``reserve``, and a baseline.

Each measurement runs in its own process (peak RSS is per process): train on a clustered set (rows in cluster order),
add all rows in chunks, search, and print one JSON line with the add time, RSS before the adds and at its peak, and an
md5 of the search results (the same md5 across modes and interpreters means bit-identical ids and keys).
``--baseline-python`` runs the same child under another checkout's interpreter (e.g. main's .venv, before growth
buffers), interleaved with ours round by round::

    python -m bench.add_chunks --n 1000000 --rounds 2 --baseline-python /work/main/.venv/bin/python
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def clustered(n: int, d: int, seed: int = 0, nclus: int = 1000) -> np.ndarray:
    """float32 (n, d): Gaussian clusters, rows sorted by cluster (a meaningful order, as collections often add)."""
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(12345).normal(size=(nclus, d)).astype(np.float32) * 3
    x = np.empty((n, d), np.float32)
    labels = np.sort(rng.integers(0, nclus, n))
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        x[s:e] = centers[labels[s:e]] + rng.normal(size=(e - s, d)).astype(np.float32)
    return x


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(args) -> dict:
    from shoal.index import index_factory

    x = clustered(args.n, args.d)
    q = clustered(200, args.d, seed=1)
    ids = np.arange(args.n, dtype=np.int64)
    idx = index_factory(args.d, args.spec)
    idx.train(x[:: max(1, args.n // 50_000)])
    rss_before = _rss()
    t0 = time.perf_counter()
    if args.mode == "reserve":
        idx.reserve(args.n)
    for s in range(0, args.n, args.chunk):
        idx.add(x[s:s + args.chunk], ids[s:s + args.chunk])
    t_add = time.perf_counter() - t0
    rss_added = _rss()
    t1 = time.perf_counter()
    idx.compact()  # what the engine's builder does after its last add (a no-op before growth buffers)
    t_compact = time.perf_counter() - t1
    # the kernel's high-water mark can lag VmRSS by its cached per-thread counters: never report it below a reading
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_added, _rss())
    D, I = idx.search(q, 10, params={"nprobe": 16, "rerank": 40})
    D0, I0 = idx.search(q, 10, params={"nprobe": 16, "rerank": 0})
    h = hashlib.md5()
    for a in (D, I, D0, I0):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"spec": args.spec, "n": args.n, "d": args.d, "chunk": args.chunk, "mode": args.mode,
            "add_s": round(t_add, 3), "compact_s": round(t_compact, 3), "rss_before_add_mb": round(rss_before / 2**20, 1),
            "rss_after_add_mb": round(rss_added / 2**20, 1), "peak_rss_mb": round(peak / 2**20, 1),
            "peak_over_before_mb": round((peak - rss_before) / 2**20, 1),
            "vectors_mb": round(args.n * args.d * 4 / 2**20, 1), "memory_bytes": idx.memory_bytes(),
            "results_md5": h.hexdigest()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--chunk", type=int, default=16_384, help="rows per add (the engine's BUILD_CHUNK)")
    ap.add_argument("--spec", default="IVF256,PQ25x4,Refine")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--baseline-python", help="interpreter of a checkout without growth buffers (label 'baseline')")
    ap.add_argument("--out", default="bench/results/add_chunks.jsonl")
    ap.add_argument("--plot-only", action="store_true", help="only draw the plot (next to --out) from its records")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="grow", choices=["grow", "reserve"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return
    if args.plot_only:
        print(plot(args.out))
        return
    runs = [("grow", sys.executable, "grow"), ("reserve", sys.executable, "reserve")]
    if args.baseline_python:
        runs.insert(0, ("baseline", args.baseline_python, "grow"))
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    for r in range(args.rounds):
        for label, python, mode in runs:
            cmd = [python, os.path.join(here, "add_chunks.py"), "--child", "--mode", mode, "--n", str(args.n),
                   "--d", str(args.d), "--chunk", str(args.chunk), "--spec", args.spec]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/").stdout
            rec = {"label": label, "round": r, **json.loads(out.strip().splitlines()[-1])}
            print(json.dumps(rec), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
    print(plot(args.out))


def plot(path: str) -> str:
    """Add time and peak RSS over the pre-add RSS per label (each round a dot, the bar their mean), as a PNG beside
    the records; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    labels = [lab for lab in ("baseline", "grow", "reserve") if any(r["label"] == lab for r in recs)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, name in zip(axes, ("add_s", "peak_over_before_mb"), ("add time (s)", "peak RSS over pre-add (MB)")):
        for i, lab in enumerate(labels):
            vals = [r[key] for r in recs if r["label"] == lab]
            ax.bar(i, sum(vals) / len(vals), color="C%d" % i, alpha=0.6)
            ax.plot([i] * len(vals), vals, "k.")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel(name)
    r0 = recs[-1]
    fig.suptitle(f"{r0['spec']}: {r0['n']:,} x {r0['d']} added in chunks of {r0['chunk']:,} rows")
    fig.tight_layout()
    out = os.path.splitext(path)[0] + ".png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    main()
