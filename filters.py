"""shoal's filter language: parser, AST, JSON form, exact and three-valued evaluation.

A leaf module (stdlib + numpy only). Text such as ``price < 10 and color in ("red", "blue") and not tags contains
"sale"`` is parsed by a hand-written tokenizer and recursive-descent parser (never ``eval``) into small frozen
dataclasses; the AST has a stable JSON form (``to_json`` / ``from_json``) and a text form (``to_text``) that re-parses
to an equal AST. Grammar, JSON form and semantics: ``docs/filters.md``.

Semantics: a predicate on a missing value is false (so ``not (x < 3)`` is true where ``x`` is missing, while
``x not in (...)`` is false there). ``evaluate3`` combines per-predicate (sure, maybe) results with Kleene's rules so
``sure ⊆ truth ⊆ sure | maybe`` holds for any truth consistent with the leaves.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np

__all__ = [
    "FilterSyntaxError", "FilterTypeError", "Compare", "In", "Between", "Contains", "And", "Or", "Not", "Expr",
    "Predicate", "TYPES", "parse", "compile", "check", "to_json", "from_json", "to_text", "attributes",
    "leaf_predicates", "NumericColumn", "KeywordColumn", "TagsColumn", "schema_of", "evaluate",
    "evaluate_predicate", "evaluate3", "exact_leaf", "interval_predicate",
]

TYPES = ("int", "float", "keyword", "tags")
COMPARE_OPS = ("=", "!=", "<", "<=", ">", ">=")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 100  # nesting limit for text, JSON and checked ASTs (keeps recursion far from Python's limit)
_KEYWORDS = ("and", "or", "not", "in", "between", "contains", "any", "all", "true", "false")


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
        if not _INT64_MIN <= v <= _INT64_MAX:
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
        if not isinstance(a, _NODE_TYPES):
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
        if not isinstance(self.arg, _NODE_TYPES):
            raise FilterSyntaxError(f"'not' argument must be a filter expression, got {self.arg!r}")


Predicate = Union[Compare, In, Between, Contains]
Expr = Union[Compare, In, Between, Contains, And, Or, Not]
_PRED_TYPES = (Compare, In, Between, Contains)
_NODE_TYPES = (Compare, In, Between, Contains, And, Or, Not)


def attributes(expr: Expr) -> set[str]:
    """Names of the attributes an expression reads."""
    return {p.attr for p in leaf_predicates(expr)}


def leaf_predicates(expr: Expr) -> list[Predicate]:
    """The distinct predicates (leaves) of ``expr`` in left-to-right order of first appearance."""
    out: dict = {}
    stack = [expr]
    while stack:
        e = stack.pop()
        if isinstance(e, _PRED_TYPES):
            out.setdefault(e, None)
        elif isinstance(e, (And, Or)):
            stack.extend(reversed(e.args))
        elif isinstance(e, Not):
            stack.append(e.arg)
        else:
            raise FilterSyntaxError(f"not a filter expression: {e!r}")
    return list(out)


# ------------------------------------------------------------------------------------------------------- tokenizer
@dataclass(frozen=True)
class _Tok:
    kind: str  # ident, kw, str, num, op, (, ), ',', eof
    value: Any
    pos: int
    end: int


def _ident_start(c: str) -> bool:
    return c.isalpha() or c == "_"


def _ident_char(c: str) -> bool:
    return c.isalnum() or c in "_."


_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "`": "`", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f",
            "0": "\0", "/": "/"}


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string starting at ``text[i]`` (the quote); return (value, index after the closing quote)."""
    quote, start, out = text[i], i, []
    i += 1
    while i < len(text):
        c = text[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(text):
                break
            e = text[i + 1]
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
                i += 2
                continue
            width = {"u": 4, "U": 8}.get(e)
            digits = text[i + 2:i + 2 + width] if width else ""
            if width and len(digits) == width and all(d in "0123456789abcdefABCDEF" for d in digits):
                code = int(digits, 16)
                if code <= 0x10FFFF:
                    out.append(chr(code))
                    i += 2 + width
                    continue
            raise FilterSyntaxError(f"invalid escape '\\{e}' in string", text=text, position=i,
                                    hint="valid escapes: \\\\ \\\" \\' \\n \\t \\r \\uXXXX")
        out.append(c)
        i += 1
    what = "quoted name" if quote == "`" else "string"
    raise FilterSyntaxError(f"unterminated {what}", text=text, position=start,
                            hint=f"close it with a matching {quote}")


def _read_number(text: str, i: int) -> tuple[Value, int]:
    start = i
    j = i + 1 if text[i] in "+-" else i
    while j < len(text) and (_ident_char(text[j]) or (text[j] in "+-" and text[j - 1] in "eE")):
        j += 1
    raw = text[start:j]
    body = raw.lstrip("+-")
    is_float = any(c in body for c in ".eE")
    try:
        if not body or not body[0] in "0123456789.":
            raise ValueError
        value: Value = float(raw) if is_float else int(raw, 10)
    except ValueError:
        raise FilterSyntaxError(f"invalid number {raw!r}", text=text, position=start,
                                hint="numbers look like 42, -7, 2.5, 1e-3") from None
    if is_float and not math.isfinite(value):
        raise FilterSyntaxError(f"number {raw!r} is out of range", text=text, position=start)
    if not is_float and not _INT64_MIN <= value <= _INT64_MAX:
        raise FilterSyntaxError(f"integer {raw} is outside the int64 range", text=text, position=start,
                                hint="write it as a float (e.g. 1e30) to compare with float attributes")
    return value, j


_BAD_OPS = {"=<": "did you mean '<='?", "=>": "did you mean '>='?", "&&": "use 'and'", "||": "use 'or'",
            "&": "use 'and'", "|": "use 'or'", "!": "use 'not'"}


def _tokenize(text: str) -> list[_Tok]:
    toks, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()," :
            toks.append(_Tok(c, c, i, i + 1))
            i += 1
        elif c in "'\"":
            s, j = _read_quoted(text, i)
            toks.append(_Tok("str", s, i, j))
            i = j
        elif c == "`":
            s, j = _read_quoted(text, i)
            if not s:
                raise FilterSyntaxError("empty quoted attribute name", text=text, position=i)
            toks.append(_Tok("ident", s, i, j))
            i = j
        elif c in "0123456789" or (c in "+-." and i + 1 < n and (text[i + 1].isdigit() or (
                text[i + 1] == "." and c != "." and i + 2 < n and text[i + 2].isdigit()))):
            v, j = _read_number(text, i)
            toks.append(_Tok("num", v, i, j))
            i = j
        elif _ident_start(c):
            j = i + 1
            while j < n and _ident_char(text[j]):
                j += 1
            word = text[i:j]
            if word.lower() in _KEYWORDS:
                toks.append(_Tok("kw", word.lower(), i, j))
            else:
                toks.append(_Tok("ident", word, i, j))
            i = j
        else:
            two = text[i:i + 2]
            if two in ("==", "!=", "<=", ">=", "<>"):
                toks.append(_Tok("op", {"==": "=", "<>": "!="}.get(two, two), i, i + 2))
                i += 2
            elif two in _BAD_OPS:
                raise FilterSyntaxError(f"unknown operator {two!r}", text=text, position=i, hint=_BAD_OPS[two])
            elif c in "=<>":
                toks.append(_Tok("op", c, i, i + 1))
                i += 1
            elif c in _BAD_OPS:
                raise FilterSyntaxError(f"unknown operator {c!r}", text=text, position=i, hint=_BAD_OPS[c])
            else:
                hint = "numbers look like 42, -7, 2.5" if c in "+-." else \
                    "attribute names with other characters go in backquotes: `my-attr`"
                raise FilterSyntaxError(f"unexpected character {c!r}", text=text, position=i, hint=hint)
    toks.append(_Tok("eof", None, n, n))
    return toks


# ---------------------------------------------------------------------------------------------------------- parser
def _describe(t: _Tok) -> str:
    if t.kind == "eof":
        return "end of filter"
    if t.kind == "str":
        return f"string {_quote(t.value)}"
    if t.kind == "num":
        return f"number {t.value!r}"
    if t.kind == "ident":
        return f"name {t.value!r}"
    return f"'{t.value}'"


def _edits(a: str, b: str) -> int:
    """Optimal-string-alignment distance (insert, delete, substitute, swap neighbours)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def _close(word: str, options: Iterable[str]) -> str | None:
    """The option nearest to ``word`` if it is a plausible typo of it (case-insensitive), else None."""
    best = min(((_edits(word.lower(), o.lower()), o) for o in options), default=None)
    if best is None or best[0] > max(1, len(word) // 3) or best[0] >= len(best[1]):
        return None
    return best[1]


class _Parser:
    def __init__(self, text: str, schema: Mapping[str, str] | None):
        self.text, self.schema = text, schema
        self.toks = _tokenize(text)
        self.i = 0
        self.parens: list[int] = []
        self.depth = 0

    def nest(self, tok: _Tok) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"filter nested too deeply (more than {MAX_DEPTH} levels)", tok)

    def peek(self, k: int = 0) -> _Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return t

    def fail(self, msg: str, tok: _Tok, hint: str | None = None):
        if hint is None and tok.kind == "eof" and self.parens:
            hint = f"unclosed parenthesis: the '(' at position {self.parens[-1]} is never closed"
        raise FilterSyntaxError(msg, text=self.text, position=tok.pos, hint=hint)

    def is_kw(self, word: str, k: int = 0) -> bool:
        t = self.peek(k)
        return t.kind == "kw" and t.value == word

    def parse(self) -> Expr:
        if self.peek().kind == "eof":
            self.fail("empty filter", self.peek(), "write a predicate such as: price < 10")
        e = self.or_expr()
        t = self.peek()
        if t.kind != "eof":
            if t.kind == ")":
                self.fail("unexpected ')'", t, "unbalanced parenthesis: there is no '(' for this ')'")
            self.fail_connective(t)
        return e

    def fail_connective(self, t: _Tok):
        hint = None
        if t.kind == "ident":
            guess = _close(t.value, ("and", "or"))
            hint = f"did you mean '{guess}'?" if guess else "missing 'and' or 'or' between predicates?"
        elif t.kind in ("kw", "str", "num", "op"):
            hint = "missing 'and' or 'or' between predicates?" if t.kind == "kw" else \
                "a predicate is complete here; combine predicates with 'and' / 'or'"
        expected = "'and', 'or' or ')'" if self.parens else "'and', 'or' or end of filter"
        self.fail(f"expected {expected}, got {_describe(t)}", t, hint)

    def or_expr(self) -> Expr:
        args = [self.and_expr()]
        while self.is_kw("or"):
            self.next()
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else Or(tuple(args))

    def and_expr(self) -> Expr:
        args = [self.not_expr()]
        while self.is_kw("and"):
            self.next()
            args.append(self.not_expr())
        return args[0] if len(args) == 1 else And(tuple(args))

    def not_expr(self) -> Expr:
        if self.is_kw("not"):
            self.nest(self.next())
            e = Not(self.not_expr())
            self.depth -= 1
            return e
        return self.primary()

    def primary(self) -> Expr:
        t = self.peek()
        if t.kind == "(":
            self.nest(self.next())
            self.parens.append(t.pos)
            if self.peek().kind == ")":
                self.fail("empty parentheses", self.peek(), "put a predicate inside, e.g. (price < 10)")
            e = self.or_expr()
            close = self.peek()
            if close.kind != ")":
                if close.kind == "eof":
                    self.fail("unclosed parenthesis", close,
                              f"unclosed parenthesis: add ')' to close the '(' at position {t.pos}")
                self.fail_connective(close)
            self.next()
            self.parens.pop()
            self.depth -= 1
            return e
        if t.kind == "ident":
            return self.predicate()
        prev = self.toks[self.i - 1] if self.i > 0 else None
        after = f" after '{prev.value}'" if prev is not None and prev.kind == "kw" else ""
        hint = None
        if t.kind == "kw" and t.value in ("and", "or"):
            hint = f"a predicate is missing before '{t.value}'"
        elif t.kind == "kw":
            hint = f"'{t.value}' is a reserved word; quote such an attribute name in backquotes: `{t.value}`"
        elif t.kind == ")":
            hint = "unbalanced parenthesis" if not self.parens else None
        elif t.kind in ("str", "num"):
            hint = "a predicate starts with an attribute name, e.g. price < 10"
        self.fail(f"expected a predicate{after}, got {_describe(t)}", t, hint)

    def value(self, after: str) -> tuple[Value, _Tok]:
        t = self.peek()
        if t.kind in ("str", "num"):
            self.next()
            return t.value, t
        if t.kind == "kw" and t.value in ("true", "false"):
            self.next()
            return t.value == "true", t
        hint = None
        if t.kind == "ident":
            hint = f"string values need quotes: {_quote(t.value)}"
        elif t.kind == "eof" and not self.parens:
            hint = "values look like 10, -2.5, \"red\", true"
        self.fail(f"expected a value after {after}, got {_describe(t)}", t, hint)

    def value_list(self, after: str) -> tuple:
        t = self.peek()
        if t.kind != "(":
            self.fail(f"expected '(' after {after}, got {_describe(t)}", t,
                      f"write {after} (v1, v2, ...)")
        self.next()
        self.parens.append(t.pos)
        if self.peek().kind == ")":
            self.fail(f"empty list after {after}", self.peek(), "give at least one value")
        values = [self.value("'('")[0]]
        while True:
            u = self.peek()
            if u.kind == ")":
                self.next()
                self.parens.pop()
                return tuple(values)
            if u.kind != ",":
                hint = f"unclosed parenthesis: add ')' to close the '(' at position {t.pos}" \
                    if u.kind == "eof" else "separate values with commas"
                self.fail(f"expected ',' or ')' in the list, got {_describe(u)}", u, hint)
            self.next()
            values.append(self.value("','")[0])

    def predicate(self) -> Predicate:
        name = self.next()
        attr = name.value
        t = self.peek()
        if t.kind == "op":
            self.next()
            v, vt = self.value(f"'{t.value}'")
            pred: Predicate = Compare(attr, t.value, v)
        elif self.is_kw("in"):
            self.next()
            pred = In(attr, self.value_list("'in'"), False)
        elif self.is_kw("not"):
            self.next()
            if not self.is_kw("in"):
                hint = f"write 'not ({attr} between ...)'" if self.is_kw("between") else \
                    f"use '{attr} not in (...)' or put 'not' before the predicate: 'not {attr} ...'"
                self.fail(f"expected 'in' after '{attr} not', got {_describe(self.peek())}", self.peek(), hint)
            self.next()
            pred = In(attr, self.value_list("'not in'"), True)
        elif self.is_kw("between"):
            self.next()
            low, _ = self.value("'between'")
            if not self.is_kw("and"):
                self.fail(f"expected 'and' after the lower bound of 'between', got {_describe(self.peek())}",
                          self.peek(), f"write {attr} between LOW and HIGH")
            self.next()
            high, _ = self.value("'between ... and'")
            pred = Between(attr, low, high)
        elif self.is_kw("contains"):
            self.next()
            mode = None
            if self.is_kw("any") or self.is_kw("all"):
                mode = self.next().value
                values = self.value_list(f"'contains {mode}'")
            elif self.peek().kind == "(":
                self.fail("expected a value after 'contains', got '('", self.peek(),
                          "use 'contains any (...)' or 'contains all (...)' for a list")
            else:
                values = (self.value("'contains'")[0],)
            preds = [Contains(attr, v) for v in values]
            for p in preds:
                _check_pred(p, self.schema, self.text, name.pos)
            if len(preds) == 1:
                return preds[0]
            return Or(tuple(preds)) if mode == "any" else And(tuple(preds))
        else:
            hint = f"operators: = != < <= > >= in, not in, between, contains (e.g. {attr} = 1)"
            if t.kind == "ident":
                guess = _close(t.value, ("in", "between", "contains", "not"))
                if guess:
                    hint = f"did you mean '{guess}'?"
            elif t.kind == "eof":
                hint = f"e.g. {attr} = 1, {attr} in (1, 2), {attr} contains \"x\""
            self.fail(f"expected an operator after {attr!r}, got {_describe(t)}", t, hint)
        _check_pred(pred, self.schema, self.text, name.pos)
        return pred


# ---------------------------------------------------------------------------------------------------- type checking
def _vtype(v: Value) -> str:
    return "string" if isinstance(v, str) else ("boolean" if isinstance(v, bool) else "number")


def _check_schema(schema: Mapping[str, str]) -> None:
    if not isinstance(schema, Mapping):
        raise FilterTypeError(f"schema must be a mapping {{name: type}}, got {type(schema).__name__}")
    for k, t in schema.items():
        if t not in TYPES:
            raise FilterTypeError(f"attribute {k!r} has unknown type {t!r}; types are {', '.join(TYPES)}",
                                  attribute=k)


def _check_pred(p: Predicate, schema: Mapping[str, str] | None, text: str | None = None,
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
        guess = _close(a, schema)
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
        _check_schema(schema)
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
        _check_pred(p, schema)
    return expr


def parse(text: str, schema: Mapping[str, str] | None = None) -> Expr:
    """Parse filter text into an AST, type-checked against ``schema`` when given.

    Raises FilterSyntaxError (with ``position`` and ``hint``) or FilterTypeError (with ``attribute``).
    """
    if not isinstance(text, str):
        raise FilterSyntaxError(f"filter text must be a string, got {type(text).__name__}")
    if schema is not None:
        _check_schema(schema)
    return _Parser(text, schema).parse()


def compile(filter: Any, schema: Mapping[str, str] | None = None) -> Expr | None:  # noqa: A001
    """A checked Expr from text, JSON text (starting with '{'), a JSON dict, or an Expr; None stays None."""
    if filter is None:
        return None
    if isinstance(filter, str):
        if filter.lstrip().startswith("{"):
            try:
                obj = json.loads(filter)
            except ValueError as e:
                raise FilterSyntaxError(f"invalid JSON filter: {e}") from None
            return from_json(obj, schema)
        return parse(filter, schema)
    if isinstance(filter, Mapping):
        return from_json(filter, schema)
    if isinstance(filter, _NODE_TYPES):
        return check(filter, schema)
    raise FilterSyntaxError(f"a filter must be text, a JSON dict or an expression, got {type(filter).__name__}")


# ----------------------------------------------------------------------------------------------- JSON and text forms
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


def _quote(s: str, q: str = '"') -> str:
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
    plain = _ident_start(attr[0]) and all(_ident_char(c) for c in attr) and attr.lower() not in _KEYWORDS
    return attr if plain else _quote(attr, "`")


def _lit(v: Value) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return _quote(v)
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


# --------------------------------------------------------------------------------------------------------- columns
class NumericColumn:
    """A number attribute: ``values`` float64 (NaN = missing) or int64, shape (n,); optional ``missing`` bool (n,)."""

    def __init__(self, values, missing=None):
        v = np.asarray(values)
        if v.ndim != 1:
            raise ValueError(f"NumericColumn values must be 1-D, got shape {v.shape}")
        if v.dtype.kind == "f":
            v = v.astype(np.float64, copy=False)
        elif v.dtype.kind in "iub":
            if v.dtype.kind == "u" and v.size and int(v.max()) > _INT64_MAX:
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


class _Vocab:
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


class KeywordColumn(_Vocab):
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


class TagsColumn(_Vocab):
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


# ------------------------------------------------------------------------------------------------------ evaluation
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
        if v > _INT64_MAX or v < _INT64_MIN:
            # beyond the int64 range every value is below (or above) v: only the matching inequalities hold, and
            # "=" never does
            everything = op in (("<", "<=", "!=") if v > _INT64_MAX else (">", ">=", "!="))
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
            if _INT64_MIN <= v <= _INT64_MAX:
                keep.append(v)
    return np.array(keep, dtype=col.values.dtype)


def _keyword_lut(col: _Vocab, values: tuple) -> np.ndarray:
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
        if isinstance(e, _PRED_TYPES):
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
        if isinstance(e, _PRED_TYPES):
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
