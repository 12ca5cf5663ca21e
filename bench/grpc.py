"""gRPC overhead: the same collection searched in-process and through ``shoal serve`` + ``shoal.Client``.

    python -m bench.grpc                      # GloVe-50d, 20k base vectors, Flat; 1, 2, 4, 8 concurrent clients
    python -m bench.grpc --dataset synthetic:n=20000,d=64 --index Flat --clients 1,2,4,8

For each concurrency level c, c threads each send single-query searches (k=10) back to back, each with its own
client/channel; in-process, c threads call ``Collection.search`` directly on the same collection opened read-only
beside the server. The two are timed in alternation (``--rounds``, each method's best round kept). Reported per level: QPS, p50 and p99
latency, and the gRPC/in-process ratios; a call that does no work (ListCollections) gives the fixed per-call cost.
Upsert throughput is measured through the server as unary calls (one call per batch) and as one client stream carrying
the same batches. BLAS, faiss and numba run single-threaded in both the server and the in-process runs. Two
reference calls give the floor: the standard ``grpc.health.v1`` Check (what any gRPC call costs on this machine) and
ListCollections (a shoal call doing no work: authentication, the handler, counters).
Results: ``bench/results/grpc.jsonl``; plot: ``bench/results/grpc.png``.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .common import append_result, bench_parser, dataset_from_args, results_path, thread_limit

SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                     "NUMBA_NUM_THREADS": "1"}


def run_clients(search_one, queries: np.ndarray, clients: int, per_client: int, warmup: int = 10) -> dict:
    """``clients`` threads each call ``search_one(worker, query)`` ``per_client`` times; QPS and latency percentiles."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def worker(w: int) -> None:
        try:
            for i in range(warmup):
                search_one(w, queries[(w * 7919 + i) % len(queries)])
            start.wait()
            for i in range(per_client):
                q = queries[(w * 7919 + warmup + i) % len(queries)]
                t0 = time.perf_counter()
                search_one(w, q)
                lat[w].append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1000.0
    return {"clients": clients, "queries": int(all_lat.size), "seconds": wall, "qps": all_lat.size / wall,
            "p50_ms": float(np.percentile(all_lat, 50)), "p99_ms": float(np.percentile(all_lat, 99)),
            "mean_ms": float(all_lat.mean())}


