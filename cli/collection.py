"""``shoal build``, ``shoal search`` and ``shoal info``: collections in a data directory, from and to files."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgument, NotFound, ShoalError
from .common import Progress, infer_type, parse_param, parse_schema_arg, read_vectors


# ---------------------------------------------------------------------- build
def add_build(sub) -> None:
    p = sub.add_parser(
        "build", help="build a collection from a vectors file (+ attributes, tenants)",
        description="Load vectors (and optionally attributes and tenants) into a collection in a data directory, "
                    "build its index and print a summary. Vectors: .npy, .fvecs, .bvecs, .ivecs, ann-benchmarks "
                    ".hdf5 (train split), .parquet, .csv, .jsonl. Attributes: .parquet, .csv, .jsonl (one row per "
                    "vector, in the same order). Attribute types are inferred (integers -> int, other numbers -> float, "
                    "strings -> keyword, lists -> tags) unless given with --schema.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("vectors", help="vectors file")
    p.add_argument("--key", help="dataset of an .hdf5 vectors file (default: train, as in ann-benchmarks files)")
    p.add_argument("--data", required=True, help="data directory (created if missing)")
    p.add_argument("--name", required=True, help="collection name")
    p.add_argument("--metric", default="l2", choices=["l2", "ip", "cosine"], help="distance (default: l2)")
    p.add_argument("--index", default="Flat",
                   help='index factory string, e.g. Flat, "IVF1024,PQ16x8", "Curator(branch=16)", "OSQ(...)" '
                        "(default: Flat)")
    p.add_argument("--attrs", help="attributes file (.parquet/.csv/.jsonl), one row per vector")
    p.add_argument("--schema", help="attribute types, overriding inference: name:type,... "
                                    "(types: int, float, keyword, tags)")
    p.add_argument("--ids", help="ids: a column of the attributes file, or a file (.npy, .ivecs, .txt with one id "
                                 "per line, or a table with an 'id' column); default: the attributes file's 'id' "
                                 "column if it has one, else 0..n-1")
    p.add_argument("--tenants", help="tenants: a column of the attributes file (a list of names, or names "
                                     "separated by ';'), or a file with a 'tenants' column; makes the collection "
                                     "multi-tenant")
    p.add_argument("--limit", type=int, help="use only the first N vectors")
    p.add_argument("--batch", type=int, default=50_000, help="vectors per write batch (default: 50000)")
    p.add_argument("--train-kwargs", help="JSON dict passed to the index's train(), e.g. '{\"niter\": 10}'")
    p.add_argument("--train-queries", help="IVF: training queries (.npy etc., same dimension) for supervised centroid "
                                           "tuning; needs --train-positives (see docs/ivfpq.md)")
    p.add_argument("--train-positives", help="IVF: relevant ids of each training query, a TSV with lines "
                                             "'QUERY_ROW<TAB>ID' (or TREC qrels 'QUERY_ROW 0 ID REL', REL > 0 kept)")
    p.add_argument("--gpu", action="store_true", help="IVF: run k-means training on the GPU (needs faiss-gpu-cu12 "
                                                      "in place of faiss-cpu: `make gpu`; an error if no GPU is seen)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection of that name")
    p.add_argument("--out", help="also copy the finished collection to this store URI (s3://bucket/prefix or a "
                                 "directory)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
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
    schema = {name: infer_type(name, values) for name, values in cols.items()}
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
    p = sub.add_parser(
        "search", help="search a collection",
        description="Search a collection for the nearest neighbours of query vectors. Give queries as a file "
                    "(--query-file), as ids of records already in the collection (--ids), or inline (--vector, "
                    "repeatable). Scores: l2 -> Euclidean distance (smaller is better); ip/cosine -> similarity "
                    "(larger is better).",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data directory")
    p.add_argument("--name", required=True, help="collection name")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--query-file", help="vectors file of queries (same formats as build)")
    p.add_argument("--key", help="dataset of an .hdf5 query file (default: train; ann-benchmarks queries: test)")
    q.add_argument("--ids", help="comma-separated ids of records whose vectors are the queries")
    q.add_argument("--vector", action="append", help='one query vector as "1.0,2.0,...", repeatable; write --vector=-1,2 when it starts with a minus')
    p.add_argument("-k", type=int, default=10, help="results per query (default: 10)")
    p.add_argument("--filter", help="filter expression, e.g. 'price < 10 and color in (\"red\", \"blue\")'")
    p.add_argument("--tenant", help="search only the vectors this tenant can see")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="per-query index setting, repeatable (e.g. nprobe=16)")
    p.add_argument("--nprobe", type=int, help="shorthand for --param nprobe=N (IVF)")
    p.add_argument("--rerank", type=int, help="shorthand for --param rerank=N")
    p.add_argument("--gamma", type=float, help="shorthand for --param gamma=X (Curator)")
    p.add_argument("--limit", type=int, help="use only the first N queries of --query-file")
    p.add_argument("--attrs", action="store_true", help="show each result's attributes")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_search)
    from .serverless import add_serverless_search_args

    add_serverless_search_args(p)  # --serverless FUNCTION [--stats]: query a Lambda deployment


def cmd_search(args) -> int:
    from ..engine import Database

    params = dict(parse_param(t) for t in args.param)
    for key in ("nprobe", "rerank", "gamma"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    db = Database(args.data, read_only=True)
    try:
        col = db.collection(args.name)
        labels: list[str]
        if args.query_file:
            q = read_vectors(args.query_file, args.key)
            if args.limit is not None:
                q = q[:args.limit]
            labels = [f"query {i}" for i in range(q.shape[0])]
        elif args.ids:
            try:
                want = [int(s) for s in args.ids.split(",") if s.strip()]
            except ValueError:
                raise InvalidArgument(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
            recs = {r["id"]: r["vector"] for r in col.get(want)}
            missing = [u for u in want if u not in recs]
            if missing:
                raise NotFound(f"--ids: id(s) {missing} not in collection {args.name!r}")
            q = np.stack([recs[u] for u in want])
            labels = [f"id {u}" for u in want]
        else:
            try:
                q = np.array([[float(v) for v in s.split(",")] for s in args.vector], dtype=np.float32)
            except ValueError:
                raise InvalidArgument("--vector: expected comma-separated numbers, e.g. --vector 0.1,0.2,0.3") \
                    from None
            labels = [f"vector {i}" for i in range(q.shape[0])]
        res = col.search(q, k=args.k, filter=args.filter, tenant=args.tenant, params=params or None,
                         include_attrs=args.attrs)
    finally:
        db.close()
    if args.json:
        rows = res.to_list()
        print(json.dumps({"collection": args.name, "score_kind": res.score_kind, "stats": res.stats.to_dict(),
                          "results": [{"query": lab, "hits": hits} for lab, hits in zip(labels, rows)]}, indent=1))
        return 0
    better = "smaller is better" if res.score_kind == "distance" else "larger is better"
    for lab, hits in zip(labels, res.to_list()):
        print(f"{lab}: {len(hits)} result(s)")
        print(f"  {'rank':>4}  {'id':>12}  {res.score_kind:>10}" + ("  attributes" if args.attrs else ""))
        for rank, h in enumerate(hits, 1):
            extra = "  " + json.dumps(h["attrs"], ensure_ascii=False) if args.attrs else ""
            print(f"  {rank:>4}  {h['id']:>12}  {h['score']:>10.4f}{extra}")
    s = res.stats
    print(f"({res.score_kind}: {better}; plan {s.plan}; {s.elapsed_ms:.2f} ms for {len(labels)} queries)")
    return 0


# ---------------------------------------------------------------------- info
def add_info(sub) -> None:
    p = sub.add_parser("info", help="list collections or describe one",
                       description="Without --name: one line per collection in the data directory. With --name: "
                                   "configuration, counts, memory and storage of that collection.")
    p.add_argument("--data", required=True, help="data directory")
    p.add_argument("--name", help="collection to describe")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    from ..engine import Database

    if not os.path.isdir(args.data):
        raise NotFound(f"data directory {args.data!r} does not exist")
    db = Database(args.data, read_only=True)
    try:
        names = [args.name] if args.name else db.list_collections()
        out = [db.collection(n).stats() for n in names]
    finally:
        db.close()
    if args.json:
        print(json.dumps(out[0] if args.name else out, indent=1, default=str))
        return 0
    if args.name:
        for key, value in out[0].items():
            print(f"{key:>16}: {value}")
        return 0
    if not out:
        print(f"no collections in {args.data}")
        return 0
    print(f"{'name':<20} {'count':>10} {'dim':>5} {'metric':>7} {'tail':>8} {'stored':>10}  index")
    for st in out:
        print(f"{st['name']:<20} {st['count']:>10,} {st['dim']:>5} {st['metric']:>7} {st['tail']:>8,} "
              f"{_fmt_bytes(st['stored_bytes']):>10}  {st['index']}")
    return 0


# ---------------------------------------------------------------------- repair
def add_repair(sub) -> None:
    p = sub.add_parser(
        "repair", help="repair a collection whose write-ahead log is damaged before intact records",
        description="A collection whose write-ahead log has damage followed by intact, acknowledged records refuses "
                    "to open (WALDamaged: file, byte offset, intact records after it). This keeps every intact "
                    "record, copies the original log aside as <log>.damaged-<time> (never deleted) and replaces the "
                    "log with the intact records; only the damaged record itself is lost. Refused while another "
                    "process has the collection open.")
    p.add_argument("--data", required=True, help="data directory")
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
