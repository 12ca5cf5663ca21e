"""The serverless subcommands of ``shoal``: ``push``, ``deploy``, ``lambda-local`` and ``search --serverless``.

Registered in :data:`shoal.cli.COMMANDS`; heavy imports (boto3, the index kinds) stay inside the handlers so
``shoal --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from ..errors import InvalidArgument
from .common import parse_param, read_vectors


def _kv(items, what: str) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise InvalidArgument(f"{what} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------------- push


def add_push(sub) -> None:
    p = sub.add_parser(
        "push", help="write a collection as a partitioned index for the serverless fan-out (S3 or a directory)",
        description="Read the live records of a collection and write them under --to in the serverless layout: a "
                    "versioned manifest, level-0 (allocator) data and one folder of arrays per partition, so that "
                    "each Lambda processor fetches only its partition. OSQ collections keep OSQ (filters work); "
                    "Flat (and Curator) become exact Flat partitions; other kinds (IVF...) become k-means partitions "
                    "each holding an index built from the factory string. Each push is a new version; the manifest "
                    "pointer moves last, so searches never mix versions.")
    p.add_argument("--data", required=True, help="data directory")
    p.add_argument("--name", required=True, help="collection name")
    p.add_argument("--to", required=True, help="destination: s3://bucket/prefix or a directory")
    p.add_argument("--index", help="index for the pushed copy: Flat, an OSQ(...) or IVF... factory string "
                                   "(default: the collection's)")
    p.add_argument("--partitions", type=int, default=8, help="k-means partitions for non-OSQ kinds (default 8)")
    p.add_argument("--s3-endpoint", help="S3-compatible endpoint (moto, MinIO)")
    p.set_defaults(func=cmd_push)


def collection_arrays(col) -> tuple[np.ndarray, np.ndarray, dict]:
    """Live ``(vectors float32 (n, d), ids int64 (n,), attribute columns)`` of a collection."""
    from .. import filters

    ids = np.asarray(col.ids_where(), dtype=np.int64)
    recs = col.get(ids, include_vectors=True) if ids.size else []
    x = np.stack([r["vector"] for r in recs]).astype(np.float32) if recs else np.zeros((0, col.dim), np.float32)
    ids = np.array([r["id"] for r in recs], dtype=np.int64)
    schema = dict(col.info().get("schema") or {})
    cols = {}
    for name, kind in schema.items():
        vals = [r.get("attrs", {}).get(name) for r in recs]
        if kind in ("int", "float"):
            if kind == "int" and all(v is not None for v in vals):
                cols[name] = filters.NumericColumn(np.array(vals, dtype=np.int64))
            else:
                cols[name] = filters.NumericColumn(np.array([np.nan if v is None else v for v in vals], np.float64))
        elif kind == "keyword":
            vocab = sorted({v for v in vals if v is not None})
            pos = {w: i for i, w in enumerate(vocab)}
            cols[name] = filters.KeywordColumn(np.array([pos.get(v, -1) if v is not None else -1 for v in vals],
                                                        np.int32), vocab)
        elif kind == "tags":
            lists = [list(v or []) for v in vals]
            vocab = sorted({t for lst in lists for t in lst})
            pos = {w: i for i, w in enumerate(vocab)}
            indptr = np.zeros(len(lists) + 1, dtype=np.int64)
            indptr[1:] = np.cumsum([len(lst) for lst in lists])
            codes = np.array([pos[t] for lst in lists for t in lst], dtype=np.int32)
            cols[name] = filters.TagsColumn(indptr, codes, vocab)
    return x, ids, cols


def cmd_push(args) -> int:
    from ..engine import Database
    from ..storage import open_store
    from ..serverless.partitioned import FlatBackend, KMeansBackend

    db = Database(args.data, read_only=True)
    try:
        col = db.collection(args.name)
        spec = args.index or col.index_spec
        metric = col.metric
        schema = dict(col.info().get("schema") or {})
        x, ids, cols = collection_arrays(col)
    finally:
        db.close()
    if x.shape[0] == 0:
        raise InvalidArgument(f"collection {args.name!r} is empty: nothing to push")
    kwargs = {"endpoint_url": args.s3_endpoint} if args.to.startswith("s3://") and args.s3_endpoint else {}
    store = open_store(args.to, **kwargs)
    if hasattr(store, "ensure_bucket"):
        store.ensure_bucket()
    if spec.strip().startswith("OSQ"):
        from ..index.factory import index_factory
        from ..serverless.osq_backend import OSQBackend

        index = index_factory(x.shape[1], spec, metric)
        index.train(x)
        index.add(x, ids, attrs=cols or None)
        manifest = OSQBackend.publish(store, index, schema=schema)
    elif spec.strip() == "Flat" or spec.strip().startswith("Curator"):
        # Curator's tenants do not travel to the serverless layout; its vectors are searched exactly per partition
        manifest = FlatBackend.build(store, x, ids, n_partitions=min(args.partitions, x.shape[0]), metric=metric)
    else:
        manifest = KMeansBackend.build(store, x, ids, n_partitions=min(args.partitions, x.shape[0]), factory=spec,
                                       metric=metric)
    print(f"pushed {args.name!r}: {manifest['ntotal']:,} vectors as {manifest['kind']} with "
          f"{manifest['n_partitions']} partitions to {store.uri} (version {manifest['version']})")
    return 0


# ---------------------------------------------------------------------------------------------------- deploy


def add_deploy(sub) -> None:
    p = sub.add_parser(
        "deploy", help="create or update the S3 bucket and the Lambda functions (boto3)",
        description="Create the bucket if missing and create or update the function serving every role "
                    "(coordinator, allocator, processor), plus optional per-partition processor functions. The "
                    "code is a zip of the shoal package (dependencies from --layer) or a container image built from "
                    "serverless/Dockerfile (--image-uri). The execution role must exist (--role-arn).")
    p.add_argument("--function", default="shoal", help="function name (default: shoal)")
    p.add_argument("--role-arn", required=True, help="execution role ARN")
    p.add_argument("--bucket", help="S3 bucket to create if missing")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--zip", help="zip package to upload (default: zip the installed shoal package)")
    code.add_argument("--image-uri", help="container image URI (ECR)")
    p.add_argument("--memory", type=int, default=2048, help="MB (128..10240, default 2048)")
    p.add_argument("--timeout", type=int, default=120, help="seconds (1..900, default 120)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment, repeatable")
    p.add_argument("--index", help="default index URI for the coordinator (sets SHOAL_INDEX)")
    p.add_argument("--partitions", type=int, default=0, help="also deploy NAME-p0..NAME-p{N-1} processors")
    p.add_argument("--layer", action="append", default=[], help="layer ARN, repeatable")
    p.add_argument("--arch", default="x86_64", choices=["x86_64", "arm64"])
    p.add_argument("--endpoint-url", help="AWS-compatible endpoint for Lambda, S3 (moto in tests)")
    p.add_argument("--region", help="AWS region")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    from ..serverless.deploy import DeploySpec, deploy

    env = _kv(args.env, "--env")
    if args.index:
        env["SHOAL_INDEX"] = args.index
    zip_bytes = None
    if args.zip:
        with open(args.zip, "rb") as f:
            zip_bytes = f.read()
    spec = DeploySpec(function=args.function, role_arn=args.role_arn, bucket=args.bucket, zip_bytes=zip_bytes,
                      image_uri=args.image_uri, memory_mb=args.memory, timeout_s=args.timeout, env=env,
                      partitions=args.partitions, layers=args.layer, architecture=args.arch)
    report = deploy(spec, endpoint_url=args.endpoint_url, region=args.region)
    print(json.dumps(report, indent=1))
    return 0


# ---------------------------------------------------------------------------------------------------- lambda-local


def add_lambda_local(sub) -> None:
    from ..serverless.emulator import __doc__ as doc, add_arguments, run

    p = sub.add_parser("lambda-local", help="serve the Lambda Invoke API on loopback (warm worker processes)",
                       description=doc.split("\n\n")[0] + " " + doc.split("\n\n")[1].replace("\n", " "))
    add_arguments(p)
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------- search


def add_serverless_search_args(p: argparse.ArgumentParser) -> None:
    """Add ``--serverless FUNCTION`` (and its settings) to ``shoal search``; wraps the parser's handler."""
    g = p.add_argument_group("serverless (query a Lambda deployment instead of a local collection)")
    g.add_argument("--serverless", metavar="FUNCTION", help="coordinator function; --data/--name are not needed")
    g.add_argument("--index-uri", help="partitioned index URI (default: the function's SHOAL_INDEX)")
    g.add_argument("--allocator", help="allocator function (default: FUNCTION)")
    g.add_argument("--processor", help="processor function or template such as 'shoal-p{partition}'")
    g.add_argument("--branching", type=int, default=2, help="tree branching b (default 2)")
    g.add_argument("--depth", type=int, default=1, help="tree depth L (default 1): b + ... + b^L allocators")
    g.add_argument("--lambda-endpoint", help="Lambda API endpoint (e.g. http://127.0.0.1:9001 for lambda-local)")
    g.add_argument("--stats", action="store_true", help="print invocations per role, cold/warm, bytes and cost")
    local = p.get_default("func")
    for action in p._actions:  # --data/--name are required only without --serverless (checked below)
        if action.dest in ("data", "name"):
            action.required = False

    def dispatch(args):
        if args.serverless:
            return cmd_search_serverless(args)
        missing = [f"--{d}" for d in ("data", "name") if not getattr(args, d)]
        if missing:
            raise InvalidArgument(f"the following arguments are required: {', '.join(missing)}")
        return local(args)

    p.set_defaults(func=dispatch)


