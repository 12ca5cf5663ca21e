"""The shoal.v1 servicers: decode the request, check the caller, call the engine, encode the answer.

Every handler runs inside :func:`handler`, which refuses calls until the collections are loaded (UNAVAILABLE, so the
client's retry waits), authenticates the API key, checks the role, and maps any exception to a status code without
leaking a traceback (:mod:`shoal.server.errors`).

Tenant-bound keys are enforced here, in :func:`scope` and the write paths, so no request field can widen them: a bound
key searches, counts, gets and deletes only inside its tenant, upserts only points that are (or become) its tenant's
alone, never grants, and sees only its own tenant in any tenant list.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import Counter
from typing import Any, Callable

import grpc
import numpy as np

from ..errors import Cancelled, DeadlineExceeded, DimensionMismatch, InvalidArgument, NotFound, PermissionDenied
from ..engine.planner import check_limits
from . import codec
from .auth import KeyRing, Principal
from .errors import Unavailable, abort
from .proto.shoal.v1 import shoal_pb2 as pb
from .proto.shoal.v1 import shoal_pb2_grpc as pb_grpc

#: a search with a deadline runs in chunks of queries sized to take about this long, checking the deadline between
SEARCH_CHUNK_SECONDS = 0.05
#: a streaming upsert applies buffered rows to the engine once this many have arrived (one WAL record per flush)
STREAM_FLUSH_ROWS = 8192
#: finished operations remembered for GetOperation (the oldest are forgotten first)
KEEP_FINISHED_OPERATIONS = 256
SERVICE_NAMES = tuple(pb.DESCRIPTOR.services_by_name[name].full_name
                      for name in ("Collections", "Points", "Search", "Tenants", "Admin"))


class ServerState:
    """What every servicer shares: the database, the keys, readiness, counters, background operations."""

    def __init__(self, db=None, keys: KeyRing | None = None):
        self.db = db
        self.keys = keys if keys is not None else KeyRing()
        self.ready = threading.Event()
        self.shutting_down = False
        self.started_at = time.time()
        self._counters: Counter = Counter()
        self._counter_lock = threading.Lock()
        self._write_locks: dict[str, threading.Lock] = {}
        self.operations = Operations()

    def count(self, name: str, n: int = 1) -> None:
        with self._counter_lock:
            self._counters[name] += n

    def counters(self) -> dict[str, int]:
        with self._counter_lock:
            return dict(self._counters)

    def check_ready(self) -> None:
        if self.shutting_down:
            raise Unavailable("the server is shutting down")
        if not self.ready.is_set():
            raise Unavailable("the server is still loading its collections")

    def collection(self, name: str):
        if not name:
            raise InvalidArgument("collection name is required")
        return self.db.collection(name)

    def write_lock(self, name: str) -> threading.Lock:
        """Serialises a tenant-bound key's check-then-write on one collection."""
        with self._counter_lock:
            return self._write_locks.setdefault(name, threading.Lock())


def handler(role: str, *, streaming: bool = False) -> Callable:
    """Wrap a servicer method ``fn(self, request, context, principal)``: readiness, auth, role, error mapping."""

    def wrap(fn):
        name = fn.__name__

        def enter(self, context) -> Principal:
            self.state.count(f"rpc.{name}")
            self.state.check_ready()
            principal = self.state.keys.authenticate(context.invocation_metadata())
            principal.require(role)
            return principal

        def fail(self, context, exc):
            self.state.count(f"error.{type(exc).__name__}")
            abort(context, exc, getattr(exc, "trailing", ()))

        if streaming:
            @functools.wraps(fn)
            def call_stream(self, request, context):
                try:
                    principal = enter(self, context)
                    yield from fn(self, request, context, principal)
                except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
                    fail(self, context, exc)
            return call_stream

        @functools.wraps(fn)
        def call(self, request, context):
            try:
                return fn(self, request, context, enter(self, context))
            except Exception as exc:  # noqa: BLE001 - every failure becomes a status code
                fail(self, context, exc)
        return call

    return wrap


