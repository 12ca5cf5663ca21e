"""Container data retention: a module-level LRU of loaded index data that survives between warm invocations.

A Lambda container keeps its module globals between invocations; the handler keeps loaded arrays here, keyed by
``(store URI, object version, name)``. Index data under a version is immutable (a rebuild writes a new version), so a
hit never serves stale data and a rebuild never mixes versions. The cache is bounded in bytes and evicts least
recently used entries; each invocation reads through a :class:`Reader` that counts its own hits (warm), misses (cold)
and bytes fetched, which the handler reports in the response metrics.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

from .. import config
from ..errors import InvalidArgument
from ..index.persist import read_npy_rows


def default_capacity() -> int:
    """Bytes the cache may hold: ``$SHOAL_CACHE_MB``, else half the Lambda memory size, else 1 GiB."""
    mb = config.cache_mb()
    if mb is not None:
        return int(mb * (1 << 20))
    if os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"):
        return int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) * (1 << 20) // 2
    return 1 << 30


def nbytes_of(value: Any) -> int:
    """Honest size of a cached value: arrays by ``nbytes``, containers recursively, objects by their arrays."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values()) + 64 * len(value)
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value) + 8 * len(value)
    if hasattr(value, "memory_bytes"):
        return int(value.memory_bytes())
    return 64


class LRUCache:
    """A thread-safe LRU bounded in bytes. An entry larger than the whole capacity is returned but not kept."""

    def __init__(self, capacity_bytes: int):
        if capacity_bytes < 0:
            raise InvalidArgument("cache capacity must be >= 0 bytes")
        self.capacity = int(capacity_bytes)
        self._data: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data

    def get_or_load(self, key: tuple, loader: Callable[[], Any]) -> tuple[Any, bool]:
        """Return ``(value, hit)``; on a miss, call ``loader()`` once (concurrent callers for a key wait for it)."""
        with self._lock:
            entry = self._hit(key)
            if entry is not None:
                return entry[0], True
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                entry = self._hit(key)
                if entry is not None:
                    return entry[0], True
            value = loader()
            size = nbytes_of(value)
            with self._lock:
                self.misses += 1
                self._loading.pop(key, None)
                if size <= self.capacity:
                    self._data[key] = (value, size)
                    self.used += size
                    while self.used > self.capacity:
                        _k, (_v, s) = self._data.popitem(last=False)
                        self.used -= s
                        self.evictions += 1
            return value, False

    def _hit(self, key: tuple):
        """The ``(value, size)`` entry of ``key``, made most recent and counted as a hit, or None (lock held)."""
        entry = self._data.get(key)
        if entry is not None:
            self._data.move_to_end(key)
            self.hits += 1
        return entry

    def peek(self, key: tuple):
        """The cached value of ``key`` (counted as a hit and made most recent), or None; never loads."""
        with self._lock:
            entry = self._hit(key)
        return None if entry is None else entry[0]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.used = 0

    def stats(self) -> dict:
        return {"entries": len(self._data), "used_bytes": self.used, "capacity_bytes": self.capacity,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}


#: the container-wide cache (module global: survives between warm invocations)
CACHE = LRUCache(default_capacity())

_STORES: dict[str, Any] = {}
_STORES_LOCK = threading.Lock()


def store_for(uri):
    """One store (and so one boto3 client, which is thread-safe) per URI per container: creating a client costs
    ~0.1 s, too much to pay per invocation. Passing a store object registers it under its URI (so a caller's
    configured store, e.g. with an endpoint, is the one used for spills)."""
    if not isinstance(uri, str):
        with _STORES_LOCK:
            _STORES[uri.uri] = uri
        return uri
    with _STORES_LOCK:
        store = _STORES.get(uri)
        if store is None:
            from ..storage import open_store

            store = _STORES[uri] = open_store(uri)
        return store


