"""Index builds: a new index for a view's records, built outside every lock (readers and writers go on meanwhile).

:func:`prepare` runs under the collection's read lock and takes what the build needs (a copy of the live rows, or of
the current index plus the tail's rows); :func:`build` then trains and adds with no lock held. The collection swaps
the result in (``View.with_index``) after replaying the index operations logged meanwhile (:mod:`.apply`). This
module never sees a Collection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument
from ..index.calibrate import RowVectors, calibrate_rows
from ..index.factory import index_factory
from .jobs import BuildJob
from .planner import calibration_min_rows
from .view import View

#: rows per ``index.add`` call (progress and cancellation granularity)
BUILD_CHUNK = 16_384
#: extend the current index in place of a rebuild while at most this fraction of its rows is deleted
EXTEND_MAX_DELETED = 0.25
#: once a calibrated index reached its target, its calibration stops measuring more settings after this share of
#: the build's train + add time (the ground truth and the sweep up to the target are always done)
CALIBRATION_BUDGET = 0.15
#: an extend build keeps the copied index's calibration while the index has at most this many times the live rows
#: it was calibrated with (and at least the inverse), and the table still reaches the target
REFRESH_GROWTH = 1.25
#: rows a full build leaves out of training (still added) to serve as the calibration's queries: queries the
#: training saw measure optimistically; 1/50 of the rows at most, so training hardly changes
HOLDOUT = 2000


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
    vectors: np.ndarray             # the records' vectors by slot (slots < boundary never change: read unlocked)


@dataclass
class BuildOutput:
    index: Any
    row_slot: np.ndarray
    boundary: int
    calibration: dict[str, Any] | None = None   # seconds, reused, share of the build time


@dataclass(frozen=True)
class CalibrationSettings:
    """What a build calibrates for (collection settings)."""

    target: float = 0.95
    min_rows: int | None = 0  # the collection's exact_threshold (None: automatic per kind): calls with at most
                              # this many matches are scanned


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
        base_row_slot=base_row_slot, boundary=n0, vectors=rec.vectors)


def build(inp: BuildInput, job: BuildJob, train_kwargs: dict | None = None,
          progress: Callable[[int, int, str], None] | None = None,
          calibration: CalibrationSettings | None = None) -> BuildOutput:
    """Train (unless extending), add ``inp``'s rows, then calibrate the index's default search settings (or keep the
    copied index's calibration, see :func:`calibrate`); checks ``job`` for cancellation between steps."""
    new, slots, ids = inp.index, inp.slots, inp.ids
    job.total = int(slots.size)
    base_rows = new.ntotal
    t0 = time.perf_counter()
    job.checkpoint()
    held = np.zeros(0, np.int64)  # positions in inp.x left out of training (the calibration's queries)
    if not inp.extend:
        job.stage = "train"
        if progress:
            progress(0, job.total, "train")
        if slots.size == 0 and not new.is_trained:
            raise FailedPrecondition(f"cannot train a {inp.spec} index on an empty collection")
        if new.calibration_ladder(10)[0]:
            held = np.sort(np.random.default_rng(0).choice(slots.size, min(HOLDOUT, slots.size // 50), replace=False))
        try:
            try:
                new.train(np.delete(inp.x, held, axis=0) if held.size else inp.x, **(train_kwargs or {}))
            except InvalidArgument:
                if not held.size:
                    raise
                held = held[:0]  # too few rows to spare any (e.g. as many IVF lists as rows): train on all
                new.train(inp.x, **(train_kwargs or {}))
        except TypeError as exc:
            if train_kwargs:
                raise InvalidArgument(f"train_kwargs {sorted(train_kwargs)} not accepted by {inp.spec}: {exc}") from exc
            raise
        if progress:
            progress(job.total, job.total, "train")
    job.stage = "add"
    new.reserve(int(slots.size))  # the build knows its row count: chunked adds then copy no rows added before
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
    row_slot = np.concatenate([inp.base_row_slot, _rows_to_slots(new.row_ids[base_rows:], ids, slots)])
    # queries for the calibration: rows the index was not trained on (held out above, or an extend's new rows)
    pool = np.flatnonzero(np.isin(row_slot, slots[held])) if held.size else \
        (np.arange(base_rows, new.ntotal) if inp.extend else None)
    cal = calibrate(new, inp, row_slot, job, calibration or CalibrationSettings(), time.perf_counter() - t0,
                    progress, pool)
    return BuildOutput(new, row_slot, inp.boundary, cal)


def calibrate(index, inp: BuildInput, row_slot: np.ndarray, job: BuildJob, settings: CalibrationSettings,
              build_seconds: float, progress, pool: np.ndarray | None = None) -> dict[str, Any] | None:
    """The build's ``calibrate`` stage (:mod:`shoal.index.calibrate`): measure the new index's default search
    settings on its own vectors, read from the records through ``row_slot``, with the exact scans the planner can
    run as a choice. An extend build keeps the copied calibration while it still fits (``REFRESH_GROWTH``).

    Returns ``{"seconds", "reused", "share", "build_seconds"}`` (share: of the train + add time, ``build_seconds``),
    or None for exact kinds."""
    primary, _ = index.calibration_ladder(10)
    if not primary:
        index.calibration = None
        return None
    job.checkpoint()
    job.stage = "calibrate"
    old = index.calibration
    if inp.extend and old is not None and old.nrows / REFRESH_GROWTH <= index.nlive <= old.nrows * REFRESH_GROWTH \
            and all(b.pick(settings.target, exact_ok=True)[1] for b in old.bands):
        return {"seconds": 0.0, "reused": True, "share": 0.0, "build_seconds": round(build_seconds, 3)}
    t0 = time.perf_counter()
    vectors = inp.vectors
    vec = RowVectors(lambda rows: vectors[row_slot[rows]], index.metric)
    calibrate_rows(index, vec, target=settings.target, min_rows=calibration_min_rows(settings.min_rows, index),
                   exact=True, queries=pool, budget_s=CALIBRATION_BUDGET * build_seconds, progress=progress,
                   checkpoint=job.checkpoint)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 3), "reused": False, "share": round(seconds / max(build_seconds, 1e-9), 3),
            "build_seconds": round(build_seconds, 3)}


def _rows_to_slots(new_rows: np.ndarray, ids: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Slot of each new index row, through its user id (kinds may order their rows as they like)."""
    if not ids.size:
        return np.full(new_rows.shape, -1, np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids, sorted_slots = ids[order], slots[order]
    pos = np.clip(np.searchsorted(sorted_ids, new_rows), 0, ids.size - 1)
    return np.where(sorted_ids[pos] == new_rows, sorted_slots[pos], -1).astype(np.int64)
