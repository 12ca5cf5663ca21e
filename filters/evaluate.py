"""Evaluation over columns: exact (a boolean mask) and three-valued (sure / maybe, Kleene's rules).

Semantics: a predicate on a missing value is false (so ``not (x < 3)`` is true where ``x`` is missing, while
``x not in (...)`` is false there). ``evaluate3`` combines per-predicate (sure, maybe) results with Kleene's rules so
``sure ⊆ truth ⊆ sure | maybe`` holds for any truth consistent with the leaves.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Mapping

import numpy as np

from .ast import (INT64_MAX, INT64_MIN, PREDICATE_TYPES, And, Between, Compare, Contains, Expr, FilterTypeError, In,
                  Not, Or, Predicate, Value, attributes)
from .check import check
from .columns import Column, KeywordColumn, NumericColumn, VocabColumn, schema_of


_OPS = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
        ">=": operator.ge}


def _numeric_cmp(col: NumericColumn, op: str, v: Value) -> np.ndarray:
    """Exact ``x op v`` (Python number semantics, no rounding of int64 or large ints), false where missing."""
    x, n = col.values, len(col.values)
    v = int(v) if isinstance(v, bool) else v
    if col.kind == "float":
        if isinstance(v, int):
            f = float(v)
            if int(f) != v:  # v lies strictly between two adjacent doubles
                below, above = (np.nextafter(f, -np.inf), f) if f > v else (f, np.nextafter(f, np.inf))
                if op in ("<", "<="):
                    op, v = "<=", float(below)
                elif op in (">", ">="):
                    op, v = ">=", float(above)
                elif op == "=":
                    return np.zeros(n, dtype=bool)
                else:
                    return ~col.missing
            else:
                v = f
        m = _OPS[op](x, v)
    else:
        if isinstance(v, float):
            if v.is_integer():
                v = int(v)
            elif op in ("<", "<="):
                op, v = "<=", math.floor(v)
            elif op in (">", ">="):
                op, v = ">=", math.ceil(v)
            elif op == "=":
                return np.zeros(n, dtype=bool)
            else:
                return ~col.missing
        if v > INT64_MAX or v < INT64_MIN:
            # beyond the int64 range every value is below (or above) v: only the matching inequalities hold, and
            # "=" never does
            everything = op in (("<", "<=", "!=") if v > INT64_MAX else (">", ">=", "!="))
            m = np.full(n, everything, dtype=bool)
        else:
            m = _OPS[op](x, np.int64(v))
    return m & ~col.missing if col._any_missing else m


def _exact_numbers(col: NumericColumn, values: tuple) -> np.ndarray:
    """Literal values that some element of ``col`` can equal exactly, in the column's dtype."""
    keep = []
    for v in values:
        v = int(v) if isinstance(v, bool) else v
        if col.kind == "float":
            if isinstance(v, int) and int(float(v)) != v:
                continue
            keep.append(float(v))
        else:
            if isinstance(v, float):
                if not v.is_integer():
                    continue
                v = int(v)
            if INT64_MIN <= v <= INT64_MAX:
                keep.append(v)
    return np.array(keep, dtype=col.values.dtype)


def _keyword_lut(col: VocabColumn, values: tuple) -> np.ndarray:
    """bool (len(vocab) + 1,): True at the codes of ``values``; the last slot (code -1 = missing) is False."""
    lut = np.zeros(len(col.vocab) + 1, dtype=bool)
    codes = [c for c in (col.code_of(v) for v in values) if c >= 0]
    lut[codes] = True
    return lut


def evaluate_predicate(pred: Predicate, columns: Mapping[str, Column], n: int) -> np.ndarray:
    """Exact bool mask (n,) of one predicate (assumed type-checked; see ``evaluate``)."""
    col = columns[pred.attr]
    if isinstance(pred, Contains):
        hit = np.zeros(n, dtype=bool)
        code = col.code_of(pred.value)
        if code >= 0:
            hit[col.row_of_entry[col.codes == code]] = True
        return hit
    if isinstance(col, KeywordColumn):
        values = (pred.value,) if isinstance(pred, Compare) else pred.values
        lut = _keyword_lut(col, values)
        if (isinstance(pred, Compare) and pred.op == "!=") or (isinstance(pred, In) and pred.negated):
            lut = ~lut
            lut[-1] = False
        return lut[col.codes]
    if isinstance(pred, Compare):
        return _numeric_cmp(col, pred.op, pred.value)
    if isinstance(pred, Between):
        return _numeric_cmp(col, ">=", pred.low) & _numeric_cmp(col, "<=", pred.high)
    vals = _exact_numbers(col, pred.values)
    if len(vals) <= 8:
        # a few values: one comparison pass each (np.isin sorts or builds a table: ~1.4 ms at 60,000 rows against
        # ~0.1 ms for five comparisons)
        m = np.zeros(n, dtype=bool)
        for v in vals:
            m |= col.values == v
    else:
        m = np.isin(col.values, vals)
    if pred.negated:
        m = ~m
    return m & ~col.missing


