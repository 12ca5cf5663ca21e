"""``shoal.Client``: the Python client of ``shoal serve`` (numpy in, numpy out).

    >>> client = shoal.Client("127.0.0.1:50051", api_key="shoal_...", timeout=10)
    >>> client.upsert("docs", ids, vectors, attrs={"price": prices}, tenants=[["acme"]] * len(ids))
    >>> res = client.search("docs", queries, k=10, filter="price < 10", tenant="acme")
    >>> res.ids, res.scores          # int64 (nq, k), float32 (nq, k): the engine's SearchResult, as in-process

Large upserts are split into batches under the message size limit and sent on one client stream. Calls that are safe
to repeat (everything except create/drop collection, build and compact) are retried on UNAVAILABLE with exponential backoff and
jitter, within the call's timeout, so a client started next to a server that is still loading simply waits for it.
Failures raise the typed errors of :mod:`shoal.errors` (``NotFound``, ``InvalidArgument``, ``DimensionMismatch``,
``PermissionDenied``, ...) or :mod:`shoal.server.errors` (``Unavailable``, ``Internal``), each with ``.code``. Arguments
are checked before anything is serialised or sent: a wrong type or value is an ``InvalidArgument`` naming the
argument, never a bare protobuf ``ValueError`` or ``TypeError``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import grpc
import numpy as np

from ..engine.results import SearchResult, SearchStats, attribute_selection
from ..errors import DeadlineExceeded, InvalidArgument, backoff_delay
from ..index.validate import as_ids, check_k
from . import codec
from .errors import Unavailable, error_from_rpc
from .proto.shoal.v1 import shoal_pb2 as pb
from .proto.shoal.v1 import shoal_pb2_grpc as pb_grpc

MAX_UINT32 = 2 ** 32 - 1

DEFAULT_MAX_MESSAGE = 64 << 20
#: upsert batches aim at this many bytes per message (well under the default 64 MiB limit)
UPSERT_BATCH_BYTES = 4 << 20


# ---------------------------------------------------------------------- argument checks (before serialising)
def _text(value, what: str, *, optional: bool = False) -> str:
    """A non-empty string argument ('' for an omitted optional one)."""
    if value is None and optional:
        return ""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{what} must be a non-empty string, got {value!r}")
    return value


def _flag(value, what: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgument(f"{what} must be True or False, got {value!r}")
    return bool(value)


def _count(value, what: str, *, lo: int = 1, hi: int = MAX_UINT32) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise InvalidArgument(f"{what} must be an integer in {lo}..{hi:,}, got {value!r}")
    return int(value)


def _ids(ids) -> list[int]:
    return as_ids(ids, allow_duplicates=True).tolist()


def _timeout(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgument(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def _strings(values, what: str) -> dict[str, str]:
    if values is None:
        return {}
    if not isinstance(values, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                  for k, v in values.items()):
        raise InvalidArgument(f"{what} must be a mapping of names to type names (strings), got {values!r}")
    return dict(values)


def _params(params) -> Mapping[str, Any] | None:
    if params is None:
        return None
    if not isinstance(params, Mapping) or not all(isinstance(k, str) and k for k in params):
        raise InvalidArgument(f"params must be a mapping of setting names to values, got {params!r}")
    return params


def _filter(filter):
    if filter is None or isinstance(filter, (str, Mapping)):
        return codec.to_filter(filter)
    from .. import filters

    if not isinstance(filter, filters.Expr):
        raise InvalidArgument(f"filter must be an expression string, a JSON AST dict or a parsed expression, "
                              f"got {type(filter).__name__}")
    return codec.to_filter(filter)


class Client:
    """A connection to a shoal server.

    Parameters
    ----------
    address : str
        ``host:port``.
    api_key : str, optional
        Sent as ``authorization: Bearer <key>``.
    timeout : float
        Default deadline of each call in seconds (retries included).
    tls : bool
        Use TLS; ``root_certificates`` (PEM bytes or a path) to trust a private CA or self-signed certificate.
    retries : int or None
        Attempts after the first on UNAVAILABLE, for calls safe to repeat. None (the default) retries until the
        call's deadline, so a call made while the server starts or loads its collections waits for it instead of
        failing after a fixed number of jittered sleeps (whose total is luck); 0 fails fast.
    """

    def __init__(self, address: str, *, api_key: str | None = None, timeout: float = 30.0, tls: bool = False,
                 root_certificates: bytes | str | None = None, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
                 retries: int | None = None, backoff: float = 0.05, max_backoff: float = 2.0):
        options = [("grpc.max_receive_message_length", max_message_bytes),
                   ("grpc.max_send_message_length", max_message_bytes)]
        if tls or root_certificates is not None:
            if isinstance(root_certificates, str):
                with open(root_certificates, "rb") as f:
                    root_certificates = f.read()
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates), options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_message_bytes = max_message_bytes
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self._collections = pb_grpc.CollectionsStub(self._channel)
        self._points = pb_grpc.PointsStub(self._channel)
        self._search = pb_grpc.SearchStub(self._channel)
        self._tenants = pb_grpc.TenantsStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)

    # ------------------------------------------------------------------ plumbing
    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, *, timeout: float | None = None, retry: bool = True):
        """Invoke ``method``; retry UNAVAILABLE with backoff within the deadline; raise typed errors."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.address}: no answer within {budget:g}s")
            try:
                return method(request() if callable(request) else request, timeout=remaining,
                              metadata=self._metadata)
            except grpc.RpcError as err:
                exc = error_from_rpc(err)
                if not (retry and isinstance(exc, Unavailable) and (self.retries is None or attempt < self.retries)):
                    raise exc from None
            delay = backoff_delay(attempt, self.backoff, self.max_backoff)
            attempt += 1
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))

    # ------------------------------------------------------------------ health
    def health(self, service: str = "", timeout: float = 5.0) -> str:
        """The server's ``grpc.health.v1`` status: "SERVING", "NOT_SERVING", ... (no retry)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until health reports SERVING (raises DeadlineExceeded)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.health(timeout=min(2.0, max(0.1, deadline - time.monotonic()))) == "SERVING":
                    return
            except (Unavailable, DeadlineExceeded):
                pass
            if time.monotonic() > deadline:
                raise DeadlineExceeded(f"{self.address} not SERVING after {timeout:g}s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ collections
    @staticmethod
    def _info(msg: pb.CollectionInfo) -> dict:
        info = json.loads(msg.info_json) if msg.info_json else {}
        info.update(name=msg.name, dim=msg.dim, metric=msg.metric, schema=dict(msg.schema), index=msg.index,
                    multi_tenant=msg.multi_tenant, count=msg.count)
        return info

    def create_collection(self, name: str, dim: int, *, metric: str = "l2", schema: Mapping[str, str] | None = None,
                          index: str | None = None, multi_tenant: bool = False) -> dict:
        req = pb.CreateCollectionRequest(name=_text(name, "name"), dim=_count(dim, "dim"),
                                         metric=_text(metric, "metric"), schema=_strings(schema, "schema"),
                                         index=_text(index, "index", optional=True),
                                         multi_tenant=_flag(multi_tenant, "multi_tenant"))
        return self._info(self._call(self._collections.CreateCollection, req, retry=False))

    def describe_collection(self, name: str) -> dict:
        req = pb.CollectionRequest(name=_text(name, "name"))
        return self._info(self._call(self._collections.DescribeCollection, req))

    def list_collections(self) -> list[str]:
        return list(self._call(self._collections.ListCollections, pb.ListCollectionsRequest()).names)

    def drop_collection(self, name: str) -> bool:
        req = pb.CollectionRequest(name=_text(name, "name"))
        return self._call(self._collections.DropCollection, req, retry=False).dropped

    # ------------------------------------------------------------------ points
    def _upsert_batches(self, collection, ids, vectors, attrs, tenants, batch_size) -> Iterator[pb.UpsertRequest]:
        collection = _text(collection, "collection")
        ids = as_ids(ids, allow_duplicates=True)
        x = codec.as_f32(vectors, "vectors")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[0] != ids.size:
            raise InvalidArgument(f"{ids.size} ids for vectors of shape {x.shape}")
        rows = codec.rows_of_attrs(attrs, ids.size)
        if tenants is not None:
            if isinstance(tenants, str) or not all(isinstance(t, (list, tuple)) and
                                                   all(isinstance(n, str) for n in t) for t in tenants):
                raise InvalidArgument("tenants: expected one list of tenant names (strings) per point")
            tenants = [list(t) for t in tenants]
            if len(tenants) != ids.size:
                raise InvalidArgument(f"{len(tenants)} tenant lists for {ids.size} points")
        if batch_size is not None:
            _count(batch_size, "batch_size")
        if batch_size is None:
            batch_size = max(1, UPSERT_BATCH_BYTES // max(1, 4 * x.shape[1] + 8 + (64 if rows else 0)))
        for start in range(0, max(ids.size, 1), batch_size):
            sl = slice(start, start + batch_size)
            req = pb.UpsertRequest(collection=collection, ids=ids[sl].tolist(), vectors=codec.pack_vectors(x[sl])[0])
            if rows is not None:
                req.attributes.extend(codec.to_attributes(r) for r in rows[sl])
            if tenants is not None:
                req.tenants.extend(pb.StringList(values=t) for t in tenants[sl])
            yield req

    def upsert(self, collection: str, ids, vectors, *, attrs=None, tenants: Sequence[Sequence[str]] | None = None,
               batch_size: int | None = None, stream: bool | None = None, timeout: float | None = None) -> int:
        """Insert or replace points; returns how many the server acknowledged (all of them, or an error is raised).

        ``attrs``: a list of per-point dicts or a columnar ``{name: values}``. ``tenants``: per point, the tenant names
        it belongs to. Batches of ``batch_size`` rows (default: about 4 MiB each) go on one client stream when there
        is more than one (``stream=False`` sends one unary call per batch instead).
        """
        timeout = _timeout(timeout)
        batches = list(self._upsert_batches(collection, ids, vectors, attrs, tenants, batch_size))
        if stream is None:
            stream = len(batches) > 1
        if stream:  # the whole stream is retried on UNAVAILABLE: upserts are idempotent
            return self._call(self._points.UpsertStream, lambda: iter(batches), timeout=timeout).upserted
        return sum(self._call(self._points.Upsert, b, timeout=timeout).upserted for b in batches)

    def delete(self, collection: str, ids=None, *, filter=None, tenant: str | None = None) -> int:
        """Delete ``ids``, or every point matching ``filter``; returns how many.

        With ``tenant``: only within that tenant; points it shares with other tenants are revoked from it, not deleted.
        """
        req = pb.DeleteRequest(collection=_text(collection, "collection"),
                               tenant=_text(tenant, "tenant", optional=True))
        if ids is not None:
            req.ids.extend(_ids(ids))
        f = _filter(filter)
        if f is not None:
            req.filter.CopyFrom(f)
        return self._call(self._points.Delete, req).deleted

    def get(self, collection: str, ids, *, tenant: str | None = None, include_vectors: bool = True) -> list[dict]:
        """Points by id (missing ones omitted): ``{"id", "vector" (float32 (d,) or None), "attrs", "tenants"}``."""
        req = pb.GetRequest(collection=_text(collection, "collection"), ids=_ids(ids),
                            tenant=_text(tenant, "tenant", optional=True),
                            include_vectors=_flag(include_vectors, "include_vectors"))
        out = []
        for p in self._call(self._points.Get, req).points:
            out.append({"id": p.id, "vector": np.frombuffer(p.vector, dtype=codec.F32).copy() if p.vector else None,
                        "attrs": codec.from_attributes(p.attributes), "tenants": list(p.tenants)})
        return out

    def count(self, collection: str, *, tenant: str | None = None, filter=None) -> int:
        req = pb.CountRequest(collection=_text(collection, "collection"), tenant=_text(tenant, "tenant", optional=True))
        f = _filter(filter)
        if f is not None:
            req.filter.CopyFrom(f)
        return self._call(self._points.Count, req).count

    # ------------------------------------------------------------------ search
    def search(self, collection: str, queries, k: int = 10, *, filter=None, tenant: str | None = None,
               params: Mapping[str, Any] | None = None, attributes: bool | Sequence[str] = False,
               timeout: float | None = None) -> SearchResult:
        """Nearest neighbours of ``queries`` float32 ``(nq, d)`` (or one ``(d,)``).

        ``filter``: expression string, JSON AST dict or parsed expression; ``params``: per-query index settings
        (``nprobe``, ...); ``attributes``: True for all, or the names to return with each hit (the same keyword as
        the embedded ``Collection.search``).
        """
        k = check_k(k)
        if k > MAX_UINT32:
            raise InvalidArgument(f"k = {k} is too large (the server's max_k applies, default 10,000)")
        collection, tenant = _text(collection, "collection"), _text(tenant, "tenant", optional=True)
        want, timeout, f = attribute_selection(attributes), _timeout(timeout), _filter(filter)
        data, nq, d = codec.pack_vectors(queries, name="queries")
        req = pb.SearchRequest(collection=collection, queries=data, k=k, tenant=tenant, dim=d,
                               params=codec.to_params(_params(params)))
        if f is not None:
            req.filter.CopyFrom(f)
        if want is True:
            req.all_attributes = True
        elif want:
            req.attributes.extend(want)
        resp = self._call(self._search.Search, req, timeout=timeout)
        ids = np.frombuffer(resp.ids, dtype=codec.I64).reshape(resp.nq, resp.k)
        scores = np.frombuffer(resp.scores, dtype=codec.F32).reshape(resp.nq, resp.k)
        attrs = None
        if len(resp.attributes):
            flat = [codec.from_attributes(a) for a in resp.attributes]
            attrs = [flat[i * resp.k:(i + 1) * resp.k] for i in range(resp.nq)]
        s = resp.stats
        return SearchResult(ids=ids, scores=scores, score_kind=resp.score_kind, attrs=attrs,
                            stats=SearchStats(plan=s.plan, ndis=s.ndis, nscanned=s.nscanned, elapsed_ms=s.elapsed_ms,
                                              matched=s.matched if s.HasField("matched") else None,
                                              exact_fallback=s.exact_fallback))

    # ------------------------------------------------------------------ tenants
    def grant(self, collection: str, ids, tenant: str) -> int:
        req = pb.TenantAccessRequest(collection=_text(collection, "collection"), tenant=_text(tenant, "tenant"),
                                     ids=_ids(ids))
        return self._call(self._tenants.Grant, req).changed

    def revoke(self, collection: str, ids, tenant: str) -> int:
        req = pb.TenantAccessRequest(collection=_text(collection, "collection"), tenant=_text(tenant, "tenant"),
                                     ids=_ids(ids))
        return self._call(self._tenants.Revoke, req).changed

    def list_tenants(self, collection: str) -> list[str]:
        req = pb.ListTenantsRequest(collection=_text(collection, "collection"))
        return list(self._call(self._tenants.ListTenants, req).tenants)

    def drop_tenant(self, collection: str, tenant: str) -> bool:
        req = pb.DropTenantRequest(collection=_text(collection, "collection"), tenant=_text(tenant, "tenant"))
        return self._call(self._tenants.DropTenant, req).dropped

    # ------------------------------------------------------------------ admin
    @staticmethod
    def _op(msg: pb.Operation) -> dict:
        return {"id": msg.id, "kind": msg.kind, "collection": msg.collection,
                "state": pb.Operation.State.Name(msg.state), "progress": msg.progress, "message": msg.message,
                "error": msg.error, "started_at": msg.started_at, "finished_at": msg.finished_at}

    def build(self, collection: str, index: str | None = None, *, wait: bool = False,
              progress: Callable[[dict], None] | None = None, timeout: float | None = None) -> dict:
        """Start building ``collection``'s index (``index`` = factory string) in the background.

        Returns the operation; with ``wait=True`` follows it to the end (calling ``progress(op)`` on every update)
        and raises the operation's error if it failed.
        """
        req = pb.BuildRequest(collection=_text(collection, "collection"), index=_text(index, "index", optional=True))
        timeout = _timeout(timeout)
        op = self._op(self._call(self._admin.Build, req, retry=False))
        if not wait:
            return op
        for op in self.watch_operation(op["id"], timeout=timeout):
            if progress is not None:
                progress(op)
        if op["state"] == "FAILED":
            code, _, message = op["error"].partition(": ")
            exc = error_from_rpc(_FailedOp(getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN), message))
            raise exc
        return op

    def get_operation(self, op_id: str) -> dict:
        return self._op(self._call(self._admin.GetOperation, pb.OperationRequest(id=_text(op_id, "operation id"))))

    def watch_operation(self, op_id: str, *, timeout: float | None = None) -> Iterator[dict]:
        """Yield the operation after every change until it finishes."""
        try:
            req = pb.OperationRequest(id=_text(op_id, "operation id"))
            timeout = _timeout(timeout)
            for msg in self._admin.WatchOperation(req, metadata=self._metadata,
                                                  timeout=timeout if timeout is not None else max(self.timeout, 3600)):
                yield self._op(msg)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def compact(self, collection: str) -> Any:
        resp = self._call(self._admin.Compact, pb.CollectionRequest(name=_text(collection, "collection")), retry=False)
        return json.loads(resp.result_json) if resp.result_json else None

    def stats(self, collection: str | None = None) -> dict:
        req = pb.StatsRequest(collection=_text(collection, "collection", optional=True))
        return json.loads(self._call(self._admin.Stats, req).stats_json)


class _FailedOp(grpc.RpcError):
    """A finished operation's error, shaped like an RpcError so :func:`error_from_rpc` types it."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return ()
