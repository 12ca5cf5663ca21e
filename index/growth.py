"""Growth buffers for per-row arrays: appending a chunk copies the chunk, not everything held before it.

An index keeps each per-row array as a *view* ``buf[:n]`` of a buffer ``buf`` with spare rows. :func:`append_rows`
writes new rows into the spare rows, doubling the buffer when it is full (amortised O(1) copying per row instead of
re-concatenating the whole array on every add); :func:`resize_rows` gives a buffer an exact capacity (``reserve``:
room for rows still to come, so a caller who knows the final size never copies; ``compact``: shrink to fit).

The view is what the index reads; the buffer only owns the memory. A view that is not the prefix of the buffer (a
loaded or memory-mapped array, or one a caller assigned) is copied into a new in-memory buffer on the next append,
once. Callers must store both results every time, since any call may reallocate.
"""

from __future__ import annotations

import numpy as np


def owns(buf: np.ndarray | None, view: np.ndarray) -> bool:
    """Whether ``view`` is the prefix ``buf[:len(view)]`` of the in-memory growth buffer ``buf``."""
    return (buf is not None and view.base is buf and view.shape[1:] == buf.shape[1:]
            and view.ctypes.data == buf.ctypes.data)


def resize_rows(buf: np.ndarray | None, view: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """A new buffer of exactly ``capacity`` rows (``>= len(view)``) holding ``view``'s rows; returns ``(buf, view)``."""
    n = view.shape[0]
    out = np.empty((max(int(capacity), n),) + view.shape[1:], dtype=view.dtype)
    out[:n] = view
    return out, out[:n]


def append_rows(buf: np.ndarray | None, view: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write ``rows`` after ``view`` (same dtype and trailing shape); returns ``(buf, view)`` with the longer view.

    Rows go into ``buf``'s spare capacity in place; a full buffer is replaced by one of twice the capacity (or
    exactly what is needed, if that is more); a view ``buf`` does not own (loaded, memory-mapped) is copied into a
    buffer of exactly the rows needed.
    """
    n, m = view.shape[0], rows.shape[0]
    need = n + m
    mine = owns(buf, view)
    if not mine or buf.shape[0] < need:
        buf, view = resize_rows(buf, view, max(need, 2 * buf.shape[0]) if mine else need)
    buf[n:need] = rows
    return buf, buf[:need]


def reserve_rows(buf: np.ndarray | None, view: np.ndarray, more: int) -> tuple[np.ndarray, np.ndarray]:
    """Room for ``more`` rows after ``view`` (no copy if ``buf`` already has it); returns ``(buf, view)``."""
    need = view.shape[0] + int(more)
    if more <= 0 or (owns(buf, view) and buf.shape[0] >= need):
        return buf, view
    return resize_rows(buf, view, need)


def fit_rows(buf: np.ndarray | None, view: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrink ``buf`` to ``view``'s rows (a copy, only when it holds spare rows); views it does not own (mapped
    arrays) stay as they are. Returns ``(buf, view)``."""
    if owns(buf, view) and buf.shape[0] > view.shape[0]:
        return resize_rows(buf, view, view.shape[0])
    return buf, view


def held(buf: np.ndarray | None, view: np.ndarray | None) -> np.ndarray | None:
    """The array whose memory ``view`` keeps alive: ``buf`` (spare rows included) when it owns the view."""
    if view is None:
        return None
    return buf if owns(buf, view) else view
