"""A dict-backed store: scratch space in memory (``Index.copy`` copies an index through its own save and load)."""

from __future__ import annotations

from ..errors import NotFound
from .base import ObjectStore


class MemoryStore(ObjectStore):
    """Objects in a dict; ``put`` is atomic because it is one assignment."""

    uri = "memory://"

    def __init__(self):
        self.objects: dict[str, bytes] = {}

    def get(self, key):
        try:
            return self.objects[key]
        except KeyError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def get_range(self, key, start, end):
        return self.get(key)[start:end]

    def put(self, key, data):
        self.objects[key] = bytes(data)

    def list(self, prefix=""):
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key):
        self.objects.pop(key, None)

    def size(self, key):
        return len(self.get(key))
