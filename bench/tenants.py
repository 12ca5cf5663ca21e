"""Multi-tenant search: shoal ``Curator`` vs per-tenant and shared-index baselines, all in one run.

Set-ups (fixed seeds):

* ``glove-50``: GloVe-50d (cosine), 1,000 tenants; the tenant of rank r has ``max(20, min(20000, C / r^0.8))``
  vectors with C chosen so a vector belongs to about 10 tenants on average (as in the paper's arXiv set-up). Even
  ranks are *topical* (members drawn from a few of 200 k-means clusters), odd ranks uniform over the base.
* ``fashion-mnist``: the 10 class labels are the tenants (each vector in exactly one).

Queries: ``--pairs`` (held-out query vector, tenant) pairs, with the tenant drawn uniformly over tenants and, as a
second set, in proportion to tenant size. Ground truth = exact top-k within the tenant's vectors.

Methods (single thread, one query per call, latency measured per query):

* ``curator``           shoal ``Curator(branch=16,leaf=128,shortlist=256)``, sweep of ``gamma`` (and ``rerank``)
* ``tenant-ivf``        one faiss ``IndexIVFFlat`` per tenant (nlist = sqrt(size)), sweep of ``nprobe``
* ``tenant-hnsw``       one hnswlib index per tenant (M=16, ef_construction=100), sweep of ``ef``
* ``shared-ivf-bitmap`` one faiss ``IndexIVFFlat`` over everything + ``IDSelectorBitmap`` of the tenant
* ``brute-force``       exact scan of the tenant's vectors (contiguous per-tenant copy, faiss ``IndexFlat``)

Memory (ARCHITECTURE.md): Curator's ``memory_bytes()`` (every array it holds) and the RSS growth when it is loaded
from disk; baselines by their serialized size *plus the tenant data they need*: per-tenant indexes hold duplicated
vectors, the shared index is charged for its per-tenant bitmaps (``bitmap``), with the compact alternative
(sorted int32 row lists) reported too. Also: memory as the number of tenants grows, and Curator's insert / grant /
revoke / delete latencies.

Each configuration appends one JSON line to ``bench/results/tenants.jsonl``; plots go to
``bench/results/tenants_*.png``. The sweeps run each configuration over all queries in one go; the latency
comparison proper (``kind="search-paired"``) then runs Curator, per-tenant IVF and brute force *in alternation*,
query by query, in rounds of one setting each (six on GloVe, three on Fashion-MNIST), so load from other processes on
a shared box hits them alike (``--paired-only`` runs just these rounds).

    python -m bench.tenants                         # both data sets, full size (~10-15 min on 2 busy cores)
    python -m bench.tenants --dataset glove-50 --quick
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time

import numpy as np

from .common import append_result, bench_parser, dataset_from_args, dataset_names, rss_delta, single_thread

K = 10


# ---------------------------------------------------------------------------------------------------- tenants
def zipf_sizes(ntenants: int, n: int, per_vector: float, lo: int = 20, hi: int = 20000, s: float = 0.8) -> np.ndarray:
    """Sizes ``max(lo, min(hi, C / r^s))`` for ranks 1..ntenants, with C found by bisection so the sizes sum to
    about ``per_vector * n`` (each capped at ``n``)."""
    r = np.arange(1, ntenants + 1, dtype=np.float64)
    hi = min(hi, n)

    def total(c):
        return np.maximum(lo, np.minimum(hi, c / r ** s)).sum()

    a, b = 0.0, 1e12
    for _ in range(200):
        m = (a + b) / 2
        a, b = (m, b) if total(m) < per_vector * n else (a, m)
    return np.maximum(lo, np.minimum(hi, b / r ** s)).astype(np.int64)


def make_tenants(xb: np.ndarray, sizes: np.ndarray, seed: int, nclusters: int = 200) -> list[np.ndarray]:
    """Members (sorted base rows) of each tenant: even ranks topical (a few k-means clusters), odd ranks uniform."""
    import faiss

    rng = np.random.default_rng(seed)
    n = xb.shape[0]
    km = faiss.Kmeans(xb.shape[1], nclusters, niter=10, seed=seed, max_points_per_centroid=64, verbose=False)
    km.train(xb)
    _, lab = km.index.search(xb, 1)
    lab = lab[:, 0]
    by_cluster = [np.flatnonzero(lab == c) for c in range(nclusters)]
    members = []
    for t, size in enumerate(sizes):
        if t % 2 == 0:
            pool: list[np.ndarray] = []
            got = 0
            for c in rng.permutation(nclusters):  # a few clusters, enough to hold the tenant with some choice
                pool.append(by_cluster[c])
                got += by_cluster[c].size
                if got >= 1.5 * size and len(pool) >= 2:
                    break
            cand = np.concatenate(pool)
        else:
            cand = np.arange(n)
        members.append(np.sort(rng.choice(cand, min(int(size), cand.size), replace=False)).astype(np.int64))
    return members


def to_csr(members: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr int64 (n+1,), tenant_ids int32)``: the tenants of each base row."""
    rows = np.concatenate(members)
    tens = np.concatenate([np.full(m.size, t, np.int32) for t, m in enumerate(members)])
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, tens[order]


