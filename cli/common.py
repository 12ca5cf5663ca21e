"""Helpers the subcommands share: help formatting, a progress bar, vector and query input, ``--schema`` and
``--param`` parsing."""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
import time
from typing import Any, Callable

import numpy as np

from ..errors import InvalidArgument, NotFound


class HelpFormatter(argparse.HelpFormatter):
    """Help for terminals: descriptions wrap paragraph by paragraph (blank lines kept; a paragraph with lines
    indented by two spaces, such as a list of examples, is printed as written), and every option shows its default
    unless it has none (None, False, []) or its help already says what the default is."""

    def _fill_text(self, text, width, indent):
        out = []
        for para in re.split(r"\n\s*\n", text.strip()):
            lines = para.split("\n")
            if any(line.startswith("  ") for line in lines):  # examples: kept line by line
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(textwrap.fill(" ".join(line.strip() for line in lines), width, initial_indent=indent,
                                         subsequent_indent=indent))
        return "\n\n".join(out)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or \
                action.default == [] or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def describe(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """Set the help text of options another module defined (``{dest: text}``), so every option a subcommand shows
    is described in terminal words; an unknown ``dest`` is an error, so a renamed option cannot go unnoticed."""
    actions = {a.dest: a for a in parser._actions}
    for dest, text in helps.items():
        actions[dest].help = text


def add_parser(sub, name: str, *, help: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A subcommand's parser with :class:`HelpFormatter` (``description``: paragraphs separated by blank lines)."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=HelpFormatter)


class Progress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, every 10% otherwise)."""

    def __init__(self, enabled: bool = True, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.time()
        self._last: tuple[str, int] = ("", -1)

    def __call__(self, done: int, total: int, stage: str) -> None:
        if not self.enabled:
            return
        frac = done / total if total else 1.0
        tenth = int(frac * 10)
        if not self.tty and (stage, tenth) == self._last:
            return
        self._last = (stage, tenth)
        width = 30
        bar = "#" * int(width * frac) + "." * (width - int(width * frac))
        line = f"{stage:>6} [{bar}] {done:>10,}/{total:,} {time.time() - self.t0:6.1f}s"
        end = "\n" if (not self.tty or done >= total) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line about the current stage (e.g. a training step), under the bar."""
        if self.enabled:
            self.stream.write(("\n" if self.tty else "") + f"        {message}\n")
            self.stream.flush()


def read_vectors(path: str, key: str | None = None) -> np.ndarray:
    """Vectors float32 (n, d) from any format :mod:`shoal.cli.readers` knows (``key``: an HDF5 dataset)."""
    from . import readers

    return np.ascontiguousarray(readers.read_vectors(path, key=key), dtype=np.float32)


def parse_vectors(texts: list[str]) -> np.ndarray:
    """``--vector`` values ("0.1,0.2,...", one per query) as float32 (nq, d)."""
    try:
        rows = [[float(v) for v in t.split(",")] for t in texts]
    except ValueError:
        raise InvalidArgument("--vector: expected comma-separated numbers, e.g. --vector 0.1,0.2,0.3 "
                              "(write --vector=-0.5,1 when it starts with a minus)") from None
    if len({len(r) for r in rows}) > 1:
        raise InvalidArgument(f"--vector: the vectors have different lengths ({sorted({len(r) for r in rows})})")
    return np.array(rows, dtype=np.float32)


def read_queries(args, fetch: Callable[[list[int]], dict[int, np.ndarray]] | None = None,
                 where: str = "") -> tuple[np.ndarray, list[str]]:
    """The queries of ``shoal search`` and one label each, from ``--query-file`` (``--key``, ``--limit``), ``--ids``
    (``fetch(ids) -> {id: vector}`` reads the stored vectors; ``None``: not available, ``where`` says why) or
    ``--vector``."""
    if args.query_file:
        q = read_vectors(args.query_file, args.key)
        if args.limit is not None:
            q = q[:args.limit]
        return q, [f"query {i}" for i in range(q.shape[0])]
    if args.ids:
        if fetch is None:
            raise InvalidArgument(f"--ids: {where or 'not available here'}; give --query-file or --vector")
        try:
            want = [int(t) for t in args.ids.split(",") if t.strip()]
        except ValueError:
            raise InvalidArgument(f"--ids: expected comma-separated integers, got {args.ids!r}") from None
        found = fetch(want)
        missing = [u for u in want if u not in found]
        if missing:
            raise NotFound(f"--ids: id(s) {missing} not in collection {args.name!r}")
        return np.stack([np.asarray(found[u], dtype=np.float32) for u in want]), [f"id {u}" for u in want]
    q = parse_vectors(args.vector)
    return q, [f"vector {i}" for i in range(q.shape[0])]


def infer_type(name: str, values, where: str = "") -> str:
    """Schema type of an attribute column: int, float, keyword (strings) or tags (lists of strings).

    A column mixing kinds of values is refused, naming the first value of the rarer kind and its row (``where``:
    the file, for the message), rather than guessing: a guess would fail every filter written for the other type.
    """
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.dtype.kind in "iub":
        return "int"
    if arr is not None and arr.dtype.kind == "f":
        return "float"
    first: dict[str, tuple[int, Any]] = {}
    count: dict[str, int] = {}
    for row, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        if isinstance(v, (bool, np.bool_, int, np.integer)):
            kind = "int"
        elif isinstance(v, (float, np.floating)):
            kind = "float"
        elif isinstance(v, str):
            kind = "keyword"
        elif isinstance(v, (list, tuple, np.ndarray)):
            kind = "tags"
        else:
            raise InvalidArgument(f"attribute {name!r}{where}: row {row}: cannot infer a type from {v!r}; "
                                  f"pass --schema {name}:TYPE")
        first.setdefault(kind, (row, v))
        count[kind] = count.get(kind, 0) + 1
    kinds = set(count)
    if kinds <= {"int"}:
        return "int" if kinds else "keyword"
    if kinds <= {"int", "float"}:
        return "float"
    if len(kinds) == 1:
        return kinds.pop()
    groups = {"number" if k in ("int", "float") else k: 0 for k in kinds}
    for k, c in count.items():
        groups["number" if k in ("int", "float") else k] += c
    major = max(groups, key=groups.get)
    rare = min((k for k in kinds if ("number" if k in ("int", "float") else k) != major),
               key=lambda k: first[k][0])
    row, value = first[rare]
    described = {"number": "numbers", "keyword": "strings", "tags": "lists"}
    raise InvalidArgument(
        f"attribute {name!r}{where}: {groups[major]:,} values are {described[major]} but row {row} has {value!r}: "
        f"one column holds one type; fix the value, or pass --schema {name}:TYPE (int, float, keyword, tags) "
        f"to say which")


def parse_schema_arg(text: str | None) -> dict[str, str]:
    out = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, typ = item.partition(":")
        if not sep:
            raise InvalidArgument(f"--schema: expected NAME:TYPE items, got {item!r}")
        out[name.strip()] = typ.strip()
    return out


def parse_param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise InvalidArgument(f"--param: expected key=value, got {text!r}")
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    if value.lower() in ("true", "false"):
        return key, value.lower() == "true"
    return key, value
