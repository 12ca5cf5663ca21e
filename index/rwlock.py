"""A small writer-preferring readers-writer lock, shared by collections (engine) and indexes that update in place.

Searches hold the read side for their whole duration; mutations hold the write side only for their short step, so a
background build never blocks readers. The two sides are plain context-manager objects (``with lock.read:``), not
generator-based context managers: an index answering in tens of microseconds (Curator) cannot spend microseconds on
entering a lock.
"""

from __future__ import annotations

import threading


class RWLock:
    """Many readers or one writer. A waiting writer stops new readers from entering (no writer starvation).

    Not re-entrant: a thread holding the read side must not take it again while a writer may be waiting.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self.read = _Side(self._acquire_read, self._release_read)
        self.write = _Side(self._acquire_write, self._release_write)

    # the mutex is taken with acquire()/release() rather than through the Condition's context manager: the read
    # side runs on every search, and the Condition's Python-level __enter__/__exit__ cost as much as the rest
    def _acquire_read(self) -> None:
        self._mutex.acquire()
        try:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        finally:
            self._mutex.release()

    def _release_read(self) -> None:
        self._mutex.acquire()
        self._readers -= 1
        if self._readers == 0:
            self._cond.notify_all()
        self._mutex.release()

    def _acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def _release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Side:
    """One side of an :class:`RWLock` as a context manager."""

    __slots__ = ("_acquire", "_release")

    def __init__(self, acquire, release):
        self._acquire = acquire
        self._release = release

    def __enter__(self) -> None:
        self._acquire()

    def __exit__(self, *exc) -> bool:
        self._release()
        return False
