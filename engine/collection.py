"""A collection: schema, ids, vectors, attributes and tenants, made durable by a WAL plus snapshots, searched as
index + unindexed tail.

Concurrency model
-----------------
* One writer at a time (``_wlock``): validate -> append to the WAL and fsync -> apply in memory. Bad input raises
  before anything is logged, so it changes nothing.
* Readers and the in-memory apply step share a readers-writer lock (``_rw``): searches hold the read side for their
  whole duration, an apply or an index swap holds the write side only for that step.
* Index builds (background when the tail passes ``tail_limit``, or explicit ``build()``) work on a copy: they read
  the records under the read lock, train/add outside any lock while readers keep searching the old index + tail, log
  the index-level operations (removes, grants, revokes) that happen meanwhile, and finally, under the write lock,
  replay them on the new index and swap it in (copy-on-write). Then a snapshot is written and the WAL emptied.

Durability
----------
Store layout (through :class:`~shoal.storage.ObjectStore`, prefix = collection name)::

    MANIFEST                      JSON, replaced atomically: config, generation, lsn, snapshot prefix
    gen-00000007/records/...      snapshot of live records (save_arrays): ids, vectors, attributes, tenants, row_slot
    gen-00000007/index/...        the index (its own save)

The WAL (``wal.log``) lives on local disk. Reopen = read MANIFEST, load its snapshot, replay WAL records with
``lsn > manifest.lsn``. A snapshot is written to a new generation, then MANIFEST is switched, then the WAL is
emptied and older generations deleted; a crash at any point leaves either the old or the new MANIFEST, and the WAL
records it needs.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import warnings
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound, SchemaError
from ..index.factory import index_factory
from ..index.persist import load_arrays
from ..index.validate import as_ids, as_vectors, check_metric
from .records import Records
from ..index.rwlock import RWLock
from .schema import Schema, TenantRegistry, batch_from_wal, batch_to_wal
from .wal import WriteAheadLog

FORMAT_VERSION = 1
DEFAULT_TAIL_LIMIT = 20_000
DEFAULT_EXACT_THRESHOLD = 4096
#: after an automatic (tail) build, write a snapshot only once the WAL has grown this large: until then a reopen
#: replays the WAL (the replayed records land in the tail and are indexed again), which is cheaper than rewriting
#: every record and the index after each tail_limit writes
DEFAULT_SNAPSHOT_WAL_BYTES = 64 << 20


class FilterError(InvalidArgument):
    """A malformed filter expression; ``position`` and ``hint`` come from the parser when it gives them."""

    def __init__(self, message: str, position: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.position = position
        self.hint = hint


class FilterAttributeError(FilterError, SchemaError):
    """A filter that names an unknown attribute or compares one with a value of the wrong type."""


def parse_filter(flt, schema: Schema):
    """Turn a filter (text, JSON AST dict or an already parsed expression) into an expression, or ``None``."""
    if flt is None:
        return None
    from .. import filters

    try:
        if isinstance(flt, str) and not flt.strip():
            return None
        return filters.compile(flt, schema=schema.to_json())
    except filters.FilterTypeError as exc:
        raise FilterAttributeError(f"invalid filter: {exc}") from exc
    except filters.FilterSyntaxError as exc:
        raise FilterError(f"invalid filter: {exc}", getattr(exc, "position", None), getattr(exc, "hint", None)) from exc


class BuildJob:
    """Progress and outcome of one index build (background or not)."""

    def __init__(self, spec: str, full: bool):
        self.spec = spec
        self.full = full
        self.stage = "queued"
        self.done = 0
        self.total = 0
        self.error: BaseException | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.count = 0
        self._event = threading.Event()
        self.thread: threading.Thread | None = None

    @property
    def progress(self) -> float:
        if self.stage == "done":
            return 1.0
        return self.done / self.total if self.total else 0.0

    @property
    def running(self) -> bool:
        return not self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the build to finish; returns whether it did. Re-raises nothing (see ``error``)."""
        return self._event.wait(timeout)

    def to_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"index": self.spec, "full": self.full, "stage": self.stage, "done": self.done, "total": self.total,
                "progress": self.progress, "count": self.count, "seconds": round(end - self.started, 3),
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}