# ---------------------------------------------------------------------------------------------------- helpers
def scope(principal: Principal, requested: str, info: dict) -> str | None:
    """The tenant a call acts in: the key's own tenant for a bound key (any other request is refused)."""
    requested = requested or None
    if principal.tenant is None:
        return requested
    if requested is not None and requested != principal.tenant:
        raise PermissionDenied(f"key {principal.name!r} is bound to tenant {principal.tenant!r} and cannot act on "
                               f"tenant {requested!r}")
    if not info.get("multi_tenant"):
        raise PermissionDenied(f"key {principal.name!r} is bound to a tenant; collection {info.get('name')!r} "
                               "has no tenants")
    return principal.tenant


def unbound(principal: Principal, what: str) -> None:
    if principal.tenant is not None:
        raise PermissionDenied(f"key {principal.name!r} is bound to tenant {principal.tenant!r}; {what} spans "
                               "tenants and needs an unbound key")


def collection_meta(col) -> dict:
    """The few facts every call needs (cheap: no counting, no locks)."""
    return {"name": col.name, "dim": int(col.dim), "metric": col.metric, "multi_tenant": bool(col.multi_tenant)}


def describe(col, principal: Principal) -> dict:
    """``Collection.info()``; a tenant-bound key sees only its tenant's count and the configuration."""
    if principal.tenant is None:
        return dict(col.info())
    meta = collection_meta(col)
    tenant = scope(principal, "", meta)
    info = {key: v for key, v in col.info().items() if key in ("name", "dim", "metric", "schema", "index")}
    return {**info, "multi_tenant": True, "count": int(col.count(tenant=tenant))}


def info_message(info: dict) -> pb.CollectionInfo:
    return pb.CollectionInfo(
        name=str(info.get("name", "")), dim=int(info.get("dim", 0)), metric=str(info.get("metric", "")),
        schema={str(k): str(v) for k, v in (info.get("schema") or {}).items()},
        index=str(info.get("index") or info.get("factory") or ""), multi_tenant=bool(info.get("multi_tenant")),
        count=int(info.get("count", 0) or 0), info_json=codec.dumps(info))


def decode_ids(ids) -> np.ndarray:
    arr = np.fromiter(ids, dtype=np.int64, count=len(ids))
    if arr.size and arr.min() < 0:
        raise InvalidArgument(f"ids must be >= 0, got {int(arr.min())}")
    return arr


def tenant_lists(msgs, n: int) -> list[list[str]] | None:
    if not len(msgs):
        return None
    if len(msgs) != n:
        raise InvalidArgument(f"{len(msgs)} tenant lists for {n} points")
    return [list(m.values) for m in msgs]


def attr_rows(msgs, n: int) -> list[dict] | None:
    if not len(msgs):
        return None
    if len(msgs) != n:
        raise InvalidArgument(f"{len(msgs)} attribute rows for {n} points")
    return [codec.from_attributes(m) for m in msgs]


def point_message(p: dict, principal: Principal) -> pb.Point:
    vec = p.get("vector")
    tenants = list(p.get("tenants") or [])
    if principal.tenant is not None:  # never reveal which other tenants share a point
        tenants = [t for t in tenants if t == principal.tenant]
    return pb.Point(id=int(p["id"]), vector=b"" if vec is None else codec.pack_array(vec, codec.F32),
                    attributes=codec.to_attributes(p.get("attrs")), tenants=tenants)


