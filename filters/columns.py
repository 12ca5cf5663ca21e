"""Attribute columns the evaluator reads: numbers, keywords (dictionary-encoded) and tags (CSR over a vocabulary)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Union

import numpy as np

from .ast import INT64_MAX, FilterTypeError


class NumericColumn:
    """A number attribute: ``values`` float64 (NaN = missing) or int64, shape (n,); optional ``missing`` bool (n,)."""

    def __init__(self, values, missing=None):
        v = np.asarray(values)
        if v.ndim != 1:
            raise ValueError(f"NumericColumn values must be 1-D, got shape {v.shape}")
        if v.dtype.kind == "f":
            v = v.astype(np.float64, copy=False)
        elif v.dtype.kind in "iub":
            if v.dtype.kind == "u" and v.size and int(v.max()) > INT64_MAX:
                raise ValueError("NumericColumn: unsigned values above the int64 range")
            v = v.astype(np.int64, copy=False)
        else:
            raise ValueError(f"NumericColumn needs numbers, got dtype {v.dtype}")
        self.values = v
        self.kind = "float" if v.dtype.kind == "f" else "int"
        miss = np.isnan(v) if self.kind == "float" else np.zeros(len(v), dtype=bool)
        if missing is not None:
            m = np.asarray(missing, dtype=bool)
            if m.shape != v.shape:
                raise ValueError(f"NumericColumn missing mask shape {m.shape} != values shape {v.shape}")
            miss = miss | m
        self.missing = miss
        self._any_missing = bool(miss.any())

    def __len__(self) -> int:
        return len(self.values)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.missing.nbytes

    def sorted_view(self) -> tuple[np.ndarray, np.ndarray]:
        """The column's range index: ``(order int64 (m,), keys float64 (m,))``, its non-missing rows in ascending
        value order and their values as float64 (an order-preserving image of int64 values).

        Built on first use (one argsort) and kept with the column, 16 bytes a row; a column is treated as immutable
        once indexed (rebuilt if ``values`` is replaced by another array). See :func:`range_candidates`.
        """
        idx = self.__dict__.get("_sorted")
        if idx is None or idx[0] is not self.values:
            rows = np.flatnonzero(~self.missing) if self._any_missing else None
            vals = self.values if rows is None else self.values[rows]
            o = np.argsort(vals, kind="stable")
            idx = self._sorted = (self.values, o if rows is None else rows[o], vals[o].astype(np.float64))
        return idx[1], idx[2]

    def take(self, rows) -> "NumericColumn":
        """The column at ``rows`` (int array or bool mask)."""
        rows = np.asarray(rows)
        return NumericColumn(self.values[rows], self.missing[rows])

    def __getitem__(self, sl: slice) -> "NumericColumn":
        """Rows ``[lo:hi]`` as views (the missing mask comes along)."""
        lo, hi = _bounds(sl, len(self))
        return NumericColumn(self.values[lo:hi], self.missing[lo:hi])

    @classmethod
    def from_values(cls, values: Iterable, kind: str = "float") -> "NumericColumn":
        """From Python numbers with None as missing; ``kind`` "int" keeps int64 with a missing mask."""
        vals = list(values)
        miss = np.array([x is None for x in vals], dtype=bool)
        if kind == "int":
            return cls(np.array([0 if x is None else int(x) for x in vals], dtype=np.int64), miss)
        return cls(np.array([np.nan if x is None else float(x) for x in vals], dtype=np.float64))


def _bounds(sl: Any, n: int) -> tuple[int, int]:
    if not isinstance(sl, slice):
        raise TypeError("columns support slices col[lo:hi]; use take(rows) for a list of rows")
    lo, hi, step = sl.indices(n)
    if step != 1:
        raise ValueError("column slices must have step 1; use take(rows)")
    return lo, max(lo, hi)


class VocabColumn:
    def _init_vocab(self, vocab) -> None:
        # kept as given (no copy): columns are cheap to wrap around an engine's arrays for each query
        self.vocab = vocab if isinstance(vocab, list) else list(vocab)
        self._lookup: dict[str, int] | None = None

    def code_of(self, word: str) -> int:
        """The code of ``word``, or -1 if it is not in the vocabulary (word -> code map built on first use)."""
        if self._lookup is None:
            lookup = {w: i for i, w in enumerate(self.vocab)}
            if len(lookup) != len(self.vocab):
                raise ValueError(f"{type(self).__name__}: the vocabulary has duplicate words")
            self._lookup = lookup
        return self._lookup.get(word, -1)


def _codes_array(codes, vocab_size: int, lo: int, what: str) -> np.ndarray:
    c = np.asarray(codes)
    if c.ndim != 1 or (c.size and c.dtype.kind not in "iu"):
        raise ValueError(f"{what} codes must be a 1-D integer array, got {c.dtype} {c.shape}")
    c = c.astype(np.int32, copy=False)
    if c.size and (int(c.min()) < lo or int(c.max()) >= vocab_size):
        raise ValueError(f"{what} codes must lie in [{lo}, {vocab_size})")
    return c


class KeywordColumn(VocabColumn):
    """A keyword attribute: ``codes`` int32 (n,) into ``vocab`` (list[str], code -> word); -1 = missing."""

    kind = "keyword"

    def __init__(self, codes, vocab):
        self._init_vocab(vocab)
        self.codes = _codes_array(codes, len(self.vocab), -1, "KeywordColumn")

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + sum(len(w) + 56 for w in self.vocab)

    def take(self, rows) -> "KeywordColumn":
        """The column at ``rows`` (int array or bool mask)."""
        return KeywordColumn(self.codes[np.asarray(rows)], self.vocab)

    def __getitem__(self, sl: slice) -> "KeywordColumn":
        """Rows ``[lo:hi]`` (codes as a view, same vocabulary)."""
        lo, hi = _bounds(sl, len(self))
        return KeywordColumn(self.codes[lo:hi], self.vocab)

    @classmethod
    def from_values(cls, values: Iterable) -> "KeywordColumn":
        """From Python strings with None as missing (vocabulary in order of first appearance)."""
        lookup: dict[str, int] = {}
        codes = [-1 if w is None else lookup.setdefault(str(w), len(lookup)) for w in values]
        return cls(np.array(codes, dtype=np.int32), list(lookup))


class TagsColumn(VocabColumn):
    """A tags attribute in CSR form: row i has ``codes[indptr[i]:indptr[i+1]]`` (int32 into ``vocab``)."""

    kind = "tags"

    def __init__(self, indptr, codes, vocab):
        self._init_vocab(vocab)
        p = np.asarray(indptr)
        if p.ndim != 1 or len(p) < 1 or (p.dtype.kind not in "iu"):
            raise ValueError("TagsColumn indptr must be a 1-D integer array of length n + 1")
        p = p.astype(np.int64, copy=False)
        self.codes = _codes_array(codes, len(self.vocab), 0, "TagsColumn")
        if p[0] != 0 or p[-1] != len(self.codes) or np.any(np.diff(p) < 0):
            raise ValueError("TagsColumn indptr must start at 0, be non-decreasing and end at len(codes)")
        self.indptr = p
        self._rows: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.codes.nbytes + sum(len(w) + 56 for w in self.vocab)

    @property
    def row_of_entry(self) -> np.ndarray:
        """int64 (len(codes),): the row each tag entry belongs to (cached)."""
        if self._rows is None:
            self._rows = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))
        return self._rows

    def __getitem__(self, sl: slice) -> "TagsColumn":
        """Rows ``[lo:hi]`` (same vocabulary)."""
        lo, hi = _bounds(sl, len(self))
        ptr = self.indptr[lo:hi + 1]
        return TagsColumn(ptr - ptr[0], self.codes[ptr[0]:ptr[-1]], self.vocab)

    def take(self, rows) -> "TagsColumn":
        """The column at ``rows`` (int array or bool mask)."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64, copy=False)
        lens = np.diff(self.indptr)[rows]
        indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        starts = np.repeat(self.indptr[rows] - indptr[:-1], lens)
        return TagsColumn(indptr, self.codes[np.arange(indptr[-1]) + starts], self.vocab)

    @classmethod
    def from_lists(cls, rows: Iterable) -> "TagsColumn":
        """From an iterable of lists of strings (None or [] = no tags)."""
        lookup: dict[str, int] = {}
        indptr, codes = [0], []
        for tags in rows:
            codes.extend(lookup.setdefault(str(t), len(lookup)) for t in (tags or ()))
            indptr.append(len(codes))
        return cls(np.array(indptr, dtype=np.int64), np.array(codes, dtype=np.int32), list(lookup))


Column = Union[NumericColumn, KeywordColumn, TagsColumn]


def schema_of(columns: Mapping[str, Column]) -> dict[str, str]:
    """{name: "int"|"float"|"keyword"|"tags"} for a dict of columns."""
    out = {}
    for name, col in columns.items():
        if not isinstance(col, (NumericColumn, KeywordColumn, TagsColumn)):
            raise FilterTypeError(f"column {name!r} must be a NumericColumn, KeywordColumn or TagsColumn, got "
                                  f"{type(col).__name__}", attribute=name)
        out[name] = col.kind
    return out
