"""Attribute values per slot as growable columns, handed to :mod:`shoal.filters` as column objects.

Types: ``int`` (int64 + a presence mask), ``float`` (float64, NaN missing), ``keyword`` (dictionary-encoded int32
codes, -1 missing) and ``tags`` (dictionary-encoded, CSR). Columns are append-only: a replaced record gets a new slot,
so a column over slots ``[0, n)`` never changes once written and can be cached.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .schema import Schema


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


def grow(arr: np.ndarray, need: int, fill) -> np.ndarray:
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
                self.num[name] = grow(self.num[name], hi, 0)
                self.present[name] = grow(self.present[name], hi, False)
                if value is None:
                    self.present[name][lo:hi] = False
                else:
                    self.num[name][lo:hi] = value[0]
                    self.present[name][lo:hi] = value[1]
            elif typ == "float":
                self.num[name] = grow(self.num[name], hi, np.nan)
                self.num[name][lo:hi] = np.nan if value is None else value
            elif typ == "keyword":
                self.kw[name] = grow(self.kw[name], hi, -1)
                voc = self.vocab[name]
                self.kw[name][lo:hi] = -1 if value is None else [-1 if v is None else voc.encode(v) for v in value]
            else:
                voc = self.vocab[name]
                ptr = grow(self.tag_ptr[name], hi + 1, 0)
                codes = [voc.encode(t) for tags in value for t in tags] if value is not None else []
                lens = np.array([len(t) for t in value], dtype=np.int64) if value is not None else np.zeros(n, np.int64)
                start = self.tag_len[name]
                ptr[lo + 1:hi + 1] = start + np.cumsum(lens)
                self.tag_ptr[name] = ptr
                buf = grow(self.tag_codes[name], start + len(codes), -1)
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
        """Attribute values of one slot as Python values; missing numbers and keywords are left out, tags are always
        a list (a record without tags has the empty set, as filters see it: docs/filters.md)."""
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
