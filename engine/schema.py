"""The typed attribute schema of a collection: names and types, validation of user attributes, and filters parsed and
type-checked against it.

Types: ``int`` (int64), ``float`` (float64), ``keyword`` (one string, dictionary-encoded to int32 codes) and ``tags``
(a set of strings, dictionary-encoded, stored as CSR). Any attribute may be missing on a record.

User input is validated once by :meth:`Schema.normalize` into a *normalised batch*: a dict ``{name: value}`` with

* int: ``(values int64 (n,), present bool (n,))``
* float: ``float64 (n,)`` with NaN for missing
* keyword: ``list[str | None]``
* tags: ``list[list[str]]``

which is what the write-ahead log stores (strings, not codes, so a log never depends on dictionary state) and what
:meth:`~shoal.engine.attributes.AttributeStore.append` applies.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import InvalidArgument, SchemaError

TYPES = ("int", "float", "keyword", "tags")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
#: words of the filter language that cannot name an attribute
RESERVED = {"and", "or", "not", "in", "between", "contains", "any", "all", "true", "false", "null", "id"}
_INT_MAX = 2 ** 63 - 1


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and np.isnan(v))


class Schema:
    """Attribute names and types of a collection.

    Parameters
    ----------
    fields : dict[str, str] or None
        ``{name: type}`` with type one of ``int``, ``float``, ``keyword``, ``tags``.
    """

    def __init__(self, fields: dict[str, str] | None = None):
        fields = dict(fields or {})
        for name, typ in fields.items():
            if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower() in RESERVED:
                raise SchemaError(f"invalid attribute name {name!r}: use letters, digits and '_', start with a "
                                  f"letter or '_', at most 64 characters, not one of {sorted(RESERVED)}")
            if typ not in TYPES:
                raise SchemaError(f"attribute {name!r}: unknown type {typ!r}; valid types: {', '.join(TYPES)}")
        self.fields = fields

    def __contains__(self, name) -> bool:
        return name in self.fields

    def __eq__(self, other) -> bool:
        return isinstance(other, Schema) and other.fields == self.fields

    def __repr__(self) -> str:
        return f"Schema({self.fields!r})"

    def to_json(self) -> dict[str, str]:
        return dict(self.fields)

    def type_of(self, name: str) -> str:
        try:
            return self.fields[name]
        except KeyError:
            known = ", ".join(sorted(self.fields)) or "(none: the collection has no attributes)"
            raise SchemaError(f"unknown attribute {name!r}; known attributes: {known}") from None

    # ------------------------------------------------------------------ validation
    def normalize(self, attrs, n: int) -> dict[str, Any]:
        """Validate user attributes for ``n`` records into a normalised batch (see the module docstring).

        Parameters
        ----------
        attrs : None, dict ``{name: sequence of n values}`` (columnar) or sequence of n dicts (one per record)
        """
        if attrs is None:
            return {}
        if isinstance(attrs, dict):
            columns = {}
            for name, values in attrs.items():
                self.type_of(name)
                if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
                    raise SchemaError(f"attribute {name!r}: expected a sequence of {n} values (columnar attrs)")
                if len(values) != n:
                    raise SchemaError(f"attribute {name!r}: got {len(values)} values for {n} records")
                columns[name] = values
        elif isinstance(attrs, (list, tuple)):
            if len(attrs) != n:
                raise SchemaError(f"attrs: got {len(attrs)} records' attributes for {n} records")
            columns = {}
            for i, rec in enumerate(attrs):
                if rec is None:
                    continue
                if not isinstance(rec, dict):
                    raise SchemaError(f"attrs[{i}]: expected a dict of attribute values, got {type(rec).__name__}")
                for name in rec:
                    if name not in columns:
                        self.type_of(name)
                        columns[name] = [None] * n
                    columns[name][i] = rec[name]
        else:
            raise SchemaError(f"attrs: expected a dict of columns or a list of dicts, got {type(attrs).__name__}")
        return {name: self._column(name, self.fields[name], values, n) for name, values in columns.items()}

    def _column(self, name: str, typ: str, values, n: int):
        if typ == "float":
            arr = np.asarray(values) if isinstance(values, np.ndarray) else None
            if arr is not None and arr.dtype.kind in "fiu":
                out = arr.astype(np.float64)
            else:
                out = np.empty(n, dtype=np.float64)
                for i, v in enumerate(values):
                    if _is_missing(v):
                        out[i] = np.nan
                    elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
                        out[i] = float(v)
                    else:
                        raise SchemaError(f"attribute {name!r} (float): record {i} has {v!r} of type "
                                          f"{type(v).__name__}, expected a number")
            if np.isinf(out).any():
                raise SchemaError(f"attribute {name!r} (float): record {int(np.flatnonzero(np.isinf(out))[0])} "
                                  "is infinite")
            return out
        if typ == "int":
            vals = np.zeros(n, dtype=np.int64)
            present = np.ones(n, dtype=bool)
            arr = values if isinstance(values, np.ndarray) else None
            if arr is not None and arr.dtype.kind in "iu":
                if arr.dtype.kind == "u" and arr.size and arr.max() > _INT_MAX:
                    raise SchemaError(f"attribute {name!r} (int): value out of the int64 range")
                return arr.astype(np.int64), present
            for i, v in enumerate(values):
                if _is_missing(v):
                    present[i] = False
                elif isinstance(v, (bool, np.bool_)):
                    raise SchemaError(f"attribute {name!r} (int): record {i} has a boolean {v!r}, expected an integer")
                elif isinstance(v, (int, np.integer)):
                    if not -_INT_MAX - 1 <= int(v) <= _INT_MAX:
                        raise SchemaError(f"attribute {name!r} (int): record {i} value {v} is out of the int64 range")
                    vals[i] = int(v)
                elif isinstance(v, (float, np.floating)) and float(v).is_integer() and abs(v) < 2 ** 63:
                    vals[i] = int(v)
                else:
                    raise SchemaError(f"attribute {name!r} (int): record {i} has {v!r} of type "
                                      f"{type(v).__name__}, expected an integer")
            return vals, present
        if typ == "keyword":
            out = []
            for i, v in enumerate(values):
                if _is_missing(v):
                    out.append(None)
                elif isinstance(v, (str, np.str_)):
                    out.append(str(v))
                else:
                    raise SchemaError(f"attribute {name!r} (keyword): record {i} has {v!r} of type "
                                      f"{type(v).__name__}, expected a string")
            return out
        # tags
        out = []
        for i, v in enumerate(values):
            if _is_missing(v):
                out.append([])
                continue
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
                raise SchemaError(f"attribute {name!r} (tags): record {i} has {v!r}, expected a list of strings")
            tags = []
            for t in v:
                if not isinstance(t, (str, np.str_)):
                    raise SchemaError(f"attribute {name!r} (tags): record {i} has a tag {t!r} of type "
                                      f"{type(t).__name__}, expected strings")
                if str(t) not in tags:
                    tags.append(str(t))
            out.append(tags)
        return out


class FilterError(InvalidArgument):
    """A malformed filter expression; ``position`` and ``hint`` come from the parser when it gives them."""

    def __init__(self, message: str, position: int | None = None, hint: str | None = None):
        super().__init__(message)
        self.position = position
        self.hint = hint


class FilterAttributeError(FilterError, SchemaError):
    """A filter that names an unknown attribute or compares one with a value of the wrong type."""


def parse_filter(flt, schema: Schema):
    """Turn a filter (text, JSON AST dict or an already parsed expression) into an expression, or ``None``."""
    if flt is None:
        return None
    from .. import filters

    try:
        if isinstance(flt, str) and not flt.strip():
            return None
        return filters.compile(flt, schema=schema.to_json())
    except filters.FilterTypeError as exc:
        raise FilterAttributeError(f"invalid filter: {exc}") from exc
    except filters.FilterSyntaxError as exc:
        raise FilterError(f"invalid filter: {exc}", getattr(exc, "position", None), getattr(exc, "hint", None)) from exc
