"""The stable JSON form of the AST (it travels over gRPC and in Lambda payloads; see ``docs/filters.md``)."""

from __future__ import annotations

from typing import Any, Mapping

from .ast import COMPARE_OPS, MAX_DEPTH, And, Between, Compare, Contains, Expr, FilterSyntaxError, In, Not, Or
from .check import check


def to_json(expr: Expr) -> dict:
    """The stable JSON form (plain dicts/lists/str/int/float/bool; see docs/filters.md)."""
    if isinstance(expr, Compare):
        return {"op": expr.op, "attr": expr.attr, "value": expr.value}
    if isinstance(expr, In):
        return {"op": "not in" if expr.negated else "in", "attr": expr.attr, "values": list(expr.values)}
    if isinstance(expr, Between):
        return {"op": "between", "attr": expr.attr, "low": expr.low, "high": expr.high}
    if isinstance(expr, Contains):
        return {"op": "contains", "attr": expr.attr, "value": expr.value}
    if isinstance(expr, (And, Or)):
        return {"op": "and" if isinstance(expr, And) else "or", "args": [to_json(a) for a in expr.args]}
    if isinstance(expr, Not):
        return {"op": "not", "arg": to_json(expr.arg)}
    raise FilterSyntaxError(f"not a filter expression: {expr!r}")


_JSON_KEYS = {**{op: ("attr", "value") for op in COMPARE_OPS}, "in": ("attr", "values"),
              "not in": ("attr", "values"), "between": ("attr", "high", "low"), "contains": ("attr", "value"),
              "and": ("args",), "or": ("args",), "not": ("arg",)}


def _from_json(obj: Any, path: str, depth: int = 0) -> Expr:
    def bad(msg: str):
        raise FilterSyntaxError(f"invalid filter JSON at {path}: {msg}")

    if depth > MAX_DEPTH:
        bad(f"filter nested too deeply (more than {MAX_DEPTH} levels)")
    if not isinstance(obj, Mapping):
        bad(f"expected an object with an 'op' key, got {type(obj).__name__}")
    op = obj.get("op")
    if not isinstance(op, str) or op not in _JSON_KEYS:
        bad(f"unknown op {op!r}; expected one of {', '.join(repr(k) for k in _JSON_KEYS)}")
    want = set(_JSON_KEYS[op]) | {"op"}
    if set(obj) != want:
        extra, missing = sorted(map(str, set(obj) - want)), sorted(want - set(obj))
        bad(f"op {op!r} takes keys {sorted(want)}" + (f"; unexpected {extra}" if extra else "")
            + (f"; missing {missing}" if missing else ""))
    try:
        if op in ("and", "or"):
            args = obj["args"]
            if not isinstance(args, list) or not args:
                bad(f"'args' must be a non-empty list, got {args!r}")
            parts = tuple(_from_json(a, f"{path}.args[{i}]", depth + 1) for i, a in enumerate(args))
            return And(parts) if op == "and" else Or(parts)
        if op == "not":
            return Not(_from_json(obj["arg"], f"{path}.arg", depth + 1))
        if op in ("in", "not in"):
            if not isinstance(obj["values"], list):
                bad(f"'values' must be a list, got {obj['values']!r}")
            return In(obj["attr"], tuple(obj["values"]), op == "not in")
        if op == "between":
            return Between(obj["attr"], obj["low"], obj["high"])
        if op == "contains":
            return Contains(obj["attr"], obj["value"])
        return Compare(obj["attr"], op, obj["value"])
    except FilterSyntaxError as e:
        if e.message.startswith("invalid filter JSON"):
            raise
        bad(e.message)


def from_json(obj: Any, schema: Mapping[str, str] | None = None) -> Expr:
    """Parse the JSON form strictly (exact keys, typed values) and type-check it (against ``schema`` if given)."""
    return check(_from_json(obj, "$"), schema)
