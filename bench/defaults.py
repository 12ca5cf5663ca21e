"""Defaults: recall@10 with no search params, through the collection API, for every kind, filter band and tenant size.

What a user who never tunes gets (issue 13): ``Database(...).create_collection(...)``, ``upsert`` in batches of
10,000 in the data set's own order (GloVe: frequency order; Fashion-MNIST: file order), ``build()`` (which trains,
adds in 16,384-row chunks and calibrates), then ``search(queries, k=10)`` with no params. Next to each figure, in the
same run and on the same collection: the *old* static defaults (IVF-PQ ``nprobe=min(8, nlist)``, ``rerank=40``;
Curator ``gamma=64``, ``rerank=64``; OSQ ``nprobe=16``, ``rerank=50``), passed as explicit params, timed in
alternation with the calibrated defaults (best of three rounds, one thread).

Set-ups (base rows in a meaningful order, the order a user's data arrives in: GloVe in frequency order, Fashion-MNIST
sorted by class; ``--order direction`` sorts every set along a random direction instead, the adversarial order for
an index fed in chunks):

* ``glove-50`` (cosine; ``--nb`` rows of the 390,000, 100,000 by default): ``Flat``, IVF-PQ
  ``IVF1024,PQ10x8,Refine`` and ``OSQ(partitions=16)``; queries with no filter, ``rank < r`` (frequency rank:
  correlated with the vectors) and ``u < s`` (uniform: uncorrelated) at 0.1, 1, 10 and 50%.
* ``fashion-mnist`` (L2, 60,000 x 784): ``Flat``, ``IVF256,PQ16x8,Refine`` and ``OSQ(partitions=16)``; no filter,
  the query's own class (10%, correlated), another class (10%, anti-correlated), five classes (50%), ``u < s`` at
  0.1, 1, 10 and 50%.
* ``glove-tenants``: GloVe with 1,000 Zipf-sized tenants (20 .. 20,000 vectors, about 1.5 tenants per vector; even
  ranks topical, odd ranks uniform: ``bench/tenants.py``); ``Curator(branch=16,leaf=128,shortlist=256)`` natively,
  IVF-PQ and OSQ through tenant masks; (query, tenant) pairs drawn uniformly over tenants and in proportion to
  their size, one query per call, reported per tenant-size band (tenants at or below the planner's exact-scan
  threshold for the kind are scanned exactly: recall 1 whatever the index).

Every group's line records recall@10 (of ``min(10, matches)``), the queries that came back short (must be 0),
QPS / ms per query for both settings, the plan, the calibrated band and settings, and the build's train + add and
calibration seconds (``calibration_share``: calibration / train + add; the issue's budget is 15%). Each approximate
kind also gets a ``chunked-vs-one-add`` line: the same index trained on the same rows, the rows added in one call
and in 16,384-row chunks (the engine's ``BUILD_CHUNK``) in the set-up's order, searched with the old static
settings (no calibration in between), recall@10 of both. Run::

    python -m bench.defaults                            # every set-up (~30-40 min on 2 busy cores)
    python -m bench.defaults --setup glove-50 --kinds ivf
    python -m bench.defaults --quick                    # 20,000 base vectors, 200 queries
    python -m bench.defaults --summary                  # the README tables from bench/results/defaults.jsonl
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time

import numpy as np

from shoal.engine import Database
from shoal.index.flat import exact_search

from .common import append_result, measure_interleaved, read_results, results_path
from .tenants import recall

K = 10
BATCH = 10_000
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
OLD = {"ivf": lambda nlist: {"nprobe": min(8, nlist), "rerank": 40}, "osq": lambda _: {"nprobe": 16, "rerank": 50},
       "curator": lambda _: {"gamma": 64, "rerank": 64}, "flat": lambda _: {}}
#: rows per add call in the engine's builder (shoal.engine.builder.BUILD_CHUNK)
CHUNK = 16_384
GLOVE_NB = 100_000
SPECS = {("glove-50", "ivf"): "IVF1024,PQ10x8,Refine", ("fashion-mnist", "ivf"): "IVF256,PQ16x8,Refine",
         ("glove-tenants", "ivf"): "IVF1024,PQ10x8,Refine", "osq": "OSQ(partitions=16)",
         "curator": "Curator(branch=16,leaf=128,shortlist=256)", "flat": "Flat"}
SETUP_KINDS = {"glove-50": ("flat", "ivf", "osq"), "fashion-mnist": ("flat", "ivf", "osq"),
               "glove-tenants": ("curator", "ivf", "osq")}


def spec_for(setup: str, kind: str) -> str:
    return SPECS.get((setup, kind)) or SPECS[kind]


def old_params(kind: str, spec: str, d: int) -> dict:
    """The static defaults before calibration, for the same index."""
    from shoal.index import index_factory

    return OLD[kind](getattr(index_factory(d, spec), "nlist", 0))


def short_lists(I: np.ndarray, matched: int) -> int:
    """Queries with fewer than ``min(k, matched)`` results."""
    return int(np.count_nonzero(np.count_nonzero(I >= 0, axis=1) < min(K, matched)))


# ---------------------------------------------------------------------------------------------------- data
def load_setup(name: str, nb: int | None, nq: int, order: str = "meaningful"):
    """``(xb, xq, metric, attrs {name: array}, query labels or None)``. ``nb``: a seeded sample of that many base
    rows (GloVe: ``GLOVE_NB`` by default). Order (user id = position): ``meaningful`` keeps GloVe's frequency order
    (its first rows are its most frequent words, unlike its queries) and sorts Fashion-MNIST by class;
    ``direction`` sorts the rows by their projection on a seeded random direction."""
    from .datasets import FashionMNIST, Glove50

    rng = np.random.default_rng(0)
    glove = name.startswith("glove")
    ds = Glove50(nq=nq) if glove else FashionMNIST(nq=nq)
    xb, xq = ds.get_database(), ds.get_queries()
    attrs = {k: v for k, v in ds.attributes().items() if k in ("rank", "label")}
    nb = GLOVE_NB if nb is None and glove else nb
    keep = np.sort(rng.choice(xb.shape[0], nb, replace=False)) if nb and nb < xb.shape[0] else np.arange(xb.shape[0])
    if order == "direction":
        keep = keep[np.argsort(xb[keep] @ rng.standard_normal(xb.shape[1]).astype(np.float32), kind="stable")]
    elif not glove:
        keep = keep[np.argsort(attrs["label"][keep], kind="stable")]
    xb = np.ascontiguousarray(xb[keep])
    attrs = {k: v[keep] for k, v in attrs.items()}
    attrs["u"] = rng.random(xb.shape[0])
    if glove:
        return xb, xq, "cosine", attrs, None
    return xb, xq, "l2", attrs, ds.query_attributes()["label"]


def filter_groups(setup: str, attrs: dict, qlabels, nq: int):
    """``[(group, [(filter text or None, query rows)])]``: each group's queries, split by the filter they carry."""
    allq = np.arange(nq)
    out = [("none", [(None, allq)])]
    for s in SELECTIVITIES:
        out.append((f"u<{s:g}", [(f"u < {s}", allq)]))
    if setup == "glove-50":
        rank = attrs["rank"]
        for s in SELECTIVITIES:
            out.append((f"rank<{s:g}", [(f"rank < {int(np.quantile(rank, s))}", allq)]))
    else:
        own = [(f"label = {c}", allq[qlabels == c]) for c in range(10)]
        other = [(f"label = {(c + 1) % 10}", allq[qlabels == c]) for c in range(10)]
        five = [(f"label in ({', '.join(str((c + j) % 10) for j in range(5))})", allq[qlabels == c])
                for c in range(10)]
        out += [("own-class(10%)", own), ("other-class(10%)", other), ("five-classes(50%)", five)]
    return out


