"""Engine overhead: ``Collection.search`` against the index call it wraps, with the same params, interleaved.

    python -m bench.engine                                   # GloVe-50d, 100,000 words in frequency order
    python -m bench.engine --dataset synthetic:n=50000,d=50 --nq 500

One collection per kind is built through the engine the way users feed it: ``upsert`` in batches of 10,000 in the
data's stored order (GloVe's is word frequency), then ``build()``. Each kind is searched with a constraint it handles
in its own way, and the index side gets the same constraint in the index's own terms:

* ``Flat`` and ``IVF-PQ`` (``IVF256,PQ{d/2}x8,Refine``: 2 dimensions per byte): no constraint;
* ``Curator``: one tenant per query (tenants have Zipf sizes; about 1.5 tenants per vector), native tenant id;
* ``OSQ`` (``OSQ(partitions=8)``): a range filter on a uniform attribute at 10% and 50%, the parsed filter.

Params are the collection's defaults on both sides (``params=None``), so the two calls do the same index work.
Single queries: each query runs through both paths back to back (order alternating), and the medians of the per-query
latencies are compared. Batches of 200: both paths alternate batch by batch, best of ``--rounds`` each. Everything
runs single-threaded (BLAS, faiss, numba). The ratio ``collection / index`` is the engine's cost; targets: <= 1.3x
single, <= 1.1x batched.

Memory first (``--memory-only``: just that): each kind's index as the collection serves it after the build, resident
bytes and memory-mapped bytes per vector (``collection.stats()``), beside faiss IVFFlat's bytes per vector built in the
same run (target for OSQ: resident <= 1.2x IVFFlat's).

Results: ``bench/results/engine.jsonl``; plot: ``bench/results/engine.png``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from .common import append_result, bench_parser, dataset_from_args, results_path, thread_limit

KINDS = {
    "Flat": "Flat",
    "IVF-PQ": "IVF256,PQ{m}x8,Refine",
    "Curator": "Curator(branch=16,leaf=128)",
    "OSQ": "OSQ(partitions=8)",
}


def spec_for(kind: str, d: int) -> str:
    """The factory string of ``kind`` for dimension ``d`` (IVF-PQ: one byte per two dimensions)."""
    return KINDS[kind].format(m=d // 2 if d % 2 == 0 else d)
BATCH = 200


def zipf_tenants(n: int, ntenants: int, seed: int = 0) -> list[list[str]]:
    """One tenant per vector with Zipf-distributed sizes, plus a second one for about half of them."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, ntenants + 1)
    w /= w.sum()
    first = rng.choice(ntenants, size=n, p=w)
    second = rng.choice(ntenants, size=n, p=w)
    extra = rng.random(n) < 0.5
    return [[f"t{a}"] + ([f"t{b}"] if e and b != a else []) for a, b, e in zip(first, second, extra)]


def build_collection(db, name: str, spec: str, xb: np.ndarray, metric: str, price: np.ndarray,
                     tenants: list[list[str]] | None, batch: int = 10_000):
    col = db.create_collection(name, dim=xb.shape[1], metric=metric, schema={"price": "float"}, index=spec,
                               multi_tenant=tenants is not None)
    col.auto_build = False
    for lo in range(0, xb.shape[0], batch):
        hi = min(xb.shape[0], lo + batch)
        col.upsert(np.arange(lo, hi), xb[lo:hi], attrs={"price": price[lo:hi]},
                   tenants=None if tenants is None else tenants[lo:hi])
    t0 = time.perf_counter()
    col.build()
    return col, time.perf_counter() - t0


def cases(col, kind: str, nq: int, rng: np.random.Generator):
    """``(label, collection kwargs per query, index kwargs per query)`` of one kind."""
    from shoal import filters

    if kind == "Curator":
        names = col.list_tenants()
        sizes = np.array([col.count(tenant=t) for t in names])
        # queries pick tenants in proportion to their size (a query comes from a user of that tenant)
        picks = rng.choice(len(names), size=nq, p=sizes / sizes.sum())
        ckw = [{"tenant": names[i]} for i in picks]
        ikw = [{"tenant": col.tenants.ids[names[i]]} for i in picks]
        yield "tenant", ckw, ikw
    elif kind == "OSQ":
        for sel in (0.1, 0.5):
            text = f"price < {sel}"
            expr = filters.compile(text, schema={"price": "float"})
            yield f"filter {int(sel * 100)}%", [{"filter": text}] * nq, [{"filter": expr}] * nq
    else:
        yield "none", [{}] * nq, [{}] * nq


