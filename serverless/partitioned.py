"""A partitioned index in an object store, in the layout the serverless fan-out reads.

Layout under the index prefix::

    manifest.json                       {"current": VERSION}  (the pointer, written last, atomically)
    versions/VERSION/manifest.json      the full manifest: kind, d, metric, partition counts, backend settings
    versions/VERSION/...                the backend's data (router data for allocators, one folder per partition)

Everything under ``versions/VERSION/`` is immutable: a rebuild writes a new version and then moves the pointer, so a
search that resolved a version once (the coordinator does, and passes it down the tree) never mixes versions, and
container caches keyed by version never serve stale data.

A *backend* implements three things for one index kind:

- ``router(reader)`` -> object with ``route(q, k, params, filter) -> {partition: (query_rows int64, extra dict)}``:
  level 0, run by allocators over data they cache (e.g. centroids).
- ``partition(reader, p)`` -> object with ``search(q, k, params, filter, extra) -> (D, I)``: the processors' work.
- ``build(...)``: writes the data of a new version.

Backends: ``flat`` (exact search per k-means partition) and ``kmeans`` (k-means partitions each holding an index of
any kind, e.g. IVF-PQ) here; ``osq`` in :mod:`.osq_backend`.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound
from ..index.flat import FlatIndex
from ..index.persist import load_arrays, save_arrays
from ..index.topk import empty_result, merge_topk
from ..index.validate import as_vectors, check_k, check_metric, normalize_rows
from .cache import Reader

MANIFEST_FORMAT = "shoal-partitioned"
MANIFEST_VERSION = 1

BACKENDS: dict[str, Any] = {}


def register_backend(name: str):
    def deco(cls):
        BACKENDS[name] = cls
        return cls
    return deco


def get_backend(kind: str):
    if kind not in BACKENDS and kind == "osq":
        from . import osq_backend  # noqa: F401  (registers itself)
    if kind not in BACKENDS:
        raise InvalidArgument(f"unknown partitioned index kind {kind!r}; known: {sorted(BACKENDS) + ['osq']}")
    return BACKENDS[kind]


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


# ---------------------------------------------------------------------------------------------------- k-means


def kmeans(x: np.ndarray, n: int, *, iters: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Plain Lloyd k-means (squared L2). Returns ``(centroids float32 (n, d), assignment int64 (N,))``.

    Empty clusters are re-seeded from the point farthest from its centroid, so every partition gets rows.
    """
    N = x.shape[0]
    if n > N:
        raise InvalidArgument(f"cannot make {n} partitions of {N} vectors")
    rng = np.random.default_rng(seed)
    cent = x[rng.choice(N, n, replace=False)].astype(np.float32).copy()
    assign = np.zeros(N, dtype=np.int64)
    for _ in range(iters):
        dist, assign = nearest(x, cent)
        counts = np.bincount(assign, minlength=n)
        for c in np.flatnonzero(counts == 0):
            far = int(np.argmax(dist))
            cent[c] = x[far]
            assign[far] = c
            dist[far] = 0.0
        sums = np.zeros_like(cent, dtype=np.float64)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=n)
        cent = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return cent, assign


