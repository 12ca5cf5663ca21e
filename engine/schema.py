"""Typed attribute schema, attribute columns held as :mod:`shoal.filters` columns, and the tenant registry.

Types: ``int`` (int64), ``float`` (float64), ``keyword`` (one string, dictionary-encoded to int32 codes) and ``tags``
(a set of strings, dictionary-encoded, stored as CSR). Any attribute may be missing on a record.

User input is validated once by :meth:`Schema.normalize` into a *normalised batch*: a dict ``{name: value}`` with

* int: ``(values int64 (n,), present bool (n,))``
* float: ``float64 (n,)`` with NaN for missing
* keyword: ``list[str | None]``
* tags: ``list[list[str]]``

which is what the write-ahead log stores (strings, not codes, so a log never depends on dictionary state) and what
:meth:`AttributeStore.append` applies.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..errors import InvalidArgument, NotFound, SchemaError

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


class Vocab:
    """Append-only string dictionary: word <-> int32 code."""

    def __init__(self, words: list[str] | None = None):
        self.words: list[str] = list(words or [])
        self.codes: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    def encode(self, word: str) -> int:
        code = self.codes.get(word)
        if code is None:
            code = len(self.words)
            self.words.append(word)
            self.codes[word] = code
        return code

    def __len__(self) -> int:
        return len(self.words)


def _grow(arr: np.ndarray, need: int, fill) -> np.ndarray:
    if need <= arr.shape[0]:
        return arr
    cap = max(need, 2 * arr.shape[0], 64)
    out = np.full((cap, *arr.shape[1:]), fill, dtype=arr.dtype)
    out[:arr.shape[0]] = arr
    return out


class AttributeStore:
    """Attribute values per slot (append-only; a replaced record gets a new slot), as growable columns."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.n = 0
        self.num: dict[str, np.ndarray] = {}      # int: int64, float: float64 (NaN missing)
        self.present: dict[str, np.ndarray] = {}  # int only
        self.kw: dict[str, np.ndarray] = {}       # int32 codes, -1 missing
        self.tag_ptr: dict[str, np.ndarray] = {}  # int64 (n+1,)
        self.tag_codes: dict[str, np.ndarray] = {}
        self.tag_len: dict[str, int] = {}
        self.vocab: dict[str, Vocab] = {}
        self._cache: dict[str, tuple[int, Any]] = {}
        for name, typ in schema.fields.items():
            if typ == "int":
                self.num[name] = np.zeros(0, np.int64)
                self.present[name] = np.zeros(0, bool)
            elif typ == "float":
                self.num[name] = np.zeros(0, np.float64)
            elif typ == "keyword":
                self.kw[name] = np.zeros(0, np.int32)
                self.vocab[name] = Vocab()
            else:
                self.tag_ptr[name] = np.zeros(1, np.int64)
                self.tag_codes[name] = np.zeros(0, np.int32)
                self.tag_len[name] = 0
                self.vocab[name] = Vocab()

    def append(self, batch: dict[str, Any], n: int) -> None:
        """Append ``n`` slots whose values come from a normalised batch (absent attributes are missing)."""
        lo, hi = self.n, self.n + n
        for name, typ in self.schema.fields.items():
            value = batch.get(name)
            if typ == "int":
                self.num[name] = _grow(self.num[name], hi, 0)
                self.present[name] = _grow(self.present[name], hi, False)
                if value is None:
                    self.present[name][lo:hi] = False
                else:
                    self.num[name][lo:hi] = value[0]
                    self.present[name][lo:hi] = value[1]
            elif typ == "float":
                self.num[name] = _grow(self.num[name], hi, np.nan)
                self.num[name][lo:hi] = np.nan if value is None else value
            elif typ == "keyword":
                self.kw[name] = _grow(self.kw[name], hi, -1)
                voc = self.vocab[name]
                self.kw[name][lo:hi] = -1 if value is None else [-1 if v is None else voc.encode(v) for v in value]
            else:
                voc = self.vocab[name]
                ptr = _grow(self.tag_ptr[name], hi + 1, 0)
                codes = [voc.encode(t) for tags in value for t in tags] if value is not None else []
                lens = np.array([len(t) for t in value], dtype=np.int64) if value is not None else np.zeros(n, np.int64)
                start = self.tag_len[name]
                ptr[lo + 1:hi + 1] = start + np.cumsum(lens)
                self.tag_ptr[name] = ptr
                buf = _grow(self.tag_codes[name], start + len(codes), -1)
                buf[start:start + len(codes)] = codes
                self.tag_codes[name] = buf
                self.tag_len[name] = start + len(codes)
        self.n = hi

    def columns(self, rows: np.ndarray | None = None, n: int | None = None,
                names=None) -> dict[str, Any]:
        """The attributes (all, or ``names``) as :mod:`shoal.filters` column objects, over slots ``[0, n)`` or the
        given ``rows``.

        Slots never change once written, so a column over ``[0, n)`` is cached until more slots are added.
        """
        from .. import filters

        n = self.n if n is None else n
        out = {}
        for name in (self.schema.fields if names is None else names):
            typ = self.schema.type_of(name)
            if rows is None:
                hit = self._cache.get(name)
                if hit is not None and hit[0] == n:
                    out[name] = hit[1]
                    continue
            if typ in ("int", "float"):
                vals = self.num[name][:n]
                pres = self.present[name][:n] if typ == "int" else None
                if rows is not None:
                    vals = vals[rows]
                    pres = None if pres is None else pres[rows]
                col = filters.NumericColumn(np.ascontiguousarray(vals), None if pres is None else ~pres)
            elif typ == "keyword":
                codes = self.kw[name][:n]
                col = filters.KeywordColumn(np.ascontiguousarray(codes if rows is None else codes[rows]),
                                            self.vocab[name].words)
            else:
                ptr, codes = self.tag_csr(name, rows, n)
                col = filters.TagsColumn(ptr, codes, self.vocab[name].words)
            if rows is None:
                self._cache[name] = (n, col)
            out[name] = col
        return out

    def tag_csr(self, name: str, rows: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        ptr = self.tag_ptr[name][:n + 1]
        codes = self.tag_codes[name][:self.tag_len[name]]
        if rows is None:
            return np.ascontiguousarray(ptr), codes[:ptr[-1]] if n else codes[:0]
        starts, ends = ptr[rows], ptr[np.asarray(rows) + 1]
        lens = ends - starts
        new_ptr = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lens, out=new_ptr[1:])
        if new_ptr[-1] == 0:
            return new_ptr, np.zeros(0, np.int32)
        idx = np.repeat(starts - new_ptr[:-1], lens) + np.arange(new_ptr[-1])
        return new_ptr, codes[idx]

    def record(self, slot: int) -> dict[str, Any]:
        """Attribute values of one slot as Python values; missing attributes are left out."""
        out: dict[str, Any] = {}
        for name, typ in self.schema.fields.items():
            if typ == "int":
                if self.present[name][slot]:
                    out[name] = int(self.num[name][slot])
            elif typ == "float":
                v = self.num[name][slot]
                if not np.isnan(v):
                    out[name] = float(v)
            elif typ == "keyword":
                c = int(self.kw[name][slot])
                if c >= 0:
                    out[name] = self.vocab[name].words[c]
            else:
                ptr = self.tag_ptr[name]
                words = self.vocab[name].words
                if ptr[slot + 1] > ptr[slot]:
                    out[name] = [words[c] for c in self.tag_codes[name][ptr[slot]:ptr[slot + 1]]]
        return out

    def take(self, rows: np.ndarray) -> "AttributeStore":
        """A new store holding only ``rows`` (in that order); dictionaries are kept."""
        new = AttributeStore(self.schema)
        m = len(rows)
        for name, typ in self.schema.fields.items():
            if typ == "int":
                new.num[name] = self.num[name][rows].copy()
                new.present[name] = self.present[name][rows].copy()
            elif typ == "float":
                new.num[name] = self.num[name][rows].copy()
            elif typ == "keyword":
                new.kw[name] = self.kw[name][rows].copy()
            else:
                new.tag_ptr[name], new.tag_codes[name] = self.tag_csr(name, rows, self.n)
                new.tag_len[name] = int(new.tag_ptr[name][-1])
            if name in self.vocab:
                new.vocab[name] = Vocab(self.vocab[name].words)
        new.n = m
        return new

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """``(meta, arrays)`` for a snapshot (slots ``[0, n)``)."""
        arrays, vocabs = {}, {}
        n = self.n
        for name, typ in self.schema.fields.items():
            if typ == "int":
                arrays[f"attr.{name}.values"] = self.num[name][:n]
                arrays[f"attr.{name}.present"] = self.present[name][:n]
            elif typ == "float":
                arrays[f"attr.{name}.values"] = self.num[name][:n]
            elif typ == "keyword":
                arrays[f"attr.{name}.codes"] = self.kw[name][:n]
            else:
                ptr, codes = self.tag_csr(name, None, n)
                arrays[f"attr.{name}.indptr"] = ptr
                arrays[f"attr.{name}.codes"] = codes
            if name in self.vocab:
                vocabs[name] = self.vocab[name].words
        return {"vocab": vocabs}, arrays

    @classmethod
    def from_arrays(cls, schema: Schema, meta: dict[str, Any], arrays: dict[str, np.ndarray], n: int):
        st = cls(schema)
        for name, typ in schema.fields.items():
            if typ == "int":
                st.num[name] = np.array(arrays[f"attr.{name}.values"])
                st.present[name] = np.array(arrays[f"attr.{name}.present"])
            elif typ == "float":
                st.num[name] = np.array(arrays[f"attr.{name}.values"])
            elif typ == "keyword":
                st.kw[name] = np.array(arrays[f"attr.{name}.codes"])
            else:
                st.tag_ptr[name] = np.array(arrays[f"attr.{name}.indptr"])
                st.tag_codes[name] = np.array(arrays[f"attr.{name}.codes"])
                st.tag_len[name] = int(st.tag_ptr[name][-1])
            if name in st.vocab:
                st.vocab[name] = Vocab(meta["vocab"].get(name, []))
        st.n = n
        return st

    def memory_bytes(self) -> int:
        total = 0
        for d in (self.num, self.present, self.kw, self.tag_ptr, self.tag_codes):
            total += sum(a.nbytes for a in d.values())
        total += sum(60 * len(v) + sum(len(w) for w in v.words) for v in self.vocab.values())
        return total


