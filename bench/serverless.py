"""Serverless fan-out on the local Lambda emulator with S3 on a moto server, plus a cost/latency model.

Measured (this machine; two shared cores, so no Lambda-scale parallelism is visible): an OSQ index over GloVe-50d
(default 100k base vectors, 8 partitions, a uniform attribute ``u``), published to S3 (moto server on loopback) in the
serverless layout and searched through boto3 -> ``shoal lambda-local``'s emulator -> coordinator / allocators /
per-partition processors, for several trees ``(b, L)``, unfiltered and with a 10% filter, cold (fresh containers)
then warm. Per run: latency of the batch, per-role compute time, invocations, cold/warm, bytes fetched from S3,
payload sizes, billed GB-s and $, recall@k against exact ground truth and equality with the in-process search of the
same index.

Modelled (Lambda scale): latency and $ per 1,000 queries vs ``(b, L, partitions)`` for a larger collection, from the
per-role costs calibrated above (processor ms per routed query and per row, level-0 ms per query, payload bytes per
query) and stated assumptions about Lambda (invoke overhead, cold start, S3 bandwidth, price). The assumptions are
printed with the table and stored in the results file.

Cold start (``bench/serverless_kernels.py``): the emulator's init phase (kernels built or found, then loaded by its
forkserver), each container's init and first invocation apart, and numba compilations inside invocations (0); the
image's kernel build for the generic CPU, a container's init phase in fresh processes (the input of the Lambda init
estimate in :mod:`shoal.serverless.cost`), and the search's speed with generic against host-CPU kernels.

Run: ``python -m bench.serverless`` (about 8-10 minutes here); ``--quick`` for a smoke run.
"""

from __future__ import annotations

import math
import os
import sys
import time
import uuid

import numpy as np

from .common import RESULTS_DIR, append_result, bench_parser, dataset_from_args, recall_at_k

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

#: stated assumptions of the Lambda-scale model (not measured here)
ASSUMPTIONS = {
    "invoke_overhead_ms": 15.0,       # warm synchronous Invoke round trip without the handler (AWS, same region)
    "issue_ms": 2.0,                  # caller CPU to serialise, sign and send one Invoke (boto3), per invocation
    "cold_start_ms": 2000.0,          # a container's init phase (image with numpy/numba); the run replaces it by
                                      # the estimate from measured init phases (bench/serverless_kernels.py)
    "s3_mb_per_s": 80.0,              # one function's S3 GET throughput
    "s3_first_byte_ms": 20.0,
    "payload_mb_per_s": 50.0,         # request/response bodies through the Lambda front end
    "memory_mb": 2048,                # every function; ~1.2 vCPU, taken as one core of this machine
    "gb_second_usd": 0.0000166667,    # x86_64, us-east-1
    "request_usd": 0.20 / 1e6,
    "compute_scale": 1.0,             # Lambda core speed relative to one core here
}


def filtered_groundtruth(q, x, mask, k, metric):
    from shoal.index.flat import exact_search

    rows = np.flatnonzero(mask)
    _, I = exact_search(q, np.ascontiguousarray(x[rows]), k, "l2" if metric == "l2" else "ip",
                        labels=rows.astype(np.int64))
    return I


def run_batch(emu, store, q, k, b, L, flt, split="partitions"):
    from shoal.serverless import client
    from shoal.serverless.invokers import LambdaInvoker

    return client.search(q, k, index=store, function="bench", allocator="bench-a", processor="bench-p{partition}",
                         invoker=LambdaInvoker(emu.url), b=b, L=L, filter=flt, split=split)


