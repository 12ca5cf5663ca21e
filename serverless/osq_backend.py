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

from ..errors import FailedPrecondition, InvalidArgument
from ..index.flat import exact_search
from ..index.topk import empty_result
from .cache import PrefetchedStore, Reader, RemoteRows
from .manifest import new_version, write_manifest
from .osq_lists import FORMAT as LISTS_FORMAT, ClusterLists, head_key, lists_key, load_head, pack, pack_head

STATUS_SURE, STATUS_MAYBE = 1, 2  # quantization/_osq_kernels.STATUS_* (checked when a router is made)


def _expr(filter):
    if filter is None:
        return None
    from ..index.osq_columns import as_expr

    return as_expr(filter)


class OSQRouter:
    """Level 0 over a level-0-only :class:`OSQIndex`."""

    def __init__(self, index):
        from ..quantization import _osq_kernels as K

        if (K.STATUS_SURE, K.STATUS_MAYBE) != (STATUS_SURE, STATUS_MAYBE):
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
        params = dict(params or {})
        OSQBackend.check_params({}, params)
        expr = _expr(filter)
        lv = index.level0(q, k, params, filter=expr)
        nq, P = q.shape[0], index.nparts
        out: dict[int, tuple[np.ndarray, dict]] = {}
        # OSQIndex.search's rule, for the same candidates: under a filter that passes at most half the live rows,
        # level 1 keeps every candidate (sign codes rank the far-away passing rows poorly)
        keep_all = expr is not None and not float(params.get("keep_frac", 0.0)) and \
            float((lv.sure + lv.maybe).max()) <= 0.5 * max(1, int(np.count_nonzero(~index.deleted)))
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
            if keep_all:
                extra["keep_frac"] = 1.0
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
    header (so reading rows later needs no further request). With ``lists`` (a version published with cluster-major
    codes) the code arrays are full size but filled by cluster as batches visit them, and the exact attributes are
    read (whole, once) only when a batch has maybe rows to re-check."""

    def __init__(self, part, vectors_key: str, vectors_header, lists: ClusterLists | None = None):
        self.part = part
        self.vectors_key = vectors_key
        self.vectors_header = vectors_header
        self.lists = lists

    def memory_bytes(self) -> int:
        from ..index.osq_columns import col_nbytes

        p = self.part
        return int(sum(a.nbytes for a in p.arrays()) + sum(col_nbytes(c) for c in p.columns.values()) + 4096)


class _Columns:
    """A partition's exact attribute columns as a cache entry (sized honestly)."""

    def __init__(self, columns: dict):
        self.columns = columns

    def memory_bytes(self) -> int:
        from ..index.osq_columns import col_nbytes

        return int(sum(col_nbytes(c) for c in self.columns.values()) + 256)


