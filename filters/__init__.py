"""shoal's filter language: parser, AST, JSON form, exact and three-valued evaluation.

A leaf package (stdlib + numpy only). Text such as ``price < 10 and color in ("red", "blue") and not tags contains
"sale"`` is parsed by a hand-written tokenizer and recursive-descent parser (never ``eval``) into small frozen
dataclasses; the AST has a stable JSON form (``to_json`` / ``from_json``) and a text form (``to_text``) that re-parses
to an equal AST. Grammar, JSON form and semantics: ``docs/filters.md``.

Modules: :mod:`.ast` (nodes, errors, text form), :mod:`.text` (tokenizer), :mod:`.parse` (parser, ``compile``),
:mod:`.check` (type checking), :mod:`.json` (JSON form), :mod:`.columns` (attribute columns), :mod:`.evaluate`
(exact and three-valued evaluation, range lookups).
"""

from .ast import (COMPARE_OPS, MAX_DEPTH, TYPES, And, Between, Compare, Contains, Expr, FilterSyntaxError,
                  FilterTypeError, In, Not, Or, Predicate, Value, attributes, leaf_predicates, to_text)
from .check import check
from .columns import Column, KeywordColumn, NumericColumn, TagsColumn, schema_of
from .evaluate import evaluate, evaluate3, evaluate_predicate, exact_leaf, interval_predicate, range_candidates
from .json import from_json, to_json
from .parse import compile, parse  # noqa: A004  (the filter language's compile, as before)

__all__ = [
    "FilterSyntaxError", "FilterTypeError", "Compare", "In", "Between", "Contains", "And", "Or", "Not", "Expr",
    "Predicate", "TYPES", "parse", "compile", "check", "to_json", "from_json", "to_text", "attributes",
    "leaf_predicates", "NumericColumn", "KeywordColumn", "TagsColumn", "schema_of", "evaluate",
    "evaluate_predicate", "evaluate3", "exact_leaf", "interval_predicate", "range_candidates", "COMPARE_OPS",
    "MAX_DEPTH", "Value", "Column",
]