def exact_filtered(col, xb, xq, metric, flt, qrows):
    """Exact top-k of ``xq[qrows]`` among the rows matching ``flt`` (user id = base row)."""
    rows = np.sort(col.ids_where(flt)) if flt else np.arange(xb.shape[0])
    return exact_search(xq[qrows], xb[rows], K, "l2" if metric == "l2" else "ip", labels=rows)[1], rows.size


# ---------------------------------------------------------------------------------------------------- runs
def chunk_check(setup, kind, spec, xb, xq, metric, old, out, info):
    """One add against 16,384-row chunks, through the index API: same training, same order, same settings."""
    from shoal.index import index_factory

    n = xb.shape[0]
    gt = exact_search(xq, xb if metric == "l2" else _unit(xb), K, "l2" if metric == "l2" else "ip")[1]
    got, secs = {}, {}
    for name, chunk in (("one_add", n), ("chunked", CHUNK)):
        ix = index_factory(xb.shape[1], spec, metric=metric)
        ix.train(xb)
        t0 = time.perf_counter()
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            # Curator: every row in one tenant (the whole set), so the tenant search is an unfiltered one
            kw = {"tenants": (np.arange(hi - lo + 1, dtype=np.int64), np.zeros(hi - lo, np.int32))} \
                if kind == "curator" else {}
            ix.add(xb[lo:hi], np.arange(lo, hi), **kw)
        ix.compact()
        secs[name] = time.perf_counter() - t0
        I = ix.search(xq, K, params=old, **({"tenant": 0} if kind == "curator" else {}))[1]
        got[name] = float(recall(I, gt).mean())
        del ix
        gc.collect()
    append_result(out, {"bench": "defaults", "setup": setup, "kind": kind, "index": spec, "group": "chunked-vs-one-add",
                        "nq": int(xq.shape[0]), "recall_one_add": got["one_add"], "recall_chunked": got["chunked"],
                        "difference": got["chunked"] - got["one_add"], "chunk": CHUNK, "params": old,
                        "add_seconds": {k: round(v, 2) for k, v in secs.items()}, **info})


