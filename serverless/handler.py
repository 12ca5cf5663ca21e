"""The Lambda entry point: one function, three roles (coordinator, allocator, processor) chosen by ``event["role"]``.

- **coordinator** (node 0): resolves the index version once (so the whole tree reads one version), then acts as the
  root of the tree: invokes its ``b`` child allocators in parallel and merges what comes back.
- **allocator** (nodes ``1 .. b + ... + b^L``, pre-order, see :mod:`.tree`): first invokes its children (in parallel,
  from threads), then does its own share: one processor invocation per owned partition with the queries routed there.
  Results and metrics are merged with :func:`~shoal.index.topk.merge_topk` on the way up.
- **routing** (level 0) runs once per batch. With ``split="partitions"`` (the default) it is two-phase: the
  coordinator routes the whole batch (from router data it caches), then hands each child the routes of its subtree's
  partitions, so allocators load no router data. With ``split="queries"`` each allocator routes its own slice.
- **checks before fan-out**: the coordinator type-checks the filter against the schema the manifest publishes, and
  the search settings, once, and fails with the same message as an embedded search (``invalid filter: unknown
  attribute 'prce' (did you mean 'price'?)...``) before any child is invoked.
- **processor**: searches one partition for a batch of queries (data from the container cache).

A child that is throttled (429) is not waited for: the parent runs that child's work inline, in its own thread, so a
concurrency limit smaller than the tree cannot deadlock it. A processor that raises, times out or answers malformed
data is retried; if it still fails the error names the partition. Every response lists the partitions it covers, and
parents check that against the tree, so a result is never silently incomplete.

Handlers are deployed as ``shoal.serverless.handler.handler``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import config
from ..errors import DeadlineExceeded, InvalidArgument, ShoalError
from ..index.topk import empty_result, merge_topk
from ..index.validate import as_vectors, check_k
from . import kernels
from .backends import check_filter, check_params, get_backend, scatter
from .cache import CACHE, Reader, default_capacity, store_for
from .invokers import LambdaInvoker, RemoteError, Throttled
from .manifest import cached_manifest, check_partition, current_version
from .payload import decode, delete_spill, encode, spill_if_large, unspill
from .tree import Tree

ROLES = ("coordinator", "allocator", "processor")
DEFAULT_RETRIES = 2

_STATE = {"invocations": 0}
_STATE_LOCK = threading.Lock()
_CHILD: dict[str, Any] = {"invoker": None, "depth": 0}
_CHILD_LOCK = threading.Lock()
#: fault injection for tests and chaos drills: none in production. The local emulator's workers install
#: :func:`shoal.serverless.faults.hook` when given a faults file (:func:`set_fault_hook`); this module reads no file.
_FAULT_HOOK: dict[str, Any] = {"hook": None}

# the container's init phase (Lambda imports this module before the first invocation): load the compiled kernels
# shipped with the image (``$SHOAL_KERNELS``), so that no invocation compiles one
kernels.init_container()


class MalformedResponse(ShoalError, ValueError):
    """A child answered, but not with what the protocol requires."""


class PartitionError(ShoalError, RuntimeError):
    """A partition could not be searched after retries; the message names it."""


class LocalContext:
    """The bits of the Lambda context object the handler uses, for in-process runs."""

    def __init__(self, function_name: str = "local", memory_mb: int = 1024, timeout_s: float = 900.0):
        self.function_name = function_name
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = "local"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return int(max(0.0, self._deadline - time.monotonic()) * 1000)


@contextlib.contextmanager
def use_child_invoker(invoker):
    """Make handlers in this process invoke their children through ``invoker`` (in-process runs)."""
    with _CHILD_LOCK:
        prev = _CHILD["invoker"]
        _CHILD["invoker"] = invoker
        _CHILD["depth"] += 1
    try:
        yield
    finally:
        with _CHILD_LOCK:
            _CHILD["depth"] -= 1
            if _CHILD["depth"] == 0:
                _CHILD["invoker"] = prev


def set_fault_hook(hook) -> None:
    """Install ``hook(role, *, partition=None, node=None)`` (``None`` removes it): called before a role's own work
    (never before work run inline), it may raise or sleep, and returns ``None`` or a function the role's result is
    passed through (to answer garbage)."""
    _FAULT_HOOK["hook"] = hook


def _fault(role: str, **where):
    hook = _FAULT_HOOK["hook"]
    return None if hook is None else hook(role, **where)


def child_invoker():
    """The invoker for child invocations: the one installed in-process, else boto3 (``$SHOAL_LAMBDA_ENDPOINT``)."""
    with _CHILD_LOCK:
        if _CHILD["invoker"] is None:
            _CHILD["invoker"] = LambdaInvoker()
        return _CHILD["invoker"]


# ---------------------------------------------------------------------------------------------------- plumbing


def _memory_mb(context) -> int:
    try:
        return int(getattr(context, "memory_limit_in_mb", None) or os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                   or 1024)
    except (TypeError, ValueError):
        return 1024


def check_ctx(ctx: Any) -> dict:
    """Validate the context every node passes down (index, version, k, params, filter, tree, functions)."""
    if not isinstance(ctx, dict):
        raise InvalidArgument("payload needs a 'ctx' object")
    for key in ("index", "version", "k", "tree", "functions"):
        if key not in ctx:
            raise InvalidArgument(f"ctx is missing {key!r}")
    if not isinstance(ctx["index"], str) or not isinstance(ctx["version"], str):
        raise InvalidArgument("ctx.index and ctx.version must be strings")
    funcs = ctx["functions"]
    if not isinstance(funcs, dict) or not all(isinstance(funcs.get(r), str) and funcs.get(r)
                                             for r in ("allocator", "processor")):
        raise InvalidArgument("ctx.functions needs 'allocator' and 'processor' function names")
    ctx = dict(ctx)
    ctx["k"] = check_k(ctx["k"])
    ctx["params"] = dict(ctx.get("params") or {})
    ctx["retries"] = int(ctx.get("retries", DEFAULT_RETRIES))
    ctx["chunk"] = int(ctx.get("chunk") or 0)
    ctx["split"] = ctx.get("split") or "partitions"
    if ctx["split"] not in ("partitions", "queries"):
        raise InvalidArgument(f"ctx.split must be 'partitions' or 'queries', got {ctx['split']!r}")
    if ctx["split"] == "queries" and not isinstance(ctx.get("nq"), int):
        raise InvalidArgument("ctx.nq (the batch size) is needed with split='queries'")
    if ctx["chunk"] < 0:
        raise InvalidArgument("ctx.chunk (queries per processor invocation) must be >= 0 (0: no limit)")
    tree = ctx["tree"]
    if not isinstance(tree, dict):
        raise InvalidArgument("ctx.tree must be {'b': int, 'L': int}")
    Tree(tree.get("b"), tree.get("L"))
    return ctx


def processor_function(ctx: dict, p: int) -> str:
    """The processor function for partition ``p``: a name, or a template like ``shoal-p{partition}``."""
    return ctx["functions"]["processor"].format(partition=p)


def _reader(ctx: dict) -> Reader:
    return Reader(store_for(ctx["index"]), ctx["version"])


def _record(role: str, context, t0: float, reader: Reader | None, **extra) -> dict:
    rec = {"role": role, "function": getattr(context, "function_name", "local"), "ms": (time.perf_counter() - t0) * 1e3,
           "memory_mb": _memory_mb(context), "inline": False, "cold": False}
    rec.update(reader.metrics() if reader is not None else
               {"cache_hits": 0, "cache_misses": 0, "bytes_fetched": 0, "get_requests": 0})
    rec.update(extra)
    return rec


def call(function: str, body: dict, ctx_uri: str | None, *, throttle_retries: int | None = 0,
         invoker=None) -> tuple[dict, dict]:
    """Invoke ``function`` with ``body`` (spilling a large request to the store); returns the decoded response."""
    invoker = invoker or child_invoker()
    encoded = encode(body)
    payload, spill_key = spill_if_large(encoded, ctx_uri)
    try:
        resp, info = invoker.invoke(function, payload, throttle_retries=throttle_retries)
    finally:
        delete_spill(ctx_uri, spill_key)
    resp, spilled = unspill(resp, delete=True)
    info["spilled_request"] = spill_key is not None
    info["spilled_response_bytes"] = spilled
    return decode(resp), info


def check_result(out: Any, nq: int, k: int, what: str) -> tuple[np.ndarray, np.ndarray, list]:
    """``(D, I, metrics)`` from a child's response, or :class:`MalformedResponse`."""
    if not isinstance(out, dict):
        raise MalformedResponse(f"{what}: response is not an object")
    D, I, metrics = out.get("D"), out.get("I"), out.get("metrics", [])
    if not (isinstance(D, np.ndarray) and isinstance(I, np.ndarray)):
        raise MalformedResponse(f"{what}: response lacks D/I arrays")
    if D.shape != (nq, k) or I.shape != (nq, k) or D.dtype != np.float32 or I.dtype != np.int64:
        raise MalformedResponse(f"{what}: expected D float32 / I int64 of shape {(nq, k)}, got "
                                f"{D.dtype}{D.shape} / {I.dtype}{I.shape}")
    if np.isnan(D).any() or ((I < 0) & np.isfinite(D)).any() or (I < -1).any():
        raise MalformedResponse(f"{what}: NaN keys or ids inconsistent with padding")
    if not isinstance(metrics, list) or not all(isinstance(m, dict) for m in metrics):
        raise MalformedResponse(f"{what}: metrics must be a list of objects")
    return D, I, metrics


