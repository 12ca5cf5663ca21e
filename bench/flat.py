"""Exact search: shoal ``Flat`` vs faiss ``IndexFlatL2`` / ``IndexFlatIP`` (QPS ratio at recall 1).

Three methods on the same queries, timed in alternation (best of ``--rounds``), single-threaded and with all threads:

* ``shoal-flat``    shoal's ``Flat`` index (index/flat.py: BLAS tiles + numba heap selection)
* ``faiss-default`` faiss's own choice of code path for this batch size
* ``faiss-blas``    faiss forced onto its BLAS path (``faiss.cvar.distance_compute_blas_threshold`` set to 1; by
  default faiss 1.15 takes it only when the batch is large enough, see issue 2)

Every configuration appends one line to ``bench/results/flat.jsonl`` (see bench/README.md), including the ratio of
shoal's QPS to both faiss paths and the recall@k of each method against the cached exact ground truth.

    python -m bench.flat                          # both data sets, 2,000 queries, k=10
    python -m bench.flat --dataset glove-50 --k 100
    python -m bench.flat --quick                  # smoke run
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import (append_result, bench_parser, dataset_from_args, dataset_names, measure_interleaved, recall_at_k,
                     rss_delta)


def build_methods(ds, xb):
    """Build shoal Flat and faiss IndexFlat over ``xb``; returns (searches, setups, build info)."""
    import faiss

    from shoal.index import index_factory

    info = {}
    with rss_delta() as mem:
        t0 = time.perf_counter()
        ours = index_factory(ds.d, "Flat", metric=ds.metric)
        ours.add(xb, np.arange(xb.shape[0], dtype=np.int64))
        info["shoal-flat"] = {"build_s": time.perf_counter() - t0, "memory_bytes": ours.memory_bytes()}
    info["shoal-flat"]["rss_delta_bytes"] = mem["bytes"]
    with rss_delta() as mem:
        t0 = time.perf_counter()
        # the base is already L2-normalised for cosine, so inner product is cosine
        theirs = faiss.IndexFlatL2(ds.d) if ds.metric == "l2" else faiss.IndexFlatIP(ds.d)
        theirs.add(xb)
        build = time.perf_counter() - t0
    faiss_info = {"build_s": build, "memory_bytes": int(theirs.ntotal * ds.d * 4), "rss_delta_bytes": mem["bytes"]}
    info["faiss-default"] = info["faiss-blas"] = faiss_info

    def blas_on():
        old = faiss.cvar.distance_compute_blas_threshold
        faiss.cvar.distance_compute_blas_threshold = 1

        def undo():
            faiss.cvar.distance_compute_blas_threshold = old
        return undo

    k_holder = {}

    def shoal_search(q):
        return ours.search(q, k_holder["k"])

    def faiss_search(q):
        return theirs.search(q, k_holder["k"])

    searches = {"shoal-flat": shoal_search, "faiss-default": faiss_search, "faiss-blas": faiss_search}
    return searches, {"faiss-blas": blas_on}, info, k_holder, (ours, theirs)


def load_revision(rev: str, workdir: Path):
    """Import ``exact_search`` of shoal at git revision ``rev`` (its errors.py and index/ only) as a separate package.

    Used by ``--baseline-rev`` to time an older Flat against the current one in the same process and rounds.
    """
    import importlib
    import subprocess

    from .common import REPO_DIR

    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO_DIR, capture_output=True, text=True,
                            check=True).stdout.strip()
    pkg = f"shoal_rev_{commit}"
    root = workdir / pkg
    (root / "index").mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", commit, "errors.py", "index/"], cwd=REPO_DIR,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        data = subprocess.run(["git", "show", f"{commit}:{f}"], cwd=REPO_DIR, capture_output=True, check=True).stdout
        (root / f).write_bytes(data)
    (root / "__init__.py").write_text("")
    (root / "index" / "__init__.py").write_text("")  # skip the package's eager imports
    sys.path.insert(0, str(workdir))
    try:
        mod = importlib.import_module(f"{pkg}.index.flat")
    finally:
        sys.path.remove(str(workdir))
    return commit, mod.exact_search


def to_keys(D: np.ndarray, metric: str) -> np.ndarray:
    """faiss IndexFlatIP returns similarities; turn them into shoal's distance keys (smaller is better)."""
    return D if metric == "l2" else -D


