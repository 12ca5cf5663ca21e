"""Index builds: a new index for a view's records, built outside every lock (readers and writers go on meanwhile).

:func:`prepare` runs under the collection's read lock and takes what the build needs (a copy of the live rows, or of
the current index plus the tail's rows); :func:`build` then trains and adds with no lock held. The collection swaps
the result in (``View.with_index``) after replaying the index operations logged meanwhile (:mod:`.apply`). This
module never sees a Collection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from ..index.factory import index_factory
from .jobs import BuildJob
from .view import View

#: rows per ``index.add`` call (progress and cancellation granularity)
BUILD_CHUNK = 16_384
#: extend the current index in place of a rebuild while at most this fraction of its rows is deleted
EXTEND_MAX_DELETED = 0.25


@dataclass
class BuildInput:
    """What a build reads, captured consistently under the collection's read lock."""

    spec: str
    index: Any                      # a fresh untrained index, or a copy of the current one to extend
    extend: bool
    slots: np.ndarray               # int64 (m,) slots to add
    ids: np.ndarray                 # int64 (m,)
    x: np.ndarray                   # float32 (m, d)
    tenants: tuple[np.ndarray, np.ndarray] | None
    attrs: dict[str, Any] | None
    base_row_slot: np.ndarray       # row -> slot of the rows the copy already holds
    boundary: int                   # slots < boundary are in the index once it is swapped in


@dataclass
class BuildOutput:
    index: Any
    row_slot: np.ndarray
    boundary: int


def extendable(index, spec: str, dim: int, metric: str) -> bool:
    """Whether ``index`` can take the tail's rows instead of being rebuilt for ``spec``."""
    if index is None or not index.is_trained or index.ntotal == 0:
        return False
    if (index.ntotal - index.nlive) > EXTEND_MAX_DELETED * index.ntotal:
        return False
    return index.factory_string() == index_factory(dim, spec, metric).factory_string()


def prepare(view: View, spec: str, dim: int, metric: str, full: bool) -> BuildInput:
    """Capture a build's input from ``view`` (caller holds the collection's read lock)."""
    rec = view.records
    n0 = rec.n
    old = view.index
    extend = not full and extendable(old, spec, dim, metric)
    if extend:
        slots = rec.live_slots(view.boundary, n0)
        index = old.copy()
        base_row_slot = view.row_slot.copy()
    else:
        slots = rec.live_slots(0, n0)
        index = index_factory(dim, spec, metric)
        base_row_slot = np.zeros(0, np.int64)
    return BuildInput(
        spec=spec, index=index, extend=extend, slots=slots, ids=rec.ids[slots].copy(), x=rec.vectors[slots].copy(),
        tenants=rec.tenant_csr(slots) if index.supports_tenants else None,
        attrs=rec.attrs.columns(rows=slots, n=n0) if index.supports_filter else None,
        base_row_slot=base_row_slot, boundary=n0)


def build(inp: BuildInput, job: BuildJob, train_kwargs: dict | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> BuildOutput:
    """Train (unless extending) and add ``inp``'s rows; checks ``job`` for cancellation between steps."""
    new, slots, ids = inp.index, inp.slots, inp.ids
    job.total = int(slots.size)
    base_rows = new.ntotal
    job.checkpoint()
    if not inp.extend:
        job.stage = "train"
        if progress:
            progress(0, job.total, "train")
        if slots.size == 0 and not new.is_trained:
            raise FailedPrecondition(f"cannot train a {inp.spec} index on an empty collection")
        try:
            new.train(inp.x, **(train_kwargs or {}))
        except TypeError as exc:
            if train_kwargs:
                raise InvalidArgument(f"train_kwargs {sorted(train_kwargs)} not accepted by {inp.spec}: {exc}") from exc
            raise
        if progress:
            progress(job.total, job.total, "train")
    job.stage = "add"
    for lo in range(0, max(1, slots.size), BUILD_CHUNK):
        job.checkpoint()
        hi = min(slots.size, lo + BUILD_CHUNK)
        if hi > lo:
            kw = {}
            if inp.tenants is not None:
                ptr, tids = inp.tenants
                kw["tenants"] = (ptr[lo:hi + 1] - ptr[lo], tids[ptr[lo]:ptr[hi]])
            if inp.attrs is not None:
                rows = np.arange(lo, hi)
                kw["attrs"] = {name: c.take(rows) for name, c in inp.attrs.items()}
            new.add(inp.x[lo:hi], ids[lo:hi], **kw)
        job.done = hi
        if progress:
            progress(hi, job.total, "add")
    new.compact()  # rows came in chunks: give back what growth by doubling left unused
    job.checkpoint()
    return BuildOutput(new, np.concatenate([inp.base_row_slot, _rows_to_slots(new.row_ids[base_rows:], ids, slots)]),
                       inp.boundary)


def _rows_to_slots(new_rows: np.ndarray, ids: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Slot of each new index row, through its user id (kinds may order their rows as they like)."""
    if not ids.size:
        return np.full(new_rows.shape, -1, np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids, sorted_slots = ids[order], slots[order]
    pos = np.clip(np.searchsorted(sorted_ids, new_rows), 0, ids.size - 1)
    return np.where(sorted_ids[pos] == new_rows, sorted_slots[pos], -1).astype(np.int64)