def chunks(n: int, size: int) -> list[slice]:
    """Slices of ``range(n)`` of at most ``size`` (``0``: one slice)."""
    if size <= 0 or n <= size:
        return [slice(0, n)]
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def slice_extra(extra: dict, sel: slice) -> dict:
    """A processor's routing data for a slice of its queries: keys named in ``extra["per_query"]`` are per query."""
    per_query = extra.get("per_query", ())
    if not per_query:
        return extra
    return {key: (val[sel] if key in per_query else val) for key, val in extra.items()}


# ---------------------------------------------------------------------------------------------------- roles


def run_processor(ctx: dict, p: int, q: np.ndarray, extra: dict, context, *, inline: bool = False) -> dict:
    """Search partition ``p`` for queries ``q``; returns ``{"D", "I", "partition", "metrics"}``."""
    t0 = time.perf_counter()
    after = None if inline else _fault("processor", partition=p)
    reader = _reader(ctx)
    manifest = cached_manifest(reader)
    p = check_partition(manifest, p)
    q = as_vectors(q, manifest["d"], name="queries")
    backend = get_backend(manifest["kind"])
    D, I = backend.partition(reader, manifest, p).search(q, ctx["k"], ctx["params"], ctx.get("filter"), extra or {})
    rec = _record("processor", context, t0, reader, partition=p, nq=int(q.shape[0]), inline=inline)
    out = {"D": D, "I": I, "partition": p, "metrics": [rec]}
    return out if after is None else after(out)