def run_dataset(args, name: str) -> list[dict]:
    ds = dataset_from_args(args, name)
    xb, xq = ds.get_database(), ds.get_queries()
    k = args.k
    print(f"{ds.key}: nb={ds.nb} nq={ds.nq} d={ds.d} metric={ds.metric} k={k}", file=sys.stderr)
    gt = ds.get_groundtruth(k)
    searches, setups, info, k_holder, (ours, _) = build_methods(ds, xb)
    k_holder["k"] = k
    if args.baseline_rev:
        commit, old_search = load_revision(args.baseline_rev, Path(tempfile.mkdtemp(prefix="shoal-rev-")))
        name = f"shoal-flat@{commit}"

        def old_flat(q):
            # what Flat.search did at that revision: prepare queries, then exact_search over the stored vectors
            return old_search(ours.prepare(q, name="queries"), ours.vectors, k_holder["k"], ours.metric,
                              labels=ours.row_ids, x_norms=ours.norms if ours.metric == "l2" else None)

        searches[name] = old_flat
        info[name] = info["shoal-flat"]
    all_threads = args.threads or os.cpu_count() or 1
    thread_modes = [1] if all_threads == 1 or args.single_thread_only else [1, all_threads]
    rows = []
    for nt in thread_modes:
        timings = measure_interleaved(searches, xq, threads=nt, rounds=args.rounds, setup=setups)
        ours_D, ours_I = timings["shoal-flat"].result
        for method, t in timings.items():
            D, I = t.result
            rec = {
                "bench": "flat", "dataset": ds.key, "dataset_name": ds.name, "metric": ds.metric, "nb": ds.nb,
                "nq": ds.nq, "d": ds.d, "k": k, "method": method, "threads": nt,
                "qps": t.qps, "seconds": t.seconds, "runs": t.runs, "recall": recall_at_k(I, gt, k),
                "qps_ratio_vs_faiss_blas": timings["shoal-flat"].qps / timings["faiss-blas"].qps,
                "qps_ratio_vs_faiss_default": timings["shoal-flat"].qps / timings["faiss-default"].qps,
                "same_ids_as_shoal": float(np.mean(I == ours_I)),
                "max_key_diff_vs_shoal": float(np.max(np.abs(to_keys(D, ds.metric) - ours_D))) if D.size else 0.0,
                "faiss_blas_threshold_default": _default_blas_threshold(),
                "config": run_config(),
                **info[method],
            }
            rows.append(append_result(args.out, rec, echo=False))
        print(f"  threads={nt}: " + ", ".join(f"{m} {t.qps:,.0f} QPS" for m, t in timings.items())
              + f"; shoal/faiss-blas {timings['shoal-flat'].qps / timings['faiss-blas'].qps:.2f}x, "
                f"shoal/faiss-default {timings['shoal-flat'].qps / timings['faiss-default'].qps:.2f}x",
              file=sys.stderr)
    return rows


def run_config() -> str:
    """What differs between runs of this benchmark besides data and threads: the OpenBLAS kernels faiss runs on.

    faiss-cpu wheels bundle an OpenBLAS that may not recognise a recent CPU and fall back to generic "Prescott"
    kernels; ``OPENBLAS_CORETYPE=SkylakeX`` (or Haswell) in the environment makes it use the right ones.
    """
    from .common import blas_core_names

    cores = blas_core_names()
    faiss_core = next((v for k, v in cores.items() if "scipy" not in k), "?")
    forced = os.environ.get("OPENBLAS_CORETYPE")
    return f"faiss OpenBLAS {faiss_core}" + (" (OPENBLAS_CORETYPE)" if forced else " (auto)")


def _default_blas_threshold() -> int:
    import faiss

    return int(faiss.cvar.distance_compute_blas_threshold)


def markdown_table(rows: list[dict]) -> str:
    """The README table: one line per (data set, threads) with the QPS figures and the ratios."""
    revs = sorted({r["method"] for r in rows if r["method"].startswith("shoal-flat@")})
    head = ["data set", "faiss BLAS kernels", "nq", "k", "threads", "shoal Flat QPS"] + [f"{m} QPS" for m in revs] + \
        ["faiss default QPS", "faiss BLAS QPS", "shoal / faiss BLAS", "shoal / faiss default", "recall@k (shoal)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset_name"], r["nq"], r["k"], r["threads"], r.get("config", "")), {})[r["method"]] = r
    for (name, nq, k, nt, config), g in groups.items():
        if not {"shoal-flat", "faiss-default", "faiss-blas"} <= set(g):
            continue
        s, fd, fb = g["shoal-flat"], g["faiss-default"], g["faiss-blas"]
        cells = [name, config.replace("faiss OpenBLAS ", ""), f"{nq:,}", str(k), str(nt), f"{s['qps']:,.0f}"]
        cells += [f"{g[m]['qps']:,.0f}" if m in g else "-" for m in revs]
        cells += [f"{fd['qps']:,.0f}", f"{fb['qps']:,.0f}", f"{s['qps'] / fb['qps']:.2f}x",
                  f"{s['qps'] / fd['qps']:.2f}x", f"{s['recall']:.4f}"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = bench_parser(__doc__.split("\n\n")[0], default_k=10, default_nq=2000, name="flat")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per method (best kept)")
    p.add_argument("--baseline-rev", default=None, metavar="REV",
                   help="also time Flat's exact_search as of this git revision (before/after comparisons)")
    p.add_argument("--single-thread-only", action="store_true", help="skip the all-threads measurements")
    args = p.parse_args(argv)
    from .datasets import DatasetUnavailable

    rows = []
    for name in dataset_names(args):
        try:
            rows += run_dataset(args, name)
        except DatasetUnavailable as exc:
            print(f"skipping {name}: {exc}", file=sys.stderr)
    if not rows:
        return 1
    print(markdown_table(rows))
    return 0


def table_from_file(path) -> str:
    """The markdown table for the latest records of a results file (``python -c`` helper for the README)."""
    from .common import read_results
    from .plot import latest

    return markdown_table(latest(read_results(path)))


if __name__ == "__main__":
    sys.exit(main())
