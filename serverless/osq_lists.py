"""An OSQ partition's codes by inverted list: a cluster-major object that processors read with ranged GETs.

``OSQIndex.save`` writes a partition's codes segment-major (one object per segment of packed codes, then the sign codes
and the user ids), the layout levels 1-2 stream; a processor that reads them whole fetches the codes of every cluster
although a batch visits few of them (one GloVe-50 query visits ~16 of the index's ~900 clusters). At publish, each
partition's codes are also written cluster-major to ``versions/V/lists/pNNNN.bin``: cluster ``c``'s record holds its
rows' packed codes (segment-major inside the record), sign codes and user ids, 8-byte aligned, records in cluster
order. A processor reads the records of the clusters its batch visits (level 0 names them), neighbours joined into one
ranged GET, into full-size arrays that it fills cluster by cluster and keeps in the container cache; levels 1-3 only
ever touch the rows of visited clusters.

Beside it, ``lists/pNNNN.head.npz`` (compressed) holds what the processor needs before any record: the clusters'
sizes (from which record offsets follow), the codebook (its cell tables are mostly padding and compress to a tenth),
the partition's centroids and the header of its vectors object, so a cold processor starts with one small GET
instead of a dozen whole arrays.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import FailedPrecondition

FORMAT = 1
#: two runs of missing records closer than this are read with one GET (a request costs ~20 ms to its first byte on
#: S3, but joining far-apart clusters would read the codes of clusters no query visits: the bytes this layout saves)
LIST_GAP_BYTES = 16 << 10
#: one ranged GET reads at most this much (parallel GETs beat one huge one)
MAX_GET_BYTES = 8 << 20


def lists_key(p: int) -> str:
    """The object of partition ``p``'s records, relative to the version's prefix."""
    return f"lists/p{p:04d}.bin"


def head_key(p: int) -> str:
    """The object of partition ``p``'s head (:func:`pack_head`), relative to the version's prefix."""
    return f"lists/p{p:04d}.head.npz"


def pack_head(part, vectors_header) -> bytes:
    """Partition ``part``'s head: format, sizes, ``indptr`` (int64 (C + 1,), rows per cluster), ``order`` (the
    positions in cluster order, only when they are not already: OSQ keeps them so), the codebook's arrays
    (``book_*``), ``centroids`` and the vectors object's ``.npy`` header (``vectors_dtype``, ``vectors_shape``,
    ``vectors_offset``)."""
    dtype, shape, offset = vectors_header
    arrays = {"format": np.array([FORMAT]), "size": np.array([part.size]), "nseg": np.array([part.segs.shape[0]]),
              "indptr": part.list_indptr.astype(np.int64), "centroids": part.centroids,
              "vectors_dtype": np.array(np.dtype(dtype).str), "vectors_shape": np.array(shape, dtype=np.int64),
              "vectors_offset": np.array([offset])}
    if not part.contiguous:
        arrays["order"] = part.list_rows.astype(np.int64)
    arrays.update({f"book_{k}": v for k, v in part.book.arrays().items()})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_head(blob: bytes, key: str) -> dict:
    """Inverse of :func:`pack_head`: ``{"size", "nseg", "indptr", "cluster" (int32 (n,), each position's cluster),
    "centroids", "book" (arrays), "vectors_header"}``."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    if int(a["format"][0]) != FORMAT:
        raise FailedPrecondition(f"{key}: cluster-major codes of format {int(a['format'][0])} are not supported "
                                 f"(expected {FORMAT})")
    indptr = a["indptr"]
    counts = np.diff(indptr)
    cluster = np.repeat(np.arange(counts.size, dtype=np.int32), counts)
    if "order" in a:
        placed = np.empty_like(cluster)
        placed[a["order"]] = cluster
        cluster = placed
    return {"size": int(a["size"][0]), "nseg": int(a["nseg"][0]), "indptr": indptr, "cluster": cluster,
            "centroids": a["centroids"], "book": {k[5:]: v for k, v in a.items() if k.startswith("book_")},
            "vectors_header": (np.dtype(str(a["vectors_dtype"])), tuple(int(v) for v in a["vectors_shape"]),
                               int(a["vectors_offset"][0]))}


def _pad8(n: np.ndarray) -> np.ndarray:
    return (n + 7) // 8 * 8


def record_sizes(counts: np.ndarray, nseg: int, nwords: int) -> np.ndarray:
    """Bytes of each cluster's record, int64 (C,), for clusters of ``counts`` rows: packed codes (``nseg`` bytes a
    row, padded to 8), sign codes (``8 nwords``) and ids (8)."""
    counts = np.asarray(counts, dtype=np.int64)
    return _pad8(nseg * counts) + (8 * nwords + 8) * counts


def pack(part) -> bytes:
    """Partition ``part``'s (an :class:`~shoal.index.osq_partition.OSQPartition` in memory) records, cluster-major."""
    nseg = int(part.segs.shape[0])
    counts = np.diff(part.list_indptr)
    out = bytearray(int(record_sizes(counts, nseg, part.book.nwords).sum()))
    at = 0
    for c in range(part.nclusters):
        pos = part.list_rows[part.list_indptr[c]:part.list_indptr[c + 1]]
        m = int(pos.size)
        if m == 0:
            continue
        for arr, pad in ((np.ascontiguousarray(part.segs[:, pos]), True),
                         (np.ascontiguousarray(part.binary[pos], dtype=np.uint64), False),
                         (np.ascontiguousarray(part.ids[pos], dtype=np.int64), False)):
            raw = arr.tobytes()
            out[at:at + len(raw)] = raw
            at += int(_pad8(np.int64(len(raw)))) if pad else len(raw)
    assert at == len(out)
    return bytes(out)


class ClusterLists:
    """Reads a partition's records by cluster into ``part``'s own ``segs``, ``binary`` and ``ids`` (full-size arrays,
    filled as clusters are read; rows of unread clusters hold zeros and id -1, and are never searched).

    Parameters
    ----------
    key : str
        The records' object, relative to an invocation reader's store.
    part : OSQPartition
        The cached partition whose code arrays are filled (shared by the invocations of a container).
    """

    def __init__(self, key: str, part):
        self.key = key
        self.part = part
        counts = np.diff(part.list_indptr)
        self.sizes = record_sizes(counts, int(part.segs.shape[0]), int(part.binary.shape[1]))
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.loaded = counts == 0
        self._lock = threading.Lock()  # one reader at a time per partition: a container serves one invocation

    def missing(self, clusters) -> np.ndarray:
        """Of ``clusters`` (int array of cluster numbers, or bool (C,)), those not read yet, sorted."""
        c = np.asarray(clusters)
        c = np.flatnonzero(c) if c.dtype == bool else np.unique(c.astype(np.int64))
        return c[~self.loaded[c]]

    def runs(self, missing: np.ndarray) -> list[tuple[int, int]]:
        """Clusters ``missing`` (sorted) grouped into ranged GETs ``[c0, c1)``: neighbours whose records are less
        than :data:`LIST_GAP_BYTES` apart share one (the records between are read along), up to
        :data:`MAX_GET_BYTES`."""
        runs: list[tuple[int, int]] = []
        for c in missing.tolist():
            if runs:
                c0, c1 = runs[-1]
                if self.offsets[c] - self.offsets[c1] <= LIST_GAP_BYTES and \
                        self.offsets[c + 1] - self.offsets[c0] <= MAX_GET_BYTES:
                    runs[-1] = (c0, c + 1)
                    continue
            runs.append((c, c + 1))
        return runs

    def ensure(self, reader, clusters, threads: int = 16) -> int:
        """Read the records of ``clusters`` not read yet (through ``reader``'s store, which counts the bytes);
        returns the number of ranged GETs."""
        with self._lock:
            missing = self.missing(clusters)
            if missing.size == 0:
                return 0
            runs = self.runs(missing)

            def fetch(run):
                c0, c1 = run
                return run, reader.store.get_range(self.key, int(self.offsets[c0]), int(self.offsets[c1]))
            if len(runs) == 1:
                got = [fetch(runs[0])]
            else:
                with ThreadPoolExecutor(max_workers=min(threads, len(runs))) as pool:
                    got = list(pool.map(fetch, runs))
            for (c0, c1), blob in got:
                if len(blob) != self.offsets[c1] - self.offsets[c0]:
                    raise RuntimeError(f"{self.key}: clusters {c0}..{c1 - 1} read {len(blob)} bytes, expected "
                                       f"{self.offsets[c1] - self.offsets[c0]}")
                for c in range(c0, c1):
                    if not self.loaded[c]:
                        self._fill(c, memoryview(blob)[self.offsets[c] - self.offsets[c0]:
                                                       self.offsets[c + 1] - self.offsets[c0]])
            reader.note_misses(len(runs))  # data the container did not hold yet: a cold read, as a cache miss
            return len(runs)

    def _fill(self, c: int, rec) -> None:
        part = self.part
        lo, hi = int(part.list_indptr[c]), int(part.list_indptr[c + 1])
        pos = slice(lo, hi) if part.contiguous else part.list_rows[lo:hi]
        m = hi - lo
        nseg, nwords = part.segs.shape[0], part.binary.shape[1]
        a = int(_pad8(np.int64(nseg * m)))
        b = a + 8 * nwords * m
        part.segs[:, pos] = np.frombuffer(rec[:nseg * m], dtype=np.uint8).reshape(nseg, m)
        part.binary[pos] = np.frombuffer(rec[a:b], dtype=np.uint64).reshape(m, nwords)
        part.ids[pos] = np.frombuffer(rec[b:b + 8 * m], dtype=np.int64)
        self.loaded[c] = True