# ---------------------------------------------------------------------- batch (WAL) encoding of attributes
def batch_to_wal(schema: Schema, batch: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Split a normalised batch into JSON fields (strings) and arrays (numbers) for the write-ahead log."""
    fields, arrays = {}, {}
    for name, value in batch.items():
        typ = schema.fields[name]
        if typ == "int":
            arrays[f"a.{name}.v"], arrays[f"a.{name}.p"] = value
        elif typ == "float":
            arrays[f"a.{name}.v"] = value
        else:
            fields[name] = value
    return fields, arrays


def batch_from_wal(schema: Schema, fields: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for name, typ in schema.fields.items():
        if typ == "int" and f"a.{name}.v" in arrays:
            batch[name] = (arrays[f"a.{name}.v"], arrays[f"a.{name}.p"])
        elif typ == "float" and f"a.{name}.v" in arrays:
            batch[name] = arrays[f"a.{name}.v"]
        elif typ in ("keyword", "tags") and name in fields:
            batch[name] = fields[name]
    return batch


class TenantRegistry:
    """Tenant names <-> dense int32 ids. Ids are never reused for another name; a dropped tenant is inactive
    until granted again (it then gets its old id back)."""

    def __init__(self, names: list[str] | None = None, active: list[bool] | None = None):
        self.names: list[str] = list(names or [])
        self.ids: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.active: list[bool] = list(active) if active is not None else [True] * len(self.names)

    @staticmethod
    def check_name(name) -> str:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidArgument(f"tenant names must be non-empty strings of at most 256 characters, got {name!r}")
        return name

    def lookup(self, name) -> int:
        """Id of an existing (active) tenant; :class:`NotFound` otherwise."""
        self.check_name(name)
        tid = self.ids.get(name)
        if tid is None or not self.active[tid]:
            raise NotFound(f"unknown tenant {name!r}")
        return tid

    def ensure(self, name: str) -> int:
        """Id of ``name``, registering or re-activating it."""
        tid = self.ids.get(name)
        if tid is None:
            tid = len(self.names)
            self.names.append(name)
            self.ids[name] = tid
            self.active.append(True)
        else:
            self.active[tid] = True
        return tid

    def list(self) -> list[str]:
        return [n for n, a in zip(self.names, self.active) if a]
