"""A collection: the public API over records, an index and a write-ahead log: validation, locks and lifecycle.

The work is split by concern, with no import cycle among the parts:

* :mod:`.view`: the frozen (records, index, row -> slot, boundary) a search works on, swapped whole;
* :mod:`.apply`: a write (live or replayed from the WAL) -> changes to records, tenants and the index;
* :mod:`.planner`: queries on a view;
* :mod:`.builder`: a new index for a view's records, built outside every lock;
* :mod:`.snapshot`: generations + the MANIFEST switch;
* :mod:`.jobs`: builds as registered, cancellable jobs.

Concurrency model
-----------------
* One writer at a time (``_wlock``): validate -> append to the WAL and fsync -> apply in memory. Bad input raises
  before anything is logged, so it changes nothing. ``close()`` and dropping take ``_wlock`` too, so an append in
  flight finishes before the log is closed.
* Readers and the in-memory apply step share a readers-writer lock (``_rw``): searches hold the read side for their
  whole duration, an apply or a view swap holds the write side only for that step.
* Builds (``build()``, background, automatic when the tail passes ``tail_limit``) run one at a time
  (``_build_lock``), each registered as a :class:`~shoal.engine.jobs.BuildJob`: they copy what they need under the
  read lock, train and add outside any lock while readers keep searching the old view + tail, log the index-level
  operations that writers make meanwhile, and swap the new view in under the write lock after replaying them.
* Across processes, a collection open for writing holds its owner lock (:mod:`.locks`); read-only opens take none.

Lock order: ``_build_lock`` -> ``_wlock`` -> ``_rw.write``.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..index.calibration import DEFAULT_TARGET, check_target
from ..index.factory import index_factory
from ..index.rwlock import RWLock
from ..index.validate import as_ids, as_vectors, check_metric
from . import builder, planner, snapshot
from .apply import IndexOp, apply_delete, apply_drop_tenant, apply_record, apply_tenant_op, apply_upsert, \
    batch_to_wal, replay
from .jobs import BuildJob, stderr_progress
from .results import attribute_selection, select_attributes
from .schema import Schema, parse_filter
from .tenants import TenantRegistry
from .view import View
from .wal import WALDamaged, WriteAheadLog

DEFAULT_TAIL_LIMIT = 20_000
#: None: the planner chooses per index kind (planner.exact_threshold)
DEFAULT_EXACT_THRESHOLD = None
#: after an automatic (tail) build, write a snapshot only once the WAL has grown this large: until then a reopen
#: replays the WAL (the replayed records land in the tail and are indexed again), which is cheaper than rewriting
#: every record and the index after each tail_limit writes
DEFAULT_SNAPSHOT_WAL_BYTES = 64 << 20

#: collection settings beside dim / metric / schema / index / multi_tenant: name -> default
SETTINGS = {"tail_limit": DEFAULT_TAIL_LIMIT, "exact_threshold": DEFAULT_EXACT_THRESHOLD,
            "snapshot_wal_bytes": DEFAULT_SNAPSHOT_WAL_BYTES, "max_k": planner.DEFAULT_MAX_K,
            "max_results": planner.DEFAULT_MAX_RESULTS, "mmap_index": True}


class MemoryLog:
    """The log of a staged collection: acknowledges in memory only (a staged build becomes durable all at once, when
    it is committed; until then a failure leaves nothing behind)."""

    path = None

    def __init__(self):
        self.last_lsn = 0
        self.size = 0

    def append(self, op, fields=None, arrays=None) -> int:
        self.last_lsn += 1
        return self.last_lsn

    def reset(self, lsn: int) -> None:
        self.last_lsn = max(self.last_lsn, lsn)

    def close(self) -> None:
        pass


class Collection:
    """One collection. Obtain it from :class:`~shoal.engine.Database`; do not construct directly."""

    def __init__(self, name: str, store, wal_dir: str, *, read_only: bool = False, owner=None, lock=None,
                 staged_manifest: dict[str, Any] | None = None):
        self.name = name
        self.store = store
        self.read_only = read_only
        self.staged = staged_manifest is not None
        self._owner = owner
        self._lock = lock
        self._wal_dir = wal_dir
        self.auto_build = not self.staged
        self._wlock = threading.RLock()
        self._rw = RWLock()
        self._build_lock = threading.Lock()
        self._oplog: list[IndexOp] | None = None
        self._job: BuildJob | None = None
        self._jobs: list[BuildJob] = []
        self._auto_failed_at: int | None = None
        self._closing = False
        self._closed = False
        self._settings = None
        self._filters: dict[str, Any] = {}
        self.counters = {"searches": 0, "queries": 0, "upserted": 0, "deleted": 0, "builds": 0}
        if self.staged:
            self._set_config(staged_manifest)
            self._view, self.tenants = snapshot.load(store, staged_manifest, self.dim, self.schema)
            self.wal = MemoryLog()
        else:
            self._open_state()
            self._maybe_autobuild()

    # ------------------------------------------------------------------ opening
    def _set_config(self, manifest: dict[str, Any]) -> None:
        self.config = manifest["config"]
        self.dim = int(self.config["dim"])
        self.metric = check_metric(self.config["metric"])
        self.schema = Schema(self.config.get("schema"))
        self.multi_tenant = bool(self.config.get("multi_tenant", False))
        for key, default in SETTINGS.items():
            value = self.config.get(key, default)
            setattr(self, key, bool(value) if isinstance(default, bool) else None if value is None else int(value))
        self.target_recall = float(self.config.get("target_recall", DEFAULT_TARGET))
        self._generation = int(manifest.get("generation", 0))
        self._snap_lsn = int(manifest.get("lsn", 0))
        self._wal_name = manifest.get("wal") or snapshot.DEFAULT_WAL

    def _open_state(self) -> None:
        """Load the MANIFEST's snapshot and replay the WAL.

        A writer holds the owner lock, so nothing changes underneath. A read-only opener can race a writer's snapshot
        (old generation deleted, WAL emptied after the MANIFEST switch): it checks that the MANIFEST did not move
        while it loaded and starts over if it did.
        """
        attempts = 1 if not self.read_only else 20
        for attempt in range(attempts):
            if attempt:
                time.sleep(0.005 * attempt)
            wal = None
            try:
                manifest = snapshot.read_manifest(self.store, self.name)
                self._set_config(manifest)
                self._view, self.tenants = snapshot.load(self.store, manifest, self.dim, self.schema)
                wal = WriteAheadLog(self.wal_path, read_only=self.read_only)
                self.wal = wal
                records = self._view.records
                for rec in wal.recover(self._snap_lsn):
                    self._index_ops(apply_record(records, self.tenants, self.schema, rec))
                if not self.read_only:
                    _remove_stale_logs(os.path.dirname(self.wal_path), keep=self._wal_name)
                    return
                if snapshot.read_manifest(self.store, self.name).get("generation") == self._generation:
                    return
            except (NotFound, WALDamaged) as exc:
                # a read-only opener can see a writer's snapshot half-way (generation gone, log emptied and
                # appended again): that is a race, not damage, when the MANIFEST moved meanwhile
                moved = self.read_only and attempt < attempts - 1 and (
                    isinstance(exc, NotFound) or self._manifest_moved())
                if not moved:
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

    def refresh(self) -> bool:
        """Read-only handles: catch up with the writer. Records appended to the log since this handle read it are
        applied; a new snapshot or a replaced collection (a new MANIFEST generation or log) is loaded whole.
        Returns whether anything changed; :class:`NotFound` once the collection was dropped. A writable handle is
        always current (returns False). Searches in flight finish on the state they began with.
        """
        self._check_open()
        if not self.read_only or self.staged:
            return False
        with self._wlock:  # one refresh at a time
            manifest = snapshot.read_manifest(self.store, self.name)
            same = (manifest.get("generation") == self._generation and
                    (manifest.get("wal") or snapshot.DEFAULT_WAL) == self._wal_name)
            if same:
                try:
                    size = os.path.getsize(self.wal_path)
                except OSError:
                    size = 0
                if size == self.wal.read_bytes:
                    return False
                try:
                    records = self.wal.recover(self.wal.last_lsn)
                except WALDamaged:
                    records = None  # a snapshot emptied the log while it was read: reload below, or report damage
                # the log read belongs to this generation only if the MANIFEST still names it afterwards (a
                # writer's snapshot switches the MANIFEST before it empties the log)
                if records is not None and not self._manifest_moved():
                    if records:
                        with self._rw.write:
                            for rec in records:
                                self._index_ops(apply_record(self.records, self.tenants, self.schema, rec))
                    return bool(records)
            fresh = Collection(self.name, self.store, self._wal_dir, read_only=True)
            with self._rw.write:
                old = self.wal
                for attr in ("config", "dim", "metric", "schema", "multi_tenant", *SETTINGS, "_generation",
                             "_snap_lsn", "_wal_name", "_view", "tenants", "wal"):
                    setattr(self, attr, getattr(fresh, attr))
            old.close()
            return True

    def _manifest_moved(self) -> bool:
        try:
            return snapshot.read_manifest(self.store, self.name).get("generation") != self._generation
        except NotFound:
            return True

    # ------------------------------------------------------------------ small helpers
    @property
    def wal_path(self) -> str:
        return os.path.join(self._wal_dir, self.name, self._wal_name)

    @property
    def index_spec(self) -> str:
        return self.config.get("index", "Flat")

    @property
    def records(self):
        """The current records (see :class:`~shoal.engine.records.Records`)."""
        return self._view.records

    def _check_open(self, write: bool = False) -> None:
        if self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")
        if write and self.read_only:
            raise FailedPrecondition(f"collection {self.name!r} is open read-only")

    def _tenant_names(self, tenants, n: int) -> list[list[str]] | None:
        if tenants is None:
            return None
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant (create it with multi_tenant=True)")
        if isinstance(tenants, (str, bytes)) or len(tenants) != n:
            raise InvalidArgument(f"tenants: expected one list of tenant names per record ({n})")
        out = []
        for ts in tenants:
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

    def _index_ops(self, ops: list[IndexOp]) -> None:
        """Apply index-level operations to the live index, and log them for a build in progress (caller holds the
        write side of ``_rw``, or is the opener)."""
        if not ops:
            return
        if self._oplog is not None:
            self._oplog.extend(ops)
        if self._view.index is not None:
            replay(self._view.index, ops)

    def _write(self, op: str, fields: dict[str, Any], arrays: dict[str, np.ndarray], change) -> None:
        """Log one write, then apply it (``change()`` returns its index operations); caller holds ``_wlock``."""
        self._check_open(write=True)
        self.wal.append(op, fields, arrays)
        with self._rw.write:
            self._index_ops(change())

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
            self._write("upsert", {"attrs": fields, "tenants": names}, arrays,
                        lambda: apply_upsert(self.records, self.tenants, ids, vectors, batch, names))
        self.counters["upserted"] += n
        self._maybe_autobuild()
        return n

    def delete(self, ids) -> int:
        """Delete records by id; unknown ids are ignored. Returns how many records were deleted."""
        self._check_open(write=True)
        ids = as_ids(ids, allow_duplicates=True)
        with self._wlock:
            self._check_open(write=True)
            slot_of = self.records.slot_of
            live = np.array([u for u in np.unique(ids).tolist() if u in slot_of], dtype=np.int64)
            if live.size == 0:
                return 0
            self._write("delete", {}, {"ids": live}, lambda: apply_delete(self.records, live))
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
            self._check_open(write=True)
            if op == "revoke":
                self.tenants.lookup(tenant)
            missing = [u for u in ids.tolist() if u not in self.records.slot_of]
            if missing:
                raise NotFound(f"{op}: unknown id(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if ids.size == 0:
                return 0
            self._write(op, {"tenant": tenant}, {"ids": ids},
                        lambda: apply_tenant_op(self.records, self.tenants, op, ids, tenant))
        return int(ids.size)

    def drop_tenant(self, tenant: str) -> int:
        """Revoke ``tenant`` from every record and forget it. Returns how many records it had."""
        self._check_open(write=True)
        if not self.multi_tenant:
            raise InvalidArgument(f"collection {self.name!r} is not multi-tenant")
        with self._wlock:
            self._check_open(write=True)
            tid = self.tenants.lookup(tenant)
            n = len(self.records.tenant_slots.get(tid, ()))
            self._write("drop_tenant", {"tenant": tenant}, {},
                        lambda: apply_drop_tenant(self.records, self.tenants, tenant))
        return n

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
        rec = self.records
        mask = rec.alive[:n].copy()
        if tid is not None:
            mask &= rec.tenant_mask(tid, n)
        if expr is not None and mask.any():
            from .. import filters

            cols = rec.attrs.columns(n=n, names=sorted(filters.attributes(expr)))
            mask &= filters.evaluate(expr, cols, n)
        return mask

    def _search_settings(self) -> planner.SearchSettings:
        """The settings searches use, remade only when one of them changed."""
        st = self._settings
        if st is None or st.exact_threshold != self.exact_threshold or st.index_spec != self.index_spec or \
                st.max_k != self.max_k or st.max_results != self.max_results or \
                st.target_recall != self.target_recall:
            st = self._settings = planner.SearchSettings(self.dim, self.metric, self.index_spec,
                                                         self.exact_threshold, self.max_k, self.max_results,
                                                         self.target_recall)
        return st

    def _parse_filter(self, flt):
        """:func:`parse_filter` with the last few filter texts remembered (parsing costs more than a small search)."""
        if not isinstance(flt, str):
            return parse_filter(flt, self.schema)
        expr = self._filters.get(flt)
        if expr is None:
            expr = parse_filter(flt, self.schema)
            if len(self._filters) >= 256:
                self._filters.clear()
            self._filters[flt] = expr
        return expr

    def search(self, queries, k: int = 10, filter=None, tenant=None, params=None, attributes=False, *,
               include_attrs=None):
        """Nearest neighbours of each query among live records.

        Parameters
        ----------
        queries : float32 (nq, dim) or (dim,)
        k : int
            At most the collection's ``max_k`` (default 10,000); ``nq * k`` at most ``max_results``.
        filter : str, dict or None
            A filter expression (docs/filters.md).
        tenant : str or None
            Search only the records this tenant can see (multi-tenant collections).
        params : dict or None
            Search parameters of the index kind (``nprobe``, ``rerank``, ``gamma``, ...); they override the index's
            calibrated defaults. ``{"recall": r}`` picks the calibrated settings for target ``r`` instead of the
            collection's ``target_recall``.
        attributes : bool or list of str
            Return the attributes of each result: ``True`` for all, or the names wanted (unknown names raise
            SchemaError). The same keyword as ``shoal.Client.search``.
        include_attrs : bool
            Deprecated spelling of ``attributes=True`` (a DeprecationWarning); will be removed.

        Returns
        -------
        SearchResult
            Each query holds ``min(k, matching records)`` results; ``stats`` describes this call only.
        """
        if self._closed:
            self._check_open()
        if include_attrs is not None:
            warnings.warn("Collection.search(include_attrs=...) is deprecated: use attributes=True (or a list of "
                          "names), as shoal.Client.search does", DeprecationWarning, stacklevel=2)
            if attributes is not False:
                raise InvalidArgument("give attributes= or the deprecated include_attrs=, not both")
            attributes = bool(include_attrs)
        want = attribute_selection(attributes) if attributes is not False else False
        for name in want if isinstance(want, tuple) else ():
            self.schema.type_of(name)  # SchemaError naming the known attributes
        expr = None if filter is None else self._parse_filter(filter)
        with self._rw.read:
            tid = None if tenant is None else self._tenant_id(tenant)
            res = planner.search(self._view, self._search_settings(), queries, k, expr, tid, params, bool(want))
        if isinstance(want, tuple):
            res = select_attributes(res, want)
        self.counters["searches"] += 1
        self.counters["queries"] += len(res)
        return res

    # ------------------------------------------------------------------ index maintenance
    def _maybe_autobuild(self) -> None:
        if not self.auto_build or self.read_only or self._closing or self._closed:
            return
        tail = self._view.tail
        if tail < self.tail_limit:
            return
        if self._auto_failed_at is not None and tail < 2 * self._auto_failed_at:
            return
        with self._wlock:  # two writers finishing at once start one build
            if self._closing or (self._job is not None and self._job.running):
                return
            self._start_auto()

    def _start_auto(self, progress=None) -> BuildJob:
        """Start what a full tail starts: a background build extending the index with the tail."""
        with self._wlock:
            job = self._register(BuildJob(self.index_spec, full=False, explicit=False))
        return self._start_thread(job, None, progress)

    def _start_thread(self, job: BuildJob, train_kwargs, progress) -> BuildJob:
        job.thread = threading.Thread(target=self._run_build, args=(job, train_kwargs, progress),
                                      name=f"shoal-build-{self.name}", daemon=True)
        job.thread.start()
        return job

    def _register(self, job: BuildJob) -> BuildJob:
        """Make ``job`` the collection's current build (caller holds ``_wlock``); refused once closing."""
        if self._closing or self._closed:
            raise FailedPrecondition(f"collection {self.name!r} is closed")
        self._jobs = [j for j in self._jobs if j.running] + [job]
        self._job = job
        return job

    def build(self, index: str | None = None, progress=None, train_kwargs: dict | None = None,
              background: bool = False, target_recall: float | None = None):
        """(Re)build the index from every live record, then calibrate its default search settings.

        Parameters
        ----------
        index : str, optional
            Factory string; becomes the collection's index spec. Default: the current spec.
        progress : None, True (a bar on stderr) or callable ``(done, total, stage)``
            Stages ``train``, ``add``, ``calibrate``.
        train_kwargs : dict, optional
            Passed to the index's ``train`` (e.g. k-means iterations for IVF-PQ tuning).
        background : bool
            Return a :class:`BuildJob` at once; readers and writers keep working meanwhile.
        target_recall : float, optional
            Recall@10 the calibrated defaults reach; becomes the collection's ``target_recall``. Default: the
            collection's (0.95 unless set at creation).

        Returns
        -------
        dict (summary: index, count, seconds, bytes, calibration) or BuildJob
        """
        self._check_open(write=True)
        spec = self.index_spec if index is None else index
        index_factory(self.dim, spec, self.metric)  # fail early on a bad spec
        if train_kwargs is not None and not isinstance(train_kwargs, dict):
            raise InvalidArgument("train_kwargs must be a dict")
        target = None if target_recall is None else check_target(target_recall, "target_recall")
        if progress is True:
            progress = stderr_progress
        with self._wlock:
            job = self._register(BuildJob(spec, full=True, explicit=True))
            job.target_recall = target
        if background:
            return self._start_thread(job, train_kwargs, progress)
        self._run_build(job, train_kwargs, progress)
        if job.error is not None:
            raise job.error
        return dict(job.summary)

    def build_status(self) -> dict[str, Any] | None:
        """The current or last build's progress (``None`` if there was none)."""
        return None if self._job is None else self._job.to_dict()

    def wait_for_build(self, timeout: float | None = None) -> bool:
        """Wait until no build is running (including builds started by the one waited for); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            running = [j for j in self._jobs if j.running]
            if not running:
                return True
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not running[-1].wait(left):
                return False

    def _run_build(self, job: BuildJob, train_kwargs, progress) -> None:
        """Run a registered job to its end; the outcome is recorded on the job (and raised by ``build()``)."""
        try:
            with self._build_lock:
                self._check_open(write=True)
                job.checkpoint()
                self._build_locked(job, train_kwargs, progress)
                self.counters["builds"] += 1
                self._auto_failed_at = None
                if (job.explicit and not self.staged) or self.wal.size >= self.snapshot_wal_bytes:
                    job.checkpoint()
                    job.stage = "snapshot"
                    with self._wlock:
                        self._snapshot_locked()
                job.stage = "done"
                index = self._view.index
                job.summary = {"index": job.spec, "count": job.count, "seconds": job.to_dict()["seconds"],
                               "bytes": int(index.memory_bytes()) if index is not None else 0,
                               "calibration": job.calibration}
            job.finish()
        except BaseException as exc:  # recorded on the job; a background build must not kill the process
            job.finish(exc)
            if not job.explicit and not self._closing:
                self._auto_failed_at = self._view.tail
                warnings.warn(f"collection {self.name!r}: background index build failed ({exc}); "
                              "the tail stays searchable exactly", RuntimeWarning, stacklevel=1)
            return
        self._maybe_autobuild()  # writes that arrived during the build may already fill the tail again

    def _build_locked(self, job: BuildJob, train_kwargs, progress) -> None:
        """Build and swap in a new view (caller holds ``_build_lock``)."""
        with self._rw.read:
            inp = builder.prepare(self._view, job.spec, self.dim, self.metric, job.full)
            # from here on, writers log index-level operations for replay on the new index
            self._oplog = []
        target = job.target_recall if job.target_recall is not None else self.target_recall
        try:
            out = builder.build(inp, job, train_kwargs, progress,
                                builder.CalibrationSettings(target, self.exact_threshold))
            job.stage = "swap"
            with self._wlock:
                self._check_open(write=True)
                job.checkpoint()
                with self._rw.write:
                    replay(out.index, self._oplog)
                    self._view = View(self._view.records, out.index, out.row_slot, out.boundary)
                    if job.explicit:
                        self.config["index"] = job.spec
                    if job.target_recall is not None:
                        self.config["target_recall"] = self.target_recall = job.target_recall
        finally:
            self._oplog = None
        job.count = int(out.index.nlive)
        job.calibration = out.calibration

    def compact(self) -> dict[str, Any]:
        """Drop deleted records: rebuild the index if more than a quarter of its rows are deleted, then write a
        snapshot (live records only) and empty the WAL."""
        self._check_open(write=True)
        self.wait_for_build()
        with self._build_lock:
            index = self._view.index
            if index is not None and index.ntotal and \
                    index.ntotal - index.nlive > builder.EXTEND_MAX_DELETED * index.ntotal:
                with self._wlock:
                    job = self._register(BuildJob(self.index_spec, full=True, explicit=False))
                try:
                    self._build_locked(job, None, None)
                    job.stage = "done"
                    job.finish()
                except BaseException as exc:
                    job.finish(exc)
                    raise
            with self._wlock:
                self._check_open(write=True)
                self._snapshot_locked()
        return self.info()

    def _snapshot_locked(self) -> None:
        """Persist the current state as a new generation and switch MANIFEST (caller holds ``_build_lock`` and
        ``_wlock``). Never for a closed, dropped, read-only or staged collection."""
        if self.read_only or self.staged or self._closed:
            return
        view = self._view.compacted()
        if view is not self._view:
            with self._rw.write:
                self._view = view
        lsn = self.wal.last_lsn
        manifest = snapshot.write(self.store, self.config, view, self.tenants, generation=self._generation + 1,
                                  lsn=lsn, wal=self._wal_name)
        self._generation += 1
        self._snap_lsn = lsn
        self.wal.reset(lsn)
        if self.mmap_index and view.index is not None and not self._closing:
            # serve from the generation just written, its large arrays memory-mapped (page cache, not heap); its
            # files never change, and deleting them later (the next snapshot) leaves the mapping valid
            mapped = snapshot.reopen_index(self.store, manifest)
            if mapped is not None:
                with self._rw.write:
                    self._view = view.with_index(mapped, view.row_slot, view.boundary)
        snapshot.delete_other_generations(self.store, manifest["snapshot"])

    # ------------------------------------------------------------------ introspection
    def info(self) -> dict[str, Any]:
        """Configuration and sizes."""
        with self._rw.read:
            view = self._view
            index = view.index
            rec = view.records
            tail = int(np.count_nonzero(rec.alive[view.boundary:rec.n]))
            out = {
                "name": self.name, "dim": self.dim, "metric": self.metric, "schema": self.schema.to_json(),
                "index": self.index_spec, "index_built": index is not None,
                "index_description": None if index is None else index.factory_string(),
                "multi_tenant": self.multi_tenant, "count": rec.nlive, "tail": tail,
                "indexed": int(index.nlive) if index is not None else 0, "tenants": len(self.tenants.list()),
                "generation": self._generation, "wal_bytes": self.wal.size, "read_only": self.read_only,
                "target_recall": self.target_recall,
                "calibration": None if index is None or index.calibration is None
                else index.calibration.summary(self.target_recall),
            }
            out.update({key: getattr(self, key) for key in SETTINGS})
            return out

    def stats(self) -> dict[str, Any]:
        """Counts, memory, storage bytes, build progress and counters."""
        info = self.info()
        with self._rw.read:
            view = self._view
            index = view.index
            info["memory_bytes"] = {"records": view.records.memory_bytes(),
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

    # ------------------------------------------------------------------ lifecycle
    def _shutdown(self, *, cancel: str | None, persist: bool) -> None:
        """Stop taking writes and builds, finish (or cancel) running builds, optionally snapshot, close the log.

        After this returns nothing of this object writes to the store or the log again.
        """
        with self._wlock:
            if self._closed:
                return
            self._closing = True
            jobs = [j for j in self._jobs if j.running]
        for job in jobs:
            if cancel is not None:
                job.cancel(cancel)
            if job.thread is not threading.current_thread():
                job.wait()
        with self._build_lock, self._wlock:
            if self._closed:
                return
            try:
                if persist and not self.read_only and not self.staged and self.wal.size > 0:
                    self._snapshot_locked()
            finally:
                self._closed = True
                self.wal.close()

    def close(self) -> None:
        """Finish a running build, snapshot if the WAL holds anything, release the WAL and the owner lock."""
        if self._closed:
            return
        try:
            self._shutdown(cancel=None, persist=True)
        finally:
            self._release()

    def _abandon(self) -> None:
        """Drop this handle the way a killed process would: no snapshot, no waiting, log and owner lock released
        (tests use it to reopen from the WAL alone)."""
        self._closing = self._closed = True
        for job in self._jobs:
            job.cancel("the handle was abandoned")
        self.wal.close()
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._owner is not None:
            self._owner._forget(self.name, self)
            self._owner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"<Collection {self.name!r} dim={self.dim} metric={self.metric} count={self.records.nlive} "
                f"index={self.index_spec!r}>")


def _remove_stale_logs(directory: str, keep: str) -> None:
    """Delete write-ahead logs a MANIFEST no longer names (left by a crash right after a staged build's switch).
    Damaged logs moved aside by ``repair`` (``*.damaged-*``) are never touched."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if name != keep and name.startswith("wal") and name.endswith(".log"):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