class Operations:
    """Background operations (index builds) with progress, for Admin.Build / GetOperation / WatchOperation."""

    def __init__(self) -> None:
        self._ops: dict[str, pb.Operation] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._cond = threading.Condition()

    def start(self, kind: str, collection: str, work: Callable[[Callable[[float, str], None]], Any]) -> pb.Operation:
        """Run ``work(progress)`` in a thread; ``progress(fraction, message)`` updates the operation."""
        op = pb.Operation(id=uuid.uuid4().hex[:16], kind=kind, collection=collection, state=pb.Operation.RUNNING,
                          started_at=time.time(), message="started")
        with self._cond:
            finished = [i for i, o in self._ops.items() if o.state != pb.Operation.RUNNING]
            for old_id in finished[:max(0, len(finished) - KEEP_FINISHED_OPERATIONS + 1)]:  # oldest first
                del self._ops[old_id]
                self._threads.pop(old_id, None)
            self._ops[op.id] = op

        def progress(fraction: float, message: str = "") -> None:
            with self._cond:
                op.progress = min(max(float(fraction), 0.0), 1.0)
                if message:
                    op.message = str(message)
                self._cond.notify_all()

        def run() -> None:
            try:
                result = work(progress)
                fields = dict(state=pb.Operation.DONE, progress=1.0, message=codec.dumps(result)[:2000]
                              if result is not None else "done")
            except Exception as exc:  # noqa: BLE001 - reported on the operation, logged by status_of
                from .errors import status_of

                code, message = status_of(exc)
                fields = dict(state=pb.Operation.FAILED, error=f"{code.name}: {message}")
            with self._cond:
                for key, value in fields.items():
                    setattr(op, key, value)
                op.finished_at = time.time()
                self._cond.notify_all()

        thread = threading.Thread(target=run, name=f"shoal-{kind}-{op.id}", daemon=True)
        self._threads[op.id] = thread
        thread.start()
        return self.get(op.id)

    def get(self, op_id: str) -> pb.Operation:
        with self._cond:
            op = self._ops.get(op_id)
            if op is None:
                raise NotFound(f"no operation {op_id!r}")
            snap = pb.Operation()
            snap.CopyFrom(op)
            return snap

    def watch(self, op_id: str, is_active: Callable[[], bool]):
        """Yield a snapshot now and after every change until the operation finishes (or the caller goes away)."""
        last = None
        while True:
            snap = self.get(op_id)
            if snap != last:
                yield snap
                last = snap
            if snap.state != pb.Operation.RUNNING or not is_active():
                return
            with self._cond:
                self._cond.wait(timeout=0.5)

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for running operations; True if none is left running."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads.values())


# ---------------------------------------------------------------------------------------------------- services
class _Base:
    def __init__(self, state: ServerState):
        self.state = state


class CollectionsServicer(_Base, pb_grpc.CollectionsServicer):
    @handler("admin")
    def CreateCollection(self, request, context, principal):
        kwargs = dict(dim=int(request.dim), metric=request.metric or "l2", schema=dict(request.schema) or None,
                      multi_tenant=bool(request.multi_tenant))
        if request.index:
            kwargs["index"] = request.index
        if not request.name:
            raise InvalidArgument("collection name is required")
        col = self.state.db.create_collection(request.name, **kwargs)
        return info_message(col.info())

    @handler("read-only")
    def DescribeCollection(self, request, context, principal):
        return info_message(describe(self.state.collection(request.name), principal))

    @handler("read-only")
    def ListCollections(self, request, context, principal):
        return pb.ListCollectionsResponse(names=sorted(self.state.db.list_collections()))

    @handler("admin")
    def DropCollection(self, request, context, principal):
        if not request.name:
            raise InvalidArgument("collection name is required")
        self.state.db.drop_collection(request.name)
        return pb.DropCollectionResponse(dropped=True)


