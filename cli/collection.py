"""``shoal build``, ``shoal search`` and ``shoal info``: collections in a data directory, from and to files."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgument, ShoalError
from .common import Progress, add_parser, infer_type, parse_param, parse_schema_arg, read_queries, read_vectors
from .results import from_search_result, print_json, print_table


# ---------------------------------------------------------------------- build
def add_build(sub) -> None:
    p = add_parser(
        sub, "build", help="build a collection from a vectors file (+ attributes, tenants)",
        description="""Load vectors (and optionally attributes and tenants) into a new collection in a data
directory, build its index and print a summary.

Vectors: .npy, .fvecs, .bvecs, .ivecs, ann-benchmarks .hdf5 (train split), .parquet, .csv, .jsonl. Attributes:
.parquet, .csv, .jsonl, one row per vector in the same order. Attribute types are inferred (integers -> int, other
numbers -> float, strings -> keyword, lists -> tags) unless given with --schema; a column whose values are mostly
numbers but not all is refused, naming the row, rather than silently read as text.

The build is all or nothing: the whole input is checked first (an id that appears twice anywhere in the input is
refused, naming both rows), then built in memory and published at once. A failure or Ctrl-C leaves an existing
collection as it was and a new name absent.

Exit status: 0 built; 2 bad input, a name that exists (without --overwrite) or a collection another process holds;
1 other errors; 130 interrupted.""",
        epilog="""examples:
  shoal build base.fvecs --data data --name sift --index "IVF1024,PQ16x8"
  shoal build emb.npy --attrs meta.csv --ids doc_id --tenants owner --data data --name docs --metric cosine""")
    p.add_argument("vectors", help="vectors file (.npy, .fvecs, .bvecs, .ivecs, .hdf5, .parquet, .csv, .jsonl)")
    p.add_argument("--key", help="dataset of an .hdf5 vectors file (default: train, as in ann-benchmarks files)")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory (created if missing)")
    p.add_argument("--name", required=True, help="collection name")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"],
                   help="l2: Euclidean distance; ip: inner product; cosine: cosine similarity")
    p.add_argument("--index", default="Flat",
                   help='index factory string, e.g. Flat, "IVF1024,PQ16x8,Refine", "Curator(branch=16)", '
                        '"OSQ(partitions=16)" (docs/ivfpq.md, docs/curator.md, docs/osq.md)')
    p.add_argument("--attrs", metavar="FILE", help="attributes file (.parquet, .csv, .jsonl), one row per vector")
    p.add_argument("--schema", metavar="NAME:TYPE,...",
                   help="attribute types, overriding inference (types: int, float, keyword, tags; CSV tags cells "
                        "are ';'-separated)")
    p.add_argument("--ids", metavar="COLUMN|FILE",
                   help="ids: a column of the attributes file, or a file (.npy, .ivecs, .txt with one id per line, "
                        "or a table with an 'id' column); default: the attributes file's 'id' column if it has one, "
                        "else 0..n-1")
    p.add_argument("--tenants", metavar="COLUMN|FILE",
                   help="tenants: a column of the attributes file (a list of names, or names separated by ';'), "
                        "or a file with a 'tenants' column; makes the collection multi-tenant")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N vectors (default: all)")
    p.add_argument("--batch", type=int, default=50_000, metavar="N", help="vectors per write batch")
    p.add_argument("--train-kwargs", metavar="JSON",
                   help="JSON object passed to the index's train(), e.g. '{\"niter\": 10}'")
    p.add_argument("--train-queries", metavar="FILE",
                   help="IVF: training queries (same formats and dimension as the vectors) for supervised "
                        "centroid tuning; needs --train-positives (docs/ivfpq.md)")
    p.add_argument("--train-positives", metavar="QRELS",
                   help="IVF: relevant ids of each training query, lines 'QUERY_ROW<TAB>ID' or TREC qrels "
                        "'QUERY_ROW 0 ID REL' (REL > 0 kept)")
    p.add_argument("--gpu", action="store_true",
                   help="IVF: run k-means training on the GPU (needs faiss-gpu-cu12 in place of faiss-cpu: "
                        "make gpu; an error if no GPU is seen)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing collection of that name (at the very end, in one step)")
    p.add_argument("--out", metavar="URI",
                   help="also copy the finished collection to this store (s3://bucket/prefix or a directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_build)


def _load_inputs(args) -> tuple[np.ndarray | None, dict[str, Any], list[list[str]] | None]:
    """Ids, attribute columns and tenants from the files named by ``--attrs``, ``--ids`` and ``--tenants``."""
    from . import readers

    ids = None
    cols: dict[str, Any] = {}
    tenants = None
    ids_file = args.ids is not None and os.path.exists(args.ids)
    tenants_file = args.tenants is not None and os.path.exists(args.tenants)
    if args.attrs:
        id_column = readers.ID_COLUMN if args.ids is None or ids_file else args.ids
        override = parse_schema_arg(args.schema)
        ids, cols = readers.read_attributes(args.attrs, id_column=id_column, schema=override or None)
        if args.ids is not None and not ids_file and ids is None:
            raise InvalidArgument(f"--ids {args.ids!r}: no such column in {args.attrs} and no such file")
        if args.tenants is not None and not tenants_file:
            if args.tenants not in cols:
                raise InvalidArgument(f"--tenants {args.tenants!r}: no such column in {args.attrs} and no such file")
            del cols[args.tenants]
            tenants = readers.read_tenants(args.attrs, column=args.tenants, id_column=None)
    elif args.ids is not None and not ids_file:
        raise InvalidArgument(f"--ids {args.ids!r}: no such file (a column name needs --attrs)")
    elif args.tenants is not None and not tenants_file:
        raise InvalidArgument(f"--tenants {args.tenants!r}: no such file (a column name needs --attrs)")
    if ids_file:
        ids = readers.read_ids(args.ids)
    if tenants_file:
        tenants = readers.read_tenants(args.tenants)
    return ids, cols, tenants


def read_qrels(path: str, ids: np.ndarray, nq: int) -> list[np.ndarray]:
    """Relevant rows of the input vectors for each training query, from a qrels file of user ids.

    Lines are ``QUERY_ROW<TAB>ID`` or TREC style ``QUERY_ROW 0 ID RELEVANCE`` (relevance > 0 kept); ``#`` comments and
    blank lines are skipped. Ids not among the input vectors are ignored.
    """
    row_of = {int(v): r for r, v in enumerate(np.asarray(ids).tolist())}
    out: list[list[int]] = [[] for _ in range(nq)]
    with open(path) as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            try:
                if len(parts) == 2:
                    qi, did, rel = int(parts[0]), int(parts[1]), 1.0
                elif len(parts) == 4:
                    qi, did, rel = int(parts[0]), int(parts[2]), float(parts[3])
                else:
                    raise ValueError
            except ValueError:
                raise InvalidArgument(f"{path}:{no}: expected 'QUERY_ROW ID' or 'QUERY_ROW 0 ID REL', got {line.strip()!r}") from None
            if not 0 <= qi < nq:
                raise InvalidArgument(f"{path}:{no}: query row {qi} out of range (queries: {nq})")
            if rel > 0 and did in row_of:
                out[qi].append(row_of[did])
    return [np.array(r, dtype=np.int64) for r in out]


def _train_accepts(spec: str, dim: int, name: str) -> bool:
    """Whether the index kind ``spec`` names takes the keyword ``name`` in ``train`` (IVF-PQ takes ``progress``, a
    callable it reports its stages to, and ``gpu``)."""
    import inspect

    from ..index.factory import index_factory

    try:
        return name in inspect.signature(index_factory(dim, spec).train).parameters
    except ShoalError:      # a bad spec is reported by create_collection, with the collection's context
        return False


def cmd_build(args) -> int:
    from ..engine import Database
    from ..engine.schema import Schema
    from ..index.validate import as_vectors

    t0 = time.time()
    prog = Progress(not args.quiet)
    x = read_vectors(args.vectors, args.key)
    if x.ndim != 2:
        raise InvalidArgument(f"{args.vectors}: expected a 2-d array of vectors, got shape {x.shape}")
    if args.limit is not None:
        x = x[:args.limit]
    n, dim = x.shape
    ids, cols, tenants = _load_inputs(args)
    ids = (np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids))[:n]
    for name in list(cols):
        cols[name] = cols[name][:n]
        if len(cols[name]) != n:
            raise InvalidArgument(f"attribute {name!r} has {len(cols[name])} rows for {n} vectors")
    if tenants is not None:
        tenants = tenants[:n]
    if len(ids) != n:
        raise InvalidArgument(f"got {len(ids)} ids for {n} vectors")
    schema = {name: infer_type(name, values, f" ({args.attrs})") for name, values in cols.items()}
    override = parse_schema_arg(args.schema)
    unknown = set(override) - set(schema)
    if unknown:
        raise InvalidArgument(f"--schema names attributes not in {args.attrs or 'the input'}: {sorted(unknown)}")
    schema.update(override)
    train_kwargs = json.loads(args.train_kwargs) if args.train_kwargs else None
    if bool(args.train_queries) != bool(args.train_positives):
        raise InvalidArgument("--train-queries and --train-positives go together")
    if args.train_queries:
        # rows of the vectors file are the rows the index trains on (a fresh build keeps the file's order)
        tq = read_vectors(args.train_queries)
        train_kwargs = dict(train_kwargs or {})
        train_kwargs["train_queries"] = tq
        train_kwargs["train_positives"] = read_qrels(args.train_positives, ids, tq.shape[0])
    if args.batch < 1:
        raise InvalidArgument("--batch must be positive")
    if not args.quiet and _train_accepts(args.index, dim, "progress"):
        train_kwargs = {"progress": prog.note, **(train_kwargs or {})}
    if args.gpu:
        from ..quantization.kmeans import require_gpu

        if not _train_accepts(args.index, dim, "gpu"):
            raise InvalidArgument(f"--gpu: the {args.index} index does no GPU training (IVF-PQ's k-means does)")
        require_gpu("--gpu")
        train_kwargs = {**(train_kwargs or {}), "gpu": True}
    # every check on the whole input before anything is staged, so errors name rows of the input files
    x = as_vectors(x, dim, name=args.vectors)
    ids = _unique_ids(ids, args.ids or args.attrs or "ids")
    Schema(schema).normalize(cols, n)
    db = Database(args.data)
    try:
        # built off to the side and published by one MANIFEST switch: a failure, bad input or Ctrl-C leaves an
        # existing collection as it was and a new name invisible (docs/engine.md, Guarantees)
        staged = db.stage_collection(args.name, dim=dim, metric=args.metric, schema=schema, index=args.index,
                                     multi_tenant=tenants is not None, replace=args.overwrite)
        try:
            for lo in range(0, n, args.batch):
                hi = min(n, lo + args.batch)
                attrs = {name: values[lo:hi] for name, values in cols.items()} or None
                staged.upsert(ids[lo:hi], x[lo:hi], attrs=attrs, tenants=None if tenants is None else tenants[lo:hi])
                prog(hi, n, "load")
            if n == 0:
                prog(0, 0, "load")
            t_load = time.time() - t0
            summary = staged.build(progress=prog, train_kwargs=train_kwargs) if n else {"count": 0}
            index_bytes = staged.stats()["memory_bytes"]["index"]
            stats = staged.commit()
        except BaseException:
            staged.abort()
            raise
    finally:
        db.close()
    out = {"collection": args.name, "data": os.path.abspath(args.data), "count": stats["count"], "dim": dim,
           "metric": args.metric, "index": args.index, "schema": schema, "multi_tenant": tenants is not None,
           "load_seconds": round(t_load, 2), "build_seconds": summary.get("seconds", 0.0),
           "total_seconds": round(time.time() - t0, 2), "index_bytes": index_bytes,
           "stored_bytes": stats["stored_bytes"]}
    if args.out:
        out["copied_to"] = copy_collection(args.data, args.name, args.out)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"built {args.name!r}: {out['count']:,} vectors x {dim} ({args.metric}), index {args.index}")
        print(f"  schema: {schema or '(no attributes)'}{'  multi-tenant' if tenants is not None else ''}")
        print(f"  time: load {out['load_seconds']}s + build {out['build_seconds']}s = {out['total_seconds']}s")
        print(f"  bytes: index in memory {_fmt_bytes(out['index_bytes'])}, stored {_fmt_bytes(out['stored_bytes'])}")
        if args.out:
            print(f"  copied to {out['copied_to']}")
    return 0


def _unique_ids(ids, where: str) -> np.ndarray:
    """The ids as int64; a duplicate anywhere in the input is refused, naming the id and its first two rows (the
    same whatever ``--batch`` is)."""
    from ..index.validate import as_ids

    ids = as_ids(ids, allow_duplicates=True, name=where)
    order = np.argsort(ids, kind="stable")
    dup = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if dup.size:
        a, b = sorted(order[dup[0]:dup[0] + 2].tolist())
        raise InvalidArgument(f"{where}: id {int(ids[a])} appears twice (rows {a} and {b}); ids must be unique")
    return ids


def copy_collection(data: str, name: str, uri: str) -> str:
    """Copy a closed collection's MANIFEST and current snapshot (not its WAL) to another store."""
    from ..storage import LocalStore, open_store

    src = LocalStore(data).child(name)
    dst = open_store(uri)
    manifest = json.loads(src.get("MANIFEST"))
    if hasattr(dst, "ensure_bucket"):
        dst.ensure_bucket()
    for key in src.list(f"{manifest['snapshot']}/"):
        dst.put(f"{name}/{key}", src.get(key))
    dst.put(f"{name}/MANIFEST", src.get("MANIFEST"))
    return f"{dst.uri.rstrip('/')}/{name}"