def draw_pairs(nq_pool: int, sizes: np.ndarray, npairs: int, mode: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(query row, tenant) pairs; tenants uniform or proportional to size."""
    rng = np.random.default_rng(seed)
    qrows = rng.choice(nq_pool, npairs, replace=npairs > nq_pool)
    if mode == "uniform":
        tens = rng.integers(0, len(sizes), npairs)
    else:
        tens = rng.choice(len(sizes), npairs, p=sizes / sizes.sum())
    return qrows.astype(np.int64), tens.astype(np.int64)


def ground_truth(xb, xq, members, tens, k, metric) -> np.ndarray:
    """Exact top-k base rows of each query within its tenant: int64 (nq, k), -1 padded."""
    from shoal.index.flat import exact_search

    gt = np.full((xq.shape[0], k), -1, np.int64)
    for t in np.unique(tens):
        qi = np.flatnonzero(tens == t)
        m = members[t]
        _, I = exact_search(xq[qi], xb[m], k, "l2" if metric == "l2" else "ip", labels=m)
        gt[qi] = I
    return gt


def recall(I: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-query recall@k (denominator: the true neighbours that exist)."""
    out = np.empty(I.shape[0])
    for i in range(I.shape[0]):
        want = gt[i][gt[i] >= 0]
        out[i] = len(np.intersect1d(I[i][I[i] >= 0], want)) / max(1, want.size)
    return out


def time_single(fn, Q: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fn(q (1, d), tenant) -> ids (k,)`` one query at a time; returns (ids (nq, k), seconds (nq,))."""
    nq = Q.shape[0]
    I = np.full((nq, K), -1, np.int64)
    lat = np.empty(nq)
    for i in range(min(nq, 20)):  # warm caches / JIT
        fn(Q[i:i + 1], int(T[i]))
    for i in range(nq):
        q = Q[i:i + 1]
        t = int(T[i])
        t0 = time.perf_counter()
        ids = fn(q, t)
        lat[i] = time.perf_counter() - t0
        I[i, :len(ids)] = ids[:K]
    return I, lat


# ---------------------------------------------------------------------------------------------------- methods
class Curator:
    name = "curator"

    def __init__(self, ds, xb, members, csr, factory, tmpdir, mmap=True):
        from shoal.storage import LocalStore
        from shoal.index import index_factory, load_index

        t0 = time.perf_counter()
        ix = index_factory(ds.d, factory, metric=ds.metric)
        ix.add(xb, np.arange(xb.shape[0], dtype=np.int64), tenants=csr)
        ix.compact()
        self.build_s = time.perf_counter() - t0
        store = LocalStore(tmpdir)
        ix.save(store, "curator")
        del ix
        gc.collect()
        # as a collection serves it after a snapshot (mmap_index): the float32 vectors memory-mapped, the rest in
        # memory; --no-mmap loads every array into memory
        with rss_delta() as mem:
            self.ix = load_index(store, "curator", mmap=mmap)
        self.rss = mem["bytes"]
        self.mmap = mmap
        self.factory = factory
        # default rerank (64: candidates ranked by 4-bit codes, the best 64 scored exactly); rerank 0 scores all
        self.sweep = ([{"gamma": g} for g in (32, 64, 128, 192, 256, 384, 512, 768)]
                      + [{"gamma": 256, "rerank": 0}, {"gamma": 384, "rerank": 0}])

    def memory(self):
        return {"memory_bytes": self.ix.memory_bytes(), "mapped_bytes": self.ix.mapped_bytes(),
                "rss_delta_bytes": self.rss, "breakdown": self.ix.memory_breakdown(), "mmap": self.mmap,
                "measure": "memory_bytes(): in-memory arrays; mapped_bytes(): memory-mapped float32 vectors"}

    def searcher(self, p):
        ix = self.ix

        def fn(q, t):
            return ix.search(q, K, tenant=t, params=p)[1][0]
        return fn


def collection_memory(ds, xb, members, csr, factory, tmpdir, batch=10_000):
    """Curator built the way users build it: ``Database`` -> ``create_collection`` -> ``upsert`` in batches (tenant
    names, each record with its list) -> ``build``. Returns the collection's memory figures (its index as served
    after the build's snapshot, memory-mapped by default), and the collection, still open, for searching."""
    from shoal import Database

    indptr, tids = csr
    n = xb.shape[0]
    db = Database(os.path.join(tmpdir, "db"))
    col = db.create_collection("tenants", dim=ds.d, metric=ds.metric, index=factory, multi_tenant=True,
                               tail_limit=n + 1)  # one explicit build at the end, none in the background
    names = np.array([f"t{t}" for t in range(len(members))], dtype=object)
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        tl = [names[tids[indptr[i]:indptr[i + 1]]].tolist() for i in range(lo, hi)]
        col.upsert(np.arange(lo, hi, dtype=np.int64), xb[lo:hi], tenants=tl)
    upsert_s = time.perf_counter() - t0
    gc.collect()
    with rss_delta() as mem:
        summary = col.build()
    st = col.stats()["memory_bytes"]
    index = col._view.index
    return {"memory_bytes": st["index"], "mapped_bytes": st["index_mapped"], "records_bytes": st["records"],
            "breakdown": index.memory_breakdown(), "rss_delta_build_bytes": mem["bytes"], "upsert_s": upsert_s,
            "build_s": summary["seconds"], "batch": batch,
            "measure": "collection.stats(): the index as served after the build's snapshot"}, db, col


class TenantIVF:
    name = "tenant-ivf"

    def __init__(self, ds, xb, members):
        import faiss

        metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.indexes = []
        self._quants = []
        self.bytes = 0
        t0 = time.perf_counter()
        with rss_delta() as mem:
            for t, m in enumerate(members):
                nlist = max(1, int(round(np.sqrt(m.size))))
                quant = faiss.IndexFlat(ds.d, metric)
                ix = faiss.IndexIVFFlat(quant, ds.d, nlist, metric)
                ix.cp.seed = t
                ix.cp.min_points_per_centroid = 1
                x = np.ascontiguousarray(xb[m])
                ix.train(x)
                ix.add_with_ids(x, m)
                self._quants.append(quant)
                self.bytes += faiss.serialize_index(ix).nbytes
                self.indexes.append(ix)
        self.rss = mem["bytes"]
        self.build_s = time.perf_counter() - t0
        self.sweep = [{"nprobe": p} for p in (1, 2, 3, 4, 6, 8, 12, 16, 32)]
        self._per_tenant_bytes = None

    def memory(self):
        return {"memory_bytes": self.bytes, "rss_delta_bytes": self.rss, "measure": "serialized faiss indexes"}

    def searcher(self, p):
        idx = self.indexes
        nprobe = p["nprobe"]
        for ix in idx:
            ix.nprobe = nprobe

        def fn(q, t):
            return idx[t].search(q, K)[1][0]
        return fn


class TenantHNSW:
    name = "tenant-hnsw"

    def __init__(self, ds, xb, members, tmpdir, every=1):
        import hnswlib

        space = "l2" if ds.metric == "l2" else "ip"
        self.indexes = {}
        self.bytes = 0
        self.every = every
        t0 = time.perf_counter()
        path = os.path.join(tmpdir, "h.bin")
        built = 0
        with rss_delta() as mem:
            for t, m in enumerate(members):
                if t % every:
                    continue
                ix = hnswlib.Index(space=space, dim=ds.d)
                ix.init_index(max_elements=m.size, M=16, ef_construction=100, random_seed=t)
                ix.set_num_threads(1)
                ix.add_items(xb[m], m)
                ix.save_index(path)
                self.bytes += os.path.getsize(path)
                built += m.size
                self.indexes[t] = ix
        # with --hnsw-every > 1 only every n-th tenant gets an index (the build is slow); memory is scaled up by
        # the vectors not indexed, at the bytes per vector measured on the ones that were
        total = sum(m.size for m in members)
        self.scaled_bytes = int(self.bytes * total / max(1, built))
        self.rss = mem["bytes"]
        self.build_s = time.perf_counter() - t0
        self.sweep = [{"ef": e} for e in (10, 20, 40, 80, 160)]

    def covers(self, t):
        return t in self.indexes

    def memory(self):
        return {"memory_bytes": self.scaled_bytes, "memory_bytes_built": self.bytes, "rss_delta_bytes": self.rss,
                "tenants_built": len(self.indexes),
                "measure": "saved hnswlib indexes" + (" (scaled from every %d-th tenant)" % self.every
                                                      if self.every > 1 else "")}

    def searcher(self, p):
        idx = self.indexes
        for ix in idx.values():
            ix.set_ef(max(p["ef"], K))

        def fn(q, t):
            ix = idx[t]
            lab, _ = ix.knn_query(q, k=min(K, ix.get_current_count()))
            return lab[0].astype(np.int64)
        return fn


class SharedIVF:
    name = "shared-ivf-bitmap"

    def __init__(self, ds, xb, members, nlist):
        import faiss

        metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        n = xb.shape[0]
        t0 = time.perf_counter()
        with rss_delta() as mem:
            quant = faiss.IndexFlat(ds.d, metric)
            ix = faiss.IndexIVFFlat(quant, ds.d, nlist, metric)
            ix.cp.seed = 1
            ix.train(xb)
            ix.add(xb)
            self._quant = quant
            self.bitmaps = []
            for m in members:
                mask = np.zeros(n, bool)
                mask[m] = True
                self.bitmaps.append(np.packbits(mask, bitorder="little"))
            self.sels = [faiss.IDSelectorBitmap(n, faiss.swig_ptr(b)) for b in self.bitmaps]
        self.ix = ix
        self.rss = mem["bytes"]
        self.build_s = time.perf_counter() - t0
        self.index_bytes = faiss.serialize_index(ix).nbytes
        self.bitmap_bytes = sum(b.nbytes for b in self.bitmaps)
        self.list_bytes = 4 * sum(m.size for m in members)
        self.sweep = [{"nprobe": p} for p in (8, 32, 128, 512)]

    def memory(self):
        return {"memory_bytes": self.index_bytes + self.bitmap_bytes, "rss_delta_bytes": self.rss,
                "index_bytes": self.index_bytes, "bitmap_bytes": self.bitmap_bytes,
                "memory_bytes_with_int32_lists": self.index_bytes + self.list_bytes,
                "measure": "serialized faiss index + per-tenant bitmaps"}

    def searcher(self, p):
        import faiss

        params = [faiss.SearchParametersIVF(sel=s, nprobe=p["nprobe"]) for s in self.sels]
        ix = self.ix

        def fn(q, t):
            return ix.search(q, K, params=params[t])[1][0]
        return fn


class BruteForce:
    name = "brute-force"

    def __init__(self, ds, xb, members, used_tenants):
        import faiss

        metric = faiss.METRIC_L2 if ds.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        self.indexes = {}
        self.members = members
        for t in used_tenants:  # only the queried tenants are materialised; memory is computed for all
            ix = faiss.IndexFlat(ds.d, metric)
            ix.add(np.ascontiguousarray(xb[members[t]]))
            self.indexes[int(t)] = ix
        self.build_s = 0.0
        self.bytes = sum(m.size * (ds.d * 4 + 8) for m in members)
        self.sweep = [{}]

    def memory(self):
        return {"memory_bytes": self.bytes, "measure": "computed: per-tenant float32 copies + int64 ids"}

    def searcher(self, p):
        idx, members = self.indexes, self.members

        def fn(q, t):
            I = idx[t].search(q, K)[1][0]
            return np.where(I >= 0, members[t][np.maximum(I, 0)], -1)
        return fn


# ---------------------------------------------------------------------------------------------------- run
def evaluate(method, param, Q, T, gt, top50, ds, draw, out, extra):
    fn = method.searcher(param)
    I, lat = time_single(fn, Q, T)
    rec = recall(I, gt)
    big = np.isin(T, top50)
    rec_line = {"method": method.name, "dataset": ds.key, "draw": draw, "params": param, "k": K,
                "nq": int(Q.shape[0]), "recall": float(rec.mean()), "mean_us": float(1e6 * lat.mean()),
                "p50_us": float(1e6 * np.median(lat)), "p99_us": float(1e6 * np.percentile(lat, 99)),
                "top50_nq": int(big.sum()),
                "top50_recall": float(rec[big].mean()) if big.any() else None,
                "top50_mean_us": float(1e6 * lat[big].mean()) if big.any() else None}
    rec_line.update(extra)
    append_result(out, rec_line)
    return rec_line


def paired(rounds, Q, T, gt, top50, ds, draw, out):
    """Latencies measured in alternation: in each round, every query is run by each of that round's methods in turn
    (rotating which goes first), so load from other processes hits them alike and only the ratios are compared.

    ``rounds``: list of ``[(method, params), ...]``; methods in one round must not share data (one Curator setting,
    one IVF setting, brute force), so none warms the caches for another. Appends ``kind="search-paired"`` lines.
    """
    res = []
    for r, plan in enumerate(rounds):
        fns = [m.searcher(p) for m, p in plan]
        nq = Q.shape[0]
        I = [np.full((nq, K), -1, np.int64) for _ in plan]
        lat = [np.empty(nq) for _ in plan]
        for i in range(min(nq, 20)):
            for fn in fns:
                fn(Q[i:i + 1], int(T[i]))
        for i in range(nq):
            q, t = Q[i:i + 1], int(T[i])
            for o in range(len(plan)):
                j = (o + i) % len(plan)
                t0 = time.perf_counter()
                ids = fns[j](q, t)
                lat[j][i] = time.perf_counter() - t0
                I[j][i, :len(ids)] = ids[:K]
        big = np.isin(T, top50)
        for j, (m, p) in enumerate(plan):
            rec = recall(I[j], gt)
            line = {"kind": "search-paired", "round": r, "method": m.name, "dataset": ds.key, "draw": draw,
                    "params": p, "k": K, "nq": int(nq), "recall": float(rec.mean()),
                    "mean_us": float(1e6 * lat[j].mean()), "p50_us": float(1e6 * np.median(lat[j])),
                    "top50_nq": int(big.sum()), "top50_recall": float(rec[big].mean()) if big.any() else None,
                    "top50_mean_us": float(1e6 * lat[j][big].mean()) if big.any() else None}
            append_result(out, line)
            res.append(line)
            print(f"[{ds.key}] paired {draw} r{r} {m.name} {p}: recall {line['recall']:.3f} "
                  f"mean {line['mean_us']:.0f} us, top-50 {line['top50_recall'] or 0:.3f} "
                  f"{line['top50_mean_us'] or 0:.0f} us", file=sys.stderr)
    return res


def memory_ratios(mems, ds, setup, out):
    """One ``kind="memory-ratio"`` line: Curator's bytes (index alone and through a collection; in memory, and in
    memory + mapped) over per-tenant IVFFlat's (serialized indexes: vectors, ids and centroids of every tenant)."""
    if "tenant-ivf" not in mems:
        return
    ivf = mems["tenant-ivf"]["memory_bytes"]
    line = {"kind": "memory-ratio", "dataset": ds.key, "setup": setup, "tenant_ivf_bytes": ivf}
    for name in ("curator", "curator-collection"):
        if name in mems:
            m = mems[name]
            line[name] = {"memory_bytes": m["memory_bytes"], "mapped_bytes": m.get("mapped_bytes", 0),
                          "ratio_in_memory": m["memory_bytes"] / ivf,
                          "ratio_with_mapped": (m["memory_bytes"] + m.get("mapped_bytes", 0)) / ivf}
    append_result(out, line)
    for name in ("curator", "curator-collection"):
        if name in line:
            r = line[name]
            print(f"[{ds.key}] {name}: {r['memory_bytes'] / 1e6:.1f} MB in memory + {r['mapped_bytes'] / 1e6:.1f} MB "
                  f"mapped vs per-tenant IVFFlat {ivf / 1e6:.1f} MB: {r['ratio_in_memory']:.2f}x in memory, "
                  f"{r['ratio_with_mapped']:.2f}x with the mapped vectors", file=sys.stderr)


def coll_recall(col, xq, draws, gts, ds, out, nq=300, gamma=256):
    """Recall of the collection-built Curator on the first ``nq`` pairs of each draw (through ``col.search`` with
    the tenant's name), so its memory figure is that of an index answering as well as the one timed."""
    for draw, (qr, tt) in draws.items():
        m = min(nq, qr.shape[0])
        I = np.full((m, K), -1, np.int64)
        for i in range(m):
            res = col.search(xq[qr[i]][None], K, tenant=f"t{int(tt[i])}", params={"gamma": gamma})
            I[i] = res.ids[0]
        rec = float(recall(I, gts[draw][:m]).mean())
        append_result(out, {"kind": "collection-recall", "method": "curator-collection", "dataset": ds.key,
                            "draw": draw, "params": {"gamma": gamma}, "nq": m, "recall": rec})


def update_latencies(ix, xq, members, nb, seed, n_ops):
    """Curator insert / grant / revoke / delete latencies (seconds per single-item call)."""
    rng = np.random.default_rng(seed)
    ntenants = len(members)
    out = {}
    # one untimed call of each kind first: a freshly loaded index may still JIT-compile its update kernels
    ix.add(xq[:1], [10**9 - 1], tenants=(np.array([0, 1], np.int64), np.array([0], np.int32)))
    ix.grant([10**9 - 1], 1)
    ix.revoke([10**9 - 1], 1)
    ix.remove([10**9 - 1])
    new_ids = np.arange(10**9, 10**9 + n_ops, dtype=np.int64)
    lat = []
    for i in range(n_ops):
        ts = np.unique(rng.integers(0, ntenants, 10)).astype(np.int32)
        tenants = (np.array([0, ts.size], np.int64), ts)
        t0 = time.perf_counter()
        ix.add(xq[i % xq.shape[0]][None], new_ids[i:i + 1], tenants=tenants)
        lat.append(time.perf_counter() - t0)
    out["insert_10_tenants"] = lat
    rows = rng.integers(0, nb, n_ops)
    tens = rng.integers(0, ntenants, n_ops)
    lat = []
    for r, t in zip(rows, tens):
        t0 = time.perf_counter()
        ix.grant([int(r)], int(t))
        lat.append(time.perf_counter() - t0)
    out["grant"] = lat
    lat = []
    for r, t in zip(rows, tens):
        t0 = time.perf_counter()
        ix.revoke([int(r)], int(t))
        lat.append(time.perf_counter() - t0)
    out["revoke"] = lat
    lat = []
    for r in rng.choice(nb, n_ops, replace=False):
        t0 = time.perf_counter()
        ix.remove([int(r)])
        lat.append(time.perf_counter() - t0)
    out["delete"] = lat
    return {k: {"mean_us": 1e6 * float(np.mean(v)), "p50_us": 1e6 * float(np.median(v)),
                "p99_us": 1e6 * float(np.percentile(v, 99)), "n": len(v)} for k, v in out.items()}


def run_dataset(ds, args, tmpdir):
    xb, xq = ds.get_database(), ds.get_queries()
    n = xb.shape[0]
    if ds.name == "fashion-mnist":
        labels = ds.attributes()["label"][:n]
        members = [np.flatnonzero(labels == c).astype(np.int64) for c in range(int(labels.max()) + 1)]
        draws = {"uniform": draw_pairs(xq.shape[0], np.array([m.size for m in members]), args.pairs, "uniform", 1),
                 "own-label": None}
        qrows = np.random.default_rng(2).choice(xq.shape[0], args.pairs, replace=args.pairs > xq.shape[0])
        draws["own-label"] = (qrows, ds.query_attributes()["label"][qrows].astype(np.int64))
        nlist = 256
        setup = {"tenants": "class labels", "ntenants": len(members)}
    else:
        ntenants = args.tenants
        sizes = zipf_sizes(ntenants, n, args.per_vector, hi=min(20000, n // 2))
        members = make_tenants(xb, sizes, seed=0)
        draws = {mode: draw_pairs(xq.shape[0], np.array([m.size for m in members]), args.pairs, mode, 1 + i)
                 for i, mode in enumerate(("uniform", "proportional"))}
        nlist = 1024 if n > 100000 else 256
        setup = {"tenants": "zipf 0.8, half topical", "ntenants": ntenants}
    sizes = np.array([m.size for m in members])
    setup.update({"nb": n, "pairs": int(sizes.sum()), "tenants_per_vector": float(sizes.sum() / n),
                  "largest": int(sizes.max()), "smallest": int(sizes.min())})
    print(f"[{ds.key}] {setup}", file=sys.stderr)
    top50 = np.argsort(-sizes, kind="stable")[:50]
    csr = to_csr(members, n)
    gts = {d: ground_truth(xb, xq[qr], members, tt, K, ds.metric) for d, (qr, tt) in draws.items()}
    used = np.unique(np.concatenate([tt for _, tt in draws.values()]))

    methods = []
    with single_thread():
        cur = Curator(ds, xb, members, csr, args.factory, tmpdir, mmap=not args.no_mmap)
        print(f"[{ds.key}] curator built in {cur.build_s:.1f}s", file=sys.stderr)
        methods.append(cur)
        coll = None
        if "collection" not in args.skip:
            cmem, cdb, ccol = collection_memory(ds, xb, members, csr, args.factory, tmpdir)
            coll = {"memory": cmem, "db": cdb, "col": ccol}
            print(f"[{ds.key}] curator through a collection: {cmem['memory_bytes'] / 1e6:.1f} MB in memory, "
                  f"{cmem['mapped_bytes'] / 1e6:.1f} MB mapped", file=sys.stderr)
        builders = [("tenant-ivf", lambda: TenantIVF(ds, xb, members)),
                    ("shared-ivf-bitmap", lambda: SharedIVF(ds, xb, members, nlist)),
                    ("brute-force", lambda: BruteForce(ds, xb, members, used)),
                    ("tenant-hnsw", lambda: TenantHNSW(ds, xb, members, tmpdir, args.hnsw_every))]
        for name, build in builders:
            if name in args.skip:
                continue
            m = build()
            print(f"[{ds.key}] {name} built in {m.build_s:.1f}s", file=sys.stderr)
            methods.append(m)
        lines = []
        mems = {}
        for m in methods:
            mem = mems[m.name] = m.memory()
            append_result(args.out, {"method": m.name, "dataset": ds.key, "kind": "memory", "build_s": m.build_s,
                                     **mem, "setup": setup})
        if coll is not None:
            mems["curator-collection"] = coll["memory"]
            append_result(args.out, {"method": "curator-collection", "dataset": ds.key, "kind": "memory",
                                     **coll["memory"], "setup": setup})
            coll_recall(coll["col"], xq, draws, gts, ds, args.out)
            coll["db"].close()
        memory_ratios(mems, ds, setup, args.out)
        for m in methods:
            mem = mems[m.name]
            for p in (m.sweep if not args.paired_only else []):
                for draw, (qr, tt) in draws.items():
                    Q, T, gt = xq[qr], tt, gts[draw]
                    extra = {"kind": "search", "memory_bytes": mem["memory_bytes"]}
                    if m.name == "shared-ivf-bitmap" and p["nprobe"] >= 128:  # slow: a quarter of the queries
                        Q, T, gt = Q[:args.pairs // 4], T[:args.pairs // 4], gt[:args.pairs // 4]
                    label = draw
                    if hasattr(m, "covers") and args.hnsw_every > 1:
                        sel = np.array([m.covers(int(t)) for t in T], bool)
                        Q, T, gt = Q[sel], T[sel], gt[sel]
                        extra["subset"] = f"queries of every {args.hnsw_every}-th tenant"
                        label = draw + "-hnsw-subset"
                        if p is m.sweep[0]:  # Curator on exactly the same queries, for a like-for-like comparison
                            for cp in cur.sweep[2:8]:  # gamma 128..768
                                lines.append(evaluate(cur, cp, Q, T, gt, top50, ds, label, args.out,
                                                      dict(extra, memory_bytes=cur.memory()["memory_bytes"])))
                    lines.append(evaluate(m, p, Q, T, gt, top50, ds, label, args.out, extra))
        # the latency comparison proper: Curator settings vs per-tenant IVF vs brute force, in alternation
        base = {m.name: m for m in methods}
        if "tenant-ivf" in base and "brute-force" in base:
            ivf, bf = base["tenant-ivf"], base["brute-force"]
            # each Curator setting next to the IVF setting of about its recall (GloVe uniform: 192~24, 256~32;
            # size-proportional: 320~24, 512~32; Fashion-MNIST: 64~6, 96~8, 128~12), so a round's ratio compares
            # like with like
            if ds.name == "fashion-mnist":
                cps = [{"gamma": g} for g in (64, 96, 128)]
                ips = [{"nprobe": p} for p in (6, 8, 12)]
            else:
                cps = [{"gamma": g} for g in (192, 256, 320, 384, 512, 768)]
                ips = [{"nprobe": p} for p in (24, 32, 24, 32, 32, 32)]
            rounds = [[(cur, c), (ivf, i), (bf, {})] for c, i in zip(cps, ips)]
            for draw, (qr, tt) in draws.items():
                paired(rounds, xq[qr], tt, gts[draw], top50, ds, draw, args.out)
        # Curator against the other two baselines, also in alternation (settings of about equal recall)
        fashion = ds.name == "fashion-mnist"
        if "tenant-hnsw" in base:
            hn = base["tenant-hnsw"]
            rounds = [[(cur, {"gamma": g}), (hn, {"ef": e})]
                      for g, e in (((64, 20), (128, 40)) if fashion else ((256, 80), (384, 80), (512, 160)))]
            for draw, (qr, tt) in draws.items():
                sel = np.array([hn.covers(int(t)) for t in tt], bool)
                label = draw + ("-hnsw-subset" if args.hnsw_every > 1 else "")
                paired(rounds, xq[qr][sel], tt[sel], gts[draw][sel], top50, ds, label, args.out)
        if "shared-ivf-bitmap" in base:
            sh = base["shared-ivf-bitmap"]
            rounds = [[(cur, {"gamma": g}), (sh, {"nprobe": p})]
                      for g, p in (((64, 128),) if fashion else ((256, 512), (512, 512)))]
            m = args.pairs // 4  # the shared index needs thousands of microseconds per query at this recall
            for draw, (qr, tt) in draws.items():
                paired(rounds, xq[qr][:m], tt[:m], gts[draw][:m], top50, ds, draw, args.out)
        grow = []
        if args.paired_only:
            return lines, grow
        # memory as the number of tenants grows (prefixes of the rank order); Curator by dropping tenants
        base = {m.name: m for m in methods}
        counts = [c for c in (1000, 500, 250, 100, 10, 5, 1) if c <= len(members)]
        for c in counts:
            for t in range(c, len(members)):
                if cur.ix._known(t):
                    cur.ix.drop_tenant(t)
            cur.ix.compact()
            row = {"ntenants": c, "curator": cur.ix.memory_bytes()}
            sub = members[:c]
            vec = xb.shape[1] * 4
            row["tenant-ivf (vectors+ids)"] = int(sum(m.size * (vec + 8) for m in sub))
            if "shared-ivf-bitmap" in base:
                row["shared-ivf-bitmap"] = base["shared-ivf-bitmap"].index_bytes + c * ((n + 7) // 8)
            grow.append(row)
            append_result(args.out, {"kind": "memory_vs_tenants", "dataset": ds.key, **row})
        # update latencies on a freshly loaded full index
        from shoal.storage import LocalStore
        from shoal.index import load_index

        ix = load_index(LocalStore(tmpdir), "curator")
        upd = update_latencies(ix, xq, members, n, seed=5, n_ops=args.update_ops)
        append_result(args.out, {"kind": "updates", "method": "curator", "dataset": ds.key, **upd})
    return lines, grow


def plot(lines, grows, out_prefix):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plots", file=sys.stderr)
        return
    keys = sorted({(l["dataset"], l["draw"]) for l in lines})
    for ds_key, draw in keys:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for meth in sorted({l["method"] for l in lines}):
            pts = sorted((l["mean_us"], l["recall"]) for l in lines
                         if l["dataset"] == ds_key and l["draw"] == draw and l["method"] == meth)
            if pts:
                ax.plot([p[1] for p in pts], [p[0] for p in pts], "o-", label=meth)
        ax.set_xlabel("recall@10")
        ax.set_ylabel("mean latency per query (µs, 1 thread)")
        ax.set_yscale("log")
        ax.set_title(f"{ds_key}, tenants drawn {draw}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(f"{out_prefix}_{ds_key}_{draw}.png", dpi=110)
        plt.close(fig)
    for ds_key, grow in grows.items():
        if not grow:
            continue
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        xs = [g["ntenants"] for g in grow]
        for col in [c for c in grow[0] if c != "ntenants"]:
            ax.plot(xs, [g[col] / 2**20 for g in grow], "o-", label=col)
        ax.set_xscale("log")
        ax.set_xlabel("number of tenants")
        ax.set_ylabel("memory (MiB)")
        ax.set_title(f"{ds_key}: memory vs tenants")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(f"{out_prefix}_{ds_key}_memory.png", dpi=110)
        plt.close(fig)


def main(argv=None):
    p = bench_parser("multi-tenant search: Curator vs per-tenant and shared baselines", name="tenants")
    p.add_argument("--pairs", type=int, default=2000, help="(query, tenant) pairs per draw")
    p.add_argument("--tenants", type=int, default=1000, help="tenants of the GloVe set-up")
    p.add_argument("--per-vector", type=float, default=10.0, help="average tenants per vector (GloVe)")
    p.add_argument("--factory", default="Curator(branch=16,leaf=128,shortlist=256)")
    p.add_argument("--skip", action="append", default=[], help="baseline to leave out (repeatable; also `collection`: the Curator built through a collection)")
    p.add_argument("--update-ops", type=int, default=500, help="single-item calls per update kind")
    p.add_argument("--hnsw-every", type=int, default=None,
                   help="build per-tenant HNSW for every n-th tenant only (default: 5 for GloVe, 1 otherwise)")
    p.add_argument("--no-mmap", action="store_true",
                   help="load Curator with every array in memory (default: float32 vectors memory-mapped, as a "
                        "collection serves it)")
    p.add_argument("--paired-only", action="store_true",
                   help="only the paired (alternated) rounds: no sweeps, memory-growth or update runs, no plots")
    args = p.parse_args(argv)
    if args.quick:
        args.pairs = min(args.pairs, 300)
        args.tenants = min(args.tenants, 200)
        args.update_ops = min(args.update_ops, 100)
    lines, grows = [], {}
    every = args.hnsw_every
    for name in dataset_names(args):
        ds = dataset_from_args(args, name)
        args.hnsw_every = every or (5 if name.startswith("glove") and not args.quick else 1)
        with tempfile.TemporaryDirectory(prefix="shoal-tenants-") as tmp:
            ls, grow = run_dataset(ds, args, tmp)
        lines += ls
        grows[ds.key] = grow
        gc.collect()
    from .common import results_path

    if not args.paired_only:
        prefix = str(results_path(args.out)).rsplit(".", 1)[0]
        plot(lines, grows, prefix)


if __name__ == "__main__":
    main()
