"""Helpers the subcommands share: a progress bar, vector files, ``--schema`` and ``--param`` parsing."""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from ..errors import InvalidArgument


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


def infer_type(name: str, values) -> str:
    """Schema type of an attribute column: int, float, keyword (strings) or tags (lists of strings)."""
    arr = values if isinstance(values, np.ndarray) else None
    if arr is not None and arr.dtype.kind in "iub":
        return "int"
    if arr is not None and arr.dtype.kind == "f":
        return "float"
    kinds = set()
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        if isinstance(v, (bool, np.bool_, int, np.integer)):
            kinds.add("int")
        elif isinstance(v, (float, np.floating)):
            kinds.add("float")
        elif isinstance(v, str):
            kinds.add("keyword")
        elif isinstance(v, (list, tuple, np.ndarray)):
            kinds.add("tags")
        else:
            raise InvalidArgument(f"attribute {name!r}: cannot infer a type from {v!r}; pass --schema {name}:TYPE")
    if kinds <= {"int"}:
        return "int" if kinds else "keyword"
    if kinds <= {"int", "float"}:
        return "float"
    if len(kinds) == 1:
        return kinds.pop()
    raise InvalidArgument(f"attribute {name!r} mixes value types ({', '.join(sorted(kinds))}); "
                          f"pass --schema {name}:TYPE")


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
