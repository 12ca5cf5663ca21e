"""Scale curve: 1M, 4M and 10M vectors. Build time, memory and single-thread QPS at recall@10 0.9 of shoal's IVF-PQ
fast path and OSQ, with faiss IndexIVFPQFastScan + IndexRefineFlat in the same run.

Data: GloVe-50d (the DATASETS.md split, normalized, cosine) and seeded perturbed copies of its 390,000 base rows:
row ``i`` is copy ``i // 390000`` of base row ``i % 390000``; copy 0 is the row itself, copy ``c > 0`` is
``normalize(x + SIGMA * g)`` with ``g`` standard normal noise drawn per copy and block of rows (seeded, so any row
range is reproducible without the rest). With ``SIGMA = 0.1`` (noise norm ~0.71) a copy lies about as far from its
word as the word's nearest neighbour does (median 0.64, tenth 0.76), so neighbourhoods mix words and copies rather
than stacking duplicates. Queries: the first ``--nq`` GloVe query rows, unperturbed. Exact ground truth is computed
chunk by chunk and cached under ``bench/cache/``.

Nothing holds two copies of the data: training draws a seeded sample of ``max_train`` rows (generating the data
once, keeping only those rows), and every index is filled by ``add`` calls of ``--chunk`` rows generated on the
fly. shoal's indexes are then saved and loaded back with ``mmap=True`` (re-rank vectors memory-mapped; the timed
searches run on the loaded copies); faiss keeps its refine vectors in memory, as it must.

Per size and method one JSON line goes to ``bench/results/scale.jsonl`` per (setting, recall, QPS) point and one
summary line (build: train and add seconds; memory: ``memory_bytes``, ``mapped_bytes``, process RSS growth; QPS at
the target recall); ``bench/results/scale.png`` plots the summaries against N.

    python -m bench.scale                                   # 1M, 4M, 10M; shoal IVF-PQ, OSQ, faiss (hours at 10M)
    python -m bench.scale --sizes 1000000 --methods ivfpq,faiss
    python -m bench.scale --sizes 200000 --nq 200           # smoke run
    python -m bench.scale --plot-only                       # redraw scale.png from the results file
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import (append_result, git_commit, machine_info, measure_interleaved, read_results, recall_at_k,
                     results_path, rss_bytes, thread_limit)
from .datasets import CACHE_DIR, Glove50

SIZES = (1_000_000, 4_000_000, 10_000_000)
SIGMA = 0.1
NOISE_BLOCK = 65536  # rows per seeded noise block: any row range is generated the same way
PQ_M = 50            # 4-bit sub-quantizers: 25 bytes a vector, as bench/ivfpq's GloVe fast-scan configuration
OSQ_PARTITIONS = 16
METHODS = ("ivfpq", "osq", "faiss")


def nlist_for(n: int) -> int:
    """Inverted lists: the power of two nearest sqrt(n) (1,024 at 1M, 2,048 at 4M, 4,096 at 10M)."""
    return int(2 ** round(np.log2(np.sqrt(n))))


class ScaledGlove:
    """GloVe-50d base rows plus seeded perturbed copies (module doc), generated in row ranges on demand."""

    def __init__(self, n: int, nq: int, sigma: float = SIGMA, seed: int = 0):
        self.glove = Glove50(nq=nq)
        self.base = self.glove.get_database()
        self.n, self.nq, self.sigma, self.seed = int(n), int(nq), float(sigma), int(seed)
        self.d = self.base.shape[1]

    @property
    def key(self) -> str:
        return f"scaled-glove-n{self.n}-nq{self.nq}-s{self.sigma:g}-seed{self.seed}"

    def queries(self) -> np.ndarray:
        return self.glove.get_queries()

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` float32 (stop - start, d)."""
        nb0 = self.base.shape[0]
        out = np.empty((stop - start, self.d), dtype=np.float32)
        i = start
        while i < stop:
            c, j = divmod(i, nb0)
            b = j // NOISE_BLOCK
            j1 = min(nb0, (b + 1) * NOISE_BLOCK, j + (stop - i))
            x = self.base[j:j1]
            if c:
                rng = np.random.default_rng([self.seed, c, b])
                noise = rng.standard_normal((min(nb0, (b + 1) * NOISE_BLOCK) - b * NOISE_BLOCK, self.d),
                                            dtype=np.float32)[j - b * NOISE_BLOCK:j1 - b * NOISE_BLOCK]
                x = x + np.float32(self.sigma) * noise
                x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[i - start:i - start + (j1 - j)] = x
            i += j1 - j
        return out

    def chunks(self, size: int):
        """``(start, rows)`` over all rows, ``size`` at a time."""
        for s in range(0, self.n, size):
            yield s, self.rows(s, min(self.n, s + size))

    def sample(self, m: int, chunk: int, seed: int = 0) -> np.ndarray:
        """A seeded uniform sample of ``m`` rows (one pass over the data, keeping only the sampled rows)."""
        if m >= self.n:
            return self.rows(0, self.n)
        pick = np.sort(np.random.default_rng(seed).choice(self.n, m, replace=False))
        out = np.empty((m, self.d), dtype=np.float32)
        for s, x in self.chunks(chunk):
            lo, hi = np.searchsorted(pick, [s, s + x.shape[0]])
            out[lo:hi] = x[pick[lo:hi] - s]
        return out

    def groundtruth(self, k: int, chunk: int) -> np.ndarray:
        """Exact top-``k`` rows of every query (inner product of normalized vectors), int64 (nq, k), cached."""
        path = CACHE_DIR / f"gt-{self.key}-k{k}.npz"
        if path.exists():
            with np.load(path) as z:
                return z["I"]
        q = self.queries()
        best_d = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        best_i = np.full((q.shape[0], k), -1, dtype=np.int64)
        t0 = time.perf_counter()
        for s, x in self.chunks(chunk):
            for b in range(0, x.shape[0], 131072):  # (nq, 131072) float32 products at a time
                xb = x[b:b + 131072]
                ip = q @ xb.T
                kk = min(k, xb.shape[0])
                part = np.argpartition(-ip, kk - 1, axis=1)[:, :kk]
                d = np.concatenate([best_d, np.take_along_axis(ip, part, axis=1)], axis=1)
                i = np.concatenate([best_i, part + s + b], axis=1)
                order = _order_desc(d, i)[:, :k]
                best_d, best_i = np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)
            print(f"\r[scale] ground truth {self.key}: {s + x.shape[0]:,}/{self.n:,} rows "
                  f"({time.perf_counter() - t0:.0f} s)", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, I=best_i, D=best_d)
        os.replace(tmp, path)
        return best_i