class CountingStore:
    """Wraps an object store and counts the bytes and requests of every read."""

    def __init__(self, store):
        self.store = store
        self.uri = store.uri
        self.bytes_fetched = 0
        self.requests = 0
        self._lock = threading.Lock()

    def _count(self, data: bytes) -> bytes:
        with self._lock:
            self.bytes_fetched += len(data)
            self.requests += 1
        return data

    def get(self, key):
        return self._count(self.store.get(key))

    def get_range(self, key, start, end):
        return self._count(self.store.get_range(key, start, end))

    def local_path(self, key):
        return None  # force reads through get/get_range so every byte is counted

    def __getattr__(self, name):
        return getattr(self.store, name)


class PrefetchedStore:
    """A read-only view of ``base`` that serves the given keys from memory, fetched concurrently up front.

    A cold container loading a partition reads a few dozen small objects; one after another that is a few dozen S3
    round trips, in parallel it is about one.
    """

    def __init__(self, base, keys, *, threads: int = 16, preloaded: dict | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.base = base
        self.uri = base.uri
        self.blobs = dict(preloaded or {})
        keys = [key for key in dict.fromkeys(keys) if key not in self.blobs]
        if keys:
            with ThreadPoolExecutor(max_workers=max(1, min(threads, len(keys)))) as pool:
                self.blobs.update(zip(keys, pool.map(base.get, keys)))

    def get(self, key):
        blob = self.blobs.get(key)
        return blob if blob is not None else self.base.get(key)

    def get_range(self, key, start, end):
        blob = self.blobs.get(key)
        return blob[start:end] if blob is not None else self.base.get_range(key, start, end)

    def local_path(self, key):
        return None

    def __getattr__(self, name):
        return getattr(self.base, name)


class Reader:
    """Per-invocation view of an index version through the container cache.

    Parameters
    ----------
    store : ObjectStore
        Rooted at the index prefix.
    version : str
        The manifest version every key is read under (``versions/{version}/...``).
    cache : LRUCache, optional
        Defaults to the container-wide :data:`CACHE`.
    """

    def __init__(self, store, version: str, cache: LRUCache | None = None):
        self.store = CountingStore(store)
        self.version = version
        self.cache = CACHE if cache is None else cache
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    @property
    def base(self) -> str:
        return f"versions/{self.version}"

    def key(self, name: str) -> str:
        return f"{self.base}/{name}"

    def cached(self, name: str, loader: Callable[[], Any]) -> Any:
        """Value cached under ``(store URI, version, name)``; ``loader()`` reads through ``self.store``."""
        value, hit = self.cache.get_or_load((self.store.uri, self.version, name), loader)
        with self._lock:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        return value

    def peek(self, name: str) -> Any:
        """The value cached under ``name`` or None (a hit is counted; nothing is loaded)."""
        value = self.cache.peek((self.store.uri, self.version, name))
        if value is not None:
            with self._lock:
                self.hits += 1
        return value

    def note_misses(self, n: int) -> None:
        """Count ``n`` reads of data kept outside the cache's entries (e.g. a cached partition filled in place)."""
        with self._lock:
            self.misses += int(n)

    def metrics(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "bytes_fetched": self.store.bytes_fetched,
                "get_requests": self.store.requests}


def row_read_settings() -> tuple[int, int]:
    """``(block_bytes, max_gap_bytes)`` of :class:`RemoteRows`: ``$SHOAL_ROW_BLOCK_KB`` (default 16) and
    ``$SHOAL_ROW_GAP_KB`` (default 256) KiB."""
    return int(config.row_block_kb() * 1024), int(config.row_gap_kb() * 1024)


class RemoteRows:
    """Rows of a saved ``.npy`` array (axis 0) read on demand with ranged GETs, in fixed blocks kept in the cache.

    A processor re-ranks a few hundred candidates per query out of a partition of up to millions of rows: fetching
    the whole float32 vector object (most of a partition's bytes) for that is the cold start's main cost. Rows are
    grouped in blocks of about ``block_bytes`` (the partition's positions are ordered by cluster, so one query's
    candidates share blocks); missing blocks close to each other are read with one ranged GET (a big batch that
    needs most blocks reads the object in a few large GETs), runs in parallel, and each block is a cache entry of
    its own (bounded and evicted like the rest), so a warm container fetches nothing for blocks it has already read.

    Parameters
    ----------
    reader : Reader
        The invocation's reader (its store counts the bytes, its cache keeps the blocks).
    key : str
        The ``.npy`` object, relative to the reader's store.
    header : (dtype, shape, data_offset)
        From :func:`shoal.index.persist.npy_header` (read once and cached with the partition).
    block_bytes, max_gap_bytes : int, optional
        Block size, and the most unneeded bytes read to join two runs of missing blocks into one GET (on S3 a
        request waits ~20 ms for its first byte, in which ~1.6 MB would stream). Defaults: :func:`row_read_settings`.
    """

    MAX_GET_BYTES = 8 << 20  # one ranged GET reads at most this much (parallel GETs beat one huge one)

    def __init__(self, reader: Reader, key: str, header, *, block_bytes: int | None = None,
                 max_gap_bytes: int | None = None, threads: int = 16):
        self.reader = reader
        self.key = key
        self.header = (np.dtype(header[0]), tuple(header[1]), int(header[2]))
        self.dtype, self.shape = self.header[0], self.header[1]
        self.n = int(self.shape[0])
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        block, gap = row_read_settings()
        block = block if block_bytes is None else int(block_bytes)
        self.max_gap_bytes = gap if max_gap_bytes is None else int(max_gap_bytes)
        if block <= 0 or self.max_gap_bytes < 0:
            raise InvalidArgument(f"row reads need a block > 0 and a gap >= 0 bytes, got {block}, {self.max_gap_bytes}")
        self.block_rows = max(1, block // max(1, self.row_bytes))
        self.threads = threads

    def _name(self, b: int) -> str:
        return f"{self.key}@{self.block_rows}:{b}"

    def _fetch_run(self, lo: int, hi: int) -> list[tuple[int, np.ndarray]]:
        """Blocks ``lo..hi-1`` with one ranged GET."""
        rows = read_npy_rows(self.reader.store, self.key, lo * self.block_rows, hi * self.block_rows, self.header)
        return [(b, rows[(b - lo) * self.block_rows:(b - lo + 1) * self.block_rows].copy()) for b in range(lo, hi)]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (int64 (m,), each in ``[0, n)``) as an array of shape ``(m, *shape[1:])``."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((rows.size, *self.shape[1:]), dtype=self.dtype)
        if rows.size == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.n:
            raise InvalidArgument(f"{self.key}: rows must be in 0..{self.n - 1}")
        blk = rows // self.block_rows
        need = np.unique(blk).tolist()
        blocks = {b: self.reader.peek(self._name(b)) for b in need}
        missing = [b for b in need if blocks[b] is None]
        if missing:
            block_bytes = self.block_rows * self.row_bytes
            per_get = max(1, self.MAX_GET_BYTES // block_bytes)
            # a short gap between two missing blocks is read along (and cached) rather than paying another request
            max_gap = self.max_gap_bytes // block_bytes
            runs = []
            lo = prev = missing[0]
            for b in missing[1:] + [None]:
                if b is None or b - prev - 1 > max_gap or b + 1 - lo > per_get:
                    runs.append((lo, prev + 1))
                    lo = b
                prev = b
            if len(runs) == 1:
                fetched = [self._fetch_run(*runs[0])]
            else:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=min(self.threads, len(runs))) as pool:
                    fetched = list(pool.map(lambda run: self._fetch_run(*run), runs))
            for got in fetched:
                for b, arr in got:
                    value = self.reader.cached(self._name(b), lambda arr=arr: arr)
                    if b in blocks:
                        blocks[b] = value
        order = np.argsort(blk, kind="stable")
        sorted_blk = blk[order]
        bounds = np.searchsorted(sorted_blk, need + [need[-1] + 1])
        for i, b in enumerate(need):
            sel = order[bounds[i]:bounds[i + 1]]
            out[sel] = blocks[b][rows[sel] - b * self.block_rows]
        return out