class OSQProcessor:
    """Levels 1-3 (or the exact scan) over one partition, for one invocation: the cached partition, reading its
    vectors' rows through this invocation's reader (counted in its metrics, blocks kept in the container cache), and
    with cluster-major codes the records of the clusters the batch visits (:meth:`ClusterLists.ensure`)."""

    def __init__(self, part, cached: CachedPartition | None = None, reader: Reader | None = None,
                 prefix: str = ""):
        self.part = part
        self.cached = cached
        self.reader = reader
        self.prefix = prefix

    def _read_clusters(self, clusters) -> None:
        if self.cached is not None and self.cached.lists is not None:
            self.cached.lists.ensure(self.reader, clusters)

    def _read_attributes(self, status: np.ndarray, clusters: np.ndarray | None, expr) -> None:
        """Give this invocation's partition its exact attribute columns when rows of the clusters it visits are maybe
        rows (level 3 re-checks maybe survivors exactly); read once per container."""
        cached, part = self.cached, self.part
        if expr is None or cached is None or cached.lists is None or part.columns:
            return
        maybe = (status == STATUS_MAYBE).any(axis=0)
        if clusters is not None:
            maybe &= clusters.any(axis=0)[part.cluster]
        if not maybe.any():
            return
        from ..index.osq import OSQIndex
        from ..index.osq_columns import column_from_arrays
        from ..index.persist import load_arrays

        p, prefix, reader = part.number, self.prefix, self.reader

        pre = f"p{p:04d}/"

        def wanted(names):
            return [n for n in OSQIndex.partition_array_names(names, p, attrs=True, vectors=False)
                    if n.startswith(pre + "attr/")]

        def load():
            store = _prefetch(reader, prefix, wanted)
            _, a = load_arrays(store, prefix, kind=OSQIndex.kind, names=wanted(store.meta["arrays"]))
            a = {n[len(pre):]: v for n, v in a.items()}
            return _Columns({name: column_from_arrays(f"attr/{name}", entry, a)
                             for name, entry in store.meta.get("attributes", {}).items()})
        part.columns = reader.cached(f"p{p}/attrs", load).columns

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
            groups = [(np.flatnonzero(sidx == s), np.flatnonzero(status[s] == STATUS_SURE))
                      for s in range(status.shape[0])]
            used = [pos for qs, pos in groups if qs.size and pos.size]
            if used:
                self._read_clusters(part.cluster[np.concatenate(used)])
            for qs, pos in groups:
                if qs.size and pos.size:
                    D[qs], I[qs] = exact_search(qrot[qs], part.vectors_at(pos), k, metric, labels=part.ids[pos])
            return D, I
        clusters = None
        if "clusters" in extra:
            clusters = np.asarray(extra["clusters"], dtype=bool)
            if clusters.shape != (qrot.shape[0], part.nclusters):
                raise InvalidArgument(f"partition {part.number}: clusters {clusters.shape} for {qrot.shape[0]} queries "
                                      f"and {part.nclusters} clusters")
        self._read_clusters(np.ones(part.nclusters, bool) if clusters is None else clusters.any(axis=0))
        expr = _expr(filter)
        self._read_attributes(status, clusters, expr)
        if "keep_frac" in extra:  # level 0's choice for this batch (see OSQRouter.route)
            params = dict(params or {}, keep_frac=float(extra["keep_frac"]))
        D, I, _stats = part.search(qrot, status, k, params, expr=expr, sidx=sidx, clusters=clusters)
        return D, I


