"""The filter language's AST: small frozen dataclasses, their walks, their errors and their text form.

``str(node)`` (:func:`to_text`) prints filter text that parses back to an equal node, so the quoting rules the
tokenizer (:mod:`.text`) reads are defined here, next to the printer that must respect them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Union

import numpy as np


TYPES = ("int", "float", "keyword", "tags")
COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 100  # nesting limit for text, JSON and checked ASTs (keeps recursion far from Python's limit)
KEYWORDS = ("and", "or", "not", "in", "between", "contains", "any", "all", "true", "false")


# ----------------------------------------------------------------------------------------------------------- errors
def _excerpt(text: str, position: int) -> str:
    """Two lines: the text (one line, windowed around ``position``) and a caret under ``position``."""
    shown = "".join(" " if c in "\n\r\t" else c for c in text)
    start = max(0, position - 60)
    end = min(len(shown), position + 60)
    pre = "..." if start > 0 else ""
    post = "..." if end < len(shown) else ""
    return f"  {pre}{shown[start:end]}{post}\n  {' ' * (len(pre) + position - start)}^"


class FilterSyntaxError(ValueError):
    """A malformed filter (text or JSON). ``position`` is the 0-based character offset (None for JSON input)."""

    status = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, text: str | None = None, position: int | None = None,
                 hint: str | None = None):
        self.message, self.text, self.position, self.hint = message, text, position, hint
        full = message
        if position is not None:
            full += f" at position {position}"
            if text is not None:
                full += "\n" + _excerpt(text, position)
        if hint:
            full += f"\nhint: {hint}"
        super().__init__(full)


class FilterTypeError(ValueError):
    """A well-formed filter that does not fit the attributes: unknown attribute, wrong value type, wrong operator.

    ``attribute`` names the attribute concerned; ``position`` is set when the filter came from text.
    """

    status = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, attribute: str | None = None, text: str | None = None,
                 position: int | None = None):
        self.message, self.attribute, self.text, self.position = message, attribute, text, position
        full = message
        if position is not None and text is not None:
            full += f" (at position {position})\n" + _excerpt(text, position)
        super().__init__(full)


# -------------------------------------------------------------------------------------------------------------- AST
Value = Union[bool, int, float, str]


def _check_attr(attr: Any) -> None:
    if not isinstance(attr, str) or not attr:
        raise FilterSyntaxError(f"attribute name must be a non-empty string, got {attr!r}")


def _value(v: Any) -> Value:
    """``v`` as a plain Python bool/int/float/str (numpy scalars converted), or FilterSyntaxError."""
    if isinstance(v, (np.generic, str)) and not isinstance(v, (np.object_, np.void)):
        v = str(v) if isinstance(v, str) else v.item()
    if isinstance(v, (bool, str)):
        return v
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise FilterSyntaxError(f"integer {v} is outside the int64 range")
        return int(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise FilterSyntaxError(f"number {v!r} is not finite")
        return float(v)
    raise FilterSyntaxError(f"a value must be a string, number or boolean, got {type(v).__name__} {v!r}")


class _Node:
    """Base of the AST node classes: ``str(node)`` is its filter text."""

    __slots__ = ()

    def __str__(self) -> str:
        return to_text(self)


@dataclass(frozen=True)
class Compare(_Node):
    """``attr op value``; ``op`` in ``=, !=, <, <=, >, >=``."""

    attr: str
    op: str
    value: Value

    def __post_init__(self):
        _check_attr(self.attr)
        if self.op not in COMPARE_OPS:
            raise FilterSyntaxError(f"unknown comparison {self.op!r}; expected one of {', '.join(COMPARE_OPS)}")
        object.__setattr__(self, "value", _value(self.value))


@dataclass(frozen=True)
class In(_Node):
    """``attr in (values...)``, or ``attr not in (values...)`` when ``negated`` (false where ``attr`` is missing)."""

    attr: str
    values: tuple
    negated: bool = False

    def __post_init__(self):
        _check_attr(self.attr)
        if isinstance(self.values, (str, bytes)) or not isinstance(self.values, Iterable):
            raise FilterSyntaxError(f"'in' needs a list of values, got {self.values!r}")
        object.__setattr__(self, "values", tuple(_value(v) for v in self.values))
        if not self.values:
            raise FilterSyntaxError("'in' needs at least one value")
        if isinstance(self.negated, np.bool_):
            object.__setattr__(self, "negated", bool(self.negated))
        if not isinstance(self.negated, bool):
            raise FilterSyntaxError(f"'negated' must be a boolean, got {self.negated!r}")


@dataclass(frozen=True)
class Between(_Node):
    """``attr between low and high`` (both ends inclusive)."""

    attr: str
    low: Value
    high: Value

    def __post_init__(self):
        _check_attr(self.attr)
        object.__setattr__(self, "low", _value(self.low))
        object.__setattr__(self, "high", _value(self.high))


@dataclass(frozen=True)
class Contains(_Node):
    """``attr contains value`` for a tags attribute: the row's tag set holds ``value``."""

    attr: str
    value: Value

    def __post_init__(self):
        _check_attr(self.attr)
        object.__setattr__(self, "value", _value(self.value))


