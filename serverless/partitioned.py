"""The ``flat`` and ``kmeans`` serverless backends: k-means partitions of the vectors, each searched exactly or by its
own index. The layout and versioning under the index prefix are :mod:`.manifest`'s; the backend protocol is described
in :mod:`.backends`.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidArgument
from ..index.flat import FlatIndex
from ..index.persist import load_arrays, save_arrays
from ..index.validate import as_vectors, check_metric, normalize_rows
from ..quantization.kmeans import assign, kmeans
from .cache import Reader
from .manifest import new_version, write_manifest

# ---------------------------------------------------------------------------------------------------- k-means


def partition_rows(x: np.ndarray, n_partitions: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """k-means partitions of ``x`` (12 iterations over at most 50,000 of its rows): ``(centroids, [rows of
    partition p])``."""
    if n_partitions > x.shape[0]:
        raise InvalidArgument(f"cannot make {n_partitions} partitions of {x.shape[0]} vectors")
    sample = x if x.shape[0] <= 50_000 else x[np.random.default_rng(seed).choice(x.shape[0], 50_000, replace=False)]
    # the whole sample trains (faiss would otherwise subsample to 256 points per centroid)
    cent = kmeans(sample, n_partitions, niter=12, seed=seed,
                  max_points_per_centroid=max(256, -(-sample.shape[0] // n_partitions)))
    part = assign(x, cent)
    return cent, [np.flatnonzero(part == p) for p in range(n_partitions)]


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


def _check_known(params: dict, known, kind: str) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise InvalidArgument(f"unknown search parameter(s) {unknown} for {kind} partitions; valid: {list(known)}")


class FlatPartition:
    def __init__(self, index: FlatIndex):
        self.index = index

    def search(self, q, k, params, filter, extra):
        return self.index.search(q, k)

    def memory_bytes(self) -> int:
        return self.index.memory_bytes()


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
    def filter_schema(reader: Reader, manifest: dict) -> None:
        return None  # exact partitions hold no attributes

    @staticmethod
    def check_params(manifest: dict, params: dict) -> None:
        _check_known(params, FlatBackend.search_params, "flat")

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
    def filter_schema(reader: Reader, manifest: dict) -> None:
        return None  # the partition indexes hold no attributes

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