def _fmt_bytes(n) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# ---------------------------------------------------------------------- search
def add_search(sub) -> None:
    p = add_parser(
        sub, "search", help="search a collection (local, over gRPC, or through serverless functions)",
        description="""Find the nearest neighbours of query vectors. Queries come from a file (--query-file), from
records already in the collection (--ids) or from the command line (--vector, repeatable).

Where: a local collection (--data DIR --name NAME, opened read-only, so it works next to a running shoal serve), a
running server (--server HOST:PORT --name NAME) or a serverless deployment (--serverless FUNCTION). All three print
the same table, and the same JSON with --json.

Scores: l2 -> Euclidean distance (smaller is better); ip and cosine -> similarity (larger is better).

Exit status: 0 success (also when nothing matches); 2 bad input (unknown collection, wrong dimension, malformed
filter, unknown parameter); 1 other errors (e.g. a server that cannot be reached); 130 interrupted.""",
        epilog="""examples:
  shoal search --data data --name docs --ids 7 -k 3 --filter 'price < 10 and color = "red"' --attrs
  shoal search --data data --name sift --query-file queries.fvecs -k 10 --nprobe 16 --json
  shoal search --server 127.0.0.1:50051 --name docs --vector=0.1,-0.2,0.3,0.4 -k 5""")
    p.add_argument("--data", metavar="DIR", help="data directory of a local collection")
    p.add_argument("--name", help="collection name (local or --server)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-file", metavar="FILE", help="vectors file of queries (same formats as shoal build)")
    q.add_argument("--ids", metavar="ID,ID,...", help="comma-separated ids of records whose vectors are the queries")
    q.add_argument("--vector", action="append", metavar="X,X,...",
                   help='one query vector as "1.0,2.0,...", repeatable; write --vector=-1,2 when it starts with '
                        "a minus")
    p.add_argument("--key", help="dataset of an .hdf5 query file (default: train; ann-benchmarks queries: test)")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--filter", metavar="EXPR",
                   help="filter expression, e.g. 'price < 10 and color in (\"red\", \"blue\")' (docs/filters.md)")
    p.add_argument("--tenant", help="search only the vectors this tenant can see (multi-tenant collections)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="per-query index setting, repeatable (e.g. nprobe=16); values are read as int, float, "
                        "true/false or text")
    p.add_argument("--nprobe", type=int, metavar="N", help="shorthand for --param nprobe=N (IVF, OSQ)")
    p.add_argument("--rerank", type=int, metavar="N", help="shorthand for --param rerank=N (IVF-PQ with Refine)")
    p.add_argument("--gamma", type=float, metavar="X", help="shorthand for --param gamma=X (Curator)")
    p.add_argument("--limit", type=int, metavar="N", help="use only the first N queries of --query-file")
    p.add_argument("--attrs", action="store_true", help="show each result's attributes")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables (docs/cli.md has its shape)")
    g = p.add_argument_group("gRPC (search a running shoal serve instead of a local directory)")
    g.add_argument("--server", metavar="HOST:PORT", help="address of the server; needs --name")
    g.add_argument("--api-key", metavar="KEY", help="API key, if the server has keys (docs/grpc.md)")
    g.add_argument("--tls", action="store_true", help="connect with TLS (public CA)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="give up after this long; a server (or, with --serverless, a --lambda-endpoint) that is "
                        "still starting is waited for")
    from .serverless import add_serverless_search_args

    add_serverless_search_args(p)  # --serverless FUNCTION [--stats ...]: query a Lambda deployment
    p.set_defaults(func=cmd_search)