class OSQBackend:
    """Serverless layout and roles for :class:`~shoal.index.osq.OSQIndex`."""

    @staticmethod
    def publish(store, index, *, schema: dict | None = None, lists: bool = True) -> dict:
        """Write a built OSQ index as a new version and move the manifest pointer to it.

        ``schema`` (``{attribute: type}``, default: the index's attribute kinds) goes into the manifest: the
        coordinator type-checks filters against it before fan-out. ``lists`` also writes each partition's codes
        cluster-major (:mod:`.osq_lists`), which processors read by the clusters a batch visits; without them (as
        versions published before) processors read a partition's codes whole.
        """
        from ..filters.check import check_schema
        from ..index.osq import OSQIndex

        if not isinstance(index, OSQIndex) or not index.is_trained:
            raise InvalidArgument("publish needs a trained OSQIndex")
        schema = dict(index.kinds if schema is None else schema)
        check_schema(schema)
        version = new_version()
        index.save(store, f"versions/{version}/osq")
        manifest = {"version": version, "kind": "osq", "d": index.d, "metric": index.metric,
                    "n_partitions": index.nparts, "ntotal": index.ntotal,
                    "partition_counts": [int(p.size) for p in index.parts], "factory": index.factory_string(),
                    "schema": schema}
        if lists:
            from ..index.persist import npy_header

            for p, part in enumerate(index.parts):
                vectors = f"versions/{version}/osq/{OSQIndex.partition_vectors_name(p)}.npy"
                store.put(f"versions/{version}/{lists_key(p)}", pack(part))
                store.put(f"versions/{version}/{head_key(p)}", pack_head(part, npy_header(store, vectors)))
            manifest["lists"] = {"format": LISTS_FORMAT}
        write_manifest(store, manifest)
        return manifest

    @staticmethod
    def filter_schema(reader: Reader, manifest: dict) -> dict:
        """The manifest's schema; for a version published before manifests carried one, the attribute kinds the
        saved index lists."""
        if "schema" in manifest:
            return manifest["schema"]
        from ..index.persist import load_meta

        def load():
            meta = load_meta(reader.store, reader.key("osq"))
            return {name: entry["kind"] for name, entry in meta.get("attributes", {}).items()}
        return reader.cached("schema", load)

    @staticmethod
    def check_params(manifest: dict, params: dict) -> None:
        from ..index.osq import OSQIndex

        unknown = set(params) - set(OSQIndex.search_params)
        if unknown:
            raise InvalidArgument(f"unknown OSQ search parameter(s) {sorted(unknown)}; valid: "
                                  f"{OSQIndex.search_params}")
        if params.get("level2", "auto") not in ("auto", "bounds"):
            raise InvalidArgument(f"level2={params['level2']!r} is not served by processors, which read vector rows "
                                  "on demand: use 'bounds' or 'auto'")

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
        """Partition ``p`` for this invocation. A cold load fetches the partition's clusters, centroids and codebook
        and the header of its vectors; with cluster-major codes (``manifest["lists"]``) the codes and ids of the
        clusters each batch visits are then read by range (:class:`ClusterLists`) and the exact attributes only for
        batches with maybe rows to re-check; without them (versions published before) the codes, ids and attributes
        are read whole. Level 3 and the exact plan read vector rows with ranged GETs (:class:`RemoteRows`)."""
        from ..index.osq import OSQIndex
        from ..index.persist import npy_header

        prefix = reader.key("osq")
        vectors_key = f"{prefix}/{OSQIndex.partition_vectors_name(p)}.npy"

        def load():
            if manifest.get("lists"):
                if manifest["lists"].get("format") != LISTS_FORMAT:
                    raise FailedPrecondition(f"cluster-major codes of format {manifest['lists'].get('format')!r} "
                                             f"are not supported (expected {LISTS_FORMAT})")
                part, vectors_header = _load_head(reader, manifest, p)
                return CachedPartition(part, vectors_key, vectors_header,
                                       lists=ClusterLists(reader.key(lists_key(p)), part))
            store = _prefetch(reader, prefix, lambda names: OSQIndex.partition_array_names(names, p, attrs=True,
                                                                                           vectors=False))
            part = OSQIndex.load_partition(store, prefix, p, attrs=True, fetch_rows=_unbound_rows)
            return CachedPartition(part, vectors_key, npy_header(reader.store, vectors_key))
        cached = reader.cached(f"p{p}", load)
        rows = RemoteRows(reader, cached.vectors_key, cached.vectors_header)
        # a shallow copy bound to this invocation: the cached partition is shared by concurrent invocations
        part = copy.copy(cached.part)
        part.fetch_rows = rows.take
        return OSQProcessor(part, cached, reader, prefix)


def _load_head(reader: Reader, manifest: dict, p: int):
    """Partition ``p`` without its codes, from its head (one GET): code arrays allocated at full size for
    :class:`ClusterLists` to fill (unread rows: zero codes, id -1); and its vectors' ``.npy`` header."""
    from ..index.osq import OSQPartition
    from ..quantization.osq import OSQCodebook

    key = reader.key(head_key(p))
    h = load_head(reader.store.get(key), key)
    n, nseg = h["size"], h["nseg"]
    book = OSQCodebook.from_arrays(h["book"])
    part = OSQPartition(p, np.broadcast_to(np.int64(-1), (n,)), np.full(n, -1, dtype=np.int64), book,
                        np.zeros((nseg, n), dtype=np.uint8), np.zeros((n, book.nwords), dtype=np.uint64),
                        np.empty((0, int(manifest["d"])), dtype=np.float32), manifest["metric"], h["centroids"],
                        h["cluster"], None, {}, fetch_rows=_unbound_rows)
    return part, h["vectors_header"]


def _prefetch(reader: Reader, prefix: str, wanted) -> PrefetchedStore:
    """The objects of ``prefix`` whose array names ``wanted(names)`` returns (the loader's own choice, so nothing
    is fetched that it will not read), fetched concurrently, plus ``meta.json`` (parsed as ``.meta``)."""
    import json

    meta_key = f"{prefix}/meta.json"
    blob = reader.store.get(meta_key)
    meta = json.loads(blob)
    store = PrefetchedStore(reader.store, [f"{prefix}/{n}.npy" for n in wanted(meta.get("arrays", []))],
                            preloaded={meta_key: blob})
    store.meta = meta
    return store
