"""Cross-process ownership: one owner lock per collection, one short-held lock per database.

A collection is *owned* by at most one process at a time: the one that opened it for writing (``Database.collection``
without ``read_only``, ``shoal serve``), or that is dropping it or replacing it with a staged build (``shoal build
--overwrite``). Owning means holding an exclusive ``flock`` on ``<wal_dir>/.locks/<name>.lock``; the holder writes its
pid and command line into the file, so a refused caller can be told who holds it. The kernel releases the lock when the
holder's process dies, however it dies (kill -9 included): no stale lock ever needs cleaning up.

The database lock (``<wal_dir>/.locks/database.lock``) is held only for the few milliseconds of a create, drop or
staged-build switch, so two processes creating or dropping collections in one directory serialise.

Read-only opens take no lock: they can run beside a writer (``shoal info`` next to ``shoal serve``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
import threading
import time

from ..errors import FailedPrecondition

LOCK_DIR = ".locks"

#: errors that mean "this process cannot write here" rather than a bug
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def not_writable(path: str, why: str) -> FailedPrecondition:
    """The error for a database that cannot be opened for writing, saying how to read it instead."""
    return FailedPrecondition(f"cannot open {path} for writing: {why}; to read it, open it read-only: "
                              "Database(path, read_only=True), `shoal serve --read-only` (`shoal search` and "
                              "`shoal info` always read)")


def check_writable(path: str) -> None:
    """Raise :func:`not_writable` when ``path`` (or, if it does not exist yet, the nearest directory above it that
    does) cannot be written by this process: a read-only file system or missing permissions."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    if os.access(probe, os.W_OK):
        return
    try:
        read_only_fs = bool(os.statvfs(probe).f_flag & os.ST_RDONLY)
    except OSError:
        read_only_fs = False
    raise not_writable(path, f"{probe} is on a read-only file system" if read_only_fs else
                       f"no permission to write {probe}")


def _holder_text() -> str:
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)) or sys.executable
    return f"pid {os.getpid()} ({cmd[:200]})"


class FileLock:
    """An exclusive ``flock`` on one file, tagged with the holder's pid and command line.

    Parameters
    ----------
    path : str
        Lock file (created, with its directory, if missing; never deleted, so every process locks the same inode).
    what : str
        What the lock protects, for error messages (``"collection 'docs'"``).
    """

    def __init__(self, path: str, what: str):
        self.path = path
        self.what = what
        self._fd: int | None = None
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        """Who holds the lock, as written by the holder (``"unknown holder"`` if unreadable)."""
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read().strip() or "unknown holder"
        except OSError:
            return "unknown holder"

    def acquire(self, timeout: float = 0.0) -> "FileLock":
        """Take the lock, waiting up to ``timeout`` seconds; :class:`FailedPrecondition` naming the holder if not."""
        with self._mutex:
            if self._fd is not None:
                return self
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno in _NOT_WRITABLE:
                    raise not_writable(os.path.dirname(os.path.dirname(self.path)), exc.strerror) from None
                raise
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        raise FailedPrecondition(
                            f"{self.what} is in use by another process or database handle: {self.holder()}; "
                            "close it there first (read-only opens work beside it)") from None
                    time.sleep(0.01)
            os.ftruncate(fd, 0)
            os.pwrite(fd, (_holder_text() + "\n").encode(), 0)
            self._fd = fd
            return self

    def release(self) -> None:
        with self._mutex:
            if self._fd is None:
                return
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire(timeout=10.0)

    def __exit__(self, *exc) -> None:
        self.release()


def collection_lock(wal_dir: str, name: str) -> FileLock:
    """The owner lock of collection ``name`` of the database whose WAL directory is ``wal_dir``."""
    return FileLock(os.path.join(wal_dir, LOCK_DIR, f"{name}.lock"), f"collection {name!r}")


def database_lock(wal_dir: str) -> FileLock:
    """The lock serialising create / drop / staged-build switches in one database."""
    return FileLock(os.path.join(wal_dir, LOCK_DIR, "database.lock"), f"database {wal_dir}")