def _stderr_progress(done: int, total: int, stage: str) -> None:
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(width * frac)
    sys.stderr.write(f"\r{stage:>8} [{bar:<{width}}] {done}/{total}")
    if done >= total and stage == "add":
        sys.stderr.write("\n")
    sys.stderr.flush()


class Collection:
    """One collection. Obtain it from :class:`~shoal.engine.Database`; do not construct directly."""

    def __init__(self, name: str, store, wal_path: str, *, read_only: bool = False, owner=None):
        self.name = name
        self.store = store
        self.read_only = read_only
        self._owner = owner
        self.auto_build = True
        self._wlock = threading.RLock()
        self._rw = RWLock()
        self._build_lock = threading.Lock()
        self._oplog: list | None = None
        self._job: BuildJob | None = None
        self._auto_failed_at: int | None = None
        self._closed = False
        self.counters = {"searches": 0, "queries": 0, "upserted": 0, "deleted": 0, "builds": 0}
        self._open_state(wal_path)
        self._maybe_autobuild()

    def _read_manifest(self) -> dict[str, Any]:
        manifest = json.loads(self.store.get("MANIFEST"))
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FailedPrecondition(f"collection {self.name!r}: format version {manifest.get('format_version')} "
                                     f"is not supported (expected {FORMAT_VERSION})")
        return manifest

    def _set_config(self, manifest: dict[str, Any]) -> None:
        self.config = manifest["config"]
        self.dim = int(self.config["dim"])
        self.metric = check_metric(self.config["metric"])
        self.schema = Schema(self.config.get("schema"))
        self.multi_tenant = bool(self.config.get("multi_tenant", False))
        self.tail_limit = int(self.config.get("tail_limit", DEFAULT_TAIL_LIMIT))
        self.exact_threshold = int(self.config.get("exact_threshold", DEFAULT_EXACT_THRESHOLD))
        self.snapshot_wal_bytes = int(self.config.get("snapshot_wal_bytes", DEFAULT_SNAPSHOT_WAL_BYTES))
        self._generation = int(manifest.get("generation", 0))
        self._snap_lsn = int(manifest.get("lsn", 0))

    def _open_state(self, wal_path: str) -> None:
        """Load the MANIFEST's snapshot and replay the WAL.

        A writer holds the WAL's lock, so nothing changes underneath. A read-only opener can race a writer's snapshot
        (old generation deleted, WAL emptied after the MANIFEST switch): it checks that the MANIFEST did not move
        while it loaded and starts over if it did.
        """
        attempts = 1 if not self.read_only else 20
        for attempt in range(attempts):
            if attempt:
                time.sleep(0.005 * attempt)
            wal = None
            try:
                manifest = self._read_manifest()
                self._set_config(manifest)
                self._load_snapshot(manifest)
                wal = WriteAheadLog(wal_path, read_only=self.read_only)
                self.wal = wal
                for rec in wal.recover(self._snap_lsn):
                    self._apply(rec)
                if not self.read_only or self._read_manifest().get("generation") == self._generation:
                    return
            except NotFound:
                if not self.read_only or attempt == attempts - 1:
                    if wal is not None:
                        wal.close()
                    raise
            except BaseException:
                if wal is not None:
                    wal.close()
                raise
            if wal is not None:
                wal.close()
        raise FailedPrecondition(f"collection {self.name!r} kept changing while being opened read-only; retry")

    # ------------------------------------------------------------------ loading
    def _load_snapshot(self, manifest: dict[str, Any]) -> None:
        self.tenants = TenantRegistry(manifest.get("tenants", []), manifest.get("tenants_active"))
        self._index = None
        self._row_slot = np.zeros(0, np.int64)
        self._boundary = 0
        snap = manifest.get("snapshot")
        if not snap:
            self.records = Records(self.dim, self.schema)
            return
        meta, arrays = load_arrays(self.store, f"{snap}/records", kind="shoal.records")
        self.records = Records.from_arrays(self.dim, self.schema, meta, arrays)
        if manifest.get("has_index"):
            from ..index.factory import load_index

            self._index = load_index(self.store, f"{snap}/index")
            self._row_slot = np.array(arrays["row_slot"], dtype=np.int64)
            self._boundary = int(manifest["boundary"])

    # ------------------------------------------------------------------ small helpers
    @property
    def index_spec(self) -> str:
        return self.config.get("index", "Flat")

    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")
        if write and self.read_only:
            raise FailedPrecondition(f"collection {self.name!r} is open read-only")

    def _slots_in_index(self, slots: np.ndarray) -> np.ndarray:
        return slots[slots < self._boundary]

    def _tenant_names(self, tenants, n: int) -> list[list[str]] | None:
        if tenants is None:
            return None
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant (create it with multi_tenant=True)")
        if isinstance(tenants, (str, bytes)) or len(tenants) != n:
            raise InvalidArgument(f"tenants: expected one list of tenant names per record ({n})")
        out = []
        for i, ts in enumerate(tenants):
            if ts is None:
                ts = []
            if isinstance(ts, str):
                ts = [ts]
            names = []
            for t in ts:
                TenantRegistry.check_name(t)
                if t not in names:
                    names.append(t)
            out.append(names)
        return out

    def _tenant_id(self, tenant) -> int | None:
        if tenant is None:
            return None
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant; tenant= is not accepted")
        return self.tenants.lookup(tenant)

    # ------------------------------------------------------------------ writes
    def upsert(self, ids, vectors, attrs=None, tenants=None) -> int:
        """Insert or replace records.

        Parameters
        ----------
        ids : int64 (n,)
            Non-negative user ids; an id already present is replaced (vector and attributes). Duplicate ids within
            one batch are rejected (InvalidArgument), so a batch never depends on its own order.
        vectors : float32 (n, dim)
        attrs : None, ``{name: sequence}`` or list of n dicts
            Attributes not given are missing on the new record.
        tenants : None or list of n lists of tenant names
            Multi-tenant collections only. ``None`` keeps the tenants of a replaced record (none for a new one);
            a list replaces them.

        Returns
        -------
        int : number of records written (acknowledged: durable in the WAL).
        """
        self._check_open(write=True)
        vectors = as_vectors(vectors, self.dim)
        n = vectors.shape[0]
        ids = as_ids(ids, n)
        batch = self.schema.normalize(attrs, n)
        names = self._tenant_names(tenants, n)
        if n == 0:
            return 0
        fields, arrays = batch_to_wal(self.schema, batch)
        arrays.update({"ids": ids, "vectors": vectors})
        with self._wlock:
            self._check_open(write=True)
            self.wal.append("upsert", {"attrs": fields, "tenants": names}, arrays)
            with self._rw.write:
                self._apply_upsert(ids, vectors, batch, names)
        self.counters["upserted"] += n
        self._maybe_autobuild()
        return n

    def delete(self, ids) -> int:
        """Delete records by id; unknown ids are ignored. Returns how many records were deleted."""
        self._check_open(write=True)
        ids = as_ids(ids, allow_duplicates=True)
        with self._wlock:
            self._check_open(write=True)
            live = np.array([u for u in np.unique(ids).tolist() if u in self.records.slot_of], dtype=np.int64)
            if live.size == 0:
                return 0
            self.wal.append("delete", {}, {"ids": live})
            with self._rw.write:
                self._apply_delete(live)
        self.counters["deleted"] += int(live.size)
        return int(live.size)

    def delete_where(self, filter, tenant=None) -> int:
        """Delete every record matching ``filter`` (and visible to ``tenant`` if given). Returns the count."""
        self._check_open(write=True)
        expr = parse_filter(filter, self.schema)
        if expr is None:
            raise InvalidArgument("delete_where needs a non-empty filter (use delete(ids) or drop the collection)")
        with self._wlock:
            ids = self.ids_where(expr, tenant)
            return self.delete(ids) if ids.size else 0

    def grant(self, ids, tenant: str) -> int:
        """Give ``tenant`` access to existing records (creates the tenant). Unknown ids raise NotFound."""
        return self._tenant_op("grant", ids, tenant)

    def revoke(self, ids, tenant: str) -> int:
        """Remove ``tenant``'s access to records. Unknown ids raise NotFound; unknown tenants too."""
        return self._tenant_op("revoke", ids, tenant)

    def _tenant_op(self, op: str, ids, tenant) -> int:
        self._check_open(write=True)
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant")
        TenantRegistry.check_name(tenant)
        ids = np.unique(as_ids(ids, allow_duplicates=True))
        with self._wlock:
            if op == "revoke":
                self.tenants.lookup(tenant)
            missing = [u for u in ids.tolist() if u not in self.records.slot_of]
            if missing:
                raise NotFound(f"{op}: unknown id(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if ids.size == 0:
                return 0
            self.wal.append(op, {"tenant": tenant}, {"ids": ids})
            with self._rw.write:
                self._apply_tenant_op(op, ids, tenant)
        return int(ids.size)

    def drop_tenant(self, tenant: str) -> int:
        """Revoke ``tenant`` from every record and forget it. Returns how many records it had."""
        self._check_open(write=True)
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant")
        with self._wlock:
            tid = self.tenants.lookup(tenant)
            n = len(self.records.tenant_slots.get(tid, ()))
            self.wal.append("drop_tenant", {"tenant": tenant}, {})
            with self._rw.write:
                self._apply_drop_tenant(tenant)
        return n

    # ------------------------------------------------------------------ apply (WAL replay and live writes)
    def _apply(self, rec) -> None:
        if rec.op == "upsert":
            batch = batch_from_wal(self.schema, rec.fields.get("attrs", {}), rec.arrays)
            self._apply_upsert(rec.arrays["ids"], rec.arrays["vectors"], batch, rec.fields.get("tenants"))
        elif rec.op == "delete":
            self._apply_delete(rec.arrays["ids"])
        elif rec.op in ("grant", "revoke"):
            self._apply_tenant_op(rec.op, rec.arrays["ids"], rec.fields["tenant"])
        elif rec.op == "drop_tenant":
            self._apply_drop_tenant(rec.fields["tenant"])
        else:
            raise FailedPrecondition(f"write-ahead log record {rec.lsn} has unknown op {rec.op!r}")

    def _index_op(self, op: str, ids: np.ndarray, tid: int | None = None) -> None:
        """Apply an index-level operation to the live index, and log it for a build in progress."""
        if self._oplog is not None:
            self._oplog.append((op, ids, tid))
        if self._index is not None:
            _replay_one(self._index, op, ids, tid)

    def _apply_upsert(self, ids, vectors, batch, names) -> None:
        rec = self.records
        old = [rec.slot_of[u] for u in ids.tolist() if u in rec.slot_of]
        tids = None if names is None else [[self.tenants.ensure(t) for t in lst] for lst in names]
        rec.append(ids, vectors, batch, tids)
        if old:
            old_slots = np.array(old, dtype=np.int64)
            self._index_op("remove", rec.ids[old_slots])

    def _apply_delete(self, ids) -> None:
        done = self.records.delete(ids.tolist())
        if done:
            self._index_op("remove", np.array(done, dtype=np.int64))

    def _apply_tenant_op(self, op: str, ids, tenant: str) -> None:
        tid = self.tenants.ensure(tenant) if op == "grant" else self.tenants.ids[tenant]
        slots = np.array([self.records.slot_of[u] for u in ids.tolist() if u in self.records.slot_of], np.int64)
        (self.records.grant if op == "grant" else self.records.revoke)(slots.tolist(), tid)
        if slots.size:
            self._index_op(op, self.records.ids[slots], tid)

    def _apply_drop_tenant(self, tenant: str) -> None:
        tid = self.tenants.ids[tenant]
        self.records.drop_tenant(tid)
        self.tenants.active[tid] = False
        self._index_op("drop_tenant", np.zeros(0, np.int64), tid)

    # ------------------------------------------------------------------ reads
    def get(self, ids, tenant=None, include_vectors: bool = True) -> list[dict[str, Any]]:
        """Records by id, in the order asked; missing ids (or ids ``tenant`` cannot see) are left out.

        Each record is ``{"id", "vector" (float32 list, if include_vectors), "attrs", "tenants"}``.
        """
        self._check_open()
        ids = as_ids(ids, allow_duplicates=True)
        out = []
        with self._rw.read:
            tid = self._tenant_id(tenant)
            rec = self.records
            for uid in ids.tolist():
                slot = rec.slot_of.get(uid)
                if slot is None:
                    continue
                ts = rec.slot_tenants.get(slot, set())
                if tid is not None and tid not in ts:
                    continue
                item = {"id": uid, "attrs": rec.attrs.record(slot),
                        "tenants": sorted(self.tenants.names[t] for t in ts)}
                if include_vectors:
                    item["vector"] = rec.vectors[slot].copy()
                out.append(item)
        return out

    def count(self, tenant=None, filter=None) -> int:
        """Live records (visible to ``tenant``, matching ``filter``)."""
        self._check_open()
        expr = parse_filter(filter, self.schema)
        with self._rw.read:
            tid = self._tenant_id(tenant)
            if expr is None and tid is None:
                return self.records.nlive
            if expr is None:
                return len(self.records.tenant_slots.get(tid, ()))
            return int(np.count_nonzero(self._slot_mask(expr, tid, self.records.n)))

    def ids_where(self, filter=None, tenant=None) -> np.ndarray:
        """Ids (int64, in slot order) of the live records matching ``filter`` that ``tenant`` can see."""
        self._check_open()
        expr = parse_filter(filter, self.schema)
        with self._rw.read:
            mask = self._slot_mask(expr, self._tenant_id(tenant), self.records.n)
            return self.records.ids[np.flatnonzero(mask)].copy()

    def list_tenants(self) -> list[str]:
        self._check_open()
        with self._rw.read:
            return self.tenants.list()

    def tenants_of(self, id) -> list[str]:
        """Tenant names of one record; NotFound if the id is not in the collection."""
        self._check_open()
        uid = int(as_ids([id])[0])
        with self._rw.read:
            slot = self.records.slot_of.get(uid)
            if slot is None:
                raise NotFound(f"id {uid} not found in collection {self.name!r}")
            return sorted(self.tenants.names[t] for t in self.records.slot_tenants.get(slot, ()))

    def _slot_mask(self, expr, tid: int | None, n: int) -> np.ndarray:
        """Live slots ``[0, n)`` matching ``expr`` and visible to ``tid``."""
        mask = self.records.alive[:n].copy()
        if tid is not None:
            mask &= self.records.tenant_mask(tid, n)
        if expr is not None and mask.any():
            from .. import filters

            cols = self.records.attrs.columns(n=n, names=sorted(filters.attributes(expr)))
            mask &= filters.evaluate(expr, cols, n)
        return mask

    def search(self, queries, k: int = 10, filter=None, tenant=None, params=None, include_attrs: bool = False):
        """Nearest neighbours of each query among live records (see :mod:`shoal.engine.search`)."""
        from .search import run_search

        self._check_open()
        return run_search(self, queries, k, filter, tenant, params, include_attrs)

    # ------------------------------------------------------------------ index maintenance
    def _maybe_autobuild(self) -> None:
        if not self.auto_build or self.read_only or self._closed:
            return
        tail = self.records.n - self._boundary
        if tail < self.tail_limit:
            return
        if self._auto_failed_at is not None and tail < 2 * self._auto_failed_at:
            return
        with self._wlock:  # two writers finishing at once start one build
            if self._job is not None and self._job.running:
                return
            self._start_job(self.index_spec, full=False, train_kwargs=None, progress=None, explicit=False)

    def _start_job(self, spec, full, train_kwargs, progress, explicit) -> BuildJob:
        job = BuildJob(spec, full)
        self._job = job
        t = threading.Thread(target=self._run_build, args=(job, train_kwargs, progress, explicit),
                             name=f"shoal-build-{self.name}", daemon=True)
        job.thread = t
        t.start()
        return job

    def build(self, index: str | None = None, progress=None, train_kwargs: dict | None = None,
              background: bool = False):
        """(Re)build the index from every live record.

        Parameters
        ----------
        index : str, optional
            Factory string; becomes the collection's index spec. Default: the current spec.
        progress : None, True (a bar on stderr) or callable ``(done, total, stage)``
        train_kwargs : dict, optional
            Passed to the index's ``train`` (e.g. k-means iterations for IVF-PQ tuning).
        background : bool
            Return a :class:`BuildJob` at once; readers and writers keep working meanwhile.

        Returns
        -------
        dict (summary: index, count, seconds, bytes) or BuildJob
        """
        self._check_open(write=True)
        spec = self.index_spec if index is None else index
        index_factory(self.dim, spec, self.metric)  # fail early on a bad spec
        if train_kwargs is not None and not isinstance(train_kwargs, dict):
            raise InvalidArgument("train_kwargs must be a dict")
        if progress is True:
            progress = _stderr_progress
        if background:
            return self._start_job(spec, True, train_kwargs, progress, True)
        job = BuildJob(spec, True)
        self._run_build(job, train_kwargs, progress, True)
        if job.error is not None:
            raise job.error
        return {"index": spec, "count": job.count, "seconds": job.to_dict()["seconds"],
                "bytes": int(self._index.memory_bytes()) if self._index is not None else 0}

    def build_status(self) -> dict[str, Any] | None:
        """The current or last build's progress (``None`` if there was none)."""
        return None if self._job is None else self._job.to_dict()

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Wait until no build is running (including builds started by the one waited for); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self._job
            if job is None:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.wait(left):
                return False
            if self._job is job:
                return True

    def _run_build(self, job: BuildJob, train_kwargs, progress, explicit: bool) -> None:
        from .build import run_build

        try:
            with self._build_lock:
                if self._closed:
                    raise FailedPrecondition(f"collection {self.name!r} is closed")
                run_build(self, job, train_kwargs, progress)
                self.counters["builds"] += 1
                if explicit:
                    self.config["index"] = job.spec
                self._auto_failed_at = None
                if explicit or self.wal.size >= self.snapshot_wal_bytes:
                    job.stage = "snapshot"
                    self._snapshot()
                job.stage = "done"
        except BaseException as exc:  # recorded on the job; a background build must not kill the process
            job.error = exc
            job.stage = "failed"
            if not explicit:
                self._auto_failed_at = self.records.n - self._boundary
                warnings.warn(f"collection {self.name!r}: background index build failed ({exc}); "
                              "the tail stays searchable exactly", RuntimeWarning, stacklevel=1)
        finally:
            self._oplog = None
            job.finished = time.time()
            job._event.set()
        if job.error is None and not self._closed:
            self._maybe_autobuild()  # writes that arrived during the build may already fill the tail again

    def compact(self) -> dict[str, Any]:
        """Drop deleted records: rebuild the index if more than a quarter of its rows are deleted, then write a
        snapshot (live records only) and empty the WAL."""
        from .build import EXTEND_MAX_DELETED, run_build

        self._check_open(write=True)
        self.wait_for_build()
        with self._build_lock:
            index = self._index
            if index is not None and index.ntotal and index.ntotal - index.nlive > EXTEND_MAX_DELETED * index.ntotal:
                job = BuildJob(self.index_spec, True)
                self._job = job
                try:
                    run_build(self, job, None, None)
                    job.stage = "done"
                except BaseException as exc:
                    job.error, job.stage = exc, "failed"
                    raise
                finally:
                    self._oplog = None
                    job.finished = time.time()
                    job._event.set()
            self._snapshot()
        return self.info()

    def flush(self) -> None:
        """Alias of :meth:`compact` without the summary."""
        self.compact()

    def _snapshot(self) -> None:
        """Persist the current state as a new generation and switch MANIFEST (caller holds ``_build_lock``)."""
        from .build import write_snapshot

        if self.read_only:
            return
        with self._wlock:
            write_snapshot(self)

    # ------------------------------------------------------------------ introspection
    def info(self) -> dict[str, Any]:
        """Configuration and sizes."""
        with self._rw.read:
            index = self._index
            tail = int(np.count_nonzero(self.records.alive[self._boundary:self.records.n]))
            return {
                "name": self.name, "dim": self.dim, "metric": self.metric, "schema": self.schema.to_json(),
                "index": self.index_spec, "index_built": index is not None,
                "index_description": None if index is None else index.factory_string(),
                "multi_tenant": self.multi_tenant, "count": self.records.nlive, "tail": tail,
                "indexed": int(index.nlive) if index is not None else 0, "tenants": len(self.tenants.list()),
                "tail_limit": self.tail_limit, "generation": self._generation, "wal_bytes": self.wal.size,
                "read_only": self.read_only,
            }

    def stats(self) -> dict[str, Any]:
        """Counts, memory, storage bytes, build progress and counters."""
        info = self.info()
        with self._rw.read:
            index = self._index
            info["memory_bytes"] = {"records": self.records.memory_bytes(),
                                    "index": int(index.memory_bytes()) if index is not None else 0,
                                    "index_mapped": int(index.mapped_bytes()) if index is not None else 0}
        try:
            prefix = f"gen-{self._generation:08d}/"
            info["stored_bytes"] = sum(self.store.size(key) for key in self.store.list(prefix))
        except (OSError, NotFound):
            info["stored_bytes"] = None
        info["build"] = self.build_status()
        info["counters"] = dict(self.counters)
        return info

    def close(self) -> None:
        """Finish a running build, snapshot if the WAL holds anything, release the WAL."""
        if self._closed:
            return
        job = self._job
        if job is not None:
            job.wait()
        try:
            if not self.read_only and self.wal.size > 0:
                with self._build_lock:
                    self._snapshot()
        finally:
            self._closed = True
            self.wal.close()
            if self._owner is not None:
                self._owner._forget(self.name, self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<Collection {self.name!r} dim={self.dim} metric={self.metric} count={self.records.nlive} "
                f"index={self.index_spec!r}>")


def _replay_one(index, op: str, ids: np.ndarray, tid: int | None) -> None:
    """Apply one index-level operation; ids the index does not hold are skipped."""
    if op == "remove":
        if ids.size:
            index.remove(ids)
        return
    if not getattr(index, "supports_tenants", False):
        return
    if op == "drop_tenant":
        try:
            index.drop_tenant(tid)
        except (KeyError, NotFound):
            pass
        return
    held = ids[np.isin(ids, index.row_ids[~index.deleted])] if ids.size else ids
    if held.size == 0:
        return
    if op == "grant":
        index.grant(held, tid)
        return
    try:
        index.revoke(held, tid)
    except (KeyError, NotFound):  # the index never saw this tenant on its rows: nothing to revoke
        pass