def range_candidates(pred: Predicate, col: Column) -> np.ndarray | None:
    """A superset of the rows where a range predicate holds, from the column's range index, or None.

    Handles ``Compare`` with ``<, <=, >, >=, =`` and ``Between`` on a :class:`NumericColumn` (anything else: None):
    two binary searches in :meth:`NumericColumn.sorted_view`, so a selective range costs O(log n + matches) instead
    of a pass over every row. The bounds are compared in float64: exact below 2**53 in magnitude; beyond, where
    rounding an int64 value or literal is still monotone, widened by one ulp each way with the ends included, so the
    result may then hold a few rows the exact comparison rejects and never misses one. Evaluate the predicate on
    these rows to get the matches. Rows come in value order.
    """
    if not isinstance(col, NumericColumn):
        return None
    lo, hi = -math.inf, math.inf  # literals are int64 or finite float64 (see _value): float() is safe
    if isinstance(pred, Compare) and pred.op in ("<", "<=", ">", ">=", "="):
        if isinstance(pred.value, bool) or not isinstance(pred.value, (int, float)):
            return None
        v = float(pred.value)
        if pred.op in ("<", "<="):
            hi = v
        elif pred.op in (">", ">="):
            lo = v
        else:
            lo = hi = v
    elif isinstance(pred, Between):
        if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in (pred.low, pred.high)):
            return None
        lo, hi = float(pred.low), float(pred.high)
    else:
        return None
    order, keys = col.sorted_view()
    strict_lo = isinstance(pred, Compare) and pred.op == ">"
    strict_hi = isinstance(pred, Compare) and pred.op == "<"
    # below 2**53 in magnitude every int64 and float64 bound is exact in float64, so the bounds (and strictness)
    # hold as written; beyond, widen by one ulp and include the ends (the float after the largest finite one is
    # inf, as wanted, so that overflow is not an error)
    with np.errstate(over="ignore"):
        if abs(lo) < _BIG_FLOAT or lo == -math.inf:
            i0 = int(np.searchsorted(keys, lo, side="right" if strict_lo else "left"))
        else:
            i0 = int(np.searchsorted(keys, np.nextafter(lo, -math.inf), side="left"))
        if abs(hi) < _BIG_FLOAT or hi == math.inf:
            i1 = int(np.searchsorted(keys, hi, side="left" if strict_hi else "right"))
        else:
            i1 = int(np.searchsorted(keys, np.nextafter(hi, math.inf), side="right"))
    return order[i0:max(i0, i1)]


_BIG_FLOAT = float(2 ** 53)


def evaluate(expr: Expr | None, columns: Mapping[str, Column], n: int) -> np.ndarray:
    """Exact, vectorised evaluation of ``expr`` over attribute columns.

    Parameters
    ----------
    expr : Expr or None
        The filter (None matches every row).
    columns : dict[str, NumericColumn | KeywordColumn | TagsColumn]
        Columns of length ``n``; must hold every attribute ``expr`` reads (else FilterTypeError naming it).
    n : int
        Number of rows.

    Returns
    -------
    numpy.ndarray
        bool (n,): True where the row matches.
    """
    if expr is None:
        return np.ones(n, dtype=bool)
    schema = schema_of(columns)
    for name in attributes(expr):
        if name in columns and len(columns[name]) != n:
            raise ValueError(f"column {name!r} has {len(columns[name])} rows, expected {n}")
    check(expr, schema)
    cache: dict = {}

    def leaf(p: Predicate):
        if p not in cache:
            cache[p] = evaluate_predicate(p, columns, n)
        return cache[p]

    def ev(e: Expr) -> np.ndarray:
        if isinstance(e, PREDICATE_TYPES):
            return leaf(e)
        if isinstance(e, And):
            return np.logical_and.reduce([ev(a) for a in e.args]) if len(e.args) > 1 else ev(e.args[0]).copy()
        if isinstance(e, Or):
            return np.logical_or.reduce([ev(a) for a in e.args]) if len(e.args) > 1 else ev(e.args[0]).copy()
        return ~ev(e.arg)

    # every leaf mask is a fresh array (comparison results, look-up gathers, new allocations) and the leaf cache
    # dies with this call, so the result is the caller's to keep or modify without a copy (at 390,000 rows a
    # copy cost ~0.25 ms, as much as the comparison itself: a fresh 390 KB buffer page-faults in)
    return ev(expr)


