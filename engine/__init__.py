"""shoal.engine: collections (schema, ids, WAL, snapshots, tenants, planner) over the index kinds, and storage."""

from .collection import Collection
from .database import Database, StagedCollection
from .jobs import BuildCancelled, BuildJob
from .results import SearchResult, SearchStats
from .schema import FilterAttributeError, FilterError, Schema
from ..storage import LocalStore, ObjectStore, S3Store, open_store
from .wal import WALDamaged, WALWarning

__all__ = ["Database", "Collection", "StagedCollection", "SearchResult", "SearchStats", "Schema", "BuildJob",
           "BuildCancelled", "FilterError", "FilterAttributeError", "WALWarning", "WALDamaged", "ObjectStore",
           "LocalStore", "S3Store", "open_store"]
