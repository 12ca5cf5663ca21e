"""The parser: recursive descent over :mod:`.text`'s tokens (never ``eval``), and :func:`compile` for any form."""

from __future__ import annotations

import json
from typing import Any, Mapping

from .ast import (MAX_DEPTH, NODE_TYPES, And, Between, Compare, Contains, Expr, FilterSyntaxError, In, Not, Or,
                  Predicate, Value, quote)
from .check import check, check_predicate, check_schema, closest
from .json import from_json
from .text import Token, tokenize


# ---------------------------------------------------------------------------------------------------------- parser
def _describe(t: Token) -> str:
    if t.kind == "eof":
        return "end of filter"
    if t.kind == "str":
        return f"string {quote(t.value)}"
    if t.kind == "num":
        return f"number {t.value!r}"
    if t.kind == "ident":
        return f"name {t.value!r}"
    return f"'{t.value}'"


class _Parser:
    def __init__(self, text: str, schema: Mapping[str, str] | None):
        self.text, self.schema = text, schema
        self.toks = tokenize(text)
        self.i = 0
        self.parens: list[int] = []
        self.depth = 0

    def nest(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"filter nested too deeply (more than {MAX_DEPTH} levels)", tok)

    def peek(self, k: int = 0) -> Token:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def next(self) -> Token:
        t = self.toks[self.i]
        self.i = min(self.i + 1, len(self.toks) - 1)
        return t

    def fail(self, msg: str, tok: Token, hint: str | None = None):
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

    def fail_connective(self, t: Token):
        hint = None
        if t.kind == "ident":
            guess = closest(t.value, ("and", "or"))
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
            # collection schemas refuse keywords as attribute names, so no attribute can be called this
            hint = f"'{t.value}' is a reserved word, not an attribute name; a predicate starts with an attribute " \
                   "name, e.g. price < 10"
        elif t.kind == ")":
            hint = "unbalanced parenthesis" if not self.parens else None
        elif t.kind in ("str", "num"):
            hint = "a predicate starts with an attribute name, e.g. price < 10"
        self.fail(f"expected a predicate{after}, got {_describe(t)}", t, hint)

    def value(self, after: str) -> tuple[Value, Token]:
        t = self.peek()
        if t.kind in ("str", "num"):
            self.next()
            return t.value, t
        if t.kind == "kw" and t.value in ("true", "false"):
            self.next()
            return t.value == "true", t
        hint = None
        if t.kind == "ident":
            hint = f"string values need quotes: {quote(t.value)}"
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
                check_predicate(p, self.schema, self.text, name.pos)
            if len(preds) == 1:
                return preds[0]
            return Or(tuple(preds)) if mode == "any" else And(tuple(preds))
        else:
            hint = f"operators: = != < <= > >= in, not in, between, contains (e.g. {attr} = 1)"
            if t.kind == "ident":
                guess = closest(t.value, ("in", "between", "contains", "not"))
                if guess:
                    hint = f"did you mean '{guess}'?"
            elif t.kind == "eof":
                hint = f"e.g. {attr} = 1, {attr} in (1, 2), {attr} contains \"x\""
            self.fail(f"expected an operator after {attr!r}, got {_describe(t)}", t, hint)
        check_predicate(pred, self.schema, self.text, name.pos)
        return pred


def parse(text: str, schema: Mapping[str, str] | None = None) -> Expr:
    """Parse filter text into an AST, type-checked against ``schema`` when given.

    Raises FilterSyntaxError (with ``position`` and ``hint``) or FilterTypeError (with ``attribute``).
    """
    if not isinstance(text, str):
        raise FilterSyntaxError(f"filter text must be a string, got {type(text).__name__}")
    if schema is not None:
        check_schema(schema)
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
    if isinstance(filter, NODE_TYPES):
        return check(filter, schema)
    raise FilterSyntaxError(f"a filter must be text, a JSON dict or an expression, got {type(filter).__name__}")
