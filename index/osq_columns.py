"""OSQ's exact attribute columns: filters given in any form, columns grown by ``add``, their arrays on disk."""

from __future__ import annotations

import numpy as np

from .. import filters


def as_expr(expr):
    """Accept an AST, its JSON dict or its text form."""
    if isinstance(expr, str):
        return filters.parse(expr)
    if isinstance(expr, dict):
        return filters.from_json(expr)
    return expr


def col_nbytes(col) -> int:
    """Bytes of an exact attribute column in memory, with its range index once built."""
    if col is None:
        return 0
    idx = col.__dict__.get("_sorted")
    return int(col.nbytes) + (idx[1].nbytes + idx[2].nbytes if idx is not None else 0)


def missing_like(col, n: int):
    if isinstance(col, filters.NumericColumn):
        if col.kind == "int":
            return filters.NumericColumn(np.zeros(n, np.int64), np.ones(n, bool))
        return filters.NumericColumn(np.full(n, np.nan))
    if isinstance(col, filters.KeywordColumn):
        return filters.KeywordColumn(np.full(n, -1, np.int32), col.vocab)
    return filters.TagsColumn(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), col.vocab)


def merge_vocab(old, new) -> tuple[list, np.ndarray, np.ndarray]:
    """Union vocabulary (old words keep their codes) and code maps for both columns."""
    vocab = list(old.vocab)
    lookup = {w: i for i, w in enumerate(vocab)}
    for w in new.vocab:
        if w not in lookup:
            lookup[w] = len(vocab)
            vocab.append(w)
    new_map = np.array([lookup[w] for w in new.vocab], dtype=np.int32)
    return vocab, np.arange(len(old.vocab), dtype=np.int32), new_map


def concat_columns(old, new):
    if isinstance(new, filters.NumericColumn):
        if old.kind != new.kind:
            vals = np.concatenate([old.values.astype(np.float64), new.values.astype(np.float64)])
            return filters.NumericColumn(vals, np.concatenate([old.missing, new.missing]))
        return filters.NumericColumn(np.concatenate([old.values, new.values]),
                                     np.concatenate([old.missing, new.missing]))
    vocab, _, nmap = merge_vocab(old, new)
    if isinstance(new, filters.KeywordColumn):
        codes = np.where(new.codes >= 0, nmap[np.maximum(new.codes, 0)] if nmap.size else -1, -1)
        return filters.KeywordColumn(np.concatenate([old.codes, codes.astype(np.int32)]), vocab)
    codes = nmap[new.codes] if new.codes.size else new.codes
    indptr = np.concatenate([old.indptr, old.indptr[-1] + new.indptr[1:]])
    return filters.TagsColumn(indptr, np.concatenate([old.codes, codes]).astype(np.int32), vocab)


def column_arrays(pre: str, col) -> dict[str, np.ndarray]:
    if isinstance(col, filters.NumericColumn):
        return {f"{pre}/values": col.values, f"{pre}/missing": col.missing}
    if isinstance(col, filters.KeywordColumn):
        return {f"{pre}/kw": col.codes}
    return {f"{pre}/indptr": col.indptr, f"{pre}/tags": col.codes}


def column_from_arrays(pre: str, entry: dict, a: dict):
    kind = entry["kind"]
    if kind in ("int", "float"):
        return filters.NumericColumn(np.array(a[f"{pre}/values"]), np.array(a[f"{pre}/missing"]))
    if kind == "keyword":
        return filters.KeywordColumn(np.array(a[f"{pre}/kw"]), entry["vocab"])
    return filters.TagsColumn(np.array(a[f"{pre}/indptr"]), np.array(a[f"{pre}/tags"]), entry["vocab"])