def time_single(col, index, xq: np.ndarray, ckw: list[dict], ikw: list[dict]) -> tuple[float, float]:
    """Median per-query latency (seconds) of the collection and index paths, alternating which goes first."""
    tc, ti = [], []
    for i in range(xq.shape[0]):
        q = xq[i:i + 1]
        order = ((col, ckw[i], tc), (index, ikw[i], ti))
        for target, kw, out in (order if i % 2 else order[::-1]):
            t0 = time.perf_counter()
            target.search(q, 10, **kw)
            out.append(time.perf_counter() - t0)
    return float(np.median(tc)), float(np.median(ti))


def time_batches(col, index, xq: np.ndarray, ckw: list[dict], ikw: list[dict], rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` seconds for all queries in batches of :data:`BATCH` (one constraint per batch); the two
    paths alternate batch by batch, each going first every other time (the second one finds the batch in cache)."""
    best_c = best_i = np.inf
    for r in range(rounds):
        tc = ti = 0.0
        for j, s in enumerate(range(0, xq.shape[0], BATCH)):
            q = xq[s:s + BATCH]
            for through_collection in ((True, False) if (j + r) % 2 else (False, True)):
                t0 = time.perf_counter()
                if through_collection:
                    col.search(q, 10, **ckw[s])
                    tc += time.perf_counter() - t0
                else:
                    index.search(q, 10, **ikw[s])
                    ti += time.perf_counter() - t0
        best_c, best_i = min(best_c, tc), min(best_i, ti)
    return best_c, best_i


def each_collection(xb: np.ndarray, metric: str, kinds: list[str], price: np.ndarray, tenants: list[list[str]]):
    """Yield ``(kind, spec, collection, build seconds)`` for each kind, built by :func:`build_collection` in a
    temporary database (``tenants`` for Curator only); each collection is closed once the caller moves on."""
    from shoal.engine import Database

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(tmp)
        try:
            for kind in kinds:
                spec = spec_for(kind, xb.shape[1])
                col, build_s = build_collection(db, kind.replace("-", ""), spec, xb, metric, price,
                                                tenants if kind == "Curator" else None)
                try:
                    yield kind, spec, col, build_s
                finally:
                    col.close()
        finally:
            db.close()


def measure(ds, kinds: list[str], nq: int, rounds: int, out: str | None, ntenants: int = 100) -> list[dict]:
    """Build each kind through a collection and time both paths; returns (and appends) one record per case."""
    xb, xq = ds.get_database(), ds.get_queries()[:nq]
    n = xb.shape[0]
    rng = np.random.default_rng(7)
    price = rng.random(n)
    tenants = zipf_tenants(n, ntenants)
    records = []
    with thread_limit(1):
        for kind, spec, col, build_s in each_collection(xb, ds.metric, kinds, price, tenants):
            index = col._view.index
            for label, ckw, ikw in cases(col, kind, nq, rng):
                for i in range(min(20, nq)):  # warm-up: compiled kernels, caches
                    col.search(xq[i:i + 1], 10, **ckw[i])
                    index.search(xq[i:i + 1], 10, **ikw[i])
                sc, si = time_single(col, index, xq, ckw, ikw)
                bc, bi = time_batches(col, index, xq, ckw, ikw, rounds)
                rec = {"dataset": ds.key, "kind": kind, "index": spec, "case": label, "nb": n, "nq": nq,
                       "single_collection_us": sc * 1e6, "single_index_us": si * 1e6, "single_ratio": sc / si,
                       "batch_collection_qps": nq / bc, "batch_index_qps": nq / bi, "batch_ratio": bc / bi,
                       "plan": col.search(xq[:1], 10, **ckw[0]).stats.plan, "build_s": build_s}
                records.append(rec)
                if out:
                    append_result(out, rec)
    return records


def memory(ds, kinds: list[str], out: str | None, ntenants: int = 100) -> list[dict]:
    """Resident and memory-mapped bytes per vector of each kind's index as a collection serves it after its build
    (``collection.stats()``: the snapshot's arrays opened with ``mmap_index=True``, the default), beside faiss
    IVFFlat (``nlist = 4 sqrt(n)``, serialized: vectors, ids and centroids, all in memory) built in the same run.
    One record per kind with ``case="memory"``; returns them (and appends them to ``out``)."""
    import faiss

    xb = ds.get_database()
    n, d = xb.shape
    price = np.random.default_rng(7).random(n)
    tenants = zipf_tenants(n, ntenants)
    with thread_limit(1):
        nlist = int(4 * np.sqrt(n))
        quant = faiss.IndexFlatIP(d) if ds.metric != "l2" else faiss.IndexFlatL2(d)
        ivf = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        ivf.train(xb)
        ivf.add(xb)
        ivf_bpv = faiss.serialize_index(ivf).nbytes / n
        del ivf, quant
        records = []
        for kind, spec, col, _ in each_collection(xb, ds.metric, kinds, price, tenants):
            mb = col.stats()["memory_bytes"]
            rec = {"dataset": ds.key, "kind": kind, "index": spec, "case": "memory", "nb": n,
                   "resident_bytes_per_vector": mb["index"] / n, "mapped_bytes_per_vector": mb["index_mapped"] / n,
                   "ivfflat_bytes_per_vector": ivf_bpv, "ivfflat_nlist": nlist,
                   "resident_vs_ivfflat": mb["index"] / n / ivf_bpv,
                   "with_mapped_vs_ivfflat": (mb["index"] + mb["index_mapped"]) / n / ivf_bpv}
            records.append(rec)
            if out:
                append_result(out, rec)
    return records


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['kind']}\n{r['case']}" for r in records]
    xs = np.arange(len(records))
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(records)), 4))
    ax.bar(xs - 0.2, [r["single_ratio"] for r in records], 0.4, label="single query (median latency)")
    ax.bar(xs + 0.2, [r["batch_ratio"] for r in records], 0.4, label=f"batches of {BATCH}")
    for y, style in ((1.3, "--"), (1.1, ":")):
        ax.axhline(y, color="grey", linestyle=style, linewidth=1)
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("Collection.search / index.search")
    ax.set_title(f"engine overhead ({records[0]['dataset']}, 1 thread)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = bench_parser(__doc__.split("\n")[0], datasets=("glove-50",), default_nq=1000, name="engine")
    p.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ", ".join(KINDS))
    p.add_argument("--rounds", type=int, default=5, help="batch-mode rounds (best kept)")
    p.add_argument("--tenants", type=int, default=100, help="tenants (Zipf sizes) of the Curator collection")
    p.add_argument("--memory-only", action="store_true",
                   help="only the memory records: each kind's resident and mapped bytes per vector as a collection "
                        "serves it, beside faiss IVFFlat's in the same run")
    args = p.parse_args(argv)
    if args.nb is None and not args.quick and args.dataset in (None, ["glove-50"]):
        args.nb = 100_000
    ds = dataset_from_args(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kind(s) {unknown}; valid: {', '.join(KINDS)}")
    for r in memory(ds, kinds, args.out, args.tenants):
        print(f"{r['kind']:8s} memory: {r['resident_bytes_per_vector']:6.1f} B/vector resident"
              f" + {r['mapped_bytes_per_vector']:6.1f} mapped; faiss IVFFlat {r['ivfflat_bytes_per_vector']:.1f}:"
              f" {r['resident_vs_ivfflat']:.2f}x resident, {r['with_mapped_vs_ivfflat']:.2f}x with mapped")
    if args.memory_only:
        return 0
    records = measure(ds, kinds, min(args.nq, ds.get_queries().shape[0]), args.rounds, args.out, args.tenants)
    for r in records:
        print(f"{r['kind']:8s} {r['case']:11s} single {r['single_collection_us']:8.1f} / {r['single_index_us']:8.1f} us"
              f" = {r['single_ratio']:.2f}x   batch {r['batch_collection_qps']:9.0f} / {r['batch_index_qps']:9.0f} QPS"
              f" = {r['batch_ratio']:.2f}x   {r['plan']}")
    plot(records, results_path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