def search_params(args) -> dict[str, Any]:
    """``--param`` and its shorthands as one dict."""
    params = dict(parse_param(t) for t in args.param)
    for key in ("nprobe", "rerank", "gamma"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    return params


def _refuse(args, mode: str, flags: tuple[str, ...]) -> None:
    given = [f"--{f.replace('_', '-')}" for f in flags if getattr(args, f)]
    if given:
        raise InvalidArgument(f"{', '.join(given)} cannot be used with {mode}")


def cmd_search(args) -> int:
    params = search_params(args)
    footer = ""
    if args.serverless:
        from .serverless import print_serverless_stats, search_serverless

        _refuse(args, "--serverless", ("data", "name", "server", "api_key", "tls", "tenant", "attrs"))
        data = search_serverless(args, params)
        footer = f"index version {data['source']['version']}"
    elif args.server:
        _refuse(args, "--server", ("data",))
        if not args.name:
            raise InvalidArgument("--server needs --name (the collection to search)")
        data = _search_grpc(args, params)
    else:
        missing = [f"--{d}" for d in ("data", "name") if not getattr(args, d)]
        if missing:
            raise InvalidArgument(f"the following arguments are required: {', '.join(missing)} (or search a "
                                  "server with --server, or a serverless deployment with --serverless)")
        _refuse(args, "a local collection (--data)", ("api_key", "tls"))
        data = _search_local(args, params)
    if args.json:
        print_json(data)
        return 0
    print_table(data, footer=footer)
    if args.serverless and args.stats:
        print_serverless_stats(data)
    return 0


def _search_local(args, params: dict[str, Any]) -> dict[str, Any]:
    from ..engine import Database

    db = Database(args.data, read_only=True)
    try:
        col = db.collection(args.name)
        q, labels = read_queries(args, lambda ids: {r["id"]: r["vector"] for r in col.get(ids)})
        res = col.search(q, k=args.k, filter=args.filter, tenant=args.tenant, params=params or None,
                         attributes=args.attrs)
    finally:
        db.close()
    return from_search_result(res, labels, collection=args.name,
                              source={"kind": "local", "data": os.path.abspath(args.data)})


def _search_grpc(args, params: dict[str, Any]) -> dict[str, Any]:
    from ..server.client import Client

    with Client(args.server, api_key=args.api_key, tls=args.tls, timeout=args.timeout) as client:
        def fetch(ids):
            return {r["id"]: r["vector"] for r in client.get(args.name, ids, tenant=args.tenant)}

        q, labels = read_queries(args, fetch)
        res = client.search(args.name, q, k=args.k, filter=args.filter, tenant=args.tenant, params=params or None,
                            attributes=args.attrs)
    return from_search_result(res, labels, collection=args.name, source={"kind": "grpc", "address": args.server})


# ---------------------------------------------------------------------- info
def add_info(sub) -> None:
    p = add_parser(
        sub, "info", help="list collections or describe one",
        description="""Without --name: one line per collection in the data directory (count, dimension, metric,
unindexed tail, stored bytes, index). With --name: that collection's configuration, counts, memory and storage.
Opens the directory read-only, so it works next to a running shoal serve.

A collection that cannot be read (e.g. a damaged MANIFEST) is listed with its error; the others are still shown.

Exit status: 0 success; 1 some collection could not be read; 2 unknown data directory or collection;
130 interrupted.""",
        epilog="""examples:
  shoal info --data data
  shoal info --data data --name docs --json""")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory")
    p.add_argument("--name", help="collection to describe")
    p.add_argument("--json", action="store_true",
                   help="print JSON (a list of collections; one object with --name)")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from ..engine import Database

    db = Database(args.data, read_only=True)
    try:
        if args.name:
            out = [db.collection(args.name).stats()]
        else:
            out = []
            for name in db.list_collections():
                try:
                    out.append(db.collection(name).stats())
                except ShoalError as exc:  # one bad collection must not hide the others
                    out.append({"name": name, "error": str(exc)})
    finally:
        db.close()
    if args.json:
        print(json.dumps(out[0] if args.name else out, indent=1, default=str))
    elif args.name:
        width = max(len(key) for key in out[0])
        for key, value in out[0].items():
            print(f"{key:>{width}}: {value}")
    elif not out:
        print(f"no collections in {args.data}")
    else:
        print(f"{'name':<20} {'count':>10} {'dim':>5} {'metric':>7} {'tail':>8} {'stored':>10}  index")
        for st in out:
            if "error" in st:
                print(f"{st['name']:<20} (cannot be read: see below)")
                continue
            print(f"{st['name']:<20} {st['count']:>10,} {st['dim']:>5} {st['metric']:>7} {st['tail']:>8,} "
                  f"{_fmt_bytes(st['stored_bytes']):>10}  {st['index']}")
    failed = [st for st in out if "error" in st]
    for st in failed:
        print(f"shoal info: error: {st['error']}", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------- repair
def add_repair(sub) -> None:
    p = add_parser(
        sub, "repair", help="repair a collection whose write-ahead log is damaged before intact records",
        description="""A collection whose write-ahead log has damage followed by intact, acknowledged records
refuses to open (the error names the log, the byte offset and how many intact records follow). repair keeps every
intact record, copies the original log aside as <log>.damaged-<time> (never deleted) and replaces the log with the
intact records; only the damaged record itself is lost. A torn last record (a crash mid-write, never acknowledged)
needs no repair: it is dropped on open with a warning.

Exit status: 0 repaired or nothing to repair; 2 unknown collection, or another process has it open (the message
names it); 1 other errors; 130 interrupted.""",
        epilog="""example:
  shoal repair --data data --name docs""")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory")
    p.add_argument("--name", required=True, help="collection name")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_repair)


def cmd_repair(args) -> int:
    from ..engine import Database

    db = Database(args.data)
    try:
        report = db.repair_collection(args.name)
    finally:
        db.close()
    if args.json:
        print(json.dumps({"collection": args.name, **report}, indent=1))
    elif report["moved_to"] is None:
        print(f"{args.name!r}: the write-ahead log is intact ({report['kept']} records); nothing to repair")
    else:
        print(f"repaired {args.name!r}: kept {report['kept']} intact records; {report['damaged_bytes']} damaged "
              f"bytes; the original log is at {report['moved_to']}")
    return 0
