"""A database: a directory (or object-store prefix) of collections.

``Database("data/")`` keeps everything under one local directory: ``data/<collection>/MANIFEST``, snapshot
generations and the collection's write-ahead log. ``Database("s3://bucket/prefix", wal_dir="/var/lib/shoal/wal")``
keeps MANIFEST and snapshots in S3 and the write-ahead logs on local disk under ``wal_dir`` (an acknowledged write is
durable on that disk; it reaches S3 with the next snapshot: a build, ``compact()`` or ``close()``).

Guarantees across processes (see docs/engine.md): a collection is open for writing in one process at a time (its
owner lock, :mod:`.locks`); creating, dropping, repairing or replacing a collection that another process holds is
refused with :class:`FailedPrecondition` naming the holder; read-only opens work beside a writer and catch up with
it through :meth:`Database.refresh`. A staged build (:meth:`Database.stage_collection`, ``shoal build``) becomes
visible all at once or not at all. Opening a database creates nothing (the directory appears with the first
collection), so a read of a mistyped path is NotFound and leaves no empty directory behind.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from typing import Any

from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ShoalError
from ..index.calibration import DEFAULT_TARGET, check_target
from ..index.factory import index_factory
from ..index.validate import check_metric
from . import snapshot, wal as wal_mod
from .collection import SETTINGS, Collection, _remove_stale_logs
from .locks import LOCK_DIR, check_writable, collection_lock, database_lock
from .schema import Schema
from ..storage import LocalStore, ObjectStore, open_store

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def check_collection_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("gen-"):
        raise InvalidArgument(f"invalid collection name {name!r}: use 1-128 letters, digits, '_', '-', '.', "
                              "starting with a letter, digit or '_'")
    return name


class Database:
    """Collections under one root.

    Parameters
    ----------
    path : str, os.PathLike or ObjectStore
        A directory, ``file://`` or ``s3://bucket/prefix`` URI, or a store. A missing directory is created by the
        first collection written into it; opened read-only it is :class:`NotFound`.
    wal_dir : str, optional
        Where write-ahead logs (and owner locks) live. Default: inside each collection's directory for a local root;
        a local directory for other stores (default ``~/.cache/shoal/wal/<bucket>/<prefix>``).
    read_only : bool
        Open collections without taking their owner lock (e.g. ``shoal info`` next to a running server, or data on a
        read-only file system); writes raise FailedPrecondition. Collections show the state of the moment they were
        opened until :meth:`refresh` loads what writers did since.

    Raises
    ------
    NotFound
        ``read_only`` and the directory does not exist.
    FailedPrecondition
        Not ``read_only`` and the directory (or ``wal_dir``) cannot be written: a read-only file system or missing
        permissions; the message suggests ``read_only=True``.
    """

    def __init__(self, path, *, wal_dir: str | None = None, read_only: bool = False):
        self.store: ObjectStore = path if isinstance(path, ObjectStore) else open_store(path, create=not read_only)
        self.read_only = read_only
        if wal_dir is None:
            if isinstance(self.store, LocalStore):
                wal_dir = self.store.root
            else:
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.store.uri)
                wal_dir = os.path.join(os.path.expanduser("~"), ".cache", "shoal", "wal", safe)
        self.wal_dir = os.path.abspath(wal_dir)
        if not read_only:
            for path in {self.wal_dir} | ({self.store.root} if isinstance(self.store, LocalStore) else set()):
                check_writable(path)
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Database {self.store.uri} collections={self.list_collections()}>"

    def _check(self, write: bool = False) -> None:
        if self._closed:
            raise FailedPrecondition("database is closed")
        if write and self.read_only:
            raise FailedPrecondition("database is open read-only")

    def list_collections(self) -> list[str]:
        """Names of the collections, sorted."""
        self._check()
        if isinstance(self.store, LocalStore):
            root = self.store.root
            if not os.path.isdir(root):
                return []
            return sorted(d for d in os.listdir(root) if d != LOCK_DIR and
                          os.path.isfile(os.path.join(root, d, "MANIFEST")))
        return sorted(k[:-len("/MANIFEST")] for k in self.store.list("") if k.count("/") == 1
                      and k.endswith("/MANIFEST"))

    def exists(self, name: str) -> bool:
        return self.store.exists(f"{check_collection_name(name)}/MANIFEST")

    @staticmethod
    def _config(name, dim, metric, schema, index, multi_tenant, settings: dict[str, Any],
                target_recall=DEFAULT_TARGET) -> dict[str, Any]:
        """Validate a new collection's configuration."""
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
            raise InvalidArgument(f"dim must be an integer in 1..65536, got {dim!r}")
        check_metric(metric)
        sch = Schema(schema)
        if not isinstance(index, str):
            raise InvalidArgument(f"index must be a factory string, got {index!r}")
        index_factory(dim, index, metric)
        for label, v in settings.items():
            if label == "exact_threshold" and v is None:
                continue  # chosen by the planner per index kind
            if isinstance(SETTINGS[label], bool):
                if not isinstance(v, bool):
                    raise InvalidArgument(f"{label} must be True or False, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (label in ("max_k", "max_results") and v < 1):
                raise InvalidArgument(f"{label} must be a {'positive' if label.startswith('max') else 'non-negative'} "
                                      f"integer, got {v!r}")
        return {"name": name, "dim": dim, "metric": metric, "schema": sch.to_json(), "index": index,
                "multi_tenant": bool(multi_tenant), **settings,
                "target_recall": check_target(target_recall, "target_recall")}

    def create_collection(self, name: str, dim: int, metric: str = "l2", schema: dict[str, str] | None = None,
                          index: str = "Flat", multi_tenant: bool = False, *, exist_ok: bool = False,
                          tail_limit: int = SETTINGS["tail_limit"], exact_threshold: int | None = SETTINGS["exact_threshold"],
                          snapshot_wal_bytes: int = SETTINGS["snapshot_wal_bytes"], max_k: int = SETTINGS["max_k"],
                          max_results: int = SETTINGS["max_results"],
                          mmap_index: bool = SETTINGS["mmap_index"], target_recall: float = DEFAULT_TARGET
                          ) -> Collection:
        """Create a collection and return it open.

        Parameters
        ----------
        name : str
        dim : int
        metric : {"l2", "ip", "cosine"}
        schema : dict, optional
            ``{attribute: type}``, types ``int``, ``float``, ``keyword``, ``tags``.
        index : str
            Factory string of the index built over the records (``Flat``, ``IVF256,PQ16x8``, ``Curator(...)``,
            ``OSQ(...)``); until it is built, search scans exactly.
        multi_tenant : bool
            Accept tenants on records and ``tenant=`` on reads.
        exist_ok : bool
            Return the existing collection instead of raising AlreadyExists (its dim, metric, schema and
            multi_tenant must match).
        tail_limit : int
            Unindexed records that trigger a background index build.
        exact_threshold : int
            A filtered/tenant search whose matching rows are at most this many is answered by an exact scan of them;
            ``None`` (default) lets the planner choose per index kind (see :func:`shoal.engine.planner.exact_threshold`).
        snapshot_wal_bytes : int
            After an automatic build, snapshot (and empty the WAL) only once the WAL is this large.
        max_k : int
            Largest ``k`` a search may ask for (default 10,000).
        max_results : int
            Largest ``nq * k`` of one search call (default 4,194,304).
        mmap_index : bool
            On a local store, serve the index from its snapshot with its large arrays (float32 vectors) memory-mapped
            rather than copied into the heap: after each snapshot the index is reopened from the files just
            written, and a reopened collection maps them too (default True; the index's ``memory_bytes()`` then
            leaves them out and ``mapped_bytes()`` counts them).
        target_recall : float
            Recall@10 that searches without explicit settings reach: every build calibrates the index's default
            search settings for it (``search(params={"recall": r})`` picks another target per call).
        """
        self._check(write=True)
        config = self._config(name, dim, metric, schema, index, multi_tenant,
                              {"tail_limit": tail_limit, "exact_threshold": exact_threshold,
                               "snapshot_wal_bytes": snapshot_wal_bytes, "max_k": max_k, "max_results": max_results,
                               "mmap_index": mmap_index},
                              target_recall)
        with self._lock, database_lock(self.wal_dir):
            if self.exists(name):
                if exist_ok:
                    col = self.collection(name)
                    keys = ("dim", "metric", "schema", "multi_tenant")
                    if any(col.config.get(key) != config[key] for key in keys):
                        raise AlreadyExists(f"collection {name!r} exists with a different configuration")
                    return col
                raise AlreadyExists(f"collection {name!r} already exists")
            lock = collection_lock(self.wal_dir, name).acquire()
            try:
                child = self.store.child(name)
                snapshot.delete_other_generations(child, None)  # leftovers of a staged build that died
                snapshot.write_manifest(child, snapshot.empty_manifest(config))
                col = Collection(name, child, self.wal_dir, owner=self, lock=lock)
            except BaseException:
                lock.release()
                raise
            self._open[name] = col
            return col

    def collection(self, name: str) -> Collection:
        """Open (or return the already open) collection; NotFound if it does not exist.

        Opening for writing takes the collection's owner lock: FailedPrecondition naming the holder if another
        process (or another Database object) has it open for writing.
        """
        self._check()
        check_collection_name(name)
        with self._lock:
            col = self._open.get(name)
            if col is not None:
                return col
            if not self.exists(name):
                known = ", ".join(self.list_collections()) or "(none)"
                raise NotFound(f"unknown collection {name!r}; collections: {known}")
            lock = None if self.read_only else collection_lock(self.wal_dir, name).acquire()
            try:
                col = Collection(name, self.store.child(name), self.wal_dir, read_only=self.read_only, owner=self,
                                 lock=lock)
            except BaseException:
                if lock is not None:
                    lock.release()
                raise
            self._open[name] = col
            return col

    def _forget(self, name: str, col: Collection) -> None:
        with self._lock:
            if self._open.get(name) is col:
                del self._open[name]

    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its files; NotFound if it does not exist.

        A build in progress is cancelled and nothing is written for the collection afterwards. Refused
        (FailedPrecondition naming the holder) while another process has the collection open for writing.
        """
        self._check(write=True)
        check_collection_name(name)
        with self._lock, database_lock(self.wal_dir):
            if not self.exists(name):
                raise NotFound(f"unknown collection {name!r}")
            col = self._open.pop(name, None)
            if col is not None:
                col._shutdown(cancel="the collection was dropped", persist=False)
                lock, col._lock, col._owner = col._lock, None, None
            else:
                lock = collection_lock(self.wal_dir, name).acquire()
            try:
                # MANIFEST first: a crash half-way leaves no half-collection that opens
                self.store.delete(f"{name}/MANIFEST")
                self.store.delete_prefix(f"{name}/")
                wal_dir = os.path.join(self.wal_dir, name)
                if os.path.isdir(wal_dir):
                    shutil.rmtree(wal_dir, ignore_errors=True)
                if isinstance(self.store, LocalStore):
                    shutil.rmtree(os.path.join(self.store.root, name), ignore_errors=True)
            finally:
                lock.release()

    def stage_collection(self, name: str, dim: int, metric: str = "l2", schema: dict[str, str] | None = None,
                         index: str = "Flat", multi_tenant: bool = False, *, replace: bool = False,
                         **settings) -> "StagedCollection":
        """A collection built off to the side and published by :meth:`StagedCollection.commit` in one step.

        Until the commit, writes live in memory only and nothing of the collection is visible; ``replace=True``
        leaves an existing collection of that name byte-for-byte as it was until the commit switches its MANIFEST
        to the staged state. A failure, ``abort()`` or an interrupted process leaves the old state (or no
        collection) behind. The owner lock of ``name`` is held from here to the commit or abort, so no other process
        can open, drop or stage that name meanwhile.

        Parameters are those of :meth:`create_collection`; ``replace`` allows an existing collection of that name.
        """
        self._check(write=True)
        target_recall = settings.pop("target_recall", DEFAULT_TARGET)
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise InvalidArgument(f"unknown collection setting(s) {sorted(unknown)}; valid: "
                                  f"{', '.join(SETTINGS)}, target_recall")
        config = self._config(name, dim, metric, schema, index, multi_tenant, {**SETTINGS, **settings},
                              target_recall)
        with self._lock:
            if name in self._open:
                raise FailedPrecondition(f"collection {name!r} is open in this Database; close it before "
                                         "replacing it with a staged build")
            if not replace and self.exists(name):
                raise AlreadyExists(f"collection {name!r} already exists (replace it with --overwrite / "
                                    "replace=True)")
            lock = collection_lock(self.wal_dir, name).acquire()
            try:
                if not replace and self.exists(name):
                    raise AlreadyExists(f"collection {name!r} already exists")
                staged = StagedCollection(name, self.store.child(name), self.wal_dir, owner=self, lock=lock,
                                          staged_manifest=snapshot.empty_manifest(config))
            except BaseException:
                lock.release()
                raise
            staged._replace = replace
            return staged

    def repair_collection(self, name: str) -> dict[str, Any]:
        """Repair a collection whose write-ahead log is damaged before intact records (see ``shoal repair``).

        Keeps every intact record, moves the original log aside (never deletes it) and returns
        ``{"kept", "damaged_bytes", "moved_to"}``. Refused while the collection is open for writing anywhere.
        """
        self._check(write=True)
        check_collection_name(name)
        with self._lock:
            if name in self._open:
                raise FailedPrecondition(f"collection {name!r} is open in this Database; close it first")
            if not self.exists(name):
                raise NotFound(f"unknown collection {name!r}")
            with collection_lock(self.wal_dir, name):
                manifest = snapshot.read_manifest(self.store.child(name), name)
                path = os.path.join(self.wal_dir, name, manifest.get("wal") or snapshot.DEFAULT_WAL)
                return wal_mod.repair(path, int(manifest.get("lsn", 0)))

    def refresh(self) -> dict[str, Any]:
        """Catch up with writers: every open collection of a read-only database loads what was written since it was
        opened or last refreshed (records appended to the log are applied; a new snapshot or a replaced collection is
        loaded whole). Collections dropped meanwhile are closed. Searches in flight finish on the state they began
        with. A writable database is always current.

        Returns
        -------
        dict
            ``{"reloaded": [names that changed], "dropped": [names closed because they no longer exist],
            "failed": {name: message}}``; a collection that fails (e.g. its log is damaged) keeps its last state and
            does not stop the others.
        """
        self._check()
        out: dict[str, Any] = {"reloaded": [], "dropped": [], "failed": {}}
        if not self.read_only:
            return out
        with self._lock:
            cols = list(self._open.items())
        for name, col in cols:
            try:
                if col.refresh():
                    out["reloaded"].append(name)
            except NotFound:
                col.close()
                out["dropped"].append(name)
            except ShoalError as exc:
                out["failed"][name] = str(exc)
        return out

    def close(self) -> None:
        """Close every open collection (each snapshots its WAL if non-empty)."""
        with self._lock:
            for col in list(self._open.values()):
                col.close()
            self._open.clear()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def info(self) -> dict[str, Any]:
        return {"uri": self.store.uri, "wal_dir": self.wal_dir, "collections": self.list_collections()}


class StagedCollection(Collection):
    """A collection being built off to the side (:meth:`Database.stage_collection`): the full Collection API,
    writes in memory only, published by :meth:`commit` or discarded by :meth:`abort` (also on leaving a ``with``
    block without a commit)."""

    _replace = False
    _committed = False

    def commit(self) -> dict[str, Any]:
        """Write the staged records and index as a new generation of ``name`` and switch its MANIFEST to it (one
        atomic write: readers see the old collection or the new one, never a mix). Returns ``info()``."""
        self._check_open(write=True)
        self.wait_for_build()
        db: Database = self._owner
        with self._build_lock, self._wlock, db._lock, database_lock(db.wal_dir):
            self._check_open(write=True)
            if not self._replace and db.exists(self.name):
                raise AlreadyExists(f"collection {self.name!r} already exists")
            view = self._view.compacted()
            generation = snapshot.current_generation(self.store) + 1
            wal = snapshot.new_wal_name()
            with self._rw.write:
                self._view = view
            info = self.info()
            manifest = snapshot.write(self.store, self.config, view, self.tenants, generation=generation, lsn=0,
                                      wal=wal)
            # committed: what is left of the replaced collection is unreferenced
            self._committed = True
            snapshot.delete_other_generations(self.store, manifest["snapshot"])
            _remove_stale_logs(os.path.join(db.wal_dir, self.name), keep=wal)
            self._closed = True
        self._release()
        stored = sum(self.store.size(key) for key in self.store.list(manifest["snapshot"] + "/"))
        info.update(generation=generation, wal_bytes=0, stored_bytes=stored)
        return info

    def abort(self) -> None:
        """Discard the staged collection; an existing collection of that name stays as it was."""
        if self._closed and self._committed:
            return
        try:
            self._shutdown(cancel="the staged build was aborted", persist=False)
            # a commit that failed half-way may have left a generation no MANIFEST names (the owner lock, still
            # held, guarantees nobody else is writing one)
            current = None
            try:
                current = snapshot.read_manifest(self.store, self.name).get("snapshot")
            except (NotFound, FailedPrecondition):
                pass
            snapshot.delete_other_generations(self.store, current)
        finally:
            self._release()

    def close(self) -> None:
        """Leaving a staged collection without :meth:`commit` discards it."""
        if not self._committed:
            self.abort()

    def __exit__(self, exc_type, *exc):
        if not self._committed:
            self.abort()
