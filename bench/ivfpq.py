"""IVF-PQ: shoal's ``IVF`` index (plain, balanced, balanced + tuned; with and without re-ranking) against faiss
``IndexIVFPQ`` (same nlist, M, nbits), ``IndexIVFPQ`` + ``IndexRefineFlat``, ``IndexIVFPQFastScan`` (4-bit) +
``IndexRefineFlat`` and ``IndexHNSWFlat``, all searched single-threaded in one run, timed in alternation.

On L2 data sets the plain index is also searched with precomputed residual list tables (``PQ..(precomputed)``:
the same codes, ``nlist * M * K`` more floats in memory; faiss ``IndexIVFPQ`` keeps such a table by default).

For every data set: build each method (training on the same seeded sample), then sweep ``nprobe`` (HNSW: efSearch)
and the re-rank depth; every point appends a line to ``bench/results/ivfpq.jsonl`` (recall@k, QPS, bytes/vector,
build time, codeword-usage entropy per sub-space) and a summary line per data set gives each method's best
single-thread QPS at recall@10 >= 0.9 and its ratio to faiss IVFPQ + Refine. ``python -m bench.plot
bench/results/ivfpq.jsonl --mode curve`` draws recall vs QPS.

    python -m bench.ivfpq                         # Fashion-MNIST and GloVe-50d, 2,000 queries, k=10
    python -m bench.ivfpq --dataset glove-50 --nq 2000
    python -m bench.ivfpq --quick                 # smoke run
    python -m bench.ivfpq --dataset fashion-mnist --nprobes 4,8,16 --reranks 0,40,100 --plain-only --no-hnsw
                                                  # reduced run: points around recall 0.9, plain index vs faiss
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time

import numpy as np

from .common import (append_result, bench_parser, dataset_from_args, dataset_names, measure_interleaved,
                     recall_at_k, rss_delta, thread_limit)

#: per data set: coarse lists, PQ sub-spaces (8-bit), fast-scan sub-spaces (4-bit), training sample
CONFIGS = {
    "fashion-mnist": {"nlist": 256, "M": 16, "M4": 28, "train": 30000},  # 784 = 16 * 49: 4-bit M=28 (14 B)
    "glove-50": {"nlist": 1024, "M": 10, "M4": 50, "train": 100000},
    "synthetic": {"nlist": 64, "M": 8, "M4": 16, "train": 20000},
}
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RERANKS = (0, 40, 100, 200)
EF = (16, 32, 64, 128, 256)


def _entropy_of(sub: np.ndarray, K: int) -> list[float]:
    from shoal.quantization.kmeans import usage_entropy

    return [round(float(h), 4) for h in usage_entropy(sub, K)]


def build_ours(name, spec, ds, xb, xt, tune=False):
    from shoal.index import index_factory

    idx = index_factory(ds.d, spec, metric=ds.metric)
    t0 = time.perf_counter()
    idx.train(xt, tune={"epochs": 3} if tune else None, gpu=ds.gpu)
    t_train = time.perf_counter() - t0
    idx.add(xb, np.arange(xb.shape[0], dtype=np.int64))
    build = time.perf_counter() - t0
    ent = [round(float(h), 4) for h in idx.code_entropy()]
    info = {"build_s": build, "train_s": t_train, "code_bytes": idx.pq.code_size,
            "memory_bytes": idx.memory_bytes(), "bytes_per_vector": idx.memory_bytes() / xb.shape[0],
            "entropy_bits": ent, "entropy_mean": float(np.mean(ent)), "nbits": idx.pq.nbits,
            "factory": idx.factory_string()}
    if tune and idx.tune_report is not None:
        r = idx.tune_report
        info["tune"] = {"val_recall_before": r.recall_before, "val_recall_after": r.recall_after,
                        "best_epoch": r.best_epoch}
    return idx, info


def tune_copy(idx, info, xt):
    import copy

    t0 = time.perf_counter()
    idx = copy.deepcopy(idx)
    idx._tune_on_training(xt, None, None, {"epochs": 3}, lambda m: None)
    info = dict(info)
    info["build_s"] = info["build_s"] + time.perf_counter() - t0
    r = idx.tune_report
    info["tune"] = {"val_recall_before": r.recall_before, "val_recall_after": r.recall_after,
                    "best_epoch": r.best_epoch, "tune_s": time.perf_counter() - t0}
    return idx, info


def build_faiss(kind, ds, xb, xt, c, hnsw_m=32):
    import faiss

    metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
    t0 = time.perf_counter()
    d, n = ds.d, xb.shape[0]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, metric)
        index.hnsw.efConstruction = 40
        index.add(xb)
        info = {"build_s": time.perf_counter() - t0,
                "bytes_per_vector": 4 * d + hnsw_m * 2 * 4 * 1.05, "code_bytes": 4 * d}
        return index, info
    quantizer = faiss.IndexFlatL2(d) if metric == faiss.METRIC_L2 else faiss.IndexFlatIP(d)
    if kind.startswith("ivfpq-fs"):
        base = faiss.IndexIVFPQFastScan(quantizer, d, c["nlist"], c["M4"], 4, metric)
        M, nbits = c["M4"], 4
    else:
        base = faiss.IndexIVFPQ(quantizer, d, c["nlist"], c["M"], 8, metric)
        M, nbits = c["M"], 8
    base.cp.seed = 0
    base.train(xt)
    refine = kind.endswith("refine")
    # IndexRefineFlat must wrap the trained, still empty base: its add fills both (the wrapper keeps base alive)
    index = faiss.IndexRefineFlat(base) if refine else base
    index.add(xb)
    code = M * nbits // 8
    per_vec = code + 8 + (4 * d if refine else 0)
    info = {"build_s": time.perf_counter() - t0, "code_bytes": code,
            "bytes_per_vector": per_vec + c["nlist"] * d * 4 / n, "nbits": nbits}
    if kind == "ivfpq":
        # codeword usage of faiss's codes: sa_encode gives the list number then the PQ code bytes
        sa = base.sa_encode(xb[: min(n, 100000)])
        info["entropy_bits"] = _entropy_of(sa[:, -M:], 256)
        info["entropy_mean"] = float(np.mean(info["entropy_bits"]))
    return index, info


def faiss_search(index, kind, nprobe=None, k_factor=None, ef=None):
    import faiss

    if kind == "hnsw":
        def run(q, k):
            index.hnsw.efSearch = ef
            return index.search(q, k)
        return run
    ivf = faiss.extract_index_ivf(index)

    def run(q, k):
        ivf.nprobe = nprobe
        if k_factor is not None:
            index.k_factor = k_factor
        return index.search(q, k)
    return run


def run_dataset(args, name):
    import faiss

    ds = dataset_from_args(args, name)
    xb, xq = ds.get_database(), ds.get_queries()
    k = args.k
    gt = ds.get_groundtruth(k)
    c = dict(CONFIGS["synthetic" if name.startswith("synthetic") else name])
    if args.quick:
        c["nlist"] = min(c["nlist"], 64)
    rng = np.random.default_rng(0)
    nt = min(c["train"], xb.shape[0])
    xt = np.ascontiguousarray(xb[np.sort(rng.choice(xb.shape[0], nt, replace=False))])
    print(f"[ivfpq] {ds.key}: nb={xb.shape[0]} nq={xq.shape[0]} d={ds.d} train={nt} {c}", file=sys.stderr)
    nlist, M, M4 = c["nlist"], c["M"], c["M4"]
    ours_specs = {
        "shoal-ivfpq": (f"IVF{nlist},PQ{M}x8,Refine", False),
        "shoal-balanced": (f"IVF{nlist}(balanced),PQ{M}x8(balanced),Refine", False),
        "shoal-balanced-tuned": (f"IVF{nlist}(balanced),PQ{M}x8(balanced),Refine", True),
    }
    if args.plain_only:
        del ours_specs["shoal-balanced"], ours_specs["shoal-balanced-tuned"]
    faiss_kinds = ("ivfpq", "ivfpq-refine", "ivfpq-fs-refine") + (() if args.no_hnsw else ("hnsw",))
    methods, infos = {}, {}
    build_threads = args.build_threads
    with thread_limit(build_threads):
        for label, (spec, tune) in ours_specs.items():
            print(f"[ivfpq] building {label}: {spec}", file=sys.stderr)
            if tune and "shoal-balanced" in methods:
                # training is seeded, so tuning a copy of the balanced index equals train(xt, tune=...) from scratch
                methods[label], infos[label] = tune_copy(methods["shoal-balanced"], infos["shoal-balanced"], xt)
            else:
                methods[label], infos[label] = build_ours(label, spec, ds, xb, xt, tune)
            print(f"[ivfpq]   {infos[label]}", file=sys.stderr)
        if ds.metric == "l2":
            # the same trained index with precomputed residual list tables (a shallow copy shares codes and vectors)
            pre = copy.copy(methods["shoal-ivfpq"])
            t0 = time.perf_counter()
            pre.set_precomputed(True)
            info = dict(infos["shoal-ivfpq"], factory=pre.factory_string(), memory_bytes=pre.memory_bytes(),
                        bytes_per_vector=pre.memory_bytes() / xb.shape[0], table_bytes=pre.list_table().nbytes)
            info["build_s"] += time.perf_counter() - t0
            methods["shoal-ivfpq-precomputed"], infos["shoal-ivfpq-precomputed"] = pre, info
            ours_specs["shoal-ivfpq-precomputed"] = (info["factory"], False)
        for kind in faiss_kinds:
            print(f"[ivfpq] building faiss {kind}", file=sys.stderr)
            methods["faiss-" + kind], infos["faiss-" + kind] = build_faiss(kind, ds, xb, xt, c)
            print(f"[ivfpq]   {infos['faiss-' + kind]}", file=sys.stderr)

    # memory of a loaded index with memory-mapped re-ranking vectors (balanced)
    mem = {}
    with tempfile.TemporaryDirectory() as tmp:
        from shoal.storage import LocalStore
        from shoal.index import load_index

        store = LocalStore(tmp)
        ref = methods.get("shoal-balanced", methods["shoal-ivfpq"])
        ref.save(store, "ix")
        with rss_delta() as m:
            loaded = load_index(store, "ix", mmap=True)
        core = loaded.codes.nbytes + loaded.row_ids.nbytes + loaded.coarse.nbytes + loaded.pq.nbytes()
        mem = {"method": "shoal-balanced" if "shoal-balanced" in methods else "shoal-ivfpq",
               "memory_bytes": loaded.memory_bytes(), "mapped_bytes": loaded.mapped_bytes(),
               "rss_delta_bytes": m["bytes"], "codes_ids_centroids_bytes": core,
               "ratio_memory_to_core": loaded.memory_bytes() / core, "ratio_rss_to_core": m["bytes"] / core}
        if loaded.residual and loaded.metric == "l2":
            loaded.set_precomputed(True)  # what the loaded index would hold with PQ..(precomputed)
            mem["memory_bytes_precomputed"] = loaded.memory_bytes()
            mem["ratio_memory_precomputed_to_core"] = loaded.memory_bytes() / core
            loaded.set_precomputed(False)
        mem.update(_rss_in_child(tmp, xq[:200], k))
        D1, I1 = ref.search(xq[:200], k, params={"nprobe": 8, "rerank": 40})
        D2, I2 = loaded.search(xq[:200], k, params={"nprobe": 8, "rerank": 40})
        mem["identical_after_load"] = bool(np.array_equal(I1, I2) and np.array_equal(D1, D2))
        del loaded
    print(f"[ivfpq] loaded-index memory: {mem}", file=sys.stderr)

    points = []

    def record(label, params, timing):
        D_, I_ = timing.result
        rec = {"bench": "ivfpq", "dataset": ds.key, "dataset_name": name, "method": label, "threads": 1, "k": k,
               "nq": int(xq.shape[0]), "nb": int(xb.shape[0]), "params": params, "qps": timing.qps,
               "recall": recall_at_k(I_, gt, k), **{kk: v for kk, v in infos[label].items()}}
        points.append(rec)
        append_result(args.out, rec, echo=False)

    for nprobe in args.nprobes:
        if nprobe > nlist // 2:
            continue
        searches, labels = {}, {}
        for label in ours_specs:
            for rr in args.reranks:
                key = f"{label}|{rr}"
                idx = methods[label]
                searches[key] = (lambda idx, p: (lambda q: idx.search(q, k, params=p)))(
                    idx, {"nprobe": nprobe, "rerank": rr})
                labels[key] = (label, {"nprobe": nprobe, "rerank": rr})
        searches["faiss-ivfpq"] = (lambda f: (lambda q: f(q, k)))(faiss_search(methods["faiss-ivfpq"], "ivf", nprobe))
        labels["faiss-ivfpq"] = ("faiss-ivfpq", {"nprobe": nprobe, "rerank": 0})
        for kind in ("ivfpq-refine", "ivfpq-fs-refine"):
            for kf in sorted({max(1, rr // k) for rr in args.reranks if rr} or {4}):
                key = f"faiss-{kind}|{kf}"
                f = faiss_search(methods["faiss-" + kind], "ivf", nprobe, k_factor=kf)
                searches[key] = (lambda f: (lambda q: f(q, k)))(f)
                labels[key] = ("faiss-" + kind, {"nprobe": nprobe, "rerank": kf * k})
        timings = measure_interleaved(searches, xq, threads=1, rounds=args.rounds)
        for key, t in timings.items():
            label, params = labels[key]
            record(label, params, t)
        best = max((p for p in points if p["params"].get("nprobe") == nprobe), key=lambda p: p["recall"])
        print(f"[ivfpq] nprobe={nprobe}: best recall {best['recall']:.3f} ({best['method']})", file=sys.stderr)
    if "faiss-hnsw" in methods:
        hn = {f"ef{ef}": (lambda f: (lambda q: f(q, k)))(faiss_search(methods["faiss-hnsw"], "hnsw", ef=ef))
              for ef in EF}
        for key, t in measure_interleaved(hn, xq, threads=1, rounds=args.rounds).items():
            record("faiss-hnsw", {"efSearch": int(key[2:])}, t)

    # summary: best single-thread QPS at recall@k >= target, ratios to faiss IVFPQ + Refine
    target = args.target
    best = {}
    for p in points:
        if p["recall"] >= target and (p["method"] not in best or p["qps"] > best[p["method"]]["qps"]):
            best[p["method"]] = p
    ref_qps = best.get("faiss-ivfpq-refine", {}).get("qps")
    summary = {"bench": "ivfpq-summary", "dataset": ds.key, "dataset_name": name, "k": k, "target_recall": target,
               "nq": int(xq.shape[0]), "loaded_memory": mem, "methods": {}}
    for label in infos:
        b = best.get(label)
        summary["methods"][label] = {
            "qps_at_target": b["qps"] if b else None, "params": b["params"] if b else None,
            "recall": b["recall"] if b else None,
            "ratio_to_faiss_ivfpq_refine": (b["qps"] / ref_qps) if b and ref_qps else None,
            "max_recall": max((p["recall"] for p in points if p["method"] == label), default=None),
            **{kk: infos[label].get(kk) for kk in ("code_bytes", "bytes_per_vector", "build_s", "entropy_mean",
                                                   "tune")}}
    # codes alone (no re-rank) at equal nprobe: ours vs faiss IndexIVFPQ
    codes_only = {}
    for nprobe in args.nprobes:
        row = {p["method"]: p["recall"] for p in points
               if p["params"].get("nprobe") == nprobe and p["params"].get("rerank") == 0}
        if row:
            codes_only[nprobe] = row
    summary["codes_only_recall"] = codes_only
    append_result(args.out, summary, echo=False)
    _print_summary(summary)
    return summary


_CHILD = """
import sys, json, numpy as np
from bench.common import rss_bytes
from shoal.storage import LocalStore
from shoal.index import load_index
import shoal.quantization._ivf_kernels  # compiled code and libraries loaded before measuring
q = np.load(sys.argv[2]); k = int(sys.argv[3])
before = rss_bytes()
ix = load_index(LocalStore(sys.argv[1]), "ix", mmap=True)
after_load = rss_bytes()
ix.search(q, k, params={"nprobe": 8, "rerank": 40})
after_search = rss_bytes()
print(json.dumps({"child_rss_load_bytes": after_load - before, "child_rss_after_search_bytes": after_search - before}))
"""


def _rss_in_child(tmp, q, k) -> dict:
    """RSS growth of a fresh process that loads the saved index with mmap=True (and then searches 200 queries):
    a cleaner figure than an in-process delta, where freed heap pages are reused. The after-search figure also holds
    the first call's loading of the compiled kernels and the re-ranked vector pages the search touched."""
    import json
    import subprocess

    qpath = os.path.join(tmp, "q.npy")
    np.save(qpath, q)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run([sys.executable, "-c", _CHILD, tmp, qpath, str(k)], capture_output=True, text=True,
                             timeout=300, env=env, cwd=env["PYTHONPATH"])
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError) as exc:
        return {"child_rss_error": str(exc)}


