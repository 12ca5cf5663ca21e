"""The tokenizer: filter text -> tokens (names, keywords, strings, numbers, operators), with positions for errors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .ast import INT64_MAX, INT64_MIN, KEYWORDS, FilterSyntaxError, Value, ident_char, ident_start


@dataclass(frozen=True)
class Token:
    kind: str  # ident, kw, str, num, op, (, ), ',', eof
    value: Any
    pos: int
    end: int


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
    while j < len(text) and (ident_char(text[j]) or (text[j] in "+-" and text[j - 1] in "eE")):
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
    if not is_float and not INT64_MIN <= value <= INT64_MAX:
        raise FilterSyntaxError(f"integer {raw} is outside the int64 range", text=text, position=start,
                                hint="write it as a float (e.g. 1e30) to compare with float attributes")
    return value, j


_BAD_OPS = {"=<": "did you mean '<='?", "=>": "did you mean '>='?", "&&": "use 'and'", "||": "use 'or'",
            "&": "use 'and'", "|": "use 'or'", "!": "use 'not'"}


def tokenize(text: str) -> list[Token]:
    toks, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()," :
            toks.append(Token(c, c, i, i + 1))
            i += 1
        elif c in "'\"":
            s, j = _read_quoted(text, i)
            toks.append(Token("str", s, i, j))
            i = j
        elif c == "`":
            s, j = _read_quoted(text, i)
            if not s:
                raise FilterSyntaxError("empty quoted attribute name", text=text, position=i)
            toks.append(Token("ident", s, i, j))
            i = j
        elif c in "0123456789" or (c in "+-." and i + 1 < n and (text[i + 1].isdigit() or (
                text[i + 1] == "." and c != "." and i + 2 < n and text[i + 2].isdigit()))):
            v, j = _read_number(text, i)
            toks.append(Token("num", v, i, j))
            i = j
        elif ident_start(c):
            j = i + 1
            while j < n and ident_char(text[j]):
                j += 1
            word = text[i:j]
            if word.lower() in KEYWORDS:
                toks.append(Token("kw", word.lower(), i, j))
            else:
                toks.append(Token("ident", word, i, j))
            i = j
        else:
            two = text[i:i + 2]
            if two in ("==", "!=", "<=", ">=", "<>"):
                toks.append(Token("op", {"==": "=", "<>": "!="}.get(two, two), i, i + 2))
                i += 2
            elif two in _BAD_OPS:
                raise FilterSyntaxError(f"unknown operator {two!r}", text=text, position=i, hint=_BAD_OPS[two])
            elif c in "=<>":
                toks.append(Token("op", c, i, i + 1))
                i += 1
            elif c in _BAD_OPS:
                raise FilterSyntaxError(f"unknown operator {c!r}", text=text, position=i, hint=_BAD_OPS[c])
            else:
                hint = "numbers look like 42, -7, 2.5" if c in "+-." else \
                    "attribute names with other characters go in backquotes: `my-attr`"
                raise FilterSyntaxError(f"unexpected character {c!r}", text=text, position=i, hint=hint)
    toks.append(Token("eof", None, n, n))
    return toks