class PointsServicer(_Base, pb_grpc.PointsServicer):
    def _decode_upsert(self, request, info: dict):
        ids = decode_ids(request.ids)
        x = codec.unpack_vectors(request.vectors, int(info["dim"]), ids.size)
        return ids, x, attr_rows(request.attributes, ids.size), tenant_lists(request.tenants, ids.size)

    def _apply(self, col, info: dict, principal: Principal, ids, x, attrs, tenants) -> int:
        if ids.size == 0:
            return 0
        if principal.tenant is None:
            return int(col.upsert(ids, x, attrs=attrs, tenants=tenants))
        t = scope(principal, "", info)
        for i, lst in enumerate(tenants or ()):
            if lst and lst != [t]:
                raise PermissionDenied(f"key {principal.name!r} may only write points of tenant {t!r} "
                                       f"(point {int(ids[i])} names {lst})")
        with self.state.write_lock(info["name"]):
            for p in col.get(ids, include_vectors=False):
                if list(p.get("tenants") or []) != [t]:
                    raise PermissionDenied(f"point {int(p['id'])} is not writable by key {principal.name!r}")
            return int(col.upsert(ids, x, attrs=attrs, tenants=[[t]] * ids.size))

    @handler("read-write")
    def Upsert(self, request, context, principal):
        col = self.state.collection(request.collection)
        info = collection_meta(col)
        n = self._apply(col, info, principal, *self._decode_upsert(request, info))
        return pb.UpsertResponse(upserted=n)

    @handler("read-write")
    def UpsertStream(self, request_iterator, context, principal):
        applied = 0
        col = info = None
        buf: list = []

        def flush():
            nonlocal applied
            if not buf:
                return
            ids = np.concatenate([b[0] for b in buf])
            x = np.concatenate([b[1] for b in buf])
            attrs = tenants = None
            if any(b[2] is not None for b in buf):
                attrs = [row for b in buf for row in (b[2] if b[2] is not None else [{}] * b[0].size)]
            if any(b[3] is not None for b in buf):
                tenants = [lst for b in buf for lst in (b[3] if b[3] is not None else [[]] * b[0].size)]
            buf.clear()
            applied += self._apply(col, info, principal, ids, x, attrs, tenants)

        try:
            for request in request_iterator:
                if col is None:
                    col = self.state.collection(request.collection)
                    info = collection_meta(col)
                elif request.collection and request.collection != info["name"]:
                    raise InvalidArgument("every message of an upsert stream must name the same collection")
                buf.append(self._decode_upsert(request, info))
                if sum(b[0].size for b in buf) >= STREAM_FLUSH_ROWS:
                    flush()
            if col is None:
                raise InvalidArgument("empty upsert stream")
            flush()
        except Exception as exc:
            exc.trailing = (("shoal-upserted", str(applied)),)
            raise
        return pb.UpsertResponse(upserted=applied)

    @handler("read-write")
    def Delete(self, request, context, principal):
        col = self.state.collection(request.collection)
        info = collection_meta(col)
        tenant = scope(principal, request.tenant, info)
        flt = codec.from_filter(request.filter, request.HasField("filter"))
        if len(request.ids) and flt is not None:
            raise InvalidArgument("give ids or a filter, not both")
        if flt is not None:
            if tenant is None:
                return pb.DeleteResponse(deleted=int(col.delete_where(flt)))
            with self.state.write_lock(info["name"]):
                ids = col.ids_where(flt, tenant=tenant)
                return pb.DeleteResponse(deleted=self._delete_in_tenant(col, ids, tenant))
        if not len(request.ids):
            raise InvalidArgument("give ids or a filter to delete")
        ids = decode_ids(request.ids)
        if tenant is None:
            return pb.DeleteResponse(deleted=int(col.delete(ids)))
        with self.state.write_lock(info["name"]):
            return pb.DeleteResponse(deleted=self._delete_in_tenant(col, ids, tenant))

    @staticmethod
    def _delete_in_tenant(col, ids: np.ndarray, tenant: str) -> int:
        """Inside a tenant: a point only this tenant holds is deleted; a shared one is only taken out of the tenant."""
        visible = col.get(ids, tenant=tenant, include_vectors=False) if ids.size else []
        own = np.asarray([p["id"] for p in visible if list(p.get("tenants") or []) == [tenant]], dtype=np.int64)
        shared = np.asarray([p["id"] for p in visible if list(p.get("tenants") or []) != [tenant]], dtype=np.int64)
        n = int(col.delete(own)) if own.size else 0
        if shared.size:
            col.revoke(shared, tenant)
        return n + int(shared.size)

    @handler("read-only")
    def Get(self, request, context, principal):
        col = self.state.collection(request.collection)
        tenant = scope(principal, request.tenant, collection_meta(col))
        points = col.get(decode_ids(request.ids), tenant=tenant, include_vectors=bool(request.include_vectors))
        return pb.GetResponse(points=[point_message(p, principal) for p in points])

    @handler("read-only")
    def Count(self, request, context, principal):
        col = self.state.collection(request.collection)
        tenant = scope(principal, request.tenant, collection_meta(col))
        flt = codec.from_filter(request.filter, request.HasField("filter"))
        return pb.CountResponse(count=int(col.count(tenant=tenant, filter=flt)))