def upsert_throughput(client, name: str, dim: int, xb: np.ndarray, batch: int, stream: bool) -> dict:
    client.create_collection(name, dim)
    ids = np.arange(xb.shape[0], dtype=np.int64)
    t0 = time.perf_counter()
    if stream:
        n = client.upsert(name, ids, xb, batch_size=batch, stream=True)
    else:
        n = sum(client.upsert(name, ids[s:s + batch], xb[s:s + batch], stream=False)
                for s in range(0, xb.shape[0], batch))
    seconds = time.perf_counter() - t0
    assert n == xb.shape[0] and client.count(name) == xb.shape[0]
    client.drop_collection(name)
    return {"rows": int(n), "batch": batch, "seconds": seconds, "rows_per_s": n / seconds}


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style, color in (("in-process", "o-", "C0"), ("grpc", "s-", "C1")):
        rows = sorted((r for r in records if r.get("mode") == mode), key=lambda r: r["clients"])
        if not rows:
            continue
        c = [r["clients"] for r in rows]
        a.plot(c, [r["qps"] for r in rows], style, color=color, label=mode)
        b.plot(c, [r["p50_ms"] for r in rows], style, color=color, label=f"{mode} p50")
        b.plot(c, [r["p99_ms"] for r in rows], style.replace("-", "--"), color=color, alpha=0.6, label=f"{mode} p99")
    for ax, title, ylabel in ((a, "throughput", "queries / s"), (b, "latency", "ms")):
        ax.set_xscale("log", base=2)
        levels = sorted({r["clients"] for r in records})
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"shoal gRPC vs in-process search ({records[0].get('dataset')}, k={records[0].get('k')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = bench_parser("gRPC overhead: search QPS/latency vs in-process, upsert unary vs streaming",
                     datasets=("glove-50",), default_nq=1000, name="grpc")
    p.set_defaults(nb=20_000)
    g = p.add_argument_group("grpc")
    g.add_argument("--index", default="Flat", help="factory string of the collection's index")
    g.add_argument("--clients", default="1,2,4,8", help="concurrency levels")
    g.add_argument("--per-client", type=int, default=300, help="single-query searches per client and level")
    g.add_argument("--upsert-batch", type=int, default=500, help="rows per upsert call / stream message")
    g.add_argument("--workers", type=int, default=8, help="server worker threads")
    g.add_argument("--rounds", type=int, default=3, help="alternating rounds per level; each method's best is kept")
    args = p.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    os.environ.update(SINGLE_THREAD_ENV)  # inherited by the server process

    from shoal import Client
    from shoal.engine import Database
    from shoal.server.app import LocalServer

    ds = dataset_from_args(args)
    xb, xq = ds.get_database(), ds.get_queries()
    dim, k = xb.shape[1], args.k
    metric = getattr(ds, "metric", "l2")
    per_client = min(args.per_client, 50) if args.quick else args.per_client
    base = {"bench": "grpc", "dataset": ds.key, "nb": int(xb.shape[0]), "k": k,
            "index": args.index, "metric": metric}
    records = []
    with tempfile.TemporaryDirectory(prefix="shoal-bench-grpc-") as tmp:
        data = Path(tmp) / "data"
        db = Database(str(data))
        col = db.create_collection("bench", dim=dim, metric=metric, index=args.index)
        col.upsert(np.arange(xb.shape[0]), xb)
        col.build(index=args.index)
        db.close()

        with LocalServer(data, "--workers", str(args.workers)) as srv:
            clients = [Client(srv.address, timeout=60) for _ in range(max(levels))]
            clients[0].wait_until_serving(120)
            # the same collection in this process, read-only beside the server
            db = Database(str(data), read_only=True)
            col = db.collection("bench")
            ref_ids = col.search(xq[:50], k=k).ids
            # the floor of any call on this machine: the standard health check (no auth, no shoal handler), then
            # the fixed cost of a shoal call that does no work (ListCollections), one client each
            r = run_clients(lambda w, q: clients[w].health(), xq, 1, per_client)
            records.append(append_result(args.out, {**base, "method": "grpc-health", "mode": "grpc-health", **r}))
            r = run_clients(lambda w, q: clients[w].list_collections(), xq, 1, per_client)
            records.append(append_result(args.out, {**base, "method": "grpc-noop", "mode": "grpc-noop", **r}))
            methods = {"in-process": lambda w, q: col.search(q[None, :], k=k),
                       "grpc": lambda w, q: clients[w].search("bench", q, k=k)}
            with thread_limit(1):
                for c in levels:
                    best: dict = {}
                    for _ in range(args.rounds):  # alternate, keep each method's best round (least disturbed)
                        for name, fn in methods.items():
                            r = run_clients(fn, xq, c, per_client)
                            if name not in best or r["qps"] > best[name]["qps"]:
                                best[name] = r
                    ref, r = best["in-process"], best["grpc"]
                    r.update(qps_ratio=ref["qps"] / r["qps"], p50_ratio=r["p50_ms"] / ref["p50_ms"],
                             p50_overhead_ms=r["p50_ms"] - ref["p50_ms"])
                    for name in methods:
                        records.append(append_result(args.out, {**base, "method": name, "mode": name,
                                                                "rounds": args.rounds, **best[name]}))
            db.close()
            # the server answers exactly what the engine answers in-process
            same = bool(np.array_equal(clients[0].search("bench", xq[:50], k=k).ids, ref_ids))
            if not same:
                raise SystemExit("gRPC results differ from in-process results")
            nup = min(xb.shape[0], 20_000)
            for stream in (False, True):
                r = upsert_throughput(clients[0], f"ingest_{int(stream)}", dim, xb[:nup], args.upsert_batch, stream)
                mode = "upsert-stream" if stream else "upsert-unary"
                records.append(append_result(args.out, {**base, "method": mode, "mode": mode, **r}))
            for cl in clients:
                cl.close()
    png = results_path(args.out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    plot([r for r in records if r.get("mode") in ("grpc", "in-process")], png)
    print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
