"""A store of objects as files under a directory (the embedded default).

``put`` writes a temporary file, fsyncs it, renames it over the key and fsyncs the directory, so a crash leaves the
old object or the new one. Objects get the permissions of any file the process creates (``0666`` less the umask, so
usually ``0644``), whatever the temporary file had.

Opening a store creates nothing: its directory is made by the first ``put``, so reading a store that does not exist
(a typo in ``--data``, a ``file://`` index URI) fails with :class:`NotFound` and leaves no empty directory behind.
"""

from __future__ import annotations

import os
import tempfile

from ..errors import InvalidArgument, NotFound
from .base import ObjectStore, check_key


def _file_mode() -> int:
    """Permissions of a new file under the current umask (read without changing it for other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o644


_FILE_MODE = _file_mode()


class LocalStore(ObjectStore):
    """Objects as files under a root directory.

    Parameters
    ----------
    root : str or os.PathLike
    create : bool
        True (default): the directory may be missing; the first ``put`` creates it (opening never does). False: it
        must exist already, else :class:`NotFound` (read-only users that want the error up front).
    """

    def __init__(self, root: str, *, create: bool = True):
        self.root = os.path.abspath(os.fspath(root))
        if not create and not os.path.isdir(self.root):
            raise NotFound(f"directory {self.root} does not exist")
        self.uri = "file://" + self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *check_key(key).split("/"))

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def get_range(self, key, start, end):
        if start < 0 or end < start:
            raise InvalidArgument(f"invalid byte range [{start}, {end})")
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def put(self, key, data):
        path = self._path(key)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # mkstemp makes 0600 files: give the object the mode every other file of the store has
                os.fchmod(f.fileno(), _FILE_MODE)
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fsync_dir(directory)

    def list(self, prefix=""):
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key):
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        # prune directories the delete emptied (a deleted generation leaves none behind), never the top level
        top = os.path.join(self.root, key.split("/", 1)[0])
        parent = os.path.dirname(path)
        while parent.startswith(top + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def size(self, key):
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def local_path(self, key):
        path = self._path(key)
        return path if os.path.exists(path) else None

    @property
    def is_local(self) -> bool:
        return True


def fsync_dir(directory: str) -> None:
    """fsync a directory so a rename or new file in it survives a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
