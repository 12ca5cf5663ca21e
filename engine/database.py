"""A database: a directory (or object-store prefix) of collections.

``Database("data/")`` keeps everything under one local directory: ``data/<collection>/MANIFEST``, snapshot
generations and the collection's ``wal.log``. ``Database("s3://bucket/prefix", wal_dir="/var/lib/shoal/wal")``
keeps MANIFEST and snapshots in S3 and the write-ahead logs on local disk under ``wal_dir`` (an acknowledged write is
durable on that disk; it reaches S3 with the next snapshot: a build, ``compact()`` or ``close()``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from typing import Any

from ..errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ..index.factory import index_factory
from ..index.validate import check_metric
from .collection import (DEFAULT_EXACT_THRESHOLD, DEFAULT_SNAPSHOT_WAL_BYTES, DEFAULT_TAIL_LIMIT, FORMAT_VERSION,
                         Collection)
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
        A directory (created if missing), ``file://`` or ``s3://bucket/prefix`` URI, or a store.
    wal_dir : str, optional
        Where write-ahead logs live. Default: inside each collection's directory for a local root; required to be
        a local directory for other stores (default ``~/.cache/shoal/wal/<bucket>/<prefix>``).
    read_only : bool
        Open collections without taking their write lock (e.g. ``shoal info`` next to a running server); writes
        raise FailedPrecondition.
    """

    def __init__(self, path, *, wal_dir: str | None = None, read_only: bool = False):
        self.store: ObjectStore = path if isinstance(path, ObjectStore) else open_store(path)
        self.read_only = read_only
        if wal_dir is None:
            if isinstance(self.store, LocalStore):
                wal_dir = self.store.root
            else:
                safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.store.uri)
                wal_dir = os.path.join(os.path.expanduser("~"), ".cache", "shoal", "wal", safe)
        self.wal_dir = os.path.abspath(wal_dir)
        self._open: dict[str, Collection] = {}
        self._lock = threading.RLock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Database {self.store.uri} collections={self.list_collections()}>"

    def _wal_path(self, name: str) -> str:
        return os.path.join(self.wal_dir, name, "wal.log")

    def _check(self) -> None:
        if self._closed:
            raise FailedPrecondition("database is closed")

    def list_collections(self) -> list[str]:
        """Names of the collections, sorted."""
        self._check()
        if isinstance(self.store, LocalStore):
            root = self.store.root
            if not os.path.isdir(root):
                return []
            return sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "MANIFEST")))
        return sorted(k[:-len("/MANIFEST")] for k in self.store.list("") if k.count("/") == 1
                      and k.endswith("/MANIFEST"))

    def exists(self, name: str) -> bool:
        return self.store.exists(f"{check_collection_name(name)}/MANIFEST")

    def create_collection(self, name: str, dim: int, metric: str = "l2", schema: dict[str, str] | None = None,
                          index: str = "Flat", multi_tenant: bool = False, *, tail_limit: int = DEFAULT_TAIL_LIMIT,
                          exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
                          snapshot_wal_bytes: int = DEFAULT_SNAPSHOT_WAL_BYTES, exist_ok: bool = False) -> Collection:
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
        tail_limit : int
            Unindexed records that trigger a background index build.
        exact_threshold : int
            A filtered/tenant search whose matching rows are at most this many is answered by an exact scan of them.
        snapshot_wal_bytes : int
            After an automatic build, snapshot (and empty the WAL) only once the WAL is this large.
        exist_ok : bool
            Return the existing collection instead of raising AlreadyExists (its config must match).
        """
        self._check()
        if self.read_only:
            raise FailedPrecondition("database is open read-only")
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
            raise InvalidArgument(f"dim must be an integer in 1..65536, got {dim!r}")
        check_metric(metric)
        sch = Schema(schema)
        if not isinstance(index, str):
            raise InvalidArgument(f"index must be a factory string, got {index!r}")
        index_factory(dim, index, metric)
        for label, v in (("tail_limit", tail_limit), ("exact_threshold", exact_threshold),
                         ("snapshot_wal_bytes", snapshot_wal_bytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise InvalidArgument(f"{label} must be a non-negative integer, got {v!r}")
        config = {"name": name, "dim": dim, "metric": metric, "schema": sch.to_json(), "index": index,
                  "multi_tenant": bool(multi_tenant), "tail_limit": tail_limit, "exact_threshold": exact_threshold,
                  "snapshot_wal_bytes": snapshot_wal_bytes}
        with self._lock:
            if self.exists(name):
                if exist_ok:
                    col = self.collection(name)
                    keys = ("dim", "metric", "schema", "multi_tenant")
                    if any(col.config.get(key) != config[key] for key in keys):
                        raise AlreadyExists(f"collection {name!r} exists with a different configuration")
                    return col
                raise AlreadyExists(f"collection {name!r} already exists")
            wal = self._wal_path(name)
            if os.path.exists(wal):
                os.unlink(wal)  # left over from a dropped collection whose files could not all be removed
            manifest = {"format_version": FORMAT_VERSION, "config": config, "generation": 0, "lsn": 0,
                        "snapshot": None, "has_index": False, "boundary": 0, "tenants": [], "tenants_active": []}
            self.store.put(f"{name}/MANIFEST", json.dumps(manifest, indent=1).encode())
            return self.collection(name)

    def collection(self, name: str) -> Collection:
        """Open (or return the already open) collection; NotFound if it does not exist."""
        self._check()
        check_collection_name(name)
        with self._lock:
            col = self._open.get(name)
            if col is not None:
                return col
            if not self.exists(name):
                known = ", ".join(self.list_collections()) or "(none)"
                raise NotFound(f"unknown collection {name!r}; collections: {known}")
            col = Collection(name, self.store.child(name), self._wal_path(name), read_only=self.read_only,
                             owner=self)
            self._open[name] = col
            return col

    get_collection = collection

    def _forget(self, name: str, col: Collection) -> None:
        with self._lock:
            if self._open.get(name) is col:
                del self._open[name]

    def drop_collection(self, name: str) -> None:
        """Delete a collection and all its files; NotFound if it does not exist."""
        self._check()
        if self.read_only:
            raise FailedPrecondition("database is open read-only")
        check_collection_name(name)
        with self._lock:
            if not self.exists(name):
                raise NotFound(f"unknown collection {name!r}")
            col = self._open.pop(name, None)
            if col is not None:
                col._owner = None
                job = col._job
                if job is not None:
                    job.wait()
                col._closed = True
                col.wal.close()
            # MANIFEST first: a crash half-way leaves no half-collection that opens
            self.store.delete(f"{name}/MANIFEST")
            self.store.delete_prefix(f"{name}/")
            wal_dir = os.path.dirname(self._wal_path(name))
            if os.path.isdir(wal_dir):
                shutil.rmtree(wal_dir, ignore_errors=True)
            if isinstance(self.store, LocalStore):
                shutil.rmtree(os.path.join(self.store.root, name), ignore_errors=True)

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
