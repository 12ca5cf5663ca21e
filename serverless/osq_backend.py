"""OSQ partitions for the serverless fan-out: level 0 in allocators, levels 1-3 in processors.

Layout: the OSQ index is saved by :meth:`OSQIndex.save` under ``versions/VERSION/osq`` (one ``.npy`` object per
array: level-0 arrays at the top, each partition's segments, binary codes, vectors, codebook and exact attributes
under ``pNNNN/``). An allocator loads only the level-0 arrays (:meth:`OSQIndex.load_level0`: rotation, centroids,
row maps, attribute codes); a processor loads only its partition's objects (:meth:`OSQIndex.load_partition`) but its
float32 vectors, the bulk of them (200 of 281 bytes a row on GloVe-50), of which it reads only the rows it
re-ranks, in blocks, with ranged GETs (:class:`~shoal.serverless.cache.RemoteRows`). So a cold processor fetches the
codes of ``1/P`` of the index and a few blocks of vectors. All of it stays in the container cache. Without the
vectors in memory, level 2 ranks by code bounds (``level2="bounds"``, the choice ``auto`` makes for a partition that
reads its rows on demand); ``exact`` and ``head`` keys, which read every candidate's vector, are refused there.

Per batch an allocator runs :meth:`OSQIndex.level0` (rotation, three-valued filter over the attribute codes, counts of
sure/maybe rows per partition, partitions (and clusters inside them) to visit) and sends each visited partition the
rotated queries, the filter status of that partition's rows (uint8, compressed in the payload), the clusters each
query visits there and the plan. The processor runs levels 1-3
(:meth:`OSQPartition.search`), or, when level 0 chose the exact plan (very selective filters), an exact scan of its
sure rows. Results are merged with ``merge_topk`` up the tree.
"""

from __future__ import annotations

import copy

import numpy as np

from ..errors import InvalidArgument
from ..index.flat import exact_search
from ..index.topk import empty_result
from .cache import PrefetchedStore, Reader, RemoteRows
from .manifest import new_version, write_manifest

STATUS_SURE = 1  # the values of quantization/_osq_kernels.STATUS_* (checked at import of the router)


def _expr(filter):
    if filter is None:
        return None
    from ..index.osq_columns import as_expr

    return as_expr(filter)


class OSQRouter:
    """Level 0 over a level-0-only :class:`OSQIndex`."""

    def __init__(self, index):
        from ..quantization import _osq_kernels as K

        if K.STATUS_SURE != STATUS_SURE:
            raise RuntimeError("OSQ status codes changed; update serverless/osq_backend.py")
        self.index = index
        P = index.nparts
        order = np.lexsort((index.row_pos, index.row_part))
        bounds = np.searchsorted(index.row_part[order], np.arange(P + 1))
        # internal rows of each partition in position order: status[:, rows_of[p]] is the partition's status
        self.rows_of = [order[bounds[p]:bounds[p + 1]].astype(np.int64) for p in range(P)]

    def memory_bytes(self) -> int:
        return int(self.index.memory_bytes() + sum(r.nbytes for r in self.rows_of))

    def route(self, q, k, params, filter) -> dict[int, tuple[np.ndarray, dict]]:
        index = self.index
        params = {key: v for key, v in (params or {}).items()}
        unknown = set(params) - set(index.search_params)
        if unknown:
            raise InvalidArgument(f"unknown OSQ search parameter(s) {sorted(unknown)}; valid: {index.search_params}")
        if params.get("level2", "auto") not in ("auto", "bounds"):
            raise InvalidArgument(f"level2={params['level2']!r} is not served by processors, which read vector rows "
                                  "on demand: use 'bounds' or 'auto'")
        lv = index.level0(q, k, params, filter=_expr(filter))
        nq, P = q.shape[0], index.nparts
        out: dict[int, tuple[np.ndarray, dict]] = {}
        for p in range(P):
            rows_p = self.rows_of[p]
            if rows_p.size == 0:
                continue
            if lv.plan == "exact":
                # exact plan: every partition with sure rows for a query scans them exactly
                has = (lv.status[:, rows_p] == STATUS_SURE).any(axis=1)
                qs = np.flatnonzero(has[lv.sidx])
            else:
                qs = np.flatnonzero(lv.visit[:, p])
            if qs.size == 0:
                continue
            used, sidx = np.unique(lv.sidx[qs], return_inverse=True)
            status = np.ascontiguousarray(lv.status[np.ix_(used, rows_p)])
            extra = {"qrot": np.ascontiguousarray(lv.qrot[qs]), "status": status, "sidx": sidx.astype(np.int64),
                     "plan": lv.plan, "per_query": ["qrot", "sidx"]}
            clusters = getattr(lv, "clusters", None)
            if clusters is not None and lv.plan != "exact":
                # the partition's inverted lists each query visits (level 0 chose them)
                extra["clusters"] = np.ascontiguousarray(clusters[qs, p], dtype=bool)
                extra["per_query"].append("clusters")
            out[p] = (qs.astype(np.int64), extra)
        return out


def _unbound_rows(positions):
    raise RuntimeError("a cached OSQ partition must be bound to an invocation's reader before it reads vectors")


class CachedPartition:
    """What a container keeps of a partition: everything but the vectors, plus the vectors object's ``.npy``
    header (so reading rows later needs no further request)."""

    def __init__(self, part, vectors_key: str, vectors_header):
        self.part = part
        self.vectors_key = vectors_key
        self.vectors_header = vectors_header

    def memory_bytes(self) -> int:
        from ..index.osq_columns import col_nbytes

        p = self.part
        return int(sum(a.nbytes for a in p.arrays()) + sum(col_nbytes(c) for c in p.columns.values()) + 4096)


