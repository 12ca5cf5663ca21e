"""Object storage: one small interface, a local-directory store (the embedded default) and an S3 store.

Indexes (``index/``), collections (``engine/``) and the serverless functions save and load through it. Keys are
``/``-separated relative paths; ``put`` is atomic in every store; ``get_range`` is a ranged read (a ranged GET on S3).
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from ..errors import InvalidArgument
from .aws import aws_client
from .base import ObjectStore, PrefixedStore
from .local import LocalStore, fsync_dir
from .memory import MemoryStore
from .s3 import S3Store

__all__ = ["ObjectStore", "PrefixedStore", "LocalStore", "MemoryStore", "S3Store", "open_store", "aws_client", "fsync_dir"]


def open_store(uri, *, create: bool = True, **kwargs) -> ObjectStore:
    """Open a store from a URI: ``s3://bucket/prefix``, ``file:///path`` or a plain directory path.

    Opening creates nothing. ``create=False``: a local directory must exist already (:class:`NotFound`); S3 stores
    ignore it (a missing object is NotFound when read).
    """
    if isinstance(uri, ObjectStore):
        return uri
    uri = os.fspath(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, **kwargs)
    if parsed.scheme == "file":
        return LocalStore(parsed.path, create=create, **kwargs)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InvalidArgument(f"unsupported store URI scheme {parsed.scheme!r}; use a path, file:// or s3://")
    return LocalStore(uri, create=create, **kwargs)
