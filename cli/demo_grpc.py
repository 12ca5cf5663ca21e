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
    p = sub.add_parser("demo-grpc", help="the GloVe demo through `shoal serve` and shoal.Client",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--data", default="data/demo-grpc", help="server data directory (default: data/demo-grpc)")
    p.add_argument("--limit", type=int, default=100_000, help="most frequent N words (default 100,000)")
    p.set_defaults(func=lambda args: run_grpc_demo(args.data, limit=args.limit))


def run_grpc_demo(data: str, *, limit: int = 100_000, out=None) -> int:
    from ..server.app import LocalServer
    from ..server.client import Client
    from .demo import QUERIES, load_glove

    def say(msg: str = "") -> None:
        print(msg, file=out or sys.stdout, flush=True)

    x, words = load_glove(limit)
    n = x.shape[0]
    attrs = {"word": words, "length": [len(w) for w in words], "rank": list(range(1, n + 1)),
             "first": [w[0] if w else None for w in words]}
    # the 10,000 most frequent words form tenant 'common', the rest 'rare' (half and half on a small --limit, so
    # that both tenants exist)
    split = min(10_000, n // 2)
    tenants = [["common"] if i < split else ["rare"] for i in range(n)]
    row = {w: i for i, w in enumerate(words)}

    with LocalServer(data, "--workers", "4") as srv:
        say(f"server pid {srv.proc.pid} listening on {srv.address}")
        with Client(srv.address, timeout=120) as client:
            client.wait_until_serving(120)
            if "glove" in client.list_collections():
                client.drop_collection("glove")
            client.create_collection("glove", x.shape[1], metric="cosine", multi_tenant=True,
                                     schema={"word": "keyword", "length": "int", "rank": "int", "first": "keyword"})
            t0 = time.perf_counter()
            acked = client.upsert("glove", np.arange(n), x, attrs=attrs, tenants=tenants)
            dt = time.perf_counter() - t0
            say(f"upserted {acked:,} words over one client stream in {dt:.1f}s ({acked / dt:,.0f} rows/s)\n")

            def show(word: str, flt=None, tenant=None) -> None:
                if word not in row:
                    say(f"'{word}' is not among the {n:,} words loaded; skipped")
                    return
                t1 = time.perf_counter()
                res = client.search("glove", x[row[word]], k=11, filter=flt, tenant=tenant, attributes=["word"])
                ms = (time.perf_counter() - t1) * 1e3
                hits = [(a["word"], s) for u, s, a in zip(res.ids[0], res.scores[0], res.attrs[0])
                        if u >= 0 and u != row[word]][:10]
                label = f"nearest to '{word}'" + (f" where {flt}" if flt else "") + \
                    (f" in tenant {tenant!r}" if tenant else "")
                say(f"{label}  ({ms:.1f} ms round trip, server {res.stats.elapsed_ms:.1f} ms)")
                say("   " + ", ".join(f"{w} {s:.2f}" for w, s in hits))

            for word, flt in QUERIES:
                show(word, flt)
            for word, tenant in TENANT_QUERIES:
                show(word, tenant=tenant)
            lat = []
            for i in range(0, min(n, 20_000), 100):
                t1 = time.perf_counter()
                client.search("glove", x[i], k=10)
                lat.append((time.perf_counter() - t1) * 1e3)
            say(f"\n{len(lat)} single-query searches, k=10: p50 {np.percentile(lat, 50):.1f} ms, "
                f"p99 {np.percentile(lat, 99):.1f} ms")
        code = srv.terminate()
    say(f"server shut down (exit status {code})")
    return 0 if code == 0 else 1