def _invoke_processor(ctx: dict, p: int, q: np.ndarray, extra: dict, context) -> tuple[np.ndarray, np.ndarray, list]:
    function = processor_function(ctx, p)
    attempts = 1 + max(0, ctx["retries"])
    last: Exception | None = None
    for attempt in range(1, attempts + 1):
        try:
            out, info = call(function, {"role": "processor", "partition": p, "ctx": ctx, "queries": q,
                                        "extra": extra}, ctx["index"])
        except Throttled:
            out = run_processor(ctx, p, q, extra, context, inline=True)
            return out["D"], out["I"], out["metrics"]
        except (RemoteError, DeadlineExceeded) as exc:
            last = exc
            continue
        try:
            D, I, metrics = check_result(out, q.shape[0], ctx["k"], f"partition {p}")
            if out.get("partition") != p:
                raise MalformedResponse(f"partition {p}: response is for partition {out.get('partition')!r}")
        except MalformedResponse as exc:
            last = exc
            continue
        for m in metrics:
            m.update(req_bytes=info["req_bytes"], resp_bytes=info["resp_bytes"], attempt=attempt, rtt_ms=info["ms"],
                     spilled_request=info["spilled_request"], spilled_response_bytes=info["spilled_response_bytes"])
        return D, I, metrics
    raise PartitionError(f"partition {p}: processor {function} failed after {attempts} attempts: {last}")


def pack_routes(routes: dict[int, tuple[np.ndarray, dict]]) -> list:
    """Routes ``{partition: (query rows, extra)}`` as a payload value (JSON objects have string keys only)."""
    return [[int(p), rows, extra] for p, (rows, extra) in sorted(routes.items())]


