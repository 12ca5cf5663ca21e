"""The serverless index kinds (*backends*) by name, and a search through any of them in this process.

A *backend* implements three things for one index kind:

- ``router(reader)`` -> object with ``route(q, k, params, filter) -> {partition: (query_rows int64, extra dict)}``:
  level 0, run by allocators over data they cache (e.g. centroids).
- ``partition(reader, p)`` -> object with ``search(q, k, params, filter, extra) -> (D, I)``: the processors' work.
- ``build(...)``: writes the data of a new version.
- ``filter_schema(reader, manifest)`` -> ``{attribute: type}`` the filters of this version are checked against, or
  None when the kind takes no filter; ``check_params(manifest, params)`` raises on settings the kind does not serve.
  The coordinator runs both once per batch, before fan-out (:func:`check_filter`, :func:`check_params`).

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


def check_filter(backend, reader: Reader, manifest: dict, filter) -> dict | None:
    """The filter (text, JSON form or AST) parsed and type-checked against the version's schema, in its JSON form.

    Raises :class:`InvalidArgument` with the embedded search's message (``invalid filter: unknown attribute 'prce'
    (did you mean 'price'?); known: ...``, or a type error), or naming a kind that takes no filter.
    """
    if filter is None:
        return None
    from .. import filters

    schema = backend.filter_schema(reader, manifest)
    if schema is None:
        raise InvalidArgument(f"index kind {manifest['kind']!r} takes no filter; publish an OSQ index for filtered "
                              "search")
    try:
        return filters.to_json(filters.compile(filter, schema=schema))
    except (filters.FilterSyntaxError, filters.FilterTypeError) as exc:
        raise InvalidArgument(f"invalid filter: {exc}") from None


def check_params(backend, manifest: dict, params: dict | None) -> None:
    """Raise :class:`InvalidArgument` on search settings the backend does not serve (before fan-out)."""
    check = getattr(backend, "check_params", None)
    if check is not None:
        check(manifest, dict(params or {}))


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
    filter = check_filter(backend, reader, manifest, filter)
    check_params(backend, manifest, params)
    routes = backend.router(reader, manifest).route(q, k, params, filter)
    parts = [empty_result(q.shape[0], k)]
    for p, (rows, extra) in sorted(routes.items()):
        D, I = backend.partition(reader, manifest, p).search(q[rows], k, params, filter, extra)
        parts.append(scatter(rows, D, I, q.shape[0], k))
    return merge_topk(parts, k)