def summarize_run(r, nq, k, gt, ref_I, bounds_I=None) -> dict:
    st = r.stats
    m = r.metrics
    # calibration uses only processors that ran warm (no cold container, nothing loaded from S3)
    proc = [x for x in m if x["role"] == "processor" and not x.get("inline") and not x.get("cold")
            and not x.get("cache_misses") and not x.get("bytes_fetched")]
    rtt_over = [x["rtt_ms"] - x["ms"] for x in m if "rtt_ms" in x and not x.get("inline") and not x.get("cold")]
    # level 0: in the coordinator (partition split: the whole batch, once) or in each allocator (its query slice)
    route = [(x.get("nq", nq), x.get("route_ms", 0.0)) for x in m
             if x["role"] in ("allocator", "coordinator") and x.get("route_ms", 0.0) > 0 and not x.get("cold")]
    role_bytes = {role: sum(x.get("bytes_fetched", 0) for x in m if x["role"] == role)
                  for role in ("coordinator", "allocator", "processor")}
    return {"elapsed_ms": r.elapsed_ms, "qps": nq / (r.elapsed_ms / 1e3), "ms_per_query": r.elapsed_ms / nq,
            "invocations": st["invocations"], "inline": st["inline"], "cold": st["cold"], "warm": st["warm"],
            "ms_sum": st["ms_sum"], "ms_max": st["ms_max"], "bytes_fetched": st["bytes_fetched"],
            "get_requests": st["get_requests"], "req_bytes": st["req_bytes"], "resp_bytes": st["resp_bytes"],
            "max_req_bytes": st["max_req_bytes"], "max_resp_bytes": st["max_resp_bytes"], "gb_s": st["gb_s"],
            "cost_usd": st["cost_usd"], "usd_per_1000q": st["cost_usd"] / nq * 1000,
            "recall": recall_at_k(r.I, gt, k), "equal_inprocess": float(np.mean(np.all(r.I == ref_I, axis=1))),
            "equal_bounds": None if bounds_I is None else float(np.mean(np.all(r.I == bounds_I, axis=1))),
            "role_bytes": role_bytes, "first_ms": st.get("first_ms"), "init_ms": st.get("init_ms"),
            "compiles": st.get("compiles"), "compile_ms": st.get("compile_ms"),
            "processor_nq": [x.get("nq", 0) for x in proc], "processor_ms": [x["ms"] for x in proc],
            "processor_req_bytes": [x.get("req_bytes", 0) for x in proc],
            "invoke_overhead_ms_median": float(np.median(rtt_over)) if rtt_over else None,
            "route_ms": route}