def unpack_routes(obj: Any, partitions: list[int], nq: int) -> dict[int, tuple[np.ndarray, dict]]:
    """Inverse of :func:`pack_routes`, checked: partitions among ``partitions``, query rows int64 in ``[0, nq)``."""
    if not isinstance(obj, list):
        raise InvalidArgument("allocator payload needs 'routes' (a list of [partition, query rows, extra]): with "
                              "split='partitions' the coordinator routes the batch")
    allowed = set(partitions)
    out: dict[int, tuple[np.ndarray, dict]] = {}
    for item in obj:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], int) and item[0] in allowed
                and isinstance(item[1], np.ndarray) and item[1].dtype == np.int64 and item[1].ndim == 1
                and isinstance(item[2], dict)) or item[0] in out:
            raise InvalidArgument(f"malformed route {str(item)[:200]} (partitions of this subtree: {partitions})")
        rows = item[1]
        if rows.size and (rows.min() < 0 or rows.max() >= nq):
            raise InvalidArgument(f"route of partition {item[0]}: query rows outside 0..{nq - 1}")
        out[item[0]] = (rows, item[2])
    return out


def _invoke_allocator(ctx: dict, node: int, q: np.ndarray, context, routes: dict | None) -> dict:
    function = ctx["functions"]["allocator"]
    body = {"role": "allocator", "node": node, "ctx": ctx, "queries": q}
    if routes is not None:
        body["routes"] = pack_routes(routes)
    try:
        out, info = call(function, body, ctx["index"])
    except Throttled:
        return run_allocator(ctx, node, q, context, inline=True, routes=routes)
    except RemoteError as exc:
        # the remote message already names the failing partition; say which subtree it came through
        raise PartitionError(f"allocator {node} failed: {exc.remote_message}") from None
    D, I, metrics = check_result(out, q.shape[0], ctx["k"], f"allocator {node}")
    if metrics:
        metrics[0].update(req_bytes=info["req_bytes"], resp_bytes=info["resp_bytes"], rtt_ms=info["ms"],
                          spilled_request=info["spilled_request"],
                          spilled_response_bytes=info["spilled_response_bytes"])
    out["metrics"] = metrics
    return out