def _unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def build(db, name, spec, xb, metric, attrs=None, tenants=None):
    schema = {k: ("float" if v.dtype.kind == "f" else "int") for k, v in (attrs or {}).items()}
    col = db.create_collection(name, dim=xb.shape[1], metric=metric, index=spec, schema=schema,
                               multi_tenant=tenants is not None, tail_limit=10**9)
    for lo in range(0, xb.shape[0], BATCH):
        hi = min(xb.shape[0], lo + BATCH)
        col.upsert(np.arange(lo, hi), xb[lo:hi], attrs={k: v[lo:hi] for k, v in attrs.items()} if attrs else None,
                   tenants=None if tenants is None else tenants[lo:hi])
    t0 = time.perf_counter()
    summary = col.build()
    total = time.perf_counter() - t0
    cal = summary.get("calibration") or {}
    return col, {"build_seconds": round(total, 2), "calibration_seconds": cal.get("seconds"),
                 "calibration_share": cal.get("share")}


def run_filters(setup, kind, xb, xq, metric, attrs, qlabels, out, info, db):
    spec = spec_for(setup, kind)
    col, b = build(db, f"{setup}-{kind}", spec, xb, metric, attrs)
    old = old_params(kind, spec, xb.shape[1])
    for group, parts in filter_groups(setup, attrs, qlabels, xq.shape[0]):
        recs = {"default": [], "old": []}
        times = {"default": 0.0, "old": 0.0}
        shorts, plans, bands, params, matched = 0, set(), set(), [], []
        for flt, qrows in parts:
            if qrows.size == 0:
                continue
            gt, m = exact_filtered(col, xb, xq, metric, flt, qrows)
            matched.append(m)
            searches = {"default": lambda q, f=flt: col.search(q, k=K, filter=f),
                        "old": lambda q, f=flt: col.search(q, k=K, filter=f, params=old)}
            t = measure_interleaved(searches, xq[qrows], rounds=3)
            for name, tm in t.items():
                recs[name].append(recall(tm.result.ids, gt))
                times[name] += tm.seconds
                shorts += short_lists(tm.result.ids, m)
            st = t["default"].result.stats
            plans.add(st.plan.split("+exact_fallback")[0])
            bands.add(st.band)
            params.append(st.params)
        nq = sum(len(r) for r in recs["default"])
        rec = {name: float(np.concatenate(r).mean()) for name, r in recs.items()}
        append_result(out, {"bench": "defaults", "setup": setup, "kind": kind, "index": spec, "group": group,
                            "nq": nq, "matched_mean": float(np.mean(matched)), "recall": rec["default"],
                            "recall_old": rec["old"], "qps": nq / times["default"], "qps_old": nq / times["old"],
                            "short": shorts, "plans": sorted(plans), "bands": sorted(str(x) for x in bands),
                            "params": params[0], "old_params": old, **b, **info})
    col.close()
    if kind != "flat":
        chunk_check(setup, kind, spec, xb, xq, metric, old, out, info)


