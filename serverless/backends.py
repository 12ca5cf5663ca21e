"""The serverless index kinds (*backends*) by name, and a search through any of them in this process.

A *backend* implements three things for one index kind:

- ``router(reader)`` -> object with ``route(q, k, params, filter) -> {partition: (query_rows int64, extra dict)}``:
  level 0, run by allocators over data they cache (e.g. centroids).
- ``partition(reader, p)`` -> object with ``search(q, k, params, filter, extra) -> (D, I)``: the processors' work.
- ``build(...)``: writes the data of a new version.

Backends: ``flat`` (exact search per k-means partition) and ``kmeans`` (k-means partitions each holding an index of
any kind, e.g. IVF-PQ) in :mod:`.partitioned`; ``osq`` in :mod:`.osq_backend`. The data layout is :mod:`.manifest`'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgument
from ..index.topk import empty_result, merge_topk
from ..index.validate import as_vectors, check_k
from .cache import Reader
from .manifest import cached_manifest, current_version
from .osq_backend import OSQBackend
from .partitioned import FlatBackend, KMeansBackend

BACKENDS: dict[str, Any] = {"flat": FlatBackend, "kmeans": KMeansBackend, "osq": OSQBackend}


def get_backend(kind: str):
    if kind not in BACKENDS:
        raise InvalidArgument(f"unknown partitioned index kind {kind!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[kind]


def scatter(parts_rows: np.ndarray, D: np.ndarray, I: np.ndarray, nq: int, k: int):
    """Place a partition's results for the queries ``parts_rows`` into padded ``(nq, k)`` arrays."""
    fD, fI = empty_result(nq, k)
    w = min(k, D.shape[1])
    fD[parts_rows, :w] = D[:, :w]
    fI[parts_rows, :w] = I[:, :w]
    return fD, fI


def search_inprocess(store, q, k: int, *, params=None, filter=None, version: str | None = None,
                     reader: Reader | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Search a partitioned index in this process: the same routing, partition searches and merge as the tree.

    The serverless fan-out must return exactly this.
    """
    reader = reader or Reader(store, version or current_version(store))
    manifest = cached_manifest(reader)
    backend = get_backend(manifest["kind"])
    q = as_vectors(q, manifest["d"], name="queries")
    k = check_k(k)
    params = dict(params or {})
    routes = backend.router(reader, manifest).route(q, k, params, filter)
    parts = [empty_result(q.shape[0], k)]
    for p, (rows, extra) in sorted(routes.items()):
        D, I = backend.partition(reader, manifest, p).search(q[rows], k, params, filter, extra)
        parts.append(scatter(rows, D, I, q.shape[0], k))
    return merge_topk(parts, k)