def run_allocator(ctx: dict, node: int, q: np.ndarray, context, *, inline: bool = False,
                  routes: dict | None = None, reader: Reader | None = None) -> dict:
    """Node ``node``'s work: children first (in parallel), then its own share; merged results of its subtree.

    ``q`` holds the queries of the node's subtree: the whole batch with ``split="partitions"``, the subtree's
    contiguous slice with ``split="queries"``. With ``split="partitions"``, ``routes`` holds the coordinator's routes
    ``{partition: (query rows, extra)}`` of the subtree's partitions (a routed partition absent from it has no query);
    with ``split="queries"`` the node routes its own slice. ``reader``: the invocation's (the coordinator's, which
    routed through it), so that its metrics count every byte the invocation read.
    """
    t0 = time.perf_counter()
    after = None if inline else _fault("allocator", node=node)
    tree = Tree(**ctx["tree"])
    reader = reader or _reader(ctx)
    manifest = cached_manifest(reader)
    P = manifest["n_partitions"]
    q = as_vectors(q, manifest["d"], name="queries")
    nq, k = q.shape[0], ctx["k"]
    by_queries = ctx["split"] == "queries"
    children = tree.children(node)
    if by_queries:
        base = tree.subtree_query_range(node, ctx["nq"])[0]
        lo, hi = (v - base for v in tree.query_range(node, ctx["nq"]))
        share = list(range(P)) if hi > lo else []
        child_rows = {c: tuple(v - base for v in tree.subtree_query_range(c, ctx["nq"])) for c in children}
    else:
        lo, hi = 0, nq
        share = tree.share(node, P)
        child_rows = {c: (0, nq) for c in children}
        if routes is None:
            raise InvalidArgument("split='partitions' needs the coordinator's routes")
    parts = [empty_result(nq, k)]
    metrics: list[dict] = []
    done: list[int] = []
    skipped: list[int] = []
    nodes = [node]
    # threads start on demand; the cap bounds what one allocator keeps in flight
    with ThreadPoolExecutor(max_workers=64) as pool:
        child_futs = {c: pool.submit(_invoke_allocator, ctx, c, q[a:b], context,
                                     None if by_queries else {p: routes[p] for p in tree.subtree_partitions(c, P)
                                                              if p in routes})
                      for c, (a, b) in child_rows.items()}
        proc_futs = []
        route_ms = 0.0
        if share:
            own = routes
            if by_queries:
                t_route = time.perf_counter()
                backend = get_backend(manifest["kind"])
                own = backend.router(reader, manifest).route(q[lo:hi], k, ctx["params"], ctx.get("filter"))
                route_ms = (time.perf_counter() - t_route) * 1e3
            for p in share:
                if p not in own or own[p][0].size == 0:
                    skipped.append(p)
                    continue
                rows, extra = own[p]
                for sel in chunks(rows.size, ctx["chunk"]):
                    sub = rows[sel] + lo
                    proc_futs.append((p, sub, pool.submit(_invoke_processor, ctx, p, q[sub],
                                                          slice_extra(extra, sel), context)))
        errors = []
        failed = set()
        for p, rows, fut in proc_futs:
            try:
                D, I, m = fut.result()
            except ShoalError as exc:
                if p not in failed:
                    errors.append(exc)
                failed.add(p)
                continue
            parts.append(scatter(rows, D, I, nq, k))
            metrics.extend(m)
            if p not in done:
                done.append(p)
        done = [p for p in done if p not in failed]
        for c, fut in child_futs.items():
            try:
                out = fut.result()
            except ShoalError as exc:
                errors.append(exc)
                continue
            got_done, got_skip = list(out.get("partitions", [])), list(out.get("skipped", []))
            if by_queries:
                if sorted(out.get("nodes", [])) != list(tree.subtree(c)):
                    errors.append(MalformedResponse(f"allocator {c}: completed nodes {out.get('nodes')}, expected "
                                                    f"{list(tree.subtree(c))}"))
                    continue
                nodes.extend(out["nodes"])
            elif sorted(got_done + got_skip) != tree.subtree_partitions(c, P):
                errors.append(MalformedResponse(
                    f"allocator {c}: covered partitions {sorted(got_done)} + skipped {sorted(got_skip)}, "
                    f"expected {tree.subtree_partitions(c, P)}"))
                continue
            a, b = child_rows[c]
            parts.append(scatter(np.arange(a, b), out["D"], out["I"], nq, k))
            metrics.extend(out["metrics"])
            done.extend(got_done)
            skipped.extend(got_skip)
    if errors:
        raise errors[0] if len(errors) == 1 else PartitionError("; ".join(str(e) for e in errors))
    D, I = merge_topk(parts, k)
    rec = _record("coordinator" if node == 0 else "allocator", context, t0, reader, node=node, inline=inline,
                  route_ms=route_ms, children=len(children), share=len(share), nq=hi - lo)
    if by_queries:  # a partition appears once per slice; report each once
        done = sorted(set(done))
        skipped = sorted(set(skipped) - set(done))
    out = {"D": D, "I": I, "partitions": sorted(done), "skipped": sorted(skipped), "nodes": sorted(nodes),
           "metrics": [rec] + metrics}
    return out if after is None else after(out)


