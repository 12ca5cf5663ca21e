"""The engine's own copy of every record: slots holding id, vector, attributes and tenants.

Slots are append-only: an upsert of an existing id kills its old slot and appends a new one, so a slot's vector and
attributes never change after it is written (a background build can read them without copying under a lock). Slots
``< boundary`` (kept by the collection) are in the index; the rest are the tail. Compaction renumbers slots,
dropping dead ones.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .attributes import AttributeStore, grow
from .schema import Schema


#: tenant masks and filter masks kept per Records (each is n bytes)
MASK_CACHE = 16


class Records:
    """Growable columns over slots.

    Attributes
    ----------
    ids : int64 (cap,)
    vectors : float32 (cap, d)   original (un-normalised) vectors
    alive : bool (cap,)
    n : int                      slots in use
    slot_of : dict[int, int]     live user id -> slot
    slot_tenants : dict[int, set[int]]    slot -> tenant ids (only slots with tenants)
    tenant_slots : dict[int, set[int]]    tenant id -> live slots
    """

    def __init__(self, d: int, schema: Schema):
        self.d = d
        self.schema = schema
        self.ids = np.zeros(0, np.int64)
        self.vectors = np.zeros((0, d), np.float32)
        self.alive = np.zeros(0, bool)
        self.n = 0
        self.attrs = AttributeStore(schema)
        self.slot_of: dict[int, int] = {}
        self.slot_tenants: dict[int, set[int]] = {}
        self.tenant_slots: dict[int, set[int]] = {}
        # derived state for searches, dropped by the writes that change it (so a search never walks a Python set)
        self._members: dict[int, np.ndarray] = {}        # tenant -> sorted int64 live slots
        self._tmasks: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()   # tenant -> (n, bool mask)
        self._fmasks: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()   # filter text -> (n, bool mask)
        self._cache_lock = threading.Lock()  # concurrent readers fill these caches

    @property
    def nlive(self) -> int:
        return len(self.slot_of)

    def append(self, ids: np.ndarray, vectors: np.ndarray, batch: dict[str, Any],
               tenants: list[list[int]] | None) -> list[int]:
        """Write new slots for ``ids`` (replacing live ones). ``tenants`` gives each record's tenant ids; ``None``
        keeps the tenants of a replaced record. Returns the ids whose old slot was killed."""
        m = ids.shape[0]
        lo, hi = self.n, self.n + m
        self.ids = grow(self.ids, hi, -1)
        self.vectors = grow(self.vectors, hi, 0.0)
        self.alive = grow(self.alive, hi, False)
        self.ids[lo:hi] = ids
        self.vectors[lo:hi] = vectors
        self.alive[lo:hi] = True
        self.attrs.append(batch, m)
        replaced = []
        for j, uid in enumerate(ids.tolist()):
            old = self.slot_of.get(uid)
            slot = lo + j
            kept = None
            if old is not None:
                replaced.append(uid)
                kept = self._kill(old)
            self.slot_of[uid] = slot
            tids = kept if tenants is None else set(tenants[j])
            if tids:
                self.slot_tenants[slot] = set(tids)
                for t in tids:
                    self.tenant_slots.setdefault(t, set()).add(slot)
                self._touch(tids)
        self.n = hi
        return replaced

    def _kill(self, slot: int) -> set[int] | None:
        self.alive[slot] = False
        tids = self.slot_tenants.pop(slot, None)
        if tids:
            for t in tids:
                self.tenant_slots[t].discard(slot)
            self._touch(tids)
        return tids

    def _touch(self, tids) -> None:
        """Forget the derived membership of tenants whose members changed."""
        for t in tids:
            self._members.pop(t, None)
            self._tmasks.pop(t, None)

    def delete(self, ids: list[int]) -> list[int]:
        """Kill the slots of the live ``ids``; returns the ids that were live."""
        done = []
        for uid in ids:
            slot = self.slot_of.pop(uid, None)
            if slot is not None:
                self._kill(slot)
                done.append(uid)
        return done

    def grant(self, slots, tid: int) -> None:
        self._touch((tid,))
        members = self.tenant_slots.setdefault(tid, set())
        for s in slots:
            self.slot_tenants.setdefault(s, set()).add(tid)
            members.add(s)

    def revoke(self, slots, tid: int) -> None:
        self._touch((tid,))
        members = self.tenant_slots.get(tid, set())
        for s in slots:
            ts = self.slot_tenants.get(s)
            if ts is not None:
                ts.discard(tid)
                if not ts:
                    del self.slot_tenants[s]
            members.discard(s)

    def drop_tenant(self, tid: int) -> list[int]:
        """Revoke ``tid`` from every slot; returns the slots it had."""
        slots = sorted(self.tenant_slots.get(tid, ()))
        self.revoke(slots, tid)
        self.tenant_slots.pop(tid, None)
        return slots

    def tenant_count(self, tid: int) -> int:
        """Live records ``tid`` can see."""
        return len(self.tenant_slots.get(tid, ()))

    def tenant_members(self, tid: int) -> np.ndarray:
        """Sorted int64 live slots ``tid`` can see (built once after the writes that change them)."""
        arr = self._members.get(tid)
        if arr is None:
            members = self.tenant_slots.get(tid, ())
            arr = np.fromiter(members, dtype=np.int64, count=len(members))
            arr.sort()
            self._members[tid] = arr
        return arr

    def tenant_mask(self, tid: int, n: int | None = None) -> np.ndarray:
        """bool (n,): the slots ``tid`` can see (a few recent tenants' masks are kept until their members change)."""
        n = self.n if n is None else n
        hit = self._tmasks.get(tid)
        if hit is not None and hit[0] == n:
            return hit[1]
        mask = np.zeros(n, bool)
        members = self.tenant_members(tid)
        mask[members[:np.searchsorted(members, n)]] = True
        with self._cache_lock:
            self._tmasks[tid] = (n, mask)
            if len(self._tmasks) > MASK_CACHE:
                self._tmasks.popitem(last=False)
        return mask

    def filter_mask_range(self, expr, lo: int, hi: int) -> np.ndarray:
        """bool (hi - lo,): :meth:`filter_mask` over slots ``[lo, hi)`` only (from the cache when it covers them,
        else by evaluating just those slots: a tail scan need not evaluate the whole collection)."""
        from .. import filters

        hit = self._fmasks.get(str(expr))
        if hit is not None and hit[0] >= hi:
            return hit[1][lo:hi]
        rows = np.arange(lo, hi)
        return filters.evaluate(expr, self.attrs.columns(rows=rows, n=hi, names=sorted(filters.attributes(expr))),
                                rows.size)

    def filter_mask(self, expr, n: int | None = None) -> np.ndarray:
        """bool (n,): the slots whose attributes match ``expr`` (dead ones included: AND with ``alive``).

        Attributes of a slot never change, so a filter's mask over ``[0, m)`` stays valid as slots are added: it is
        kept for a few recent filters and extended by evaluating only the new slots.
        """
        from .. import filters

        n = self.n if n is None else n
        key = str(expr)
        hit = self._fmasks.get(key)
        if hit is not None and hit[0] == n:
            return hit[1]
        names = sorted(filters.attributes(expr))
        if hit is not None and hit[0] < n:
            rows = np.arange(hit[0], n)
            new = filters.evaluate(expr, self.attrs.columns(rows=rows, n=n, names=names), rows.size)
            mask = np.concatenate([hit[1], new])
        else:
            mask = filters.evaluate(expr, self.attrs.columns(n=n, names=names), n)
        with self._cache_lock:
            self._fmasks[key] = (n, mask)
            self._fmasks.move_to_end(key)
            if len(self._fmasks) > MASK_CACHE:
                self._fmasks.popitem(last=False)
        return mask

    def tenant_csr(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tenants of ``slots`` as ``(indptr int64 (m+1,), tenant_ids int32)``."""
        lists = [sorted(self.slot_tenants.get(int(s), ())) for s in slots]
        indptr = np.zeros(len(lists) + 1, np.int64)
        np.cumsum([len(t) for t in lists], out=indptr[1:])
        flat = np.fromiter((t for ts in lists for t in ts), dtype=np.int32, count=int(indptr[-1]))
        return indptr, flat

    def live_slots(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.n if hi is None else hi
        return (np.flatnonzero(self.alive[lo:hi]) + lo).astype(np.int64)

    def compacted(self, keep: np.ndarray) -> "Records":
        """A new Records with only the slots ``keep`` (ascending), renumbered ``0..len(keep)-1``."""
        new = Records(self.d, self.schema)
        m = keep.shape[0]
        new.ids = self.ids[keep].copy()
        new.vectors = self.vectors[keep].copy()
        new.alive = self.alive[keep].copy()
        new.n = m
        new.attrs = self.attrs.take(keep)
        old_to_new = np.full(self.n, -1, np.int64)
        old_to_new[keep] = np.arange(m)
        new.slot_of = {int(u): int(old_to_new[s]) for u, s in self.slot_of.items() if old_to_new[s] >= 0}
        for s, ts in self.slot_tenants.items():
            ns = int(old_to_new[s])
            if ns >= 0:
                new.slot_tenants[ns] = set(ts)
                for t in ts:
                    new.tenant_slots.setdefault(t, set()).add(ns)
        for t in self.tenant_slots:
            new.tenant_slots.setdefault(t, set())
        return new

    # ------------------------------------------------------------------ persistence (live slots only, compacted)
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        assert self.nlive == self.n, "snapshot a compacted Records"
        meta, arrays = self.attrs.to_arrays()
        indptr, tids = self.tenant_csr(np.arange(self.n))
        arrays.update({"ids": self.ids[:self.n], "vectors": self.vectors[:self.n],
                       "tenant_indptr": indptr, "tenant_ids": tids})
        meta["n"] = self.n
        return meta, arrays

    @classmethod
    def from_arrays(cls, d: int, schema: Schema, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Records":
        rec = cls(d, schema)
        n = int(meta["n"])
        rec.ids = np.array(arrays["ids"], dtype=np.int64)
        rec.vectors = np.array(arrays["vectors"], dtype=np.float32).reshape(n, d)
        rec.alive = np.ones(n, bool)
        rec.n = n
        rec.attrs = AttributeStore.from_arrays(schema, meta, arrays, n)
        rec.slot_of = dict(zip(rec.ids.tolist(), range(n)))
        indptr, tids = arrays["tenant_indptr"], arrays["tenant_ids"]
        for s in np.flatnonzero(np.diff(indptr)).tolist():
            ts = set(tids[indptr[s]:indptr[s + 1]].tolist())
            rec.slot_tenants[s] = ts
            for t in ts:
                rec.tenant_slots.setdefault(t, set()).add(s)
        return rec

    def memory_bytes(self) -> int:
        arrays = self.ids.nbytes + self.vectors.nbytes + self.alive.nbytes + self.attrs.memory_bytes()
        # dict entries ~100 bytes; sets ~ 200 bytes + 60 per member
        containers = 100 * len(self.slot_of) + sum(200 + 60 * len(t) for t in self.slot_tenants.values())
        containers += sum(200 + 60 * len(t) for t in self.tenant_slots.values())
        return int(arrays + containers)
