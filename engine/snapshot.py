"""Snapshots: a collection's durable state as generations under its store prefix, switched by one MANIFEST write.

Layout (keys under the collection's prefix)::

    MANIFEST                      JSON, replaced atomically: config, generation, lsn, snapshot prefix, WAL file name
    gen-00000007/records/...      live records (save_arrays): ids, vectors, attributes, tenants, row_slot
    gen-00000007/index/...        the index (its own save)

Writing a snapshot = write a new generation, then switch MANIFEST (the commit point), then empty the WAL and delete
older generations. A crash at any point leaves either the old MANIFEST (whose generation is untouched, and whose WAL
records are all still in the log) or the new one (whose ``lsn`` tells replay to skip what the generation holds).
A staged build commits the same way, naming a new, empty WAL file in its MANIFEST, so nothing of the collection it
replaces can ever be replayed into it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, NotFound
from ..index.factory import load_index
from ..index.persist import load_arrays, save_arrays
from .records import Records
from .schema import Schema
from .tenants import TenantRegistry
from .view import View

#: version of the MANIFEST and records layout (one definition for every reader and writer)
FORMAT_VERSION = 1
#: WAL file of collections whose MANIFEST names none (written before WAL names were recorded)
DEFAULT_WAL = "wal.log"


def new_wal_name() -> str:
    return f"wal-{uuid.uuid4().hex[:12]}.log"


def empty_manifest(config: dict[str, Any]) -> dict[str, Any]:
    """The MANIFEST of a new, empty collection."""
    return {"format_version": FORMAT_VERSION, "config": config, "generation": 0, "lsn": 0, "snapshot": None,
            "has_index": False, "boundary": 0, "tenants": [], "tenants_active": [], "wal": new_wal_name()}


def read_manifest(store, name: str) -> dict[str, Any]:
    """Read and check a collection's MANIFEST; errors name the collection and the file."""
    raw = store.get("MANIFEST")
    where = f"{store.uri.rstrip('/')}/MANIFEST"
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config"), dict):
            raise ValueError("not a JSON object with a 'config' object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise FailedPrecondition(f"collection {name!r}: {where} is damaged ({exc}); restore it from a backup or "
                                 f"drop the collection") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise FailedPrecondition(f"collection {name!r}: {where} has format version {manifest.get('format_version')}, "
                                 f"this shoal reads version {FORMAT_VERSION}")
    return manifest


def write_manifest(store, manifest: dict[str, Any]) -> None:
    """The commit point of every snapshot and staged build (an atomic put)."""
    store.put("MANIFEST", json.dumps(manifest, indent=1).encode())


def load(store, manifest: dict[str, Any], dim: int, schema: Schema) -> tuple[View, TenantRegistry]:
    """The view and tenant registry a MANIFEST describes."""
    tenants = TenantRegistry(manifest.get("tenants", []), manifest.get("tenants_active"))
    snap = manifest.get("snapshot")
    if not snap:
        return View(Records(dim, schema)), tenants
    meta, arrays = load_arrays(store, f"{snap}/records", kind="shoal.records")
    records = Records.from_arrays(dim, schema, meta, arrays)
    if not manifest.get("has_index"):
        return View(records), tenants
    index = load_index(store, f"{snap}/index", mmap=maps_index(store, manifest))
    return View(records, index, np.array(arrays["row_slot"], dtype=np.int64), int(manifest["boundary"])), tenants


def maps_index(store, manifest: dict[str, Any]) -> bool:
    """Whether the index of ``manifest`` is opened memory-mapped: the collection asks for it (``mmap_index``, on by
    default) and the store keeps its objects as local files (mapping from an S3 store would first download every
    array to its cache)."""
    return bool(manifest["config"].get("mmap_index", True)) and store.is_local


def reopen_index(store, manifest: dict[str, Any]):
    """The index of the generation ``manifest`` names, opened memory-mapped; ``None`` when it would not be mapped
    (see :func:`maps_index`)."""
    if not manifest.get("has_index") or not maps_index(store, manifest):
        return None
    return load_index(store, f"{manifest['snapshot']}/index", mmap=True)


def write(store, config: dict[str, Any], view: View, tenants: TenantRegistry, *, generation: int, lsn: int,
          wal: str) -> dict[str, Any]:
    """Write ``view`` (compacted: every slot live) as ``generation`` and switch MANIFEST to it; returns the MANIFEST.

    The caller then empties the WAL (``lsn`` covers it) and calls :func:`delete_other_generations`.
    """
    rec = view.records
    prefix = f"gen-{generation:08d}"
    for key in store.list(prefix):  # leftovers of a build that died before its switch: never referenced
        if key.startswith(prefix + "/"):
            store.delete(key)
    meta, arrays = rec.to_arrays()
    meta["kind"] = "shoal.records"
    arrays["row_slot"] = view.row_slot
    save_arrays(store, f"{prefix}/records", meta, arrays)
    if view.index is not None:
        view.index.save(store, f"{prefix}/index")
    manifest = {
        "format_version": FORMAT_VERSION, "config": config, "generation": generation, "lsn": lsn, "snapshot": prefix,
        "has_index": view.index is not None, "boundary": view.boundary, "count": rec.nlive,
        "tenants": tenants.names, "tenants_active": tenants.active, "wal": wal, "written_at": time.time(),
    }
    write_manifest(store, manifest)
    return manifest


def delete_other_generations(store, keep: str | None) -> None:
    """Delete every generation but ``keep`` (none are referenced once MANIFEST names ``keep``)."""
    for key in store.list("gen-"):
        if keep is None or not key.startswith(keep + "/"):
            store.delete(key)


def current_generation(store) -> int:
    """Generation of the collection's MANIFEST (0 when it has none)."""
    try:
        return int(json.loads(store.get("MANIFEST")).get("generation", 0))
    except (NotFound, ValueError, AttributeError):
        return 0