def fit_line(xs, ys) -> tuple[float, float]:
    """Least-squares ``y = a + c x`` (a clipped at 0); a single x gives a line through the origin."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if xs.size == 0:
        return 0.0, 0.0
    if np.unique(xs).size < 2:
        return 0.0, float(ys.sum() / max(xs.sum(), 1e-9))
    c, a = np.polyfit(xs, ys, 1)
    if a < 0:
        return 0.0, float((xs * ys).sum() / (xs * xs).sum())
    return float(a), float(max(c, 0.0))


def model(calib: dict, *, b: int, L: int, P: int, N: int, Q: int, chunk: int, cold: bool,
          split: str = "partitions", A_: dict = ASSUMPTIONS) -> dict:
    """Latency (ms) of one batch of ``Q`` queries and $ per 1,000 queries at Lambda scale.

    Level 0 takes ``a + c Q`` (measured), ``a`` scaled by ``N`` and ``c`` by ``sqrt(N P)`` (the clusters ranked).
    Work: each query visits ``v`` partitions (measured), so a partition gets ``Q v / P`` queries, sent as
    ``ceil(Q v / P / chunk)`` processor invocations of at most ``chunk`` queries over ``N / P`` rows each.

    ``split="partitions"`` (two-phase): the coordinator routes the whole batch once, then sends each child the routes
    of its subtree's partitions (the processors' requests, ``1 / b^j`` of them at depth ``j``); allocators own
    partitions round-robin (``min(P, A)`` of them own some) and issue their processors' invocations, ``issue_ms`` of
    CPU each. Critical path: a hop to the coordinator, level 0, ``L`` hops down with the routes' transfer and ``b``
    issues per node, the owner's issuing, one more hop, the processor's request and work. ``split="queries"``: each
    allocator routes ``Q / A`` queries and invokes every partition its slice visits (``P`` for the batch sizes
    here), so level 0 is divided by ``A`` and processor invocations multiplied by it.

    Billing: processors for their work; every allocator for its subtree's latency (it waits for its children); the
    coordinator for the whole batch; plus a price per request. Cold: every container pays ``cold_start_ms`` (its
    init phase, billed like an invocation) and loads what its role reads:
    the coordinator (or, split by queries, each allocator) the level-0 data, a processor its partition (a batch of
    ``chunk`` queries reads nearly all of it).
    """
    from shoal.serverless.tree import Tree

    tree = Tree(b, L)
    A = tree.n_allocators
    scale_rows = (N / P) / calib["rows_per_partition"]
    scale_n = N / calib["n"]
    v = calib["partitions_visited"]
    by_queries = split == "queries" and A
    if by_queries:
        owners, Qr = A, Q / A                      # every allocator routes its slice over all partitions
        p_vis = P * (1 - (1 - v / P) ** Qr)        # partitions a slice visits
        nq_p = Qr * v / p_vis
    else:
        owners, Qr = (min(P, A) if A else 1), Q    # the coordinator routes the whole batch
        p_vis, nq_p = P, Q * v / P
    per_inv = min(chunk, nq_p) if chunk else nq_p
    n_chunks = math.ceil(nq_p / per_inv) if nq_p else 0
    n_proc = round((A if by_queries else 1) * p_vis * n_chunks)
    hop = A_["invoke_overhead_ms"]
    issue = A_["issue_ms"]
    mbps = A_["payload_mb_per_s"]
    proc_ms = (calib["proc_a_ms"] + calib["proc_c_ms"] * per_inv * scale_rows) / A_["compute_scale"]
    # level 0: a per-batch part over all N rows (attribute codes, counts) and a per-query part that ranks the
    # partitions' clusters (about sqrt(N P) of them with OSQ's default clusters = sqrt(rows per partition))
    scale_rank = math.sqrt(N * P / (calib["n"] * calib["partitions"]))
    route_ms = (calib["route_a_ms"] * scale_n + calib["route_c_ms"] * Qr * scale_rank) / A_["compute_scale"]
    req_mb = (calib["proc_req_bytes_per_query"] * per_inv + calib["proc_req_bytes_fixed"] * scale_rows) / 1e6
    xfer_ms = req_mb / mbps * 1e3 + Qr * calib["query_bytes"] / 1e6 / mbps * 1e3
    # two-phase: the routes (every processor's request) travel down the tree, 1/b^j of them to a node at depth j
    routes_ms = 0.0 if by_queries else sum(n_proc * req_mb / b ** j for j in range(1, L + 1)) / mbps * 1e3
    cold_l0 = cold_alloc = cold_proc = 0.0
    if cold:
        first = A_["cold_start_ms"] + A_["s3_first_byte_ms"]
        cold_l0 = first + calib["level0_bytes"] * scale_n / 1e6 / A_["s3_mb_per_s"] * 1e3
        cold_alloc = cold_l0 if by_queries else A_["cold_start_ms"]
        cold_proc = first + calib["partition_bytes"] * scale_rows / 1e6 / A_["s3_mb_per_s"] * 1e3
    cold_coord = (cold_alloc if L else cold_l0) if by_queries else cold_l0
    issue_ms = math.ceil(n_proc / owners) * issue
    below = hop + xfer_ms + proc_ms + cold_proc      # from an owner's issue to its processors' answers
    if by_queries:
        share_ms = route_ms + issue_ms + below
        latency = hop + cold_coord + L * (hop + cold_alloc) + L * b * issue + share_ms
    else:
        share_ms = issue_ms + below
        latency = hop + cold_coord + route_ms + L * (hop + cold_alloc) + routes_ms + L * b * issue + share_ms
    gb = A_["memory_mb"] / 1024
    billed_ms = n_proc * (proc_ms + cold_proc)
    for depth in range(1, L + 1):  # each allocator: its own cold start, then waiting for its subtree
        billed_ms += b ** depth * (cold_alloc + (L - depth) * (hop + cold_alloc + b * issue) + share_ms)
    billed_ms += latency - hop  # the coordinator
    requests = 1 + A + n_proc
    usd = billed_ms / 1e3 * gb * A_["gb_second_usd"] + requests * A_["request_usd"]
    return {"b": b, "L": L, "split": split, "partitions": P, "allocators": A, "chunk": chunk, "invocations": requests,
            "latency_ms": latency, "ms_per_query": latency / Q, "usd_per_batch": usd, "usd_per_1000q": usd / Q * 1000}


def main(argv=None) -> int:
    p = bench_parser("serverless fan-out on the local Lambda emulator + moto S3, and a Lambda-scale model",
                     datasets=("glove-50",), name="serverless", default_nq=200)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--trees", default="1x1,2x1,4x1,2x2", help="b x L settings to measure (split=partitions)")
    p.add_argument("--query-split-trees", default="2x1,2x2", help="b x L settings measured with split=queries")
    p.add_argument("--warm-batches", type=int, default=3)
    p.add_argument("--cold-small", type=lambda v: [int(x) for x in v.split(",") if x], default=[1, 10, 50],
                   help="sizes of cold batches whose processor fetches are reported (vector rows by range)")
    p.add_argument("--max-workers", type=int, default=24, help="emulator concurrency")
    p.add_argument("--selectivity", type=float, default=0.1, help="filter u < S on a uniform attribute")
    p.add_argument("--model-n", type=int, default=1_000_000, help="collection size for the model")
    p.add_argument("--model-q", type=int, default=1000, help="queries per batch for the model")
    p.add_argument("--model-chunk", type=int, default=50, help="queries per processor invocation in the model")
    p.add_argument("--plot", default="serverless.png", help="plot file under bench/results/")
    p.add_argument("--kernels", default=None, metavar="DIR",
                   help="the emulator's compiled-kernels directory (default: shoal lambda-local's)")
    p.add_argument("--no-kernels", action="store_true",
                   help="skip the cold-start measurements of compiled kernels (generic build, fresh init phases)")
    args = p.parse_args(argv)
    if args.nb is None and not args.quick:
        args.nb = 100_000
    from shoal import filters
    from shoal.storage import S3Store
    from shoal.index.osq import OSQIndex
    from shoal.index.persist import load_meta
    from shoal.serverless.emulator import Emulator, default_kernels_dir, describe_init, start_moto_server
    from shoal.serverless.osq_backend import OSQBackend
    from shoal.serverless.backends import search_inprocess

    ds = dataset_from_args(args)
    x, q = ds.get_database(), ds.get_queries()
    n, d, nq, k = x.shape[0], x.shape[1], q.shape[0], args.k
    u = np.random.default_rng(42).random(n)
    print(f"data: {ds.key} n={n} d={d} nq={nq} metric={ds.metric}; partitions={args.partitions}", flush=True)
    t0 = time.perf_counter()
    index = OSQIndex(d, ds.metric, partitions=args.partitions)
    index.train(x)
    index.add(x, np.arange(n, dtype=np.int64), attrs={"u": u})
    build_s = time.perf_counter() - t0
    flt_text = f"u < {args.selectivity:g}"
    cases = {"none": (None, ds.get_groundtruth(k)[:, :k]),
             flt_text: (filters.to_json(filters.parse(flt_text)),
                        filtered_groundtruth(q, x, u < args.selectivity, k, ds.metric))}
    moto, endpoint = start_moto_server()
    emu = None
    try:
        bucket = "shoal-bench-" + uuid.uuid4().hex[:8]
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=bucket)
        store = S3Store(bucket, "glove", endpoint_url=endpoint)
        manifest = OSQBackend.publish(store, index)
        objs = s3.list_objects_v2(Bucket=bucket, Prefix="glove/")["Contents"]
        sizes = {o["Key"]: o["Size"] for o in objs}
        # what each role fetches, by the loaders' own lists (the full index's unrotated copy is neither)
        arrays = load_meta(store, f"versions/{manifest['version']}/osq")["arrays"]
        osq_prefix = f"glove/versions/{manifest['version']}/osq/"

        def nbytes(names):
            return sum(sizes[f"{osq_prefix}{n}.npy"] for n in names)
        part_bytes = [nbytes(OSQIndex.partition_array_names(arrays, pp)) for pp in range(args.partitions)]
        l0_bytes = nbytes(OSQIndex.level0_array_names(arrays))
        print(f"published version {manifest['version']}: {sum(sizes.values()) / 1e6:.1f} MB in S3 "
              f"({np.mean(part_bytes) / 1e6:.2f} MB per partition, level 0 {l0_bytes / 1e6:.2f} MB)", flush=True)
        # in-process reference: the same index, one process
        inproc, bounds = {}, {}
        for name, (flt, gt) in cases.items():
            Dr, Ir = search_inprocess(store, q, k, filter=flt)
            t = time.perf_counter()
            D0, I0, st0 = index.search_with_stats(q, k, filter=None if flt is None else flt_text)
            inproc_s = time.perf_counter() - t
            inproc[name] = Ir
            # the full in-memory index with the level-2 keys processors use (they hold codes, not vectors)
            bounds[name] = index.search(q, k, filter=None if flt is None else flt_text,
                                        params={"level2": "bounds"})[1]
            rec = {"phase": "in-process", "filter": name, "nq": nq, "qps": nq / inproc_s,
                   "recall": recall_at_k(Ir, gt, k), "recall_index_search": recall_at_k(I0, gt, k),
                   "equal_bounds": float(np.mean(np.all(Ir == bounds[name], axis=1))),
                   "partitions_visited": st0.get("partitions_visited"), "dataset": ds.key,
                   "build_s": build_s, "n": n}
            append_result(args.out, rec)
        emu = Emulator(max_workers=args.max_workers, timeout=300, memory_mb=ASSUMPTIONS["memory_mb"],
                       env={"SHOAL_S3_ENDPOINT": endpoint}, kernels_dir=args.kernels or default_kernels_dir())
        emu.start()
        print("emulator:", describe_init(emu.init), flush=True)
        append_result(args.out, {"phase": "emulator-init", **emu.init, "dataset": ds.key}, echo=False)
        runs = []
        configs = [(spec, "partitions", name) for spec in args.trees.split(",") for name in cases]
        configs += [(spec, "queries", "none") for spec in args.query_split_trees.split(",") if spec]
        for spec, split, name in configs:
            b, L = (int(v) for v in spec.lower().split("x"))
            flt, gt = cases[name]
            emu.kill_idle()
            for i in range(1 + args.warm_batches):
                phase = "cold" if i == 0 else "warm"
                emu.reset_stats()
                r = run_batch(emu, store, q, k, b, L, flt, split)
                rec = {"phase": phase, "b": b, "L": L, "split": split, "filter": name, "nq": nq, "dataset": ds.key,
                       "n": n, "partitions": args.partitions,
                       **summarize_run(r, nq, k, gt, inproc[name], bounds[name]), "emulator": emu.stats()}
                runs.append(rec)
                short = {kk: rec[kk] for kk in ("phase", "b", "L", "split", "filter", "elapsed_ms", "recall",
                                                "equal_inprocess", "equal_bounds", "bytes_fetched", "role_bytes",
                                                "usd_per_1000q", "compiles")}
                if phase == "cold":
                    short.update(first_ms=rec["first_ms"],
                                 container_init_ms=rec["emulator"]["container_init_ms"]["median"])
                print(short, flush=True)
                append_result(args.out, rec, echo=False)
        # cold small batches: what fresh processors fetch when they search few queries: the codes of the clusters
        # they visit and the vector rows level 3 re-ranks (ranged GETs), against their partitions' whole objects
        code_bytes = [nbytes(OSQIndex.partition_array_names(arrays, pp, vectors=False))
                      for pp in range(args.partitions)]
        for nsmall in args.cold_small:
            sub = q[:nsmall]
            emu.kill_idle()
            emu.reset_stats()
            r = run_batch(emu, store, sub, k, 1, 1, None)
            procs = [m_ for m_ in r.metrics if m_["role"] == "processor"]
            visited_p = sorted({m_["partition"] for m_ in procs})
            got = sum(m_.get("bytes_fetched", 0) for m_ in procs)
            rec = {"phase": "cold-small", "b": 1, "L": 1, "filter": "none", "nq": nsmall, "dataset": ds.key, "n": n,
                   "partitions": args.partitions, "partitions_loaded": len(visited_p),
                   "processor_bytes": got, "processor_gets": sum(m_.get("get_requests", 0) for m_ in procs),
                   "whole_partition_bytes": sum(part_bytes[pp] for pp in visited_p),
                   "code_bytes": sum(code_bytes[pp] for pp in visited_p),
                   **summarize_run(r, nsmall, k, cases["none"][1][:nsmall], inproc["none"][:nsmall])}
            rec["processor_fraction"] = rec["processor_bytes"] / max(1, rec["whole_partition_bytes"])
            print({kk: rec[kk] for kk in ("phase", "nq", "partitions_loaded", "processor_bytes", "code_bytes",
                                          "whole_partition_bytes", "processor_fraction", "processor_gets",
                                          "role_bytes", "elapsed_ms", "equal_inprocess")}, flush=True)
            append_result(args.out, rec, echo=False)
        # warm batches of other sizes on one tree: processor time vs routed queries for the calibration
        flt, gt = cases["none"]
        for frac in (4, 2):
            sub = q[:max(1, nq // frac)]
            for i in range(args.warm_batches):
                emu.reset_stats()
                r = run_batch(emu, store, sub, k, 2, 1, None)
                rec = {"phase": "warm", "b": 2, "L": 1, "filter": "none", "nq": sub.shape[0], "dataset": ds.key,
                       "n": n, "partitions": args.partitions,
                       **summarize_run(r, sub.shape[0], k, gt[:sub.shape[0]], inproc["none"][:sub.shape[0]]),
                       "emulator": emu.stats()}
                runs.append(rec)
                print({kk: rec[kk] for kk in ("phase", "nq", "elapsed_ms", "bytes_fetched", "equal_inprocess")},
                      flush=True)
                append_result(args.out, rec, echo=False)
        # calibration from the warm runs
        warm = [r_ for r_ in runs if r_["phase"] == "warm"]
        pn = sum((r_["processor_nq"] for r_ in warm), [])
        pm = sum((r_["processor_ms"] for r_ in warm), [])
        pb = sum((r_["processor_req_bytes"] for r_ in warm), [])
        proc_a, proc_c = fit_line(pn, pm)
        breq_a, breq_c = fit_line(pn, pb)
        # level 0 per batch: a + c * nq, from the unfiltered warm runs (batches of nq/4, nq/2, nq)
        rq = [a for r_ in warm if r_["filter"] == "none" for a, _ in r_["route_ms"]]
        rm = [t for r_ in warm if r_["filter"] == "none" for _, t in r_["route_ms"]]
        route_a, route_c = fit_line(rq, rm)
        visited = index.search_with_stats(q, k)[2].get("partitions_visited", args.partitions)
        calib = {"n": n, "rows_per_partition": n / args.partitions, "partitions_visited": float(visited),
                 "partitions": args.partitions, "proc_a_ms": proc_a, "proc_c_ms": proc_c, "route_a_ms": route_a,
                 "route_c_ms": route_c,
                 "proc_req_bytes_per_query": breq_c, "proc_req_bytes_fixed": breq_a, "query_bytes": d * 4 * 4 / 3,
                 "partition_bytes": float(np.mean(part_bytes)), "level0_bytes": float(l0_bytes),
                 "invoke_overhead_local_ms": float(np.median([r_["invoke_overhead_ms_median"] for r_ in warm
                                                               if r_["invoke_overhead_ms_median"] is not None]))}
        assumptions = dict(ASSUMPTIONS)
        if not args.no_kernels:
            # cold start: the image's kernels (generic CPU), a container's init phase, generic vs host speed; the
            # model's cold start is then the init phase estimated from these measurements
            from .serverless_kernels import kernel_phase

            ests = []
            for rec_ in kernel_phase(host_kernels=emu.kernels_dir, index_uri=store.uri, queries=q,
                                     filter_text=flt_text, s3_endpoint=endpoint):
                append_result(args.out, {**rec_, "dataset": ds.key}, echo=False)
                if rec_["phase"] == "kernels-init":
                    ests.append(rec_["lambda_init_estimate_ms"])
            assumptions["cold_start_ms"] = float(np.median(ests))
        append_result(args.out, {"phase": "calibration", **calib, "assumptions": assumptions, "dataset": ds.key})
        print("calibration:", {kk: round(v, 4) if isinstance(v, float) else v for kk, v in calib.items()})
        print("assumptions:", assumptions)
        rows = []
        for split in ("partitions", "queries"):
            for P in (16, 64):  # noqa: N806
                for b, L in ((1, 1), (2, 1), (4, 1), (2, 2), (4, 2), (8, 2), (2, 3), (4, 3)):
                    for cold in (False, True):
                        m = model(calib, b=b, L=L, P=P, N=args.model_n, Q=args.model_q, chunk=args.model_chunk,
                                  cold=cold, split=split, A_=assumptions)
                        m["cold"] = cold
                        rows.append(m)
                        append_result(args.out, {"phase": "model", "N": args.model_n, "Q": args.model_q, **m},
                                      echo=False)
        print(f"\nmodel: N={args.model_n:,} vectors, batches of Q={args.model_q} queries, "
              f"{args.model_chunk} queries per processor invocation, {assumptions['memory_mb']} MB functions, "
              f"cold start {assumptions['cold_start_ms']:.0f} ms")
        print(f"{'split':>10} {'P':>4} {'b':>3} {'L':>3} {'alloc':>6} {'invocs':>7} {'warm ms':>9} {'ms/query':>9} "
              f"{'$/1k warm':>10} {'cold ms':>9} {'$/1k cold':>10}")
        for i in range(0, len(rows), 2):
            w, c = rows[i], rows[i + 1]
            print(f"{w['split']:>10} {w['partitions']:>4} {w['b']:>3} {w['L']:>3} {w['allocators']:>6} "
                  f"{w['invocations']:>7} {w['latency_ms']:>9.1f} {w['ms_per_query']:>9.3f} "
                  f"{w['usd_per_1000q']:>10.2e} {c['latency_ms']:>9.1f} {c['usd_per_1000q']:>10.2e}")
        plot(rows, runs, args.plot if os.path.dirname(args.plot) else RESULTS_DIR / args.plot)
    finally:
        if emu is not None:
            emu.stop()
        moto.terminate()
        moto.wait(10)
    return 0


def plot(rows, runs, path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    path = str(path)
    if path.endswith(".jsonl"):
        path = path[:-6] + ".png"
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for P, split in sorted({(r["partitions"], r["split"]) for r in rows}):
        for cold, style in ((False, "-o"), (True, "--s")):
            if cold and P != max(r["partitions"] for r in rows):
                continue
            sel = sorted((r for r in rows if r["partitions"] == P and r["cold"] == cold and r["split"] == split),
                         key=lambda r: (r["allocators"], r["L"]))
            lab = f"P={P} {split} {'cold' if cold else 'warm'}"
            axes[0].plot([r["allocators"] for r in sel], [r["latency_ms"] for r in sel], style, label=lab)
            axes[1].plot([r["allocators"] for r in sel], [r["usd_per_1000q"] for r in sel], style, label=lab)
    for ax, title in ((axes[0], "model: batch latency (ms)"), (axes[1], "model: $ per 1,000 queries")):
        ax.set_xscale("symlog")
        ax.set_yscale("log")
        ax.set_xlabel("allocators (b + ... + b^L)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    meas = [r for r in runs if r["phase"] == "warm" and r["filter"] == "none" and "split" in r]
    labels = sorted({(r["b"], r["L"], r["split"]) for r in meas})
    for phase, color in (("cold", "tab:red"), ("warm", "tab:blue")):
        ys = [np.median([r["elapsed_ms"] for r in runs if r["phase"] == phase and (r["b"], r["L"], r.get("split")) == bl
                         and r["filter"] == "none"]) for bl in labels]
        axes[2].bar([i + (0.2 if phase == "warm" else -0.2) for i in range(len(labels))], ys, 0.4, label=phase,
                    color=color)
    axes[2].set_xticks(range(len(labels)), [f"{b}x{L}\n{sp[0]}" for b, L, sp in labels], fontsize=8)
    axes[2].set_yscale("log")
    axes[2].set_title("measured here (emulator, 2 cores): batch ms")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


if __name__ == "__main__":
    sys.exit(main())