def _check_args(name: str, args: Any) -> tuple:
    if not isinstance(args, Iterable) or isinstance(args, (str, bytes)):
        raise FilterSyntaxError(f"'{name}' needs a list of expressions, got {args!r}")
    args = tuple(args)
    if not args:
        raise FilterSyntaxError(f"'{name}' needs at least one expression")
    for a in args:
        if not isinstance(a, NODE_TYPES):
            raise FilterSyntaxError(f"'{name}' arguments must be filter expressions, got {a!r}")
    return args


@dataclass(frozen=True)
class And(_Node):
    args: tuple

    def __post_init__(self):
        object.__setattr__(self, "args", _check_args("and", self.args))


@dataclass(frozen=True)
class Or(_Node):
    args: tuple

    def __post_init__(self):
        object.__setattr__(self, "args", _check_args("or", self.args))


@dataclass(frozen=True)
class Not(_Node):
    arg: Any

    def __post_init__(self):
        if not isinstance(self.arg, NODE_TYPES):
            raise FilterSyntaxError(f"'not' argument must be a filter expression, got {self.arg!r}")


Predicate = Union[Compare, In, Between, Contains]
Expr = Union[Compare, In, Between, Contains, And, Or, Not]
PREDICATE_TYPES = (Compare, In, Between, Contains)
NODE_TYPES = (Compare, In, Between, Contains, And, Or, Not)


def attributes(expr: Expr) -> set[str]:
    """Names of the attributes an expression reads."""
    return {p.attr for p in leaf_predicates(expr)}


def leaf_predicates(expr: Expr) -> list[Predicate]:
    """The distinct predicates (leaves) of ``expr`` in left-to-right order of first appearance."""
    out: dict = {}
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, PREDICATE_TYPES):
            out.setdefault(e, None)
        elif isinstance(e, (And, Or)):
            stack.extend(reversed(e.args))
        elif isinstance(e, Not):
            stack.append(e.arg)
        else:
            raise FilterSyntaxError(f"not a filter expression: {e!r}")
    return list(out)


# ---------------------------------------------------------------------------------------------------- text form
def ident_start(c: str) -> bool:
    return c.isalpha() or c == "_"


def ident_char(c: str) -> bool:
    return c.isalnum() or c in "_."


def quote(s: str, q: str = '"') -> str:
    out = [q]
    for c in s:
        if c == "\\" or c == q:
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append(q)
    return "".join(out)


def _name(attr: str) -> str:
    plain = ident_start(attr[0]) and all(ident_char(c) for c in attr) and attr.lower() not in KEYWORDS
    return attr if plain else quote(attr, "`")


def _lit(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return quote(v)
    return repr(v)


def to_text(expr: Expr) -> str:
    """Filter text that parses back to an equal AST."""
    if isinstance(expr, Compare):
        return f"{_name(expr.attr)} {expr.op} {_lit(expr.value)}"
    if isinstance(expr, In):
        return f"{_name(expr.attr)} {'not in' if expr.negated else 'in'} ({', '.join(map(_lit, expr.values))})"
    if isinstance(expr, Between):
        return f"{_name(expr.attr)} between {_lit(expr.low)} and {_lit(expr.high)}"
    if isinstance(expr, Contains):
        return f"{_name(expr.attr)} contains {_lit(expr.value)}"

    def sub(e: Expr) -> str:
        return f"({to_text(e)})" if isinstance(e, (And, Or)) else to_text(e)

    if isinstance(expr, (And, Or)):
        if len(expr.args) == 1:  # a one-argument and/or prints as its argument
            return to_text(expr.args[0])
        return f" {'and' if isinstance(expr, And) else 'or'} ".join(sub(a) for a in expr.args)
    if isinstance(expr, Not):
        return f"not {sub(expr.arg)}"
    raise FilterSyntaxError(f"not a filter expression: {expr!r}")