class SearchServicer(_Base, pb_grpc.SearchServicer):
    def _run(self, col, q: np.ndarray, kwargs: dict, context) -> list:
        """Search ``q`` in chunks when the call has a deadline, stopping as soon as it passes or the caller leaves."""
        nq = q.shape[0]
        if context.time_remaining() is None or nq <= 1:
            return [col.search(q, **kwargs)]
        parts, done, chunk = [], 0, min(nq, 4)
        while done < nq:
            if not context.is_active() or context.time_remaining() <= 0:
                self.state.count("search.abandoned")
                self.state.count("search.queries_abandoned", nq - done)
                if context.time_remaining() <= 0:
                    raise DeadlineExceeded(f"deadline passed after {done} of {nq} queries")
                raise Cancelled(f"the caller cancelled after {done} of {nq} queries")
            t0 = time.perf_counter()
            parts.append(col.search(q[done:done + chunk], **kwargs))
            per_query = (time.perf_counter() - t0) / chunk
            done += chunk
            chunk = int(min(max(SEARCH_CHUNK_SECONDS / max(per_query, 1e-7), 1), nq - done, 4096))
        return parts

    @handler("read-only")
    def Search(self, request, context, principal):
        col = self.state.collection(request.collection)
        info = collection_meta(col)
        d = int(info["dim"])
        if request.dim and request.dim != d:
            raise DimensionMismatch(f"queries: dimension {request.dim} does not match the collection's dimension {d}")
        q = codec.unpack_vectors(request.queries, d, name="queries")
        check_limits(q.shape[0], int(request.k), col.max_k, col.max_results)  # before anything is allocated
        include = True if request.all_attributes else list(request.attributes)
        kwargs = dict(k=int(request.k), filter=codec.from_filter(request.filter, request.HasField("filter")),
                      tenant=scope(principal, request.tenant, info), params=codec.from_params(request.params),
                      attributes=include)  # the engine checks the names (SchemaError naming the known ones)
        parts = self._run(col, q, kwargs, context)
        self.state.count("search.queries", q.shape[0])
        return search_response(parts, include)


def search_response(parts: list, include) -> pb.SearchResponse:
    """One response from the engine's results of one or more query chunks."""
    ids = np.concatenate([r.ids for r in parts])
    stats = [r.stats for r in parts]
    msg = pb.SearchResponse(
        nq=ids.shape[0], k=ids.shape[1], ids=codec.pack_array(ids, codec.I64),
        scores=codec.pack_array(np.concatenate([r.scores for r in parts]), codec.F32), score_kind=parts[0].score_kind,
        stats=pb.SearchStats(plan=stats[0].plan, ndis=sum(int(s.ndis) for s in stats),
                             nscanned=sum(int(s.nscanned) for s in stats),
                             elapsed_ms=sum(float(s.elapsed_ms) for s in stats),
                             matched=stats[0].matched,
                             exact_fallback=sum(int(s.exact_fallback) for s in stats)))
    if include:
        for r in parts:
            for row_ids, row_attrs in zip(r.ids, r.attrs):
                for uid, a in zip(row_ids, row_attrs):
                    msg.attributes.append(codec.to_attributes({} if uid < 0 else a))
    return msg