def nearest(x: np.ndarray, cent: np.ndarray, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distance to, and index of, the nearest centroid: ``(float32 (N,), int64 (N,))``."""
    cn = np.einsum("ij,ij->i", cent, cent)
    dist = np.empty(x.shape[0], dtype=np.float32)
    assign = np.empty(x.shape[0], dtype=np.int64)
    for s in range(0, x.shape[0], block):
        xb = x[s:s + block]
        d = cn[None, :] - 2.0 * (xb @ cent.T)
        a = np.argmin(d, axis=1)
        assign[s:s + block] = a
        dist[s:s + block] = np.maximum(d[np.arange(xb.shape[0]), a] + np.einsum("ij,ij->i", xb, xb), 0.0)
    return dist, assign


def partition_rows(x: np.ndarray, n_partitions: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """k-means partitions of ``x``: ``(centroids, [rows of partition p])``."""
    sample = x if x.shape[0] <= 50_000 else x[np.random.default_rng(seed).choice(x.shape[0], 50_000, replace=False)]
    cent, _ = kmeans(sample, n_partitions, seed=seed)
    assign = nearest(x, cent)[1]
    return cent, [np.flatnonzero(assign == p) for p in range(n_partitions)]


# ---------------------------------------------------------------------------------------------------- flat backend


class FlatRouter:
    """Level 0 for k-means partitions: rank partitions by centroid distance; visit ``params[param]`` of them
    (default: all). ``param`` is ``nprobe`` for flat partitions and ``visit`` for partitions holding their own index
    (whose ``nprobe`` is the index's own)."""

    def __init__(self, centroids: np.ndarray, counts: np.ndarray, metric: str, param: str = "nprobe"):
        self.centroids = centroids
        self.counts = counts
        self.metric = metric
        self.param = param

    def route(self, q, k, params, filter) -> dict[int, tuple[np.ndarray, dict]]:
        if filter is not None:
            raise InvalidArgument("k-means partitions take no filter; use an OSQ index for filtered search")
        P = self.centroids.shape[0]
        nprobe = int(params.get(self.param, P)) if params else P
        if nprobe < 1:
            raise InvalidArgument(f"{self.param} must be >= 1, got {nprobe}")
        q = normalize_rows(q) if self.metric == "cosine" else q
        nprobe = min(nprobe, P)
        if nprobe == P:
            visit = np.ones((q.shape[0], P), dtype=bool)
        else:
            cn = np.einsum("ij,ij->i", self.centroids, self.centroids)
            near = np.argsort(cn[None, :] - 2.0 * (q @ self.centroids.T), axis=1, kind="stable")[:, :nprobe]
            visit = np.zeros((q.shape[0], P), dtype=bool)
            np.put_along_axis(visit, near, True, axis=1)
        visit &= (self.counts > 0)[None, :]
        return {p: (np.flatnonzero(visit[:, p]).astype(np.int64), {}) for p in range(P) if visit[:, p].any()}


def build_kmeans_partitions(store, x, ids, *, n_partitions: int, metric: str, seed: int, new_index,
                            train_kwargs: dict | None, manifest: dict) -> dict:
    """Split ``x`` into ``n_partitions`` k-means partitions, give each a fresh ``new_index()`` (trained on the
    partition's rows when ``train_kwargs`` is not None, then filled), save them, the router, and switch the manifest.

    An empty partition saves its fresh index as it is. ``manifest`` holds the backend's own keys (``kind`` and what
    its loader needs).
    """
    metric = check_metric(metric)
    x = as_vectors(x, None)
    ids = np.asarray(ids, dtype=np.int64)
    if ids.shape != (x.shape[0],):
        raise InvalidArgument(f"need one id per vector: {ids.shape} ids for {x.shape[0]} vectors")
    xn = normalize_rows(x) if metric == "cosine" else x
    cent, parts = partition_rows(xn, n_partitions, seed)
    version = new_version()
    counts = np.array([r.size for r in parts], dtype=np.int64)
    for p, rows in enumerate(parts):
        index = new_index()
        if rows.size:
            if train_kwargs is not None:
                index.train(x[rows], **train_kwargs)
            index.add(x[rows], ids[rows])
        index.save(store, f"versions/{version}/p{p}")
    save_arrays(store, f"versions/{version}/router", {"kind": "flat-router"}, {"centroids": cent, "counts": counts})
    manifest = {**manifest, "version": version, "d": int(x.shape[1]), "metric": metric,
                "n_partitions": int(n_partitions), "ntotal": int(x.shape[0]), "partition_counts": counts.tolist()}
    write_manifest(store, manifest)
    return manifest


class FlatPartition:
    def __init__(self, index: FlatIndex):
        self.index = index

    def search(self, q, k, params, filter, extra):
        return self.index.search(q, k)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()


@register_backend("flat")
class FlatBackend:
    """Exact search inside k-means partitions; the routing setting ``nprobe`` trades recall for work."""

    search_params = ("nprobe",)

    @staticmethod
    def build(store, x, ids, *, n_partitions: int, metric: str = "l2", seed: int = 0) -> dict:
        d = as_vectors(x, None).shape[1]
        return build_kmeans_partitions(store, x, ids, n_partitions=n_partitions, metric=metric, seed=seed,
                                       new_index=lambda: FlatIndex(d, metric), train_kwargs=None,
                                       manifest={"kind": "flat"})

    @staticmethod
    def router(reader: Reader, manifest: dict) -> FlatRouter:
        def load():
            _, arrays = load_arrays(reader.store, reader.key("router"), kind="flat-router")
            return FlatRouter(arrays["centroids"], arrays["counts"], manifest["metric"])
        return reader.cached("router", load)

    @staticmethod
    def partition(reader: Reader, manifest: dict, p: int) -> FlatPartition:
        return reader.cached(f"p{p}", lambda: FlatPartition(FlatIndex.load(reader.store, reader.key(f"p{p}"))))


class IndexPartition:
    """A partition holding its own index of any kind; search settings other than ``visit`` go to it."""

    def __init__(self, index):
        self.index = index

    def search(self, q, k, params, filter, extra):
        own = {key: v for key, v in (params or {}).items() if key != "visit"}
        return self.index.search(q, k, params=own or None)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()


@register_backend("kmeans")
class KMeansBackend:
    """k-means partitions, each with its own index built from a factory string (e.g. ``IVF64,PQ8x8``): the way to
    fan out any index kind. ``visit`` (partitions per query, default all) is the routing setting; other settings
    (``nprobe``, ``rerank``, ...) are the partition index's."""

    @staticmethod
    def build(store, x, ids, *, n_partitions: int, factory: str, metric: str = "l2", seed: int = 0,
              train_kwargs: dict | None = None) -> dict:
        from ..index.factory import index_factory

        d = as_vectors(x, None).shape[1]
        return build_kmeans_partitions(store, x, ids, n_partitions=n_partitions, metric=metric, seed=seed,
                                       new_index=lambda: index_factory(d, factory, metric),
                                       train_kwargs=dict(train_kwargs or {}),
                                       manifest={"kind": "kmeans", "factory": factory})

    @staticmethod
    def router(reader: Reader, manifest: dict) -> FlatRouter:
        def load():
            _, arrays = load_arrays(reader.store, reader.key("router"), kind="flat-router")
            return FlatRouter(arrays["centroids"], arrays["counts"], manifest["metric"], param="visit")
        return reader.cached("router", load)

    @staticmethod
    def partition(reader: Reader, manifest: dict, p: int) -> IndexPartition:
        from ..index.factory import load_index

        return reader.cached(f"p{p}", lambda: IndexPartition(load_index(reader.store, reader.key(f"p{p}"))))


# ---------------------------------------------------------------------------------------------------- searching


def check_partition(manifest: dict, p: int) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or not 0 <= p < manifest["n_partitions"]:
        raise InvalidArgument(f"partition {p!r} is outside 0..{manifest['n_partitions'] - 1}")
    return int(p)


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