def cmd_search_serverless(args) -> int:
    from .. import filters
    from ..serverless.client import search
    from ..serverless.invokers import LambdaInvoker

    if args.query_file:
        q = read_vectors(args.query_file)
        if args.limit is not None:
            q = q[:args.limit]
    elif args.vector:
        try:
            q = np.array([[float(v) for v in s.split(",")] for s in args.vector], dtype=np.float32)
        except ValueError:
            raise InvalidArgument("--vector: expected comma-separated numbers") from None
    else:
        raise InvalidArgument("--serverless takes queries from --query-file or --vector")
    params = dict(parse_param(t) for t in args.param)
    for key in ("nprobe", "rerank"):
        if getattr(args, key, None) is not None:
            params[key] = getattr(args, key)
    try:
        # parsed here (syntax, and types that need no schema); the coordinator checks it against the schema
        flt = filters.to_json(filters.parse(args.filter)) if args.filter else None
    except (filters.FilterSyntaxError, filters.FilterTypeError) as exc:
        # one line, as the coordinator's errors (its position is in the message; the caret lines are left out)
        raise InvalidArgument(f"invalid filter: {str(exc).splitlines()[0]}") from None
    res = search(q, args.k, index=args.index_uri, function=args.serverless, allocator=args.allocator,
                 processor=args.processor, b=args.branching, L=args.depth, params=params, filter=flt,
                 invoker=LambdaInvoker(args.lambda_endpoint))
    if res.metric == "l2":
        scores, kind = np.sqrt(np.maximum(res.D, 0)), "distance"
    else:
        scores, kind = -res.D, "similarity"
    hits = [[{"id": int(i), "score": float(s)} for i, s in zip(ii, ss) if i >= 0] for ii, ss in zip(res.I, scores)]
    nq = q.shape[0]
    summary = {"version": res.version, "elapsed_ms": round(res.elapsed_ms, 2), "queries": nq}
    if args.stats:
        st = res.stats
        summary["stats"] = {k: st[k] for k in ("invocations", "inline", "cold", "warm", "bytes_fetched",
                                               "cache_hits", "cache_misses", "req_bytes", "resp_bytes",
                                               "max_req_bytes", "max_resp_bytes", "ms_sum", "gb_s", "cost_usd")}
        summary["stats"]["usd_per_1000_queries"] = st["cost_usd"] / max(nq, 1) * 1000
    if args.json:
        print(json.dumps({"score_kind": kind, **summary, "results": hits}, indent=1))
        return 0
    for i, row in enumerate(hits):
        print(f"query {i}: {len(row)} result(s)")
        for rank, h in enumerate(row, 1):
            print(f"  {rank:>4}  {h['id']:>12}  {h['score']:>10.4f}")
    print(f"({kind}; index version {res.version}; {res.elapsed_ms:.1f} ms for {nq} queries)")
    if args.stats:
        st = summary["stats"]
        print("invocations " + json.dumps(st["invocations"]) + (" inline " + json.dumps(st["inline"])
                                                                if st["inline"] else ""))
        print(f"cold {json.dumps(st['cold'])} warm {json.dumps(st['warm'])}; fetched {st['bytes_fetched']:,} B "
              f"(cache {st['cache_hits']} hits / {st['cache_misses']} misses); payloads {st['req_bytes']:,} B in, "
              f"{st['resp_bytes']:,} B out")
        print(f"billed {st['gb_s']:.4f} GB-s; ${st['cost_usd']:.3g} per batch, "
              f"${st['usd_per_1000_queries']:.3g} per 1,000 queries", file=sys.stdout)
    return 0
