"""shoal.engine: collections (schema, ids, WAL, snapshots, tenants, planner) over the index kinds, and storage."""

from .collection import BuildJob, Collection, FilterAttributeError, FilterError
from .database import Database
from .results import SearchResult, SearchStats
from .schema import Schema
from ..storage import LocalStore, ObjectStore, S3Store, open_store
from .wal import WALWarning

__all__ = ["Database", "Collection", "SearchResult", "SearchStats", "Schema", "BuildJob", "FilterError", "FilterAttributeError",
           "WALWarning", "ObjectStore", "LocalStore", "S3Store", "open_store"]
