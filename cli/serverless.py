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
from .common import add_parser, describe, read_queries
from .results import payload, plural, print_json


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
    p = add_parser(
        sub, "push", help="publish a collection in the serverless layout (S3 or a directory)",
        description="""Read the live records of a collection and write them under --to in the serverless layout:
a versioned manifest, level-0 (allocator) data and one folder of arrays per partition, so that each Lambda processor
fetches only its partition.

OSQ collections stay OSQ (filters work); Flat (and Curator: tenants do not travel) become exact Flat partitions;
other kinds (IVF...) become k-means partitions, each holding an index built from the factory string. Each push is a
new version; the manifest pointer moves last, so searches never mix versions.

Exit status: 0 pushed; 2 unknown collection, an empty collection or a bad setting; 1 other errors (e.g. S3 not
reachable); 130 interrupted.""",
        epilog="""examples:
  shoal push --data data --name docs --to ./published
  shoal push --data data --name docs --to s3://my-bucket/docs --partitions 16""")
    p.add_argument("--data", required=True, metavar="DIR", help="data directory")
    p.add_argument("--name", required=True, help="collection name")
    p.add_argument("--to", required=True, metavar="URI", help="destination: s3://bucket/prefix or a directory")
    p.add_argument("--index", metavar="FACTORY",
                   help="index of the pushed copy: Flat, an OSQ(...) or IVF... factory string (default: the "
                        "collection's)")
    p.add_argument("--partitions", type=int, default=8, metavar="N",
                   help="k-means partitions for kinds other than OSQ (OSQ keeps its own)")
    p.add_argument("--s3-endpoint", metavar="URL",
                   help="S3-compatible endpoint such as moto or MinIO (default: $SHOAL_S3_ENDPOINT, "
                        "$AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
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
    if args.partitions < 1:
        raise InvalidArgument(f"--partitions must be at least 1, got {args.partitions}")
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
    out = {"collection": args.name, "to": store.uri, "version": manifest["version"], "kind": manifest["kind"],
           "count": int(manifest["ntotal"]), "partitions": int(manifest["n_partitions"]), "index": spec,
           "metric": metric}
    if args.json:
        print_json(out)
    else:
        print(f"pushed {args.name!r}: {out['count']:,} vectors as {out['kind']} with "
              f"{plural(out['partitions'], 'partition')} to {store.uri} (version {out['version']})")
    return 0


# ---------------------------------------------------------------------------------------------------- deploy


def add_deploy(sub) -> None:
    p = add_parser(
        sub, "deploy", help="create or update the S3 bucket and the Lambda functions (AWS, through boto3)",
        description="""Create the bucket if missing and create or update the function serving every role
(coordinator, allocator, processor), plus optional per-partition processor functions (NAME-p0, NAME-p1, ...).

The code is a zip of the shoal package (its dependencies, numpy, numba and faiss, from --layer) or a container image
built from serverless/Dockerfile (--image-uri). The execution role must exist (--role-arn) and allow s3:GetObject,
s3:PutObject and s3:DeleteObject on the bucket and lambda:InvokeFunction on the functions. Credentials and region
come from the usual AWS settings (environment, ~/.aws). Progress goes to stderr.

Exit status: 0 deployed; 2 a bad setting (role ARN, memory, timeout); 1 AWS errors; 130 interrupted.""",
        epilog="""example:
  shoal deploy --function shoal --role-arn arn:aws:iam::123456789012:role/shoal-lambda \\
      --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/shoal-lambda:latest \\
      --bucket my-bucket --index s3://my-bucket/docs --memory 2048 --timeout 120""")
    p.add_argument("--function", default="shoal", help="function name (and prefix of processor functions)")
    p.add_argument("--role-arn", required=True, metavar="ARN", help="execution role ARN (arn:aws:iam::...:role/...)")
    p.add_argument("--bucket", help="S3 bucket to create if missing")
    code = p.add_mutually_exclusive_group()
    code.add_argument("--zip", metavar="FILE", help="zip package to upload (default: zip the installed shoal package)")
    code.add_argument("--image-uri", metavar="URI", help="container image URI (ECR) instead of a zip")
    p.add_argument("--memory", type=int, default=2048, metavar="MB", help="function memory, 128..10240 MB")
    p.add_argument("--timeout", type=int, default=120, metavar="SECONDS", help="function timeout, 1..900 s")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable of the functions, repeatable (e.g. SHOAL_CACHE_MB=512)")
    p.add_argument("--index", metavar="URI", help="the coordinator's default index URI (sets SHOAL_INDEX)")
    p.add_argument("--partitions", type=int, default=0, metavar="N",
                   help="also deploy NAME-p0..NAME-p{N-1} processor functions, one per partition")
    p.add_argument("--layer", action="append", default=[], metavar="ARN", help="layer ARN, repeatable")
    p.add_argument("--arch", default="x86_64", choices=["x86_64", "arm64"], help="instruction set of the functions")
    p.add_argument("--endpoint-url", metavar="URL", help="AWS-compatible endpoint for Lambda and S3 (moto in tests)")
    p.add_argument("--region", help="AWS region (default: from the AWS configuration)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
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
    report = deploy(spec, endpoint_url=args.endpoint_url, region=args.region,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        print_json(report)
        return 0
    names = [f["name"] for f in report["functions"]]
    print(f"deployed {plural(len(names), 'function')} ({spec.memory_mb} MB, {spec.timeout_s} s): "
          + ", ".join(f"{f['name']} ({f['action']})" for f in report["functions"]))
    if report["bucket"]:
        print(f"bucket: s3://{report['bucket']}")
    return 0


# ---------------------------------------------------------------------------------------------------- lambda-local


def add_lambda_local(sub) -> None:
    from ..serverless.emulator import add_arguments, run

    p = add_parser(
        sub, "lambda-local", help="serve the Lambda Invoke API on loopback (a local emulator, for tests and laptops)",
        description="""A local AWS Lambda emulator: serves POST /2015-03-31/functions/NAME/invocations on
loopback, so boto3's Lambda client (endpoint_url=http://127.0.0.1:PORT) and shoal search --serverless
--lambda-endpoint run their real code path against it. Any function name runs the shoal handler.

Like Lambda: each function has its own warm worker processes ("containers", started on first use); at most
--max-workers in total, beyond which the answer is 429 TooManyRequestsException; requests or responses over 6 MB are
refused; an invocation running past --timeout is killed. GET /_shoal/stats reports invocations, cold starts,
throttles and timeouts. Cold-start times here are not those of AWS (workers fork from a process that has already
imported shoal). Runs until Ctrl-C.

Exit status: 0 stopped with Ctrl-C; 2 a bad setting; 1 other errors (e.g. the port is taken).""",
        epilog="""example:
  shoal lambda-local --port 9001 --s3-endpoint http://127.0.0.1:5000 &
  shoal search --serverless shoal --lambda-endpoint http://127.0.0.1:9001 --index-uri file://$PWD/published \\
      --vector 0.1,0.2,0.3 -k 3""")
    add_arguments(p)
    describe(p, {"host": "address to listen on (keep it loopback: the emulator has no authentication)",
                 "port": "port to listen on",
                 "max_workers": "account concurrency: worker processes across all functions",
                 "timeout": "seconds an invocation may run before it is killed",
                 "memory_mb": "memory size (MB) reported to handlers (sizes their caches)",
                 "s3_endpoint": "S3 endpoint for the handlers, e.g. a moto server (sets SHOAL_S3_ENDPOINT)",
                 "env": "environment variable for the handlers, repeatable"})
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------------------------------- search


def add_serverless_search_args(p: argparse.ArgumentParser) -> None:
    """Add ``--serverless FUNCTION`` (and its settings) to ``shoal search``."""
    g = p.add_argument_group("serverless (search a Lambda deployment instead of a local collection)")
    g.add_argument("--serverless", metavar="FUNCTION", help="coordinator function; --data and --name are not used")
    g.add_argument("--index-uri", metavar="URI",
                   help="published index (s3://bucket/prefix or file:///dir; default: the function's SHOAL_INDEX)")
    g.add_argument("--allocator", metavar="FUNCTION", help="allocator function (default: the --serverless one)")
    g.add_argument("--processor", metavar="FUNCTION",
                   help="processor function or template such as 'shoal-p{partition}' (default: the --serverless "
                        "one)")
    g.add_argument("--branching", type=int, default=2, metavar="B", help="tree branching")
    g.add_argument("--depth", type=int, default=1, metavar="L", help="tree depth: B + ... + B^L allocators")
    g.add_argument("--lambda-endpoint", metavar="URL",
                   help="Lambda API endpoint, e.g. http://127.0.0.1:9001 for shoal lambda-local (default: AWS)")
    g.add_argument("--stats", action="store_true",
                   help="also report invocations per role, cold/warm containers, bytes fetched and cost")


def search_serverless(args, params: dict) -> dict:
    """Run ``shoal search --serverless`` and return the CLI's result payload (:mod:`.results`)."""
    from .. import filters
    from ..engine.results import keys_to_scores
    from ..serverless.client import search
    from ..serverless.invokers import LambdaInvoker

    q, labels = read_queries(args, None, "a serverless index is searched by vector only")
    try:
        # parsed here (syntax, and types that need no schema); the coordinator checks it against the schema
        flt = filters.to_json(filters.parse(args.filter)) if args.filter else None
    except (filters.FilterSyntaxError, filters.FilterTypeError) as exc:
        # one line, as the coordinator's errors (its position is in the message; the caret lines are left out)
        raise InvalidArgument(f"invalid filter: {str(exc).splitlines()[0]}") from None
    if args.lambda_endpoint:
        wait_for_endpoint(args.lambda_endpoint, args.timeout)
    res = search(q, args.k, index=args.index_uri, function=args.serverless, allocator=args.allocator,
                 processor=args.processor, b=args.branching, L=args.depth, params=params, filter=flt,
                 invoker=LambdaInvoker(args.lambda_endpoint))
    scores, kind = keys_to_scores(res.D, res.metric)
    nq = q.shape[0]
    source = {"kind": "serverless", "function": args.serverless, "index": args.index_uri, "version": res.version,
              "tree": {"branching": args.branching, "depth": args.depth}}
    if args.stats:
        st = res.stats
        source["metrics"] = {key: st[key] for key in (
            "invocations", "inline", "cold", "warm", "bytes_fetched", "cache_hits", "cache_misses", "req_bytes",
            "resp_bytes", "max_req_bytes", "max_resp_bytes", "ms_sum", "gb_s", "cost_usd")}
        source["metrics"]["usd_per_1000_queries"] = st["cost_usd"] / max(nq, 1) * 1000
    stats = {"plan": f"serverless(b={args.branching},L={args.depth})", "elapsed_ms": round(res.elapsed_ms, 2)}
    return payload(labels, res.I, scores, kind, stats, collection=None, source=source)


def wait_for_endpoint(url: str, timeout: float) -> None:
    """Wait until ``url``'s host accepts connections, up to ``timeout`` seconds: an emulator started a moment ago
    (``shoal lambda-local ... &``) is waited for rather than failing the search."""
    import socket
    import time
    from urllib.parse import urlparse

    from ..errors import DeadlineExceeded

    parsed = urlparse(url)
    if not parsed.hostname:
        raise InvalidArgument(f"--lambda-endpoint: expected a URL such as http://127.0.0.1:9001, got {url!r}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((parsed.hostname, port), timeout=min(2.0, timeout)).close()
            return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(f"--lambda-endpoint {url}: nothing accepts connections after "
                                       f"{timeout:g} s ({exc.strerror or exc})") from None
            time.sleep(0.1)


def print_serverless_stats(data: dict) -> None:
    """The ``--stats`` lines under a serverless result table."""
    st = data["source"]["metrics"]
    print("invocations " + json.dumps(st["invocations"]) + (" inline " + json.dumps(st["inline"])
                                                            if st["inline"] else ""))
    print(f"cold {json.dumps(st['cold'])} warm {json.dumps(st['warm'])}; fetched {st['bytes_fetched']:,} B "
          f"(cache {st['cache_hits']} hits / {st['cache_misses']} misses); payloads {st['req_bytes']:,} B in, "
          f"{st['resp_bytes']:,} B out")
    print(f"billed {st['gb_s']:.4f} GB-s; ${st['cost_usd']:.3g} per batch, "
          f"${st['usd_per_1000_queries']:.3g} per 1,000 queries")
