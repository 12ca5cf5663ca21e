"""shoal: a vector search engine with multi-tenant trees, filtered quantized search and compressed IVF-PQ."""

from .errors import (AlreadyExists, DimensionMismatch, FailedPrecondition, InvalidArgument, NotFound,
                     PermissionDenied, SchemaError, ShoalError)
from .index import FlatIndex, Index, describe, index_factory, load_index, merge_topk
from .engine import Collection, Database
from .engine.results import SearchResult, SearchStats

__version__ = "0.1.0"


def __getattr__(name: str):
    # shoal.Client loads grpc on first use, so `import shoal` (and the CLI) stay fast for embedded use
    if name == "Client":
        from .server.client import Client

        return Client
    raise AttributeError(f"module 'shoal' has no attribute {name!r}")

__all__ = [
    "Database", "Collection", "SearchResult", "SearchStats", "Index", "FlatIndex", "index_factory", "describe", "load_index", "merge_topk",
    "ShoalError", "InvalidArgument", "DimensionMismatch", "SchemaError", "NotFound", "AlreadyExists", "PermissionDenied",
    "FailedPrecondition", "Client",
]