class OSQProcessor:
    """Levels 1-3 (or the exact scan) over one partition, for one invocation: the cached partition, reading its
    vectors' rows through this invocation's reader (counted in its metrics, blocks kept in the container cache)."""

    def __init__(self, part):
        self.part = part

    def search(self, q, k, params, filter, extra):
        try:
            qrot = np.ascontiguousarray(extra["qrot"], dtype=np.float32)
            status = np.ascontiguousarray(extra["status"], dtype=np.uint8)
            sidx = np.asarray(extra["sidx"], dtype=np.int64)
            plan = extra["plan"]
        except KeyError as exc:
            raise InvalidArgument(f"OSQ processor payload lacks {exc}") from None
        part = self.part
        if status.ndim != 2 or status.shape[1] != part.size or sidx.shape != (qrot.shape[0],) or \
                (sidx.size and (sidx.min() < 0 or sidx.max() >= status.shape[0])):
            raise InvalidArgument(f"partition {part.number}: status {status.shape} / sidx {sidx.shape} do not match "
                                  f"{part.size} rows and {qrot.shape[0]} queries")
        if plan == "exact":
            D, I = empty_result(qrot.shape[0], k)
            metric = "l2" if part.metric == "l2" else "ip"
            for s in range(status.shape[0]):
                qs = np.flatnonzero(sidx == s)
                pos = np.flatnonzero(status[s] == STATUS_SURE)
                if qs.size and pos.size:
                    D[qs], I[qs] = exact_search(qrot[qs], part.vectors_at(pos), k, metric, labels=part.ids[pos])
            return D, I
        kw = {}
        if "clusters" in extra:
            clusters = np.asarray(extra["clusters"], dtype=bool)
            if clusters.shape[0] != qrot.shape[0]:
                raise InvalidArgument(f"partition {part.number}: clusters {clusters.shape} for {qrot.shape[0]} queries")
            kw["clusters"] = clusters
        D, I, _stats = part.search(qrot, status, k, params, expr=_expr(filter), sidx=sidx, **kw)
        return D, I


class OSQBackend:
    """Serverless layout and roles for :class:`~shoal.index.osq.OSQIndex`."""

    @staticmethod
    def publish(store, index) -> dict:
        """Write a built OSQ index as a new version and move the manifest pointer to it."""
        from ..index.osq import OSQIndex

        if not isinstance(index, OSQIndex) or not index.is_trained:
            raise InvalidArgument("publish needs a trained OSQIndex")
        version = new_version()
        index.save(store, f"versions/{version}/osq")
        manifest = {"version": version, "kind": "osq", "d": index.d, "metric": index.metric,
                    "n_partitions": index.nparts, "ntotal": index.ntotal,
                    "partition_counts": [int(p.size) for p in index.parts], "factory": index.factory_string()}
        write_manifest(store, manifest)
        return manifest

    @staticmethod
    def router(reader: Reader, manifest: dict) -> OSQRouter:
        from ..index.osq import OSQIndex

        def load():
            prefix = reader.key("osq")
            store = _prefetch(reader, prefix, OSQIndex.level0_array_names)
            index = OSQIndex.load_level0(store, prefix)
            # exact numeric values are read on demand (maybe rows at level 0) from the store itself, not from the
            # prefetched blobs, which must not stay referenced by the cached router
            index._source = (reader.store.store, prefix)
            return OSQRouter(index)
        return reader.cached("router", load)

    @staticmethod
    def partition(reader: Reader, manifest: dict, p: int) -> OSQProcessor:
        """Partition ``p`` for this invocation. A cold load fetches the partition's codes, ids, clusters and exact
        attributes whole (every query that visits the partition reads them) and only the header of its vectors;
        level 3 and the exact plan read vector rows with ranged GETs (:class:`RemoteRows`)."""
        from ..index.osq import OSQIndex
        from ..index.persist import npy_header

        prefix = reader.key("osq")
        vectors_key = f"{prefix}/{OSQIndex.partition_vectors_name(p)}.npy"

        def load():
            store = _prefetch(reader, prefix, lambda names: OSQIndex.partition_array_names(names, p, attrs=True,
                                                                                           vectors=False))
            part = OSQIndex.load_partition(store, prefix, p, attrs=True, fetch_rows=_unbound_rows)
            return CachedPartition(part, vectors_key, npy_header(reader.store, vectors_key))
        cached = reader.cached(f"p{p}", load)
        rows = RemoteRows(reader, cached.vectors_key, cached.vectors_header)
        # a shallow copy bound to this invocation: the cached partition is shared by concurrent invocations
        part = copy.copy(cached.part)
        part.fetch_rows = rows.take
        return OSQProcessor(part)


def _prefetch(reader: Reader, prefix: str, wanted) -> PrefetchedStore:
    """The objects of ``prefix`` whose array names ``wanted(names)`` returns (the loader's own choice, so nothing
    is fetched that it will not read), fetched concurrently, plus ``meta.json``."""
    import json

    meta_key = f"{prefix}/meta.json"
    blob = reader.store.get(meta_key)
    keys = [f"{prefix}/{n}.npy" for n in wanted(json.loads(blob).get("arrays", []))]
    return PrefetchedStore(reader.store, keys, preloaded={meta_key: blob})
