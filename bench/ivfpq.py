"""IVF-PQ: shoal's ``IVF`` index against faiss, all searched single-threaded in one run, timed in alternation.

Two suites (``--suite``, default both):

* ``8bit``: shoal ``IVF{nlist},PQ{M}x8,Refine`` (plain, balanced, balanced + tuned; on L2 data also with
  precomputed residual list tables) vs faiss ``IndexIVFPQ`` (same nlist, M, 8 bits) and ``IndexIVFPQ`` +
  ``IndexRefineFlat``;
* ``4bit``: shoal ``IVF{nlist},PQ{M4}x4,Refine``, which takes the fast-scan path (plain, balanced, balanced + tuned)
  vs faiss ``IndexIVFPQFastScan`` (same nlist, M4, 4 bits) alone (codes only, equal bytes) and + ``IndexRefineFlat``;

plus faiss ``IndexHNSWFlat`` unless ``--no-hnsw``.

For every data set: build each method (training on the same seeded sample), then sweep ``nprobe`` (HNSW: efSearch)
and the re-rank depth (faiss: ``k_factor`` = depth / k); every point appends a line to ``bench/results/ivfpq.jsonl``
(recall@k, QPS, bytes/vector, build time, codeword-usage entropy per sub-space) and a summary line per data set gives
each method's best single-thread QPS at recall@10 >= 0.9 and its ratios to faiss IVFPQ + Refine and to faiss
IVFPQFastScan + Refine. ``python -m bench.plot bench/results/ivfpq.jsonl --mode curve`` draws recall vs QPS.

    python -m bench.ivfpq                         # Fashion-MNIST and GloVe-50d, 2,000 queries, k=10, both suites
    python -m bench.ivfpq --dataset glove-50 --suite 4bit --plain-only --no-hnsw
                                                  # the fast-scan target: shoal 4-bit vs faiss fast scan + Refine
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
#: 4-bit codes rank less sharply: deeper re-ranking reaches recall 0.9 (faiss fast scan on Fashion-MNIST: 0.78 at 100)
FS_RERANKS = (0, 20, 40, 100, 200, 400)
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


SUITES = ("8bit", "4bit")


def _our_specs(suite, c, plain_only):
    """{label: (factory string, tune)} of the shoal indexes of one suite (``c``: the data set's CONFIGS entry)."""
    nlist = c["nlist"]
    if suite == "8bit":
        M, nb = c["M"], 8
        labels = ("shoal-ivfpq", "shoal-balanced", "shoal-balanced-tuned")
    else:
        M, nb = c["M4"], 4
        labels = ("shoal-fs", "shoal-fs-balanced", "shoal-fs-balanced-tuned")
    specs = {labels[0]: (f"IVF{nlist},PQ{M}x{nb},Refine", False),
             labels[1]: (f"IVF{nlist}(balanced),PQ{M}x{nb}(balanced),Refine", False),
             labels[2]: (f"IVF{nlist}(balanced),PQ{M}x{nb}(balanced),Refine", True)}
    return dict(list(specs.items())[:1]) if plain_only else specs


#: per suite: faiss kinds built, the faiss reference of the summary ratios, and its codes-only counterpart
FAISS_KINDS = {"8bit": ("ivfpq", "ivfpq-refine"), "4bit": ("ivfpq-fs", "ivfpq-fs-refine")}
REFERENCE = {"8bit": "faiss-ivfpq-refine", "4bit": "faiss-ivfpq-fs-refine"}


def run_dataset(args, name):
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
    suites = SUITES if args.suite == "all" else (args.suite,)
    print(f"[ivfpq] {ds.key}: nb={xb.shape[0]} nq={xq.shape[0]} d={ds.d} train={nt} {c} suites={suites}",
          file=sys.stderr)
    nlist = c["nlist"]
    ours_specs = {}
    for suite in suites:
        ours_specs.update({label: (spec, tune, suite) for label, (spec, tune) in
                           _our_specs(suite, c, args.plain_only).items()})
    faiss_kinds = tuple(kd for suite in suites for kd in FAISS_KINDS[suite]) + (() if args.no_hnsw else ("hnsw",))
    methods, infos, suite_of = {}, {}, {}
    with thread_limit(args.build_threads):
        for label, (spec, tune, suite) in ours_specs.items():
            print(f"[ivfpq] building {label}: {spec}", file=sys.stderr)
            untuned = label.replace("-tuned", "")
            if tune and untuned in methods:
                # training is seeded, so tuning a copy of the balanced index equals train(xt, tune=...) from scratch
                methods[label], infos[label] = tune_copy(methods[untuned], infos[untuned], xt)
            else:
                methods[label], infos[label] = build_ours(label, spec, ds, xb, xt, tune)
            suite_of[label] = suite
            print(f"[ivfpq]   {infos[label]}", file=sys.stderr)
        if ds.metric == "l2" and "shoal-ivfpq" in methods:
            # the same trained index with precomputed residual list tables (a shallow copy shares codes and vectors)
            pre = copy.copy(methods["shoal-ivfpq"])
            t0 = time.perf_counter()
            pre.set_precomputed(True)
            info = dict(infos["shoal-ivfpq"], factory=pre.factory_string(), memory_bytes=pre.memory_bytes(),
                        bytes_per_vector=pre.memory_bytes() / xb.shape[0], table_bytes=pre.list_table().nbytes)
            info["build_s"] += time.perf_counter() - t0
            methods["shoal-ivfpq-precomputed"], infos["shoal-ivfpq-precomputed"] = pre, info
            ours_specs["shoal-ivfpq-precomputed"] = (info["factory"], False, "8bit")
            suite_of["shoal-ivfpq-precomputed"] = "8bit"
        for kind in faiss_kinds:
            print(f"[ivfpq] building faiss {kind}", file=sys.stderr)
            methods["faiss-" + kind], infos["faiss-" + kind] = build_faiss(kind, ds, xb, xt, c)
            suite_of["faiss-" + kind] = "4bit" if "-fs" in kind else ("8bit" if kind != "hnsw" else "-")
            print(f"[ivfpq]   {infos['faiss-' + kind]}", file=sys.stderr)

    # memory of each suite's first index loaded with memory-mapped re-ranking vectors
    mem = {}
    for suite in suites:
        label = next(lb for lb, v in ours_specs.items() if v[2] == suite)
        mem[label] = _loaded_memory(methods[label], xq, k)
        print(f"[ivfpq] loaded-index memory {label}: {mem[label]}", file=sys.stderr)

    points = []

    def record(label, params, timing):
        D_, I_ = timing.result
        rec = {"bench": "ivfpq", "dataset": ds.key, "dataset_name": name, "method": label, "threads": 1, "k": k,
               "nq": int(xq.shape[0]), "nb": int(xb.shape[0]), "params": params, "qps": timing.qps,
               "recall": recall_at_k(I_, gt, k), "suite": suite_of[label],
               **{kk: v for kk, v in infos[label].items()}}
        points.append(rec)
        append_result(args.out, rec, echo=False)

    for nprobe in args.nprobes:
        if nprobe > nlist // 2:
            continue
        searches, labels = {}, {}
        for label, (_, _, suite) in ours_specs.items():
            for rr in (args.reranks if suite == "8bit" else args.fs_reranks):
                key = f"{label}|{rr}"
                idx = methods[label]
                searches[key] = (lambda idx, p: (lambda q: idx.search(q, k, params=p)))(
                    idx, {"nprobe": nprobe, "rerank": rr})
                labels[key] = (label, {"nprobe": nprobe, "rerank": rr})
        for kind in faiss_kinds:
            if kind == "hnsw":
                continue
            reranks = args.reranks if "-fs" not in kind else args.fs_reranks
            kfs = sorted({max(1, rr // k) for rr in reranks if rr} or {4}) if kind.endswith("refine") else [None]
            for kf in kfs:
                key = f"faiss-{kind}|{kf}"
                f = faiss_search(methods["faiss-" + kind], "ivf", nprobe, k_factor=kf)
                searches[key] = (lambda f: (lambda q: f(q, k)))(f)
                labels[key] = ("faiss-" + kind, {"nprobe": nprobe, "rerank": kf * k if kf else 0})
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

    # summary: best single-thread QPS at recall@k >= target; ratios to faiss IVFPQ + Refine (8-bit suite) and
    # to faiss IVFPQFastScan + Refine (4-bit suite)
    target = args.target
    best = {}
    for p in points:
        if p["recall"] >= target and (p["method"] not in best or p["qps"] > best[p["method"]]["qps"]):
            best[p["method"]] = p
    refs = {suite: best.get(REFERENCE[suite], {}).get("qps") for suite in SUITES}
    summary = {"bench": "ivfpq-summary", "dataset": ds.key, "dataset_name": name, "k": k, "target_recall": target,
               "nq": int(xq.shape[0]), "suites": list(suites), "loaded_memory": mem, "methods": {}}
    for label in infos:
        b = best.get(label)
        row = {"qps_at_target": b["qps"] if b else None, "params": b["params"] if b else None,
               "recall": b["recall"] if b else None, "suite": suite_of[label],
               "max_recall": max((p["recall"] for p in points if p["method"] == label), default=None),
               **{kk: infos[label].get(kk) for kk in ("code_bytes", "bytes_per_vector", "build_s", "entropy_mean",
                                                      "tune")}}
        for suite in SUITES:
            ref = refs[suite]
            row[f"ratio_to_{REFERENCE[suite].replace('-', '_')}"] = (b["qps"] / ref) if b and ref else None
        summary["methods"][label] = row
    # codes alone (no re-rank) at equal nprobe and bytes: ours vs faiss IndexIVFPQ / IndexIVFPQFastScan
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


def _loaded_memory(ref, xq, k) -> dict:
    """Save ``ref``, load it with memory-mapped re-ranking vectors: memory, RSS (here and in a fresh process), and
    whether searches are bit-identical after the round trip."""
    from shoal.index import load_index
    from shoal.storage import LocalStore

    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(tmp)
        ref.save(store, "ix")
        with rss_delta() as m:
            loaded = load_index(store, "ix", mmap=True)
        core = loaded.codes_nbytes() + loaded.row_ids.nbytes + loaded.coarse.nbytes + loaded.pq.nbytes()
        mem = {"memory_bytes": loaded.memory_bytes(), "mapped_bytes": loaded.mapped_bytes(),
               "rss_delta_bytes": m["bytes"], "codes_ids_centroids_bytes": core,
               "ratio_memory_to_core": loaded.memory_bytes() / core, "ratio_rss_to_core": m["bytes"] / core}
        if loaded.residual and loaded.metric == "l2":
            loaded.set_precomputed(True)  # what the loaded index would hold with PQ..(precomputed)
            mem["memory_bytes_precomputed"] = loaded.memory_bytes()
            mem["ratio_memory_precomputed_to_core"] = loaded.memory_bytes() / core
            loaded.set_precomputed(False)
        mem.update(_rss_in_child(tmp, xq[:200], k))
        same = True
        for params in ({"nprobe": 8, "rerank": 40}, {"nprobe": 8, "rerank": 0}):
            D1, I1 = ref.search(xq[:200], k, params=params)
            D2, I2 = loaded.search(xq[:200], k, params=params)
            same &= bool(np.array_equal(I1, I2) and np.array_equal(D1, D2))
        mem["identical_after_load"] = same
        del loaded
    return mem


_CHILD = """
import sys, json, numpy as np
from bench.common import rss_bytes
from shoal.storage import LocalStore
from shoal.index import load_index
import shoal.quantization._ivf_kernels, shoal.quantization._fastscan_kernels  # compiled before measuring
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
    print(f"{'method':26s} {'QPS':>9s} {'x faiss+R':>9s} {'x fs+R':>7s} {'params':>28s} {'B/vec':>8s} "
          f"{'code B':>6s} {'build s':>8s} {'H bits':>6s}")
    for label, m in s["methods"].items():
        qps = f"{m['qps_at_target']:.0f}" if m["qps_at_target"] else "-"
        r8 = m.get("ratio_to_faiss_ivfpq_refine")
        r4 = m.get("ratio_to_faiss_ivfpq_fs_refine")
        ent = f"{m['entropy_mean']:.2f}" if m.get("entropy_mean") else "-"
        print(f"{label:26s} {qps:>9s} {f'{r8:.2f}' if r8 else '-':>9s} {f'{r4:.2f}' if r4 else '-':>7s} "
              f"{str(m['params']):>28s} {m['bytes_per_vector']:8.1f} {m['code_bytes']:6d} {m['build_s']:8.1f} "
              f"{ent:>6s}")
    print("codes-only recall (rerank 0) by nprobe:")
    for nprobe, row in s["codes_only_recall"].items():
        print(f"  nprobe={nprobe}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items()))
    for label, mem in s["loaded_memory"].items():
        print(f"loaded index {label} (mmap): {mem}")


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
    p.add_argument("--fs-reranks", type=_int_list, default=FS_RERANKS,
                   help="re-rank depths of the 4-bit (fast-scan) suite, ours and faiss's (k_factor = depth / k)")
    p.add_argument("--suite", choices=("all",) + SUITES, default="all",
                   help="8bit: PQ x8 vs faiss IVFPQ (+Refine); 4bit: PQ x4 fast scan vs faiss IVFPQFastScan (+Refine)")
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
