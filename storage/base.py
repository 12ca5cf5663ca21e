"""The object-store interface every store implements, and a view of a store under a key prefix.

Keys are ``/``-separated relative paths. ``put`` is atomic in every store: a reader sees the old object or the new
one, never a torn one.
"""

from __future__ import annotations

import abc

from ..errors import InvalidArgument, NotFound


def check_key(key: str) -> str:
    """``key`` if it is a valid object key (a relative ``/``-separated path), else :class:`InvalidArgument`."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise InvalidArgument(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"invalid object key {key!r}: empty, '.' or '..' path components")
    return key


class ObjectStore(abc.ABC):
    """The storage interface indexes and collections save through."""

    uri: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object. Raises :class:`NotFound`."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object (a ranged GET on S3)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the object atomically."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted keys that start with ``prefix``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Return the object's size in bytes. Raises :class:`NotFound`."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def local_path(self, key: str) -> str | None:
        """A filesystem path holding the object, for memory-mapping; ``None`` when there is none."""
        return None

    @property
    def is_local(self) -> bool:
        """Objects are files on this machine already (mapping one costs no download)."""
        return False

    def child(self, prefix: str) -> "ObjectStore":
        """A view of this store rooted at ``prefix``."""
        return PrefixedStore(self, prefix)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)


class PrefixedStore(ObjectStore):
    """A view of another store under a key prefix."""

    def __init__(self, base: ObjectStore, prefix: str):
        self.base = base
        self.prefix = prefix.strip("/")
        self.uri = base.uri.rstrip("/") + "/" + self.prefix

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}" if self.prefix else key

    def get(self, key):
        return self.base.get(self._k(key))

    def get_range(self, key, start, end):
        return self.base.get_range(self._k(key), start, end)

    def put(self, key, data):
        self.base.put(self._k(key), data)

    def list(self, prefix=""):
        full = self.prefix + "/" + prefix if self.prefix else prefix
        n = len(self.prefix) + 1 if self.prefix else 0
        return [k[n:] for k in self.base.list(full)]

    def delete(self, key):
        self.base.delete(self._k(key))

    def size(self, key):
        return self.base.size(self._k(key))

    def local_path(self, key):
        return self.base.local_path(self._k(key))

    @property
    def is_local(self) -> bool:
        return self.base.is_local
