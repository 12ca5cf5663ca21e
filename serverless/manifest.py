"""A partitioned index's versions and manifests in an object store, in the layout the serverless fan-out reads.

Layout under the index prefix::

    manifest.json                       {"current": VERSION}  (the pointer, written last, atomically)
    versions/VERSION/manifest.json      the full manifest: kind, d, metric, partition counts, backend settings
    versions/VERSION/...                the backend's data (router data for allocators, one folder per partition)

Everything under ``versions/VERSION/`` is immutable: a rebuild writes a new version and then moves the pointer, so a
search that resolved a version once (the coordinator does, and passes it down the tree) never mixes versions, and
container caches keyed by version never serve stale data.
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from .cache import Reader

MANIFEST_FORMAT = "shoal-partitioned"
MANIFEST_VERSION = 1


def new_version() -> str:
    """A sortable, unique version name: UTC time plus random hex."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:10]


def write_manifest(store, manifest: dict) -> None:
    """Write the version's manifest, then move the pointer to it (the commit point)."""
    version = manifest["version"]
    full = dict(manifest, format=MANIFEST_FORMAT, format_version=MANIFEST_VERSION)
    store.put(f"versions/{version}/manifest.json", json.dumps(full, indent=1, sort_keys=True).encode())
    store.put("manifest.json", json.dumps({"current": version}).encode())


def current_version(store) -> str:
    try:
        pointer = json.loads(store.get("manifest.json"))
    except NotFound:
        raise NotFound(f"no partitioned index at {store.uri} (manifest.json missing; run `shoal push` first)") from None
    return pointer["current"]


def read_manifest(store, version: str | None = None) -> dict:
    """Read the manifest of ``version`` (the current one when ``None``) and check its format."""
    version = version or current_version(store)
    try:
        manifest = json.loads(store.get(f"versions/{version}/manifest.json"))
    except NotFound:
        raise NotFound(f"index version {version!r} not found at {store.uri}") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version") != MANIFEST_VERSION:
        raise FailedPrecondition(f"{store.uri}: unsupported manifest format "
                                 f"{manifest.get('format')!r} v{manifest.get('format_version')}")
    return manifest


def list_versions(store) -> list[str]:
    return sorted({k.split("/")[1] for k in store.list("versions") if k.endswith("/manifest.json")})


def cached_manifest(reader: Reader) -> dict:
    return reader.cached("manifest.json", lambda: read_manifest(reader.store, reader.version))


def check_partition(manifest: dict, p: int) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < manifest["n_partitions"]:
        raise InvalidArgument(f"partition {p!r} is outside 0..{manifest['n_partitions'] - 1}")
    return int(p)