class TenantsServicer(_Base, pb_grpc.TenantsServicer):
    @handler("read-write")
    def Grant(self, request, context, principal):
        unbound(principal, "granting")  # a grant would let a bound key read points it cannot see today
        col = self.state.collection(request.collection)
        if not request.tenant:
            raise InvalidArgument("tenant is required")
        return pb.TenantAccessResponse(changed=int(col.grant(decode_ids(request.ids), request.tenant) or 0))

    @handler("read-write")
    def Revoke(self, request, context, principal):
        col = self.state.collection(request.collection)
        tenant = scope(principal, request.tenant, collection_meta(col))
        if not tenant:
            raise InvalidArgument("tenant is required")
        ids = decode_ids(request.ids)
        if principal.tenant is not None:  # only ids the key can see: no probing for other tenants' ids
            ids = np.asarray([p["id"] for p in col.get(ids, tenant=tenant, include_vectors=False)], dtype=np.int64)
            if ids.size == 0:
                return pb.TenantAccessResponse(changed=0)
        return pb.TenantAccessResponse(changed=int(col.revoke(ids, tenant) or 0))

    @handler("read-only")
    def ListTenants(self, request, context, principal):
        col = self.state.collection(request.collection)
        names = [str(t) for t in col.list_tenants()]
        if principal.tenant is not None:
            scope(principal, "", collection_meta(col))
            names = [t for t in names if t == principal.tenant]
        return pb.ListTenantsResponse(tenants=sorted(names))

    @handler("read-write")
    def DropTenant(self, request, context, principal):
        col = self.state.collection(request.collection)
        tenant = scope(principal, request.tenant, collection_meta(col))
        if not tenant:
            raise InvalidArgument("tenant is required")
        col.drop_tenant(tenant)
        return pb.DropTenantResponse(dropped=True)


class AdminServicer(_Base, pb_grpc.AdminServicer):
    @handler("admin")
    def Build(self, request, context, principal):
        col = self.state.collection(request.collection)
        index = request.index or None
        if index is not None:  # a bad factory string fails the call, not the background operation
            from ..index.factory import index_factory

            info = collection_meta(col)
            index_factory(int(info["dim"]), index, info["metric"])

        def work(progress):
            def report(done: int, total: int, stage: str) -> None:
                progress(done / total if total else 0.0, f"{stage} {done}/{total}")

            return col.build(index=index, progress=report)

        return self.state.operations.start("build", request.collection, work)

    @handler("read-only")
    def GetOperation(self, request, context, principal):
        unbound(principal, "an operation")
        return self.state.operations.get(request.id)

    @handler("read-only", streaming=True)
    def WatchOperation(self, request, context, principal):
        unbound(principal, "an operation")
        yield from self.state.operations.watch(request.id, context.is_active)

    @handler("admin")
    def Compact(self, request, context, principal):
        result = self.state.collection(request.name).compact()
        return pb.CompactResponse(result_json=codec.dumps(result))

    @handler("read-only")
    def Stats(self, request, context, principal):
        unbound(principal, "stats")
        out: dict[str, Any] = {"server": {"uptime_s": round(time.time() - self.state.started_at, 3),
                                          "counters": self.state.counters()}}
        if request.collection:
            out["collection"] = self.state.collection(request.collection).stats()
        return pb.StatsResponse(stats_json=codec.dumps(out))


def add_services(server: grpc.Server, state: ServerState) -> None:
    """Register the five shoal.v1 services on ``server``."""
    pb_grpc.add_CollectionsServicer_to_server(CollectionsServicer(state), server)
    pb_grpc.add_PointsServicer_to_server(PointsServicer(state), server)
    pb_grpc.add_SearchServicer_to_server(SearchServicer(state), server)
    pb_grpc.add_TenantsServicer_to_server(TenantsServicer(state), server)
    pb_grpc.add_AdminServicer_to_server(AdminServicer(state), server)