def run_coordinator(event: dict, context) -> dict:
    """Resolve the version, check the request against the manifest (filter schema, settings), route the batch once
    (``split="partitions"``), run the tree from node 0, check every partition is covered."""
    t0 = time.perf_counter()
    _fault("coordinator")
    index = event.get("index") or config.default_index()
    if not isinstance(index, str) or not index:
        raise InvalidArgument("coordinator payload needs 'index' (the index's store URI), or set $SHOAL_INDEX")
    store = store_for(index)
    version = event.get("version") or current_version(store)
    funcs = dict(event.get("functions") or {})
    default = getattr(context, "function_name", None)
    funcs.setdefault("allocator", default)
    funcs.setdefault("processor", default)
    tree = event.get("tree") or {"b": 2, "L": 1}
    q = event.get("queries")
    if not isinstance(q, np.ndarray) or q.ndim != 2:
        raise InvalidArgument("coordinator payload needs 'queries' (an encoded 2-d float32 array)")
    ctx = check_ctx({"nq": int(q.shape[0]), "index": index, "version": version, "k": event.get("k", 10),
                     "params": event.get("params"), "filter": event.get("filter"), "tree": tree, "functions": funcs,
                     "retries": event.get("retries", DEFAULT_RETRIES), "chunk": event.get("chunk", 0),
                     "split": event.get("split") or "partitions"})
    reader = _reader(ctx)
    manifest = cached_manifest(reader)
    backend = get_backend(manifest["kind"])
    q = as_vectors(q, manifest["d"], name="queries")
    # bad input fails here, once, with the embedded search's message, before any child is invoked
    ctx["filter"] = check_filter(backend, reader, manifest, ctx.get("filter"))
    check_params(backend, manifest, ctx["params"])
    routes, route_ms = None, 0.0
    if ctx["split"] == "partitions":
        t_route = time.perf_counter()
        routes = backend.router(reader, manifest).route(q, ctx["k"], ctx["params"], ctx["filter"])
        route_ms = (time.perf_counter() - t_route) * 1e3
    out = run_allocator(ctx, 0, q, context, routes=routes, reader=reader)
    out["metrics"][0]["route_ms"] += route_ms
    if ctx["split"] == "queries":
        if out["nodes"] != list(range(Tree(**ctx["tree"]).n_nodes)):
            raise PartitionError(f"tree completed nodes {out['nodes']}, expected every node of the tree")
    else:
        covered = sorted(out["partitions"] + out["skipped"])
        if covered != list(range(manifest["n_partitions"])):
            raise PartitionError(f"tree covered partitions {covered}, expected 0..{manifest['n_partitions'] - 1}")
    out["version"] = version
    out["metric"] = manifest["metric"]
    out["metrics"][0]["ms"] = (time.perf_counter() - t0) * 1e3
    return out


# ---------------------------------------------------------------------------------------------------- entry point


def handler(event, context=None):
    """AWS Lambda entry point (``shoal.serverless.handler.handler``); ``event`` is the decoded JSON payload."""
    compiles0 = kernels.COMPILES.snapshot()
    with _STATE_LOCK:
        cold = _STATE["invocations"] == 0
        _STATE["invocations"] += 1
        if cold:
            CACHE.capacity = default_capacity()
    context = context or LocalContext()
    if not isinstance(event, dict):
        raise InvalidArgument("event must be a JSON object")
    event, spilled = unspill(event)
    role = event.get("role")
    if role not in ROLES:
        raise InvalidArgument(f"unknown role {role!r}; expected one of {ROLES}")
    body = decode(event)
    if role == "coordinator":
        out = run_coordinator(body, context)
        uri = body.get("index") or config.default_index()
    else:
        ctx = check_ctx(body.get("ctx"))
        uri = ctx["index"]
        if role == "allocator":
            node = body.get("node")
            Tree(**ctx["tree"])._check(node)
            if node == 0:
                raise InvalidArgument("node 0 is the coordinator")
            routes = None
            if ctx["split"] == "partitions":
                queries = body.get("queries")
                nq = queries.shape[0] if isinstance(queries, np.ndarray) and queries.ndim == 2 else 0
                n_parts = cached_manifest(_reader(ctx))["n_partitions"]
                routes = unpack_routes(body.get("routes"), Tree(**ctx["tree"]).subtree_partitions(node, n_parts), nq)
            out = run_allocator(ctx, node, body.get("queries"), context, routes=routes)
        else:
            out = run_processor(ctx, body.get("partition"), body.get("queries"), body.get("extra") or {}, context)
    rec = out["metrics"][0]
    rec["cold"] = cold
    rec["spilled_in_bytes"] = spilled
    # kernels compiled inside this invocation (0 once the init phase loaded them; process-wide, so in-process runs
    # with concurrent invocations may count each other's), and on a cold container what its init phase loaded
    count, seconds = kernels.COMPILES.snapshot()
    rec["compiles"] = count - compiles0[0]
    rec["compile_ms"] = (seconds - compiles0[1]) * 1e3
    if cold and kernels.INIT is not None:
        rec["init"] = dict(kernels.INIT, inherited=kernels.INIT.get("pid") != os.getpid())
    resp, _ = spill_if_large(encode(out), uri)
    return resp
