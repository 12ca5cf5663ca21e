"""Index builds (copy-on-write, readers never blocked) and snapshots (new generation, atomic MANIFEST switch)."""

from __future__ import annotations

import copy
import json
import time

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from ..index.factory import index_factory
from ..index.persist import save_arrays

#: rows per ``index.add`` call (progress granularity)
BUILD_CHUNK = 16_384
#: extend the current index in place of a rebuild while at most this fraction of its rows is deleted
EXTEND_MAX_DELETED = 0.25


class _MemoryStore:
    """A dict-backed store, used to copy an index through its own save/load when ``copy.deepcopy`` cannot."""

    uri = "memory://"

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def get(self, key):
        return self.objects[key]

    def get_range(self, key, start, end):
        return self.objects[key][start:end]

    def put(self, key, data):
        self.objects[key] = bytes(data)

    def list(self, prefix=""):
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key):
        self.objects.pop(key, None)

    def size(self, key):
        return len(self.objects[key])

    def exists(self, key):
        return key in self.objects

    def local_path(self, key):
        return None


def clone_index(index):
    """An independent copy of ``index`` (copy-on-write builds): deepcopy, else a save/load round trip in memory
    (kinds holding locks or other unpicklable state)."""
    try:
        return copy.deepcopy(index)
    except (TypeError, copy.Error, RecursionError):
        from ..index.factory import load_index

        store = _MemoryStore()
        index.save(store, "clone")
        return load_index(store, "clone")


def _extendable(index) -> bool:
    if index is None or not index.is_trained or index.ntotal == 0:
        return False
    return (index.ntotal - index.nlive) <= EXTEND_MAX_DELETED * index.ntotal


def run_build(col, job, train_kwargs, progress) -> None:
    """Build a new index for ``col`` and swap it in. Caller holds ``col._build_lock``.

    ``job.full`` rebuilds from every live record (training first); otherwise the current index is copied and the
    tail is added to the copy (falling back to a rebuild when the index cannot be extended).
    """
    rec = col.records
    with col._rw.read:
        n0 = rec.n
        old = col._index
        extend = not job.full and _extendable(old) and old.factory_string() == \
            index_factory(col.dim, job.spec, col.metric).factory_string()
        if extend:
            slots = rec.live_slots(col._boundary, n0)
            new = clone_index(old)
            base_row_slot = col._row_slot.copy()
        else:
            slots = rec.live_slots(0, n0)
            new = index_factory(col.dim, job.spec, col.metric)
            base_row_slot = np.zeros(0, np.int64)
        ids = rec.ids[slots].copy()
        x = rec.vectors[slots].copy()
        tenants = rec.tenant_csr(slots) if new.supports_tenants else None
        attrs = rec.attrs.columns(rows=slots, n=n0) if new.supports_filter else None
        # from here on, writers log index-level operations for replay on the new index
        col._oplog = []
    job.total = int(slots.size)
    base_rows = new.ntotal
    if not extend:
        job.stage = "train"
        if progress:
            progress(0, job.total, "train")
        if slots.size == 0 and not new.is_trained:
            raise FailedPrecondition(f"cannot train a {job.spec} index on an empty collection")
        try:
            new.train(x, **(train_kwargs or {}))
        except TypeError as exc:
            if train_kwargs:
                raise InvalidArgument(f"train_kwargs {sorted(train_kwargs)} not accepted by {job.spec}: {exc}") from exc
            raise
        if progress:
            progress(job.total, job.total, "train")
    job.stage = "add"
    for lo in range(0, max(1, slots.size), BUILD_CHUNK):
        hi = min(slots.size, lo + BUILD_CHUNK)
        if hi > lo:
            kw = {}
            if tenants is not None:
                ptr, tids = tenants
                kw["tenants"] = (ptr[lo:hi + 1] - ptr[lo], tids[ptr[lo]:ptr[hi]])
            if attrs is not None:
                kw["attrs"] = {name: _slice_column(c, lo, hi) for name, c in attrs.items()}
            new.add(x[lo:hi], ids[lo:hi], **kw)
        job.done = hi
        if progress:
            progress(hi, job.total, "add")
    # map the index's new rows back to slots through their ids (kinds may order rows as they like)
    new_rows = new.row_ids[base_rows:]
    if ids.size:
        order = np.argsort(ids, kind="stable")
        sorted_ids, sorted_slots = ids[order], slots[order]
        pos = np.clip(np.searchsorted(sorted_ids, new_rows), 0, ids.size - 1)
        mapped = np.where(sorted_ids[pos] == new_rows, sorted_slots[pos], -1).astype(np.int64)
    else:
        mapped = np.full(new_rows.shape, -1, np.int64)
    row_slot = np.concatenate([base_row_slot, mapped])
    job.stage = "swap"
    with col._rw.write:
        from .collection import _replay_one

        for op, op_ids, tid in col._oplog:
            _replay_one(new, op, op_ids, tid)
        col._oplog = None
        col._index = new
        col._row_slot = row_slot
        col._boundary = n0
    job.count = int(new.nlive)


def _slice_column(col, lo, hi):
    """Rows ``[lo, hi)`` of a :mod:`shoal.filters` column object."""
    return col.take(np.arange(lo, hi))


def write_snapshot(col) -> None:
    """Write live records (+ index) as a new generation, switch MANIFEST, empty the WAL, delete old generations.

    Caller holds ``col._build_lock`` and ``col._wlock`` (so no writer or build changes state meanwhile; readers go
    on). Records are compacted in memory at the same time.
    """
    rec = col.records
    lsn = col.wal.last_lsn
    keep = rec.live_slots()
    if keep.size != rec.n:
        new_rec = rec.compacted(keep)
        old_to_new = np.full(rec.n + 1, -1, np.int64)
        old_to_new[keep] = np.arange(keep.size)
        rs = col._row_slot
        row_slot = np.where(rs >= 0, old_to_new[np.where(rs >= 0, rs, rec.n)], -1)
        boundary = int(np.count_nonzero(rec.alive[:col._boundary]))
        with col._rw.write:
            col.records, col._row_slot, col._boundary = new_rec, row_slot, boundary
        rec = new_rec
    gen = col._generation + 1
    prefix = f"gen-{gen:08d}"
    meta, arrays = rec.to_arrays()
    meta["kind"] = "shoal.records"
    arrays["row_slot"] = col._row_slot
    save_arrays(col.store, f"{prefix}/records", meta, arrays)
    if col._index is not None:
        col._index.save(col.store, f"{prefix}/index")
    manifest = {
        "format_version": 1, "config": col.config, "generation": gen, "lsn": lsn, "snapshot": prefix,
        "has_index": col._index is not None, "boundary": col._boundary, "count": rec.nlive,
        "tenants": col.tenants.names, "tenants_active": col.tenants.active, "written_at": time.time(),
    }
    col.store.put("MANIFEST", json.dumps(manifest, indent=1).encode())
    col._generation = gen
    col._snap_lsn = lsn
    col.wal.reset(lsn)
    for key in col.store.list("gen-"):
        if not key.startswith(prefix + "/"):
            col.store.delete(key)
