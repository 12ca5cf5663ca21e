"""The frozen view a search works on: which records, which index, and how the two line up.

A collection holds exactly one :class:`View` at a time and replaces it whole, by one assignment under its write lock,
when a build swaps in a new index or a snapshot compacts the records; a search takes the current view once and uses
nothing else, so it can never see a new index with the old row mapping (or the reverse). Records keep changing in place
between swaps (appends, deletes, grants), under the collection's readers-writer lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .records import Records


@dataclass(frozen=True)
class View:
    """Records + index + their alignment.

    Attributes
    ----------
    records : Records
        Every slot (live or dead) of the collection.
    index : Index or None
        Built over slots ``[0, boundary)``; ``None`` before the first build.
    row_slot : int64 (index.ntotal,)
        Slot of each index row (-1 where the slot was compacted away).
    boundary : int
        Slots ``>= boundary`` are the unindexed tail, searched exactly.
    """

    records: Records
    index: object | None = None
    row_slot: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boundary: int = 0

    def with_index(self, index, row_slot: np.ndarray, boundary: int) -> "View":
        return replace(self, index=index, row_slot=row_slot, boundary=boundary)

    @property
    def tail(self) -> int:
        """Slots (live or dead) not in the index."""
        return self.records.n - self.boundary

    def compacted(self) -> "View":
        """The same state without dead slots (records renumbered, the index's row -> slot map and the boundary
        remapped); ``self`` when nothing is dead."""
        rec = self.records
        keep = rec.live_slots()
        if keep.size == rec.n:
            return self
        old_to_new = np.full(rec.n + 1, -1, np.int64)
        old_to_new[keep] = np.arange(keep.size)
        rs = self.row_slot
        row_slot = np.where(rs >= 0, old_to_new[np.where(rs >= 0, rs, rec.n)], -1)
        boundary = int(np.count_nonzero(rec.alive[:self.boundary]))
        return View(rec.compacted(keep), self.index, row_slot, boundary)
