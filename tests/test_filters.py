"""Tests of shoal's filter language: parser, AST forms, exact and three-valued evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shoal import filters as F
from shoal.filters import And, Between, Compare, Contains, In, Not, Or

SETTINGS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(SETTINGS, max_examples=80)

# ------------------------------------------------------------------------------------------------ random data / exprs
SCHEMA = {"i": "int", "f": "float", "k": "keyword", "t": "tags"}
INT_POOL = [-3, -1, 0, 1, 2, 5, 2**53, 2**53 + 1, 2**63 - 1, -(2**63)]
FLOAT_POOL = [-2.5, -1.0, 0.0, 0.5, 1.0, 2.0, 3.5, float(2**53), 1e300, -1e300]
WORDS = ["a", "b", "c", "d"]

ints = st.one_of(st.sampled_from(INT_POOL), st.integers(-4, 6))
floats_ = st.one_of(st.sampled_from(FLOAT_POOL), st.floats(-4, 6, allow_nan=False))
numbers = st.one_of(ints, floats_, st.booleans())
words = st.sampled_from(WORDS + ["zz", ""])


@st.composite
def datasets(draw):
    n = draw(st.integers(0, 25))
    ivals = draw(st.lists(ints, min_size=n, max_size=n))
    fvals = draw(st.lists(st.one_of(floats_, st.just(math.nan), st.sampled_from(INT_POOL).map(float)),
                          min_size=n, max_size=n))
    kvals = draw(st.lists(st.one_of(st.none(), st.sampled_from(WORDS[:3])), min_size=n, max_size=n))
    tvals = draw(st.lists(st.lists(st.sampled_from(WORDS), max_size=3), min_size=n, max_size=n))
    # a vocabulary with words in a shuffled order and an unused word
    vocab = draw(st.permutations(WORDS[:3] + ["unused"]))
    code = {w: i for i, w in enumerate(vocab)}
    kcol = F.KeywordColumn(np.array([-1 if w is None else code[w] for w in kvals], dtype=np.int32), vocab)
    tvocab = draw(st.permutations(WORDS))
    tcode = {w: i for i, w in enumerate(tvocab)}
    indptr = np.cumsum([0] + [len(t) for t in tvals]).astype(np.int64)
    tcodes = np.array([tcode[w] for t in tvals for w in t], dtype=np.int32)
    cols = {"i": F.NumericColumn(np.array(ivals, dtype=np.int64)), "f": F.NumericColumn(np.array(fvals)),
            "k": kcol, "t": F.TagsColumn(indptr, tcodes, tvocab)}
    rows = [{"i": ivals[r], "f": None if math.isnan(fvals[r]) else fvals[r], "k": kvals[r], "t": set(tvals[r])}
            for r in range(n)]
    return n, cols, rows


def num_pred(attr):
    return st.one_of(
        st.builds(Compare, st.just(attr), st.sampled_from(F.COMPARE_OPS), numbers),
        st.builds(In, st.just(attr), st.lists(numbers, min_size=1, max_size=4).map(tuple), st.booleans()),
        st.builds(Between, st.just(attr), numbers, numbers))


predicates = st.one_of(
    num_pred("i"), num_pred("f"),
    st.builds(Compare, st.just("k"), st.sampled_from(["=", "!="]), words),
    st.builds(In, st.just("k"), st.lists(words, min_size=1, max_size=3).map(tuple), st.booleans()),
    st.builds(Contains, st.just("t"), words))


def trees(leaves):
    return st.recursive(leaves, lambda ch: st.one_of(
        st.lists(ch, min_size=2, max_size=3).map(lambda a: And(tuple(a))),
        st.lists(ch, min_size=2, max_size=3).map(lambda a: Or(tuple(a))),
        ch.map(Not)), max_leaves=8)


exprs = trees(predicates)


def ref_pred(p, row) -> bool:
    x = row[p.attr]
    if isinstance(p, Contains):
        return p.value in x
    if x is None:
        return False
    if isinstance(p, Compare):
        return {"=": x == p.value, "!=": x != p.value, "<": x < p.value, "<=": x <= p.value,
                ">": x > p.value, ">=": x >= p.value}[p.op]
    if isinstance(p, Between):
        return p.low <= x <= p.high
    return (x in p.values) != p.negated


def ref_eval(e, truth) -> bool:
    """Evaluate ``e`` given ``truth(pred) -> bool`` for its leaves."""
    if isinstance(e, And):
        return all(ref_eval(a, truth) for a in e.args)
    if isinstance(e, Or):
        return any(ref_eval(a, truth) for a in e.args)
    if isinstance(e, Not):
        return not ref_eval(e.arg, truth)
    return truth(e)


# ------------------------------------------------------------------------------------------------- exact evaluation
@SETTINGS
@given(exprs, datasets())
def test_evaluate_matches_reference(expr, data):
    n, cols, rows = data
    got = F.evaluate(expr, cols, n)
    assert got.dtype == bool and got.shape == (n,)
    want = [ref_eval(expr, lambda p: ref_pred(p, row)) for row in rows]
    assert got.tolist() == want
    # text and JSON forms evaluate the same
    assert F.evaluate(F.parse(F.to_text(expr), SCHEMA), cols, n).tolist() == want
    assert F.evaluate(F.from_json(json.loads(json.dumps(F.to_json(expr))), SCHEMA), cols, n).tolist() == want


def test_evaluate_example():
    cols = {"price": F.NumericColumn([1.0, np.nan, 20.0, 5.0, 3.0]),
            "color": F.KeywordColumn.from_values(["red", None, "blue", "green", "blue"]),
            "tags": F.TagsColumn.from_lists([["sale"], [], ["x"], None, ["new", "x"]])}
    e = F.parse('price < 10 and color in ("red", "blue") and not tags contains "sale"')
    assert F.evaluate(e, cols, 5).tolist() == [False, False, False, False, True]
    assert F.evaluate(F.parse("not (price < 10)"), cols, 5).tolist() == [False, True, True, False, False]
    assert F.evaluate(F.parse("price != 1"), cols, 5).tolist() == [False, False, True, True, True]
    assert F.evaluate(F.parse('color not in ("red")'), cols, 5).tolist() == [False, False, True, True, True]
    assert F.evaluate(F.parse('color = "purple"'), cols, 5).tolist() == [False] * 5
    assert F.evaluate(F.parse('color != "purple"'), cols, 5).tolist() == [True, False, True, True, True]
    assert F.evaluate(F.parse('tags contains any ("sale", "new")'), cols, 5).tolist() == [
        True, False, False, False, True]
    assert F.evaluate(F.parse('tags contains all ("x", "new")'), cols, 5).tolist() == [
        False, False, False, False, True]
    assert F.evaluate(None, cols, 5).all()


def test_int64_exactness():
    big = 2**53 + 1
    cols = {"i": F.NumericColumn(np.array([big, big - 1, 2**63 - 1], dtype=np.int64)),
            "f": F.NumericColumn(np.array([float(2**53), 0.5, 1e300]))}
    assert F.evaluate(F.parse(f"i = {big}"), cols, 3).tolist() == [True, False, False]
    assert F.evaluate(F.parse(f"f < {big}"), cols, 3).tolist() == [True, True, False]
    assert F.evaluate(F.parse(f"f = {big}"), cols, 3).tolist() == [False, False, False]
    assert F.evaluate(F.parse("i < 1e300"), cols, 3).all()
    assert F.evaluate(F.parse("i >= 9.3e18"), cols, 3).tolist() == [False, False, False]
    assert F.evaluate(F.parse("i > 9007199254740992.5"), cols, 3).tolist() == [True, False, True]


def test_missing_attribute_and_bad_columns():
    cols = {"a": F.NumericColumn([1.0, 2.0])}
    with pytest.raises(F.FilterTypeError, match="'b'") as ei:
        F.evaluate(F.parse("b = 1"), cols, 2)
    assert ei.value.attribute == "b"
    with pytest.raises(F.FilterTypeError, match="'a'"):
        F.evaluate(F.parse('a = "x"'), cols, 2)
    with pytest.raises(ValueError, match="rows"):
        F.evaluate(F.parse("a = 1"), cols, 3)
    with pytest.raises(ValueError):
        F.KeywordColumn([0, 3], ["x"])
    with pytest.raises(ValueError):
        F.TagsColumn([0, 2], [0], ["x"])
    with pytest.raises(ValueError, match="duplicate"):
        F.evaluate(F.parse('k = "x"'), {"k": F.KeywordColumn([0], ["x", "x"])}, 1)


def test_column_take():
    t = F.TagsColumn.from_lists([["a"], [], ["b", "c"], ["a", "c"]])
    s = t.take([3, 2, 0])
    assert [[s.vocab[c] for c in s.codes[s.indptr[i]:s.indptr[i + 1]]] for i in range(3)] == [
        ["a", "c"], ["b", "c"], ["a"]]
    k = F.KeywordColumn.from_values(["x", None, "y"]).take([2, 1])
    assert k.codes.tolist() == [1, -1]
    m = F.NumericColumn.from_values([1, None, 3], kind="int")
    assert F.evaluate(F.parse("x != 1"), {"x": m}, 3).tolist() == [False, False, True]


# --------------------------------------------------------------------------------------------------- round trips
names = st.one_of(st.sampled_from(["price", "and", "Not", "a.b", "x_1", "my attr", "ü", "`q`", "a\"b"]),
                  st.text(min_size=1, max_size=6))
any_number = st.one_of(st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                       st.booleans())
texts = st.text(max_size=8)
rt_preds = st.one_of(
    st.builds(Compare, names, st.sampled_from(F.COMPARE_OPS), any_number),
    st.builds(Compare, names, st.sampled_from(["=", "!="]), texts),
    st.builds(In, names, st.one_of(st.lists(any_number, min_size=1, max_size=3),
                                   st.lists(texts, min_size=1, max_size=3)).map(tuple), st.booleans()),
    st.builds(Between, names, any_number, any_number),
    st.builds(Contains, names, texts))


def typed_json(e):
    """JSON text that tells 1 from 1.0 from true (AST equality does not)."""
    return json.dumps(F.to_json(e), sort_keys=True)


@SETTINGS
@given(trees(rt_preds))
def test_text_round_trip(expr):
    text = F.to_text(expr)
    back = F.parse(text)
    assert back == expr, text
    assert typed_json(back) == typed_json(expr)


@SETTINGS
@given(trees(rt_preds))
def test_json_round_trip(expr):
    obj = json.loads(json.dumps(F.to_json(expr)))
    back = F.from_json(obj)
    assert back == expr and typed_json(back) == typed_json(expr)
    assert F.compile(json.dumps(obj)) == expr
    assert F.compile(obj) == expr and F.compile(F.to_text(expr)) == expr and F.compile(expr) is expr


def test_syntax_variants():
    a = F.parse("x = 1")
    assert F.parse("x == 1") == a and F.parse("  x=1  ") == a and F.parse("(((x = 1)))") == a
    assert F.parse("x <> 1") == Compare("x", "!=", 1)
    assert F.parse("X IN ('a', \"b\") AND y BETWEEN -1.5e-3 AND 2E2") == And((
        In("X", ("a", "b")), Between("y", -1.5e-3, 200.0)))
    assert F.parse("not a = 1 and b = 2 or c = 3") == Or((And((Not(Compare("a", "=", 1)), Compare("b", "=", 2))),
                                                          Compare("c", "=", 3)))
    assert F.parse("a = 1 or b = 2 and c = 3") == Or((Compare("a", "=", 1), And((Compare("b", "=", 2),
                                                                                   Compare("c", "=", 3)))))
    assert F.parse("a = true or b != FALSE") == Or((Compare("a", "=", True), Compare("b", "!=", False)))
    assert F.parse(r"s = 'it\'s' and t = " + '"\\u00e9\\n"') == And((Compare("s", "=", "it's"),
                                                                   Compare("t", "=", "é\n")))
    assert F.parse("`and` contains 'x'") == Contains("and", "x")
    assert isinstance(F.parse("x = 1").value, int) and isinstance(F.parse("x = 1.0").value, float)
    assert F.parse("x = -.5").value == -0.5 and F.parse("x=-3").value == -3
    assert F.attributes(F.parse("a = 1 and (b = 2 or not c contains 'x')")) == {"a", "b", "c"}
    assert F.leaf_predicates(F.parse("a = 1 or a = 1 or b = 2")) == [Compare("a", "=", 1), Compare("b", "=", 2)]


# ------------------------------------------------------------------------------------------------ error messages
SYNTAX_ERRORS = [
    # text, position, substring of the message/hint
    ("price <", 7, "expected a value after '<'"),
    ("price < )", 8, "expected a value after '<'"),
    ("(a = 1", 6, "unclosed parenthesis"),
    ("(a = 1 and (b = 2)", 18, "unclosed parenthesis"),
    ("a = 1)", 5, "unbalanced parenthesis"),
    ("a = 1 adn b = 2", 6, "did you mean 'and'?"),
    ("a = 1 od b = 2", 6, "did you mean 'or'?"),
    ("a = 1 b = 2", 6, "missing 'and' or 'or'"),
    ("color = red", 8, 'string values need quotes: "red"'),
    ("a in ()", 6, "empty list"),
    ("a in 1, 2", 5, "expected '(' after 'in'"),
    ("a in (1 2)", 8, "separate values with commas"),
    ("a in (1, 2", 10, "unclosed parenthesis"),
    ('x = "abc', 4, "unterminated string"),
    (r'x = "a\qb"', 6, "invalid escape"),
    ("a => 3", 2, "did you mean '>='?"),
    ("a =< 3", 2, "did you mean '<='?"),
    ("a = 1 && b = 2", 6, "use 'and'"),
    ("a = 1 || b = 2", 6, "use 'or'"),
    ("!a", 0, "use 'not'"),
    ("", 0, "empty filter"),
    ("   ", 3, "empty filter"),
    ("()", 1, "empty parentheses"),
    ("a between 1 or 2", 12, "expected 'and' after the lower bound"),
    ("a not between 1 and 2", 6, "not (a between"),
    ("a not 3", 6, "not in"),
    ('tags contains ("a")', 14, "contains any"),
    ('a contain "x"', 2, "did you mean 'contains'?"),
    ("a like 'x'", 2, "operators:"),
    ("a", 1, "expected an operator after 'a'"),
    ("a = 1.2.3", 4, "invalid number"),
    ("a = 12abc", 4, "invalid number"),
    ("a = 99999999999999999999", 4, "int64"),
    ("a = 1e999", 4, "out of range"),
    ("in = 3", 0, "reserved word"),
    ("and a = 3", 0, "a predicate is missing before 'and'"),
    ("a = 1 and or b = 2", 10, "a predicate is missing before 'or'"),
    ("(a = 1 b = 2)", 7, "expected 'and', 'or' or ')'"),
    ("a = 1 and", 9, "expected a predicate after 'and'"),
    ("not", 3, "expected a predicate after 'not'"),
    ("a = 1 ; b = 2", 6, "unexpected character ';'"),
    ("a = - 1", 4, "unexpected character '-'"),
    ("5 = a", 0, "starts with an attribute name"),
    ("a = 1 or", 8, "expected a predicate after 'or'"),
    ("`` = 1", 0, "empty quoted attribute name"),
    ("a = (1)", 4, "expected a value after '='"),
]


@pytest.mark.parametrize("text,position,fragment", SYNTAX_ERRORS)
def test_syntax_errors(text, position, fragment):
    with pytest.raises(F.FilterSyntaxError) as ei:
        F.parse(text)
    err = ei.value
    assert isinstance(err, ValueError)
    assert err.position == position, str(err)
    msg = str(err)
    assert fragment in msg, msg
    assert f"at position {position}" in msg
    # the caret sits under the offending character
    caret_line = msg.splitlines()[2]
    text_line = msg.splitlines()[1]
    assert caret_line.index("^") - 2 == position and text_line.startswith("  ")


TYPE_ERRORS = [
    ('price < "x"', "price", "strings"),
    ("color < 3", "color", "does not apply to keywords"),
    ("color between 1 and 2", "color", "does not apply to keywords"),
    ("color = 3", "color", "compare it with a string"),
    ("color = true", "color", "compare it with a string"),
    ('color contains "x"', "color", "'contains' applies to tags"),
    ('price contains "x"', "price", "'contains' applies to tags"),
    ('tags = "a"', "tags", "contains"),
    ('tags in ("a", "b")', "tags", "contains any"),
    ("tags contains 3", "tags", "string tag"),
    ("prize < 3", "prize", "did you mean 'price'?"),
    ("weight < 3", "weight", "known: color, price, tags, year"),
    ('year in (1, "x")', "year", "mixes strings and numbers"),
    ('year between "a" and "b"', "year", "between"),
]


@pytest.mark.parametrize("text,attr,fragment", TYPE_ERRORS)
def test_type_errors(text, attr, fragment):
    schema = {"price": "float", "color": "keyword", "tags": "tags", "year": "int"}
    with pytest.raises(F.FilterTypeError) as ei:
        F.parse(text, schema)
    assert ei.value.attribute == attr and fragment in str(ei.value), str(ei.value)
    assert repr(attr) in str(ei.value)
    # the same error from the JSON form (no position there)
    obj = F.to_json(F.parse(text)) if "mixes" not in fragment and "between" not in fragment and \
        "string tag" not in fragment and "strings" not in fragment else None
    if obj is not None:
        with pytest.raises(F.FilterTypeError) as ej:
            F.from_json(obj, schema)
        assert ej.value.attribute == attr


def test_schema_free_type_errors():
    for text in ['a < "x"', 'a in (1, "x")', "a contains 1", 'a between "x" and 1']:
        with pytest.raises(F.FilterTypeError):
            F.parse(text)
    with pytest.raises(F.FilterTypeError, match="unknown type"):
        F.parse("a = 1", {"a": "string"})


BAD_JSON = [
    ({"op": "<", "attr": "a"}, "missing ['value']"),
    ({"op": "<", "attr": "a", "value": 1, "x": 2}, "unexpected ['x']"),
    ({"op": "~", "attr": "a", "value": 1}, "unknown op"),
    ({"attr": "a", "value": 1}, "unknown op"),
    ({"op": "<", "attr": "", "value": 1}, "non-empty string"),
    ({"op": "<", "attr": 3, "value": 1}, "non-empty string"),
    ({"op": "<", "attr": "a", "value": [1]}, "a value must be"),
    ({"op": "<", "attr": "a", "value": None}, "a value must be"),
    ({"op": "<", "attr": "a", "value": float("nan")}, "not finite"),
    ({"op": "<", "attr": "a", "value": 2**64}, "int64"),
    ({"op": "in", "attr": "a", "values": []}, "at least one"),
    ({"op": "in", "attr": "a", "values": "ab"}, "must be a list"),
    ({"op": "and", "args": []}, "non-empty list"),
    ({"op": "and", "args": [{"op": "=", "attr": "a", "value": 1}, 5]}, "$.args[1]"),
    ({"op": "not", "arg": {"op": "or", "args": [{"op": "=", "attr": "a"}]}}, "$.arg.args[0]"),
    ([1, 2], "expected an object"),
    ("a = 1", "expected an object"),
]


@pytest.mark.parametrize("obj,fragment", BAD_JSON)
def test_bad_json(obj, fragment):
    with pytest.raises(F.FilterSyntaxError) as ei:
        F.from_json(obj)
    assert fragment in str(ei.value), str(ei.value)


def test_json_form_is_documented_shape():
    e = F.parse('price < 10 and color not in ("red") and not tags contains "sale" or y between 1 and 2.5')
    assert F.to_json(e) == {"op": "or", "args": [
        {"op": "and", "args": [
            {"op": "<", "attr": "price", "value": 10},
            {"op": "not in", "attr": "color", "values": ["red"]},
            {"op": "not", "arg": {"op": "contains", "attr": "tags", "value": "sale"}}]},
        {"op": "between", "attr": "y", "low": 1, "high": 2.5}]}


# ----------------------------------------------------------------------------------------------- three-valued logic
@SETTINGS
@given(exprs, st.integers(1, 40), st.randoms(use_true_random=False))
def test_evaluate3_bounds_every_consistent_truth(expr, n, rnd):
    rng = np.random.default_rng(rnd.getrandbits(32))
    leaves = {}
    for p in F.leaf_predicates(expr):
        state = rng.integers(0, 3, n)  # 0 no, 1 maybe, 2 sure
        leaves[p] = (state == 2, state == 1)
    calls = []

    def leaf(p):
        calls.append(p)
        return leaves[p]

    sure, maybe = F.evaluate3(expr, leaf, n)
    assert len(calls) == len(set(calls))
    assert sure.shape == maybe.shape == (n,) and not (sure & maybe).any()
    for _ in range(12):
        truth = {p: s | (m & (rng.random(n) < 0.5)) for p, (s, m) in leaves.items()}
        t = np.array([ref_eval(expr, lambda p: bool(truth[p][r])) for r in range(n)], dtype=bool)
        assert not (sure & ~t).any()
        assert not (t & ~(sure | maybe)).any()
    # with no uncertainty at the leaves the result is exact
    exact = {p: (s | m, np.zeros(n, dtype=bool)) for p, (s, m) in leaves.items()}
    s2, m2 = F.evaluate3(expr, lambda p: exact[p], n)
    t = np.array([ref_eval(expr, lambda p: bool(exact[p][0][r])) for r in range(n)], dtype=bool)
    assert not m2.any() and (s2 == t).all()


def test_evaluate3_kleene_rules():
    a, b = Compare("a", "=", 1), Compare("b", "=", 1)
    # rows: (a, b) in {sure, maybe, no}^2
    A = np.array([2, 2, 2, 1, 1, 1, 0, 0, 0])
    B = np.array([2, 1, 0, 2, 1, 0, 2, 1, 0])
    leaf = {a: (A == 2, A == 1), b: (B == 2, B == 1)}.__getitem__

    def code(sm):
        s, m = sm
        return (2 * s + m).tolist()

    assert code(F.evaluate3(Not(a), leaf, 9)) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert code(F.evaluate3(And((a, b)), leaf, 9)) == [2, 1, 0, 1, 1, 0, 0, 0, 0]
    assert code(F.evaluate3(Or((a, b)), leaf, 9)) == [2, 2, 2, 2, 1, 1, 2, 1, 0]


@FEWER
@given(datasets(), exprs)
def test_evaluate3_with_exact_leaf_equals_evaluate(data, expr):
    n, cols, _ = data
    sure, maybe = F.evaluate3(expr, F.exact_leaf(cols, n), n)
    assert not maybe.any() and (sure == F.evaluate(expr, cols, n)).all()


@SETTINGS
@given(st.lists(st.floats(-10, 10), min_size=1, max_size=30), st.floats(0, 3), num_pred("x"),
       st.randoms(use_true_random=False))
def test_interval_predicate_is_sound(values, width, pred, rnd):
    x = np.array(values)
    n = len(x)
    rng = np.random.default_rng(rnd.getrandbits(32))
    lo = x - rng.random(n) * width
    hi = x + rng.random(n) * width
    exact_pt = rng.random(n) < 0.3  # some cells are a single point
    lo[exact_pt] = hi[exact_pt] = x[exact_pt]
    missing = rng.random(n) < 0.2
    sure, maybe = F.interval_predicate(pred, lo, hi, missing)
    assert not (sure & maybe).any() and not ((sure | maybe) & missing).any()
    truth = np.array([not missing[r] and ref_pred(pred, {"x": float(x[r])}) for r in range(n)])
    assert not (sure & ~truth).any() and not (truth & ~(sure | maybe)).any()
    # points that are known exactly are never "maybe" for comparisons with representable literals
    if isinstance(pred, Compare) and not isinstance(pred.value, bool) and float(pred.value) == pred.value:
        assert not (maybe & exact_pt).any()


def test_vectorised_speed_smoke():
    n = 200_000
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 4, n)
    cols = {"p": F.NumericColumn(rng.random(n)), "k": F.KeywordColumn(rng.integers(-1, 50, n), [str(i) for i in
                                                                                              range(50)]),
            "t": F.TagsColumn(np.concatenate([[0], np.cumsum(lens)]), rng.integers(0, 20, lens.sum()),
                              [f"t{i}" for i in range(20)])}
    e = F.parse('(p < 0.5 or k in ("1", "2", "3")) and not t contains "t3" and p between 0.1 and 0.9')
    m = F.evaluate(e, cols, n)
    p, k = cols["p"].values, cols["k"].codes
    has3 = np.zeros(n, bool)
    has3[cols["t"].row_of_entry[cols["t"].codes == 3]] = True
    want = ((p < 0.5) | np.isin(k, [1, 2, 3])) & ~has3 & (p >= 0.1) & (p <= 0.9)
    assert (m == want).all()


def test_nesting_limit():
    assert F.parse("not " * 50 + "(" * 50 + "a = 1" + ")" * 50) is not None
    for text in ["not " * 500 + "a = 1", "(" * 500 + "a = 1" + ")" * 500]:
        with pytest.raises(F.FilterSyntaxError, match="nested too deeply"):
            F.parse(text)
    obj, e = {"op": "=", "attr": "a", "value": 1}, Compare("a", "=", 1)
    for _ in range(500):
        obj, e = {"op": "not", "arg": obj}, Not(e)
    with pytest.raises(F.FilterSyntaxError, match="nested too deeply"):
        F.from_json(obj)
    with pytest.raises(F.FilterSyntaxError, match="nested too deeply"):
        F.evaluate(e, {"a": F.NumericColumn([1.0])}, 1)


def test_ast_construction_normalises_and_validates():
    e = In("x", np.array([1, 2]), np.bool_(True))
    assert e.values == (1, 2) and all(type(v) is int for v in e.values) and e.negated is True
    assert type(Compare("x", "<", np.float32(0.5)).value) is float
    assert type(Contains("t", np.str_("a")).value) is str
    assert str(e) == "x not in (1, 2)" and str(And((e, Not(Contains("t", "a"))))) == \
        'x not in (1, 2) and not t contains "a"'
    for bad in [lambda: Compare("x", "~", 1), lambda: Compare("", "=", 1), lambda: Compare("x", "=", None),
                lambda: In("x", "abc"), lambda: In("x", ()), lambda: And(()), lambda: Or((1,)),
                lambda: Not("x = 1"), lambda: Between("x", 1, float("inf"))]:
        with pytest.raises(F.FilterSyntaxError):
            bad()
    assert F.compile(None) is None
    with pytest.raises(F.FilterSyntaxError):
        F.compile(42)
    with pytest.raises(F.FilterSyntaxError, match="invalid JSON"):
        F.compile('{"op": ')
    with pytest.raises(F.FilterTypeError, match="known: a"):
        F.compile(Compare("b", "=", 1), {"a": "int"})


def test_interval_predicate_nan_and_missing():
    lo, hi = np.array([0.0, np.nan, 0.0, 1.0]), np.array([1.0, np.nan, 1.0, 1.0])
    s, m = F.interval_predicate(Compare("x", "!=", 5), lo, hi, np.array([False, False, True, False]))
    assert s.tolist() == [True, False, False, True] and not m.any()
    s, m = F.interval_predicate(In("x", (1,), negated=True), lo, hi)
    assert s.tolist() == [False, False, False, False] and m.tolist() == [True, False, True, False]
    with pytest.raises(F.FilterTypeError):
        F.interval_predicate(Contains("x", "a"), lo, hi)


@FEWER
@given(datasets(), exprs, st.data())
def test_column_slices_and_take(data, expr, d):
    n, cols, _ = data
    full = F.evaluate(expr, cols, n)
    lo = d.draw(st.integers(0, n))
    hi = d.draw(st.integers(lo, n))
    part = {k: c[lo:hi] for k, c in cols.items()}
    assert F.evaluate(expr, part, hi - lo).tolist() == full[lo:hi].tolist()
    rows = np.array(d.draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=10 if n else 0)), dtype=np.int64)
    sub = {k: c.take(rows) for k, c in cols.items()}
    assert F.evaluate(expr, sub, len(rows)).tolist() == full[rows].tolist()
    # an int column with a missing mask keeps it through slices and takes
    m = F.NumericColumn(np.arange(n), np.arange(n) % 2 == 1)
    want = (np.arange(n) % 2 == 0)
    assert F.evaluate(Compare("x", ">=", 0), {"x": m[lo:hi]}, hi - lo).tolist() == want[lo:hi].tolist()
    assert F.evaluate(Compare("x", ">=", 0), {"x": m.take(rows)}, len(rows)).tolist() == want[rows].tolist()


@settings(SETTINGS, max_examples=300)
@given(st.one_of(
    st.lists(st.sampled_from(list("ab(),'\"`\\<>=!-+.e1 ") + [" and ", " or ", " not ", " in ", " between ",
                                                                  " contains ", " any ", "9", "x"]),
             max_size=30).map("".join),
    st.text(max_size=20)))
def test_fuzz_only_filter_errors(text):
    """Arbitrary text either parses (and then round-trips) or raises a filter error with a sane position."""
    try:
        e = F.parse(text)
    except F.FilterSyntaxError as err:
        assert err.position is not None and 0 <= err.position <= len(text)
        assert f"at position {err.position}" in str(err)
    except F.FilterTypeError as err:
        assert err.attribute
    else:
        assert F.parse(F.to_text(e)) == e


def test_int_column_against_numbers_beyond_int64():
    """A literal beyond the int64 range is below (or above) every value: only the matching inequalities hold
    (hypothesis found ``i = -1e300`` true on an int column)."""
    col = {"i": F.NumericColumn(np.array([-1, 0, 7], dtype=np.int64))}
    for lit, holds in (("-1e300", {">", ">=", "!="}), ("1e300", {"<", "<=", "!="}),
                       ("-1e20", {">", ">=", "!="}), ("1e20", {"<", "<=", "!="})):
        for op in ("=", "!=", "<", "<=", ">", ">="):
            got = F.evaluate(F.parse(f"i {op} {lit}"), col, 3)
            assert got.tolist() == [op in holds] * 3, (op, lit)


def test_evaluate_returns_a_mask_the_caller_owns():
    cols = {"x": F.NumericColumn(np.arange(10))}
    for expr in (Compare("x", "<", 4), And((Compare("x", "<", 4),)),
                 Or((Compare("x", "<", 4), Compare("x", "<", 4)))):
        m = F.evaluate(expr, cols, 10)
        m[:] = ~m  # writing into one result must not leak into the next evaluation
        np.testing.assert_array_equal(F.evaluate(expr, cols, 10), np.arange(10) < 4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-2**62, 2**62), st.integers(-20, 20)), min_size=1, max_size=60),
       st.sampled_from(["<", "<=", ">", ">=", "="]), st.one_of(st.integers(-2**63, 2**63 - 1), st.integers(-20, 20),
                                                            st.floats(allow_nan=False, allow_infinity=False, width=64)))
def test_range_candidates_hold_every_match_of_int_columns(values, op, literal):
    col = F.NumericColumn(np.array(values, dtype=np.int64))
    pred = Compare("x", op, literal)
    cand = F.range_candidates(pred, col)
    exact = np.flatnonzero(F.evaluate(pred, {"x": col}, len(values)))
    assert set(exact.tolist()) <= set(cand.tolist())
    if all(abs(v) < 2**53 for v in values) and abs(literal) < 2**53:
        assert sorted(cand.tolist()) == exact.tolist()  # no rounding below 2**53: exact


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, width=64), st.floats(-5, 5)), min_size=1, max_size=60),
       st.floats(-10, 10), st.floats(0, 5))
def test_range_candidates_hold_every_match_of_float_columns(values, low, width):
    col = F.NumericColumn(np.array(values, dtype=np.float64))
    for pred in (Between("x", low, low + width), Compare("x", "<", low), Compare("x", ">=", low)):
        cand = F.range_candidates(pred, col)
        exact = np.flatnonzero(F.evaluate(pred, {"x": col}, len(values)))
        assert set(exact.tolist()) <= set(cand.tolist())
        assert not np.isnan(col.values[cand]).any()  # missing rows are never candidates


def test_range_candidates_decline_what_they_cannot_bound():
    num = F.NumericColumn(np.arange(10))
    assert F.range_candidates(Compare("x", "!=", 3), num) is None
    assert F.range_candidates(In("x", (1, 2)), num) is None
    assert F.range_candidates(Between("x", 5, 2), num).size == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # widening the largest float to inf must stay silent
        biggest = float(np.finfo(np.float64).max)
        got = F.range_candidates(Compare("x", "<=", biggest), F.NumericColumn(np.array([1.0, biggest, -biggest])))
        assert sorted(got.tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(np.sort(F.range_candidates(Between("x", 2, 4), num)), [2, 3, 4])
