"""shoal.index: index kinds behind one protocol, built from factory strings."""

from .base import Index
from .factory import describe, index_factory, load_index, parse_factory
from .flat import FlatIndex
from .topk import merge_topk

__all__ = ["Index", "FlatIndex", "index_factory", "describe", "load_index", "parse_factory", "merge_topk"]
