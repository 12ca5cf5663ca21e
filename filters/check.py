"""Type checking: does an expression fit the attributes (a schema ``{name: type}``, or any schema)?"""

from __future__ import annotations

from typing import Iterable, Mapping

from .ast import (MAX_DEPTH, TYPES, And, Between, Compare, Contains, Expr, FilterSyntaxError, FilterTypeError, In, Not,
                  Or, Predicate, Value, leaf_predicates)


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap neighbours)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option nearest to ``word`` if it is a plausible typo of it (case-insensitive), else None."""
    best = min(((_edits(word.lower(), o.lower()), o) for o in options), default=None)
    if best is None or best[0] > max(1, len(word) // 3) or best[0] >= len(best[1]):
        return None
    return best[1]


def _vtype(v: Value) -> str:
    return "string" if isinstance(v, str) else ("boolean" if isinstance(v, bool) else "number")


def check_schema(schema: Mapping[str, str]) -> None:
    if not isinstance(schema, Mapping):
        raise FilterTypeError(f"schema must be a mapping {{name: type}}, got {type(schema).__name__}")
    for k, t in schema.items():
        if t not in TYPES:
            raise FilterTypeError(f"attribute {k!r} has unknown type {t!r}; types are {', '.join(TYPES)}",
                                  attribute=k)


def check_predicate(p: Predicate, schema: Mapping[str, str] | None, text: str | None = None,
                pos: int | None = None) -> None:
    """Raise FilterTypeError if ``p`` cannot be evaluated (for ``schema`` if given, else in any schema)."""
    def err(msg: str):
        raise FilterTypeError(msg, attribute=p.attr, text=text, position=pos)

    a = p.attr
    values = p.values if isinstance(p, In) else (p.low, p.high) if isinstance(p, Between) else (p.value,)
    kinds = {"string" if isinstance(v, str) else "number" for v in values}
    if len(kinds) > 1:
        err(f"{a!r}: the list mixes strings and numbers")
    is_str = kinds == {"string"}
    if isinstance(p, Compare) and p.op not in ("=", "!=") and is_str:
        err(f"{a!r}: '{p.op}' compares numbers; strings (keywords) only support = and !=")
    if isinstance(p, Between) and is_str:
        err(f"{a!r}: 'between' needs numbers; keywords only support =, !=, in")
    if isinstance(p, Contains) and not is_str:
        err(f"{a!r}: 'contains' takes a string tag, got {_vtype(p.value)} {p.value!r}")
    if schema is None:
        return
    t = schema.get(a)
    if t is None:
        known = ", ".join(sorted(schema)) or "(none)"
        guess = closest(a, schema)
        err(f"unknown attribute {a!r}" + (f" (did you mean {guess!r}?)" if guess else "") + f"; known: {known}")
    what = {"Compare": f"'{getattr(p, 'op', '')}'", "In": "'not in'" if getattr(p, "negated", False) else "'in'",
            "Between": "'between'", "Contains": "'contains'"}[type(p).__name__]
    if t in ("int", "float"):
        if isinstance(p, Contains):
            err(f"{a!r} is {t}: 'contains' applies to tags attributes; use =, <, between, in")
        if is_str:
            err(f"{a!r} is {t}: cannot compare it with a string")
    elif t == "keyword":
        if isinstance(p, Contains):
            err(f"{a!r} is keyword: 'contains' applies to tags attributes; use {a} = \"...\"")
        if isinstance(p, Between) or (isinstance(p, Compare) and p.op not in ("=", "!=")):
            err(f"{a!r} is keyword: {what} does not apply to keywords; use =, !=, in, not in")
        if not is_str:
            err(f"{a!r} is keyword: compare it with a string, got {_vtype(values[0])} {values[0]!r}")
    else:  # tags
        if not isinstance(p, Contains):
            alt = "contains any (...)" if isinstance(p, In) else "contains \"...\""
            err(f"{a!r} is tags: {what} does not apply to tags; use {a} {alt}")


def check(expr: Expr, schema: Mapping[str, str] | None = None) -> Expr:
    """Type-check ``expr`` (against ``schema`` {name: "int"|"float"|"keyword"|"tags"} if given); return it."""
    if schema is not None:
        check_schema(schema)
    stack = [(expr, 0)]
    while stack:
        e, d = stack.pop()
        if d > MAX_DEPTH:
            raise FilterSyntaxError(f"filter nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(e, (And, Or)):
            stack.extend((a, d + 1) for a in e.args)
        elif isinstance(e, Not):
            stack.append((e.arg, d + 1))
    for p in leaf_predicates(expr):
        check_predicate(p, schema)
    return expr