# ---------------------------------------------------------------------------------------------- three-valued logic
def evaluate3(expr: Expr, leaf: Callable[[Predicate], tuple], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Kleene three-valued evaluation.

    Parameters
    ----------
    expr : Expr
    leaf : callable
        ``leaf(pred) -> (sure, maybe)``, two bool arrays (n,) for one predicate: *sure* rows certainly match, *maybe*
        rows might. Called once per distinct predicate. Overlap is resolved in favour of *sure*.
    n : int

    Returns
    -------
    (sure, maybe) : tuple of numpy.ndarray
        Disjoint bool (n,) arrays with ``sure ⊆ truth ⊆ sure | maybe`` for every truth consistent with the leaves.
    """
    cache: dict = {}

    def get(p: Predicate):
        if p not in cache:
            res = leaf(p)
            if not isinstance(res, tuple) or len(res) != 2:
                raise ValueError("leaf(pred) must return a (sure, maybe) pair of bool arrays")
            sure, maybe = (np.asarray(a, dtype=bool) for a in res)
            if sure.shape != (n,) or maybe.shape != (n,):
                raise ValueError(f"leaf results must have shape ({n},), got {sure.shape} and {maybe.shape}")
            cache[p] = (sure, maybe & ~sure)
        return cache[p]

    def ev(e: Expr):
        if isinstance(e, PREDICATE_TYPES):
            return get(e)
        if isinstance(e, Not):
            s, m = ev(e.arg)
            return ~(s | m), m
        parts = [ev(a) for a in e.args]
        if isinstance(e, And):
            sure = np.logical_and.reduce([s for s, _ in parts])
            no = np.logical_or.reduce([~(s | m) for s, m in parts])
        else:
            sure = np.logical_or.reduce([s for s, _ in parts])
            no = np.logical_and.reduce([~(s | m) for s, m in parts])
        return sure, ~(sure | no)

    sure, maybe = ev(expr)
    return sure.copy(), maybe.copy()


def exact_leaf(columns: Mapping[str, Column], n: int) -> Callable[[Predicate], tuple]:
    """A ``leaf`` for ``evaluate3`` that evaluates predicates exactly (maybe is empty)."""
    def leaf(p: Predicate):
        return evaluate_predicate(p, columns, n), np.zeros(n, dtype=bool)
    return leaf


def interval_predicate(pred: Predicate, lo, hi, missing=None) -> tuple[np.ndarray, np.ndarray]:
    """(sure, maybe) of a numeric predicate for rows whose value is only known to lie in ``[lo, hi]``.

    Parameters
    ----------
    pred : Compare, In or Between
        With numeric values.
    lo, hi : numpy.ndarray
        float64 (n,): closed bounds of each row's value (e.g. its quantization cell), lo <= hi.
    missing : numpy.ndarray, optional
        bool (n,): rows with no value (neither sure nor maybe).
    """
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    if isinstance(pred, Contains) or any(isinstance(v, str) for v in
                                         (pred.values if isinstance(pred, In) else
                                          (pred.low, pred.high) if isinstance(pred, Between) else (pred.value,))):
        raise FilterTypeError(f"{pred.attr!r}: interval bounds apply to numeric predicates only",
                              attribute=pred.attr)

    def point(value):
        v = float(value)
        if v == value:
            return v, v, v
        # a large int rounded to float64: keep a margin of one ulp either side so bounds stay conservative
        return np.nextafter(v, -np.inf), v, np.nextafter(v, np.inf)

    def eq(value):
        below, v, above = point(value)
        sure = (lo == v) & (hi == v) & (v == value)
        return sure, (lo <= above) & (hi >= below) & ~sure

    if isinstance(pred, Compare):
        below, v, above = point(pred.value)
        op = pred.op
        if op == "<":
            sure, possible = hi < below, lo < above
        elif op == "<=":
            sure, possible = hi <= below, lo <= above
        elif op == ">":
            sure, possible = lo > above, hi > below
        elif op == ">=":
            sure, possible = lo >= above, hi >= below
        else:
            s, m = eq(pred.value)
            sure, possible = (s, s | m) if op == "=" else (~(s | m), ~s)
    elif isinstance(pred, Between):
        (lb, _, la), (hb, _, ha) = point(pred.low), point(pred.high)
        sure = (lo >= la) & (hi <= hb)
        possible = (hi >= lb) & (lo <= ha)
    else:
        parts = [eq(v) for v in pred.values]
        any_sure = np.logical_or.reduce([s for s, _ in parts])
        any_possible = np.logical_or.reduce([s | m for s, m in parts])
        sure, possible = (~any_possible, ~any_sure) if pred.negated else (any_sure, any_possible)
    keep = ~(np.isnan(lo) | np.isnan(hi))
    if missing is not None:
        keep &= ~np.asarray(missing, dtype=bool)
    sure = sure & keep
    maybe = possible & ~sure & keep
    return sure, maybe
