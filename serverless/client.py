"""Querying a serverless deployment: invoke the coordinator (or act as it) and summarise the tree's metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import (DimensionMismatch, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted,
                      SchemaError)
from ..index.validate import as_vectors, check_k
from .cache import store_for
from .cost import X86, Prices, summarize
from .handler import LocalContext, call, check_result, run_coordinator, use_child_invoker
from .invokers import LambdaInvoker, RemoteError
from .tree import Tree


#: errors a coordinator raises about the request itself (bad filter or settings, unknown index or version): they
#: come back to the caller as the same typed errors an embedded search raises, instead of a generic RemoteError
_REQUEST_ERRORS = {cls.__name__: cls for cls in (InvalidArgument, DimensionMismatch, SchemaError, NotFound,
                                                 FailedPrecondition, ResourceExhausted)}


def typed_error(exc: RemoteError) -> Exception:
    """The typed shoal error a coordinator's function error stands for (same class and message), else ``exc``."""
    cls = _REQUEST_ERRORS.get(exc.error_type)
    return exc if cls is None else cls(exc.remote_message)


@dataclass(frozen=True)
class ServerlessResult:
    """Result of one batch: ``D`` float32 (nq, k) distance keys, ``I`` int64 (nq, k) ids, the index version read,
    the per-invocation ``metrics`` and their ``stats`` summary (counts per role, cold/warm, bytes, cost)."""

    D: np.ndarray
    I: np.ndarray
    version: str
    metrics: list = field(repr=False)
    stats: dict = field(repr=False)
    elapsed_ms: float = 0.0
    metric: str = "l2"


def search(queries, k: int = 10, *, index=None, function: str | None = None, invoker=None, b: int = 2, L: int = 1,
           allocator: str | None = None, processor: str | None = None, params: dict | None = None, filter=None,
           version: str | None = None, retries: int = 2, chunk: int = 0, split: str = "partitions",
           prices: Prices = X86) -> ServerlessResult:
    """Search a partitioned index through Lambda.

    Parameters
    ----------
    queries : float32 (nq, d)
    index : str or ObjectStore, optional
        The partitioned index: a store URI (``s3://bucket/prefix``) or a store object (its URI is what the functions
        receive; the object itself is used here, e.g. for spilling a large batch). ``None``: the coordinator's
        ``$SHOAL_INDEX`` (set by ``shoal deploy --index``).
    function : str, optional
        Coordinator function. ``None`` runs the coordinator in this process (allocators and processors still run in
        Lambda), which saves one hop.
    invoker : Invoker, optional
        Defaults to a :class:`LambdaInvoker` (``$SHOAL_LAMBDA_ENDPOINT`` or AWS).
    b, L : int
        Tree branching and depth: ``b + ... + b^L`` allocators.
    allocator, processor : str, optional
        Function names per role (default: ``function``); ``processor`` may be a template like ``shoal-p{partition}``.
    filter : dict, optional
        Filter AST in its JSON form (OSQ indexes).
    chunk : int
        Queries per processor invocation (``0``: all the queries routed to a partition in one invocation, so each
        partition is processed exactly once per batch). Smaller chunks spread a large batch over more concurrent
        processors, as SQUASH's 50-query batches do.
    split : {"partitions", "queries"}
        ``"partitions"``: allocators own partitions and each routes the whole batch (each partition processed once
        per batch). ``"queries"``: each allocator routes its own slice of the batch and invokes the partitions its
        queries visit (level 0 in parallel, as SQUASH; a partition may be processed once per slice).
    """
    if function is None and (allocator is None or processor is None):
        raise InvalidArgument("give the coordinator function, or the allocator and processor functions")
    q = as_vectors(queries, None, name="queries")
    k = check_k(k)
    Tree(b, L)
    invoker = invoker or LambdaInvoker()
    if index is not None and not isinstance(index, str):
        index = store_for(index).uri
    if index is None and function is None:
        raise InvalidArgument("running the coordinator here needs the index URI")
    body = {"role": "coordinator", "index": index, "version": version, "queries": q, "k": k,
            "params": params or {}, "filter": filter, "tree": {"b": b, "L": L}, "retries": retries,
            "chunk": chunk, "split": split,
            "functions": {"allocator": allocator or function, "processor": processor or function}}
    t0 = time.perf_counter()
    if function is None:
        with use_child_invoker(invoker):
            out = run_coordinator(body, LocalContext("client"))
        info = {"req_bytes": 0, "resp_bytes": 0, "spilled_request": False, "spilled_response_bytes": 0}
        out["metrics"][0]["inline"] = True  # the client's own time is not billed by Lambda
    else:
        try:
            out, info = call(function, body, index, throttle_retries=None, invoker=invoker)
        except RemoteError as exc:
            raise typed_error(exc) from None
    elapsed = (time.perf_counter() - t0) * 1e3
    D, I, metrics = check_result(out, q.shape[0], k, f"coordinator {function or '(local)'}")
    if metrics:
        metrics[0].update(req_bytes=info["req_bytes"], resp_bytes=info["resp_bytes"],
                          spilled_request=info["spilled_request"],
                          spilled_response_bytes=info["spilled_response_bytes"])
    if not isinstance(out.get("version"), str):
        raise RemoteError(function or "local", "MalformedResponse", "response lacks the index version")
    return ServerlessResult(D=D, I=I, version=out["version"], metrics=metrics, stats=summarize(metrics, prices),
                            elapsed_ms=elapsed, metric=str(out.get("metric", "l2")))