def _order_desc(d: np.ndarray, i: np.ndarray) -> np.ndarray:
    """Per row, positions sorted by larger ``d`` first, ties to the smaller ``i``."""
    return np.stack([np.lexsort((ii, -dd)) for dd, ii in zip(d, i)])


# ------------------------------------------------------------------------------------------------- building
def build_shoal(spec: str, data: ScaledGlove, xt: np.ndarray, chunk: int, workdir: Path, label: str):
    """Train on ``xt``, add the data chunk by chunk, save, and load back with mmap=True; returns (index, info)."""
    from shoal.index import index_factory, load_index
    from shoal.storage import LocalStore

    rss0 = rss_bytes()
    idx = index_factory(data.d, spec, metric="cosine")
    t0 = time.perf_counter()
    idx.train(xt)
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    idx.reserve(data.n)  # the final size is known: the chunked adds copy no rows added before
    for s, x in data.chunks(chunk):
        idx.add(x, np.arange(s, s + x.shape[0], dtype=np.int64))
        print(f"\r[scale] {label}: added {s + x.shape[0]:,}/{data.n:,} ({time.perf_counter() - t1:.0f} s)",
              end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    t_add = time.perf_counter() - t1
    rss_built = rss_bytes() - rss0
    mem_built = idx.memory_bytes()
    store = LocalStore(str(workdir))
    t2 = time.perf_counter()
    idx.save(store, label)
    t_save = time.perf_counter() - t2
    del idx
    gc.collect()
    rss1 = rss_bytes()
    t3 = time.perf_counter()
    loaded = load_index(store, label, mmap=True)
    t_load = time.perf_counter() - t3
    info = {"factory": loaded.factory_string(), "train_s": t_train, "add_s": t_add, "build_s": t_train + t_add,
            "save_s": t_save, "load_s": t_load, "memory_bytes_built": mem_built, "rss_built_bytes": rss_built,
            "memory_bytes": loaded.memory_bytes(), "mapped_bytes": loaded.mapped_bytes(),
            "rss_load_bytes": rss_bytes() - rss1, "disk_bytes": _du(workdir, label)}
    return loaded, info


def build_faiss(data: ScaledGlove, xt: np.ndarray, chunk: int, nlist: int):
    import faiss

    rss0 = rss_bytes()
    t0 = time.perf_counter()
    base = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(data.d), data.d, nlist, PQ_M, 4, faiss.METRIC_INNER_PRODUCT)
    base.cp.seed = 0
    base.train(xt)
    t_train = time.perf_counter() - t0
    index = faiss.IndexRefineFlat(base)  # wraps the trained, empty base: its add fills both
    t1 = time.perf_counter()
    for s, x in data.chunks(chunk):
        index.add(x)
    t_add = time.perf_counter() - t1
    rss = rss_bytes() - rss0
    n = data.n
    # what faiss holds: fast-scan codes in 32-row blocks (padding included), 8-byte ids, refine vectors, centroids
    invl = base.invlists
    codes = sum(invl.list_size(i) for i in range(nlist))
    code_bytes = sum(((invl.list_size(i) + 31) // 32) * 32 * ((PQ_M + 1) // 2) for i in range(nlist))
    mem = code_bytes + 8 * codes + 4 * data.d * n + 4 * data.d * nlist
    return (base, index), {"factory": f"IVF{nlist},PQ{PQ_M}x4fs + IndexRefineFlat", "train_s": t_train,
                           "add_s": t_add, "build_s": t_train + t_add, "memory_bytes": mem, "mapped_bytes": 0,
                           "rss_built_bytes": rss}


def _du(workdir: Path, prefix: str) -> int:
    return sum(p.stat().st_size for p in Path(workdir).rglob("*") if p.is_file() and prefix in str(p))


# ------------------------------------------------------------------------------------------------- searching
def sweep(args, data, methods, infos, gt, nlist):
    """Recall/QPS points of every method, all configurations at one nprobe timed in alternation."""
    import faiss

    q = data.queries()
    k = args.k
    points = []
    for nprobe in args.nprobes:
        searches, labels = {}, {}
        if "ivfpq" in methods:
            for rr in args.reranks:
                p = {"nprobe": nprobe, "rerank": rr}
                searches[f"ivfpq|{rr}"] = (lambda p: (lambda x: methods["ivfpq"].search(x, k, params=p)))(p)
                labels[f"ivfpq|{rr}"] = ("shoal-ivfpq-fs", p)
        if "osq" in methods:
            for rr in args.osq_reranks:
                for level2 in args.osq_level2:
                    p = {"nprobe": nprobe, "rerank": rr, "level2": level2}
                    key = f"osq|{rr}|{level2}"
                    searches[key] = (lambda p: (lambda x: methods["osq"].search(x, k, params=p)))(p)
                    labels[key] = ("shoal-osq", p)
        if "faiss" in methods:
            base, index = methods["faiss"]
            for rr in args.reranks:
                kf = max(1, rr // k)

                def run(x, kf=kf, nprobe=nprobe):
                    base.nprobe = nprobe
                    index.k_factor = kf
                    return index.search(x, k)
                searches[f"faiss|{kf}"] = run
                labels[f"faiss|{kf}"] = ("faiss-ivfpq-fs-refine", {"nprobe": nprobe, "rerank": kf * k})
        faiss.omp_set_num_threads(1)
        for key, t in measure_interleaved(searches, q, threads=1, rounds=args.rounds).items():
            label, params = labels[key]
            rec = {"bench": "scale", "dataset": data.key, "dataset_name": "scaled-glove-50", "nb": data.n,
                   "nq": int(q.shape[0]), "k": k, "method": label, "threads": 1, "params": params,
                   "qps": t.qps, "recall": recall_at_k(t.result[1], gt, k), "nlist": nlist}
            points.append(rec)
            append_result(args.out, rec, echo=False)
        top = max((p for p in points if p["params"]["nprobe"] == nprobe), key=lambda p: p["recall"])
        print(f"[scale] n={data.n:,} nprobe={nprobe}: best recall {top['recall']:.3f} ({top['method']})",
              file=sys.stderr)
        if all(max((p["recall"] for p in points if p["method"] == m), default=0) >= args.stop_recall
               for m in {lb for lb, _ in labels.values()}):
            break  # every method is past the target: larger nprobe only costs time
    return points


def run_size(args, n: int):
    data = ScaledGlove(n, args.nq)
    nlist = nlist_for(n)
    max_train = min(n, args.train_per_list * nlist)
    print(f"[scale] {data.key}: nlist={nlist} max_train={max_train} chunk={args.chunk}", file=sys.stderr)
    gt = data.groundtruth(args.k, args.chunk)
    xt = data.sample(max_train, args.chunk)
    methods, infos = {}, {}
    work = Path(tempfile.mkdtemp(prefix="shoal-scale-", dir=args.workdir))
    try:
        with thread_limit(args.build_threads):
            if "ivfpq" in args.methods:
                spec = f"IVF{nlist}(max_train={max_train}),PQ{PQ_M}x4,Refine"
                methods["ivfpq"], infos["shoal-ivfpq-fs"] = build_shoal(spec, data, xt, args.chunk, work, "ivfpq")
                print(f"[scale]   shoal IVF-PQ: {infos['shoal-ivfpq-fs']}", file=sys.stderr)
            if "osq" in args.methods:
                spec = f"OSQ(partitions={OSQ_PARTITIONS},clusters={max(1, nlist // OSQ_PARTITIONS)})"
                try:
                    methods["osq"], infos["shoal-osq"] = build_shoal(spec, data, xt, args.chunk, work, "osq")
                    print(f"[scale]   shoal OSQ: {infos['shoal-osq']}", file=sys.stderr)
                except MemoryError as exc:  # recorded, not fatal: the other methods still run
                    infos["shoal-osq"] = {"factory": spec, "error": f"MemoryError: {exc}"}
            if "faiss" in args.methods:
                import faiss

                faiss.omp_set_num_threads(args.build_threads)
                methods["faiss"], infos["faiss-ivfpq-fs-refine"] = build_faiss(data, xt, args.chunk, nlist)
                print(f"[scale]   faiss: {infos['faiss-ivfpq-fs-refine']}", file=sys.stderr)
        del xt
        gc.collect()
        points = sweep(args, data, methods, infos, gt, nlist)
    finally:
        methods.clear()
        gc.collect()
        shutil.rmtree(work, ignore_errors=True)
    summary = {"bench": "scale-summary", "dataset": data.key, "nb": n, "nq": args.nq, "k": args.k, "nlist": nlist,
               "max_train": max_train, "chunk": args.chunk, "target_recall": args.target, "sigma": data.sigma,
               "machine": machine_info(), "commit": git_commit(), "methods": {}}
    ref = _best(points, "faiss-ivfpq-fs-refine", args.target)
    for label, info in infos.items():
        b = _best(points, label, args.target)
        summary["methods"][label] = {
            **info, "qps_at_target": b["qps"] if b else None, "params": b["params"] if b else None,
            "recall": b["recall"] if b else None,
            "max_recall": max((p["recall"] for p in points if p["method"] == label), default=None),
            "ratio_to_faiss": (b["qps"] / ref["qps"]) if b and ref else None,
            "bytes_per_vector": info.get("memory_bytes", 0) / n}
    append_result(args.out, summary, echo=False)
    _print_summary(summary)


def _best(points, label, target):
    ok = [p for p in points if p["method"] == label and p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def _print_summary(s):
    print(f"\n== {s['dataset']} (nlist {s['nlist']}, recall@{s['k']} >= {s['target_recall']}, single thread)")
    print(f"{'method':24s} {'QPS':>8s} {'x faiss':>7s} {'params':>28s} {'train s':>8s} {'add s':>8s} "
          f"{'mem MB':>8s} {'mapped MB':>9s} {'RSS MB':>8s}")
    for label, m in s["methods"].items():
        if "error" in m:
            print(f"{label:24s} {m['error']}")
            continue
        qps = f"{m['qps_at_target']:.0f}" if m["qps_at_target"] else "-"
        ratio = f"{m['ratio_to_faiss']:.2f}" if m["ratio_to_faiss"] else "-"
        rss = m.get("rss_load_bytes", m.get("rss_built_bytes", 0))
        print(f"{label:24s} {qps:>8s} {ratio:>7s} {str(m['params']):>28s} {m['train_s']:8.1f} {m['add_s']:8.1f} "
              f"{m['memory_bytes'] / 1e6:8.1f} {m['mapped_bytes'] / 1e6:9.1f} {rss / 1e6:8.1f}")


def plot(path: Path, out: Path) -> None:
    """Build seconds, bytes per vector and QPS at the target recall against N, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latest: dict[int, dict] = {}
    for rec in read_results(path):
        if rec.get("bench") == "scale-summary":
            latest[rec["nb"]] = rec
    if not latest:
        raise SystemExit(f"no scale-summary records in {path}")
    sizes = sorted(latest)
    labels = sorted({m for r in latest.values() for m in r["methods"]})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (("build_s", "build seconds (train + add)", 1.0), ("bytes_per_vector", "in-memory bytes / vector", 1.0),
              ("qps_at_target", "QPS at recall@10 >= 0.9 (1 thread)", 1.0))
    for ax, (field, title, _) in zip(axes, panels):
        for label in labels:
            xs, ys = [], []
            for n in sizes:
                m = latest[n]["methods"].get(label)
                if m and m.get(field):
                    xs.append(n)
                    ys.append(m[field])
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N vectors")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("GloVe-50d + perturbed copies (cosine): cost against N")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"[scale] wrote {out}", file=sys.stderr)


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_int_list, default=SIZES, help="comma-separated N")
    p.add_argument("--methods", type=lambda t: tuple(v for v in t.split(",") if v), default=METHODS,
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--nq", type=int, default=1000, help="queries (the first NQ GloVe query rows)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk", type=int, default=1_000_000, help="rows per add call (and per generated chunk)")
    p.add_argument("--train-per-list", type=int, default=64, help="max_train = this x nlist (capped at N)")
    # a fine grid: with doubling steps a method just below the target at one step pays twice the probes at the next
    # (1M, first run: shoal 0.899 at nprobe 32, then 64; faiss 0.904 at 32)
    p.add_argument("--nprobes", type=_int_list, default=(8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 128, 192,
                                                           256))
    p.add_argument("--reranks", type=_int_list, default=(20, 30, 40, 60, 100, 200),
                   help="IVF-PQ re-rank depths (faiss k_factor = depth / k)")
    p.add_argument("--osq-reranks", type=_int_list, default=(50, 100))
    p.add_argument("--osq-level2", type=lambda t: tuple(v for v in t.split(",") if v), default=("auto", "exact"),
                   help="OSQ level-2 modes (auto = bounds from the codes when the vectors are memory-mapped, as here; "
                        "exact = exact keys from the mapped vectors)")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--stop-recall", type=float, default=0.95, help="stop the nprobe sweep once every method has it")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per configuration (best kept)")
    p.add_argument("--build-threads", type=int, default=1,
                   help="threads for building (1: on this shared 2-core box faiss's OpenMP threads spun, 14x slower)")
    p.add_argument("--workdir", default=None, help="where the saved shoal indexes live during the run (temp dir)")
    p.add_argument("--out", default="scale", help="results name under bench/results/ or a path")
    p.add_argument("--plot-only", action="store_true")
    args = p.parse_args(argv)
    bad = set(args.methods) - set(METHODS)
    if bad:
        p.error(f"unknown methods {sorted(bad)}; valid: {', '.join(METHODS)}")
    path = results_path(args.out)
    if not args.plot_only:
        for n in args.sizes:
            run_size(args, n)
    plot(path, path.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