def _print_summary(s):
    print(f"\n== {s['dataset']} (recall@{s['k']} >= {s['target_recall']}, single thread, nq={s['nq']})")
    print(f"{'method':24s} {'QPS':>9s} {'x faiss+R':>9s} {'params':>28s} {'B/vec':>8s} {'code B':>6s} "
          f"{'build s':>8s} {'H bits':>6s}")
    for label, m in s["methods"].items():
        qps = f"{m['qps_at_target']:.0f}" if m["qps_at_target"] else "-"
        ratio = f"{m['ratio_to_faiss_ivfpq_refine']:.2f}" if m["ratio_to_faiss_ivfpq_refine"] else "-"
        ent = f"{m['entropy_mean']:.2f}" if m.get("entropy_mean") else "-"
        print(f"{label:24s} {qps:>9s} {ratio:>9s} {str(m['params']):>28s} {m['bytes_per_vector']:8.1f} "
              f"{m['code_bytes']:6d} {m['build_s']:8.1f} {ent:>6s}")
    print("codes-only recall (rerank 0) by nprobe:")
    for nprobe, row in s["codes_only_recall"].items():
        print(f"  nprobe={nprobe}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    print(f"loaded index (mmap): {s['loaded_memory']}")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv=None) -> int:
    p = bench_parser("IVF-PQ: shoal vs faiss IVFPQ / fast-scan / refine / HNSW", default_nq=2000, name="ivfpq")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per configuration (best kept)")
    p.add_argument("--target", type=float, default=0.9, help="recall@k at which QPS is compared")
    p.add_argument("--build-threads", type=int, default=1,
                   help="threads for building (default 1: on a shared machine OpenMP spinning makes more slower)")
    p.add_argument("--nprobes", type=_int_list, default=NPROBES, help="comma-separated nprobe values to sweep")
    p.add_argument("--reranks", type=_int_list, default=RERANKS,
                   help="comma-separated shoal re-rank depths (faiss k_factor: each non-zero depth / k)")
    p.add_argument("--plain-only", action="store_true", help="skip the balanced and tuned shoal indexes")
    p.add_argument("--no-hnsw", action="store_true", help="skip faiss HNSW")
    args = p.parse_args(argv)
    try:
        import faiss  # noqa: F401
    except ImportError:
        print("bench.ivfpq needs faiss-cpu (pip install faiss-cpu)", file=sys.stderr)
        return 2
    for name in dataset_names(args):
        run_dataset(args, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