def run_tenants(xb, xq, metric, kinds, out, info, db, npairs):
    from .tenants import draw_pairs, ground_truth, make_tenants, zipf_sizes

    n = xb.shape[0]
    sizes = zipf_sizes(1000, n, 1.5, hi=min(20000, n // 2))
    members = make_tenants(xb, sizes, seed=0)
    lists = [[] for _ in range(n)]
    for t, rows in enumerate(members):
        for r in rows.tolist():
            lists[r].append(f"t{t}")
    draws = {mode: draw_pairs(xq.shape[0], sizes, npairs, mode, seed=1) for mode in ("uniform", "proportional")}
    truth = {mode: ground_truth(xb, xq[qr], members, tens, K, metric) for mode, (qr, tens) in draws.items()}
    for kind in kinds:
        spec = spec_for("glove-tenants", kind)
        col, b = build(db, f"tenants-{kind}", spec, xb, metric, tenants=lists)
        old = old_params(kind, spec, xb.shape[1])
        for mode, (qr, tens) in draws.items():
            got = {"default": [], "old": []}
            secs = {"default": np.zeros(len(qr)), "old": np.zeros(len(qr))}
            stats = []
            for rnd in range(3):
                for name, params in (("default", None), ("old", old)):
                    for i, (row, t) in enumerate(zip(qr, tens)):
                        t0 = time.perf_counter()
                        res = col.search(xq[row:row + 1], k=K, tenant=f"t{t}", params=params)
                        dt = time.perf_counter() - t0
                        secs[name][i] = dt if rnd == 0 else min(secs[name][i], dt)
                        if rnd == 0:
                            got[name].append(res.ids[0])
                            if name == "default":
                                stats.append(res.stats)
            tsize = sizes[tens]
            for lo, hi in ((0, 4097), (4097, 16384), (16384, 10**9)):
                sel = (tsize >= lo) & (tsize < hi)
                if not sel.any():
                    continue
                rec = {name: float(recall(np.array(v)[sel], truth[mode][sel]).mean()) for name, v in got.items()}
                short = sum(int(np.count_nonzero(np.count_nonzero(np.array(v)[sel] >= 0, axis=1)
                                                 < np.minimum(K, tsize[sel]))) for v in got.values())
                sel_stats = [s for s, ok in zip(stats, sel) if ok]
                append_result(out, {
                    "bench": "defaults", "setup": "glove-tenants", "kind": kind, "index": spec,
                    "group": f"{mode}:tenants {lo}-{hi if hi < 10**9 else 'max'}", "nq": int(sel.sum()),
                    "recall": rec["default"], "recall_old": rec["old"],
                    "qps": float(sel.sum() / secs["default"][sel].sum()),
                    "qps_old": float(sel.sum() / secs["old"][sel].sum()),
                    "short": short, "plans": sorted({s.plan.split("+exact_fallback")[0] for s in sel_stats}),
                    "bands": sorted({str(s.band) for s in sel_stats}), "old_params": old, **b, **info})
        col.close()
        gc.collect()
        if kind == "curator":
            chunk_check("glove-tenants", kind, spec, xb, xq[:500], metric, old, out, info)


# ---------------------------------------------------------------------------------------------------- report
def summarize(path, png=None) -> str:
    """The README tables (markdown) of the latest run of each (set-up, order, kind, group), and a plot."""
    rows, chunks = {}, {}
    for r in read_results(path):
        if r.get("bench") != "defaults":
            continue
        key = (r["setup"], r.get("order", "meaningful"), r["kind"], r["group"])
        (chunks if r["group"] == "chunked-vs-one-add" else rows)[key] = r
    lines = ["| set-up (order) | index | queries | recall@10 defaults | old defaults | QPS defaults / old | short | "
             "calibration s (share of train + add) | calibrated band: settings |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (setup, order, kind, group), r in rows.items():
        params = ",".join(f"{k}={v}" for k, v in (r.get("params") or {}).items()) or \
            ("exact" if any(p.startswith("exact") for p in r["plans"]) else "-")
        share = r.get("calibration_share")
        cal = f"{r['calibration_seconds']:.1f} ({100 * share:.0f}%)" if share is not None else "-"
        lines.append(f"| {setup} ({order}) | {r['index']} | {group} | **{r['recall']:.3f}** | {r['recall_old']:.3f} | "
                     f"{r['qps']:,.0f} / {r['qps_old']:,.0f} | {r['short']} | {cal} | "
                     f"{'; '.join(b for b in r['bands'] if b != 'None') or '-'}: {params} |")
    if chunks:
        lines += ["", "| set-up (order) | index | settings | recall@10 one add | in 16,384-row chunks | difference |",
                  "|---|---|---|---|---|---|"]
        for (setup, order, kind, _), r in chunks.items():
            params = ",".join(f"{k}={v}" for k, v in r["params"].items())
            lines.append(f"| {setup} ({order}) | {r['index']} | {params} | {r['recall_one_add']:.4f} | "
                         f"{r['recall_chunked']:.4f} | {r['difference']:+.4f} |")
    text = "\n".join(lines)
    if png and rows:
        plot(list(rows.values()), png)
    return text


def plot(rows, png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = sorted({r["setup"] for r in rows})
    fig, axes = plt.subplots(len(setups), 1, figsize=(12, 3.6 * len(setups)), squeeze=False)
    for ax, setup in zip(axes[:, 0], setups):
        rs = [r for r in rows if r["setup"] == setup]
        x = np.arange(len(rs))
        ax.bar(x - 0.2, [r["recall_old"] for r in rs], 0.4, label="old defaults", color="#bbbbbb")
        ax.bar(x + 0.2, [r["recall"] for r in rs], 0.4, label="calibrated defaults", color="#3070b0")
        ax.axhline(0.95, color="red", lw=0.8, ls="--")
        names = [r["kind"] + ("" if r.get("order", "meaningful") == "meaningful" else f" ({r['order']})") for r in rs]
        ax.set_xticks(x, [f"{name}\n{r['group']}" for name, r in zip(names, rs)], fontsize=6, rotation=60,
                      ha="right")
        ax.set_ylim(0.5, 1.0)
        ax.set_ylabel("recall@10")
        ax.set_title(f"{setup}: no params, through the collection API")
        ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setup", action="append", choices=sorted(SETUP_KINDS), help="set-up(s) to run (default: all)")
    p.add_argument("--kinds", help="comma-separated kinds to run (ivf, osq, curator; default: each set-up's)")
    p.add_argument("--nq", type=int, default=500, help="queries per filter group (default 500)")
    p.add_argument("--pairs", type=int, default=600, help="(query, tenant) pairs per draw (default 600)")
    p.add_argument("--nb", type=int, default=None,
                   help=f"use a seeded sample of NB base vectors (GloVe default: {GLOVE_NB:,}; Fashion-MNIST: all)")
    p.add_argument("--order", choices=("meaningful", "direction"), default="meaningful",
                   help="base row order: GloVe frequency / Fashion-MNIST class (default), or along a random direction")
    p.add_argument("--quick", action="store_true", help="20,000 base vectors, 200 queries, 200 pairs")
    p.add_argument("--out", default="defaults", help="results name under bench/results/")
    p.add_argument("--summary", action="store_true", help="print the README table of the results and plot them")
    args = p.parse_args(argv)
    if args.summary:
        print(summarize(args.out, results_path(args.out).with_suffix(".png")))
        return 0
    nb, nq, pairs = (20000, 200, 200) if args.quick else (args.nb, args.nq, args.pairs)
    info = {"quick": bool(args.quick), "order": args.order}
    with tempfile.TemporaryDirectory(prefix="shoal-defaults-") as tmp:
        db = Database(tmp)
        for setup in args.setup or sorted(SETUP_KINDS):
            kinds = [k for k in (args.kinds.split(",") if args.kinds else SETUP_KINDS[setup])
                     if k in SETUP_KINDS[setup]]
            if not kinds:
                continue
            xb, xq, metric, attrs, qlabels = load_setup(setup, nb, max(nq, 2000 if setup == "glove-tenants" else nq),
                                                          args.order)
            print(f"[defaults] {setup}: {xb.shape[0]:,} x {xb.shape[1]}, kinds {kinds}", file=sys.stderr)
            if setup == "glove-tenants":
                run_tenants(xb, xq, metric, kinds, args.out, info, db, pairs)
            else:
                for kind in kinds:
                    run_filters(setup, kind, xb, xq[:nq], metric, attrs, qlabels[:nq] if qlabels is not None else None,
                                args.out, info, db)
                    gc.collect()
        db.close()
    print(summarize(args.out, results_path(args.out).with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
