"""Readers for the data files ``shoal build`` and the benchmarks take: vectors, attributes, tenants and ids.

Vectors: ``.npy``, ``.fvecs`` / ``.bvecs`` / ``.ivecs`` (the TEXMEX format: each record is an int32 dimension
followed by that many float32 / uint8 / int32 values), ann-benchmarks ``.hdf5`` / ``.h5`` (dataset ``train`` unless
``key=`` says otherwise), ``.parquet`` (a list / fixed-size-list column, or numeric columns), ``.csv`` / ``.tsv``
(numeric columns) and ``.jsonl`` (a list field per line).

Attributes and tenants: ``.parquet``, ``.csv`` / ``.tsv`` and ``.jsonl``. Tenants are a per-row list of names: a list
column (parquet), a list field (jsonl) or a ``;``-separated string (csv).

Parquet and HDF5 need the optional ``io`` extra (``pip install 'shoal[io]'``: pyarrow, h5py); a missing one raises
:class:`MissingDependency` naming it. Bad files raise :class:`~shoal.errors.InvalidArgument` with the file name and what
is wrong; a missing file raises :class:`~shoal.errors.NotFound`.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument, NotFound

VECTOR_FORMATS = (".npy", ".fvecs", ".bvecs", ".ivecs", ".hdf5", ".h5", ".parquet", ".csv", ".tsv", ".jsonl")
TABLE_FORMATS = (".parquet", ".csv", ".tsv", ".jsonl")
ID_FORMATS = (".npy", ".ivecs", ".txt") + TABLE_FORMATS
#: column / field names tried, in order, for the vectors of a table when none is named
VECTOR_COLUMNS = ("vector", "vectors", "embedding", "embeddings", "emb")
#: column / field holding ids when none is named
ID_COLUMN = "id"
TENANT_SEP = ";"

_TEXMEX = {".fvecs": np.dtype("<f4"), ".bvecs": np.dtype("u1"), ".ivecs": np.dtype("<i4")}


class MissingDependency(FailedPrecondition):
    """An optional package needed for this file format is not installed; the message names the extra."""


# ---------------------------------------------------------------------------------------------------- helpers
def _path(path) -> Path:
    p = Path(path)
    if not p.exists():
        raise NotFound(f"{p}: no such file")
    if p.is_dir():
        raise InvalidArgument(f"{p}: is a directory, expected a file")
    return p


def _ext(p: Path, supported: Sequence[str], what: str) -> str:
    ext = p.suffix.lower()
    if ext not in supported:
        raise InvalidArgument(f"{p}: unknown {what} file extension {ext or '(none)'!r}; "
                              f"supported: {', '.join(supported)}")
    return ext


def _pyarrow():
    """``(pyarrow, pyarrow.parquet)``, or :class:`MissingDependency` naming the extra."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependency("reading .parquet files needs pyarrow: pip install 'shoal[io]' "
                                "(or pip install pyarrow)") from None
    return pa, pq


def _h5py():
    try:
        import h5py
    except ImportError:
        raise MissingDependency("reading .hdf5 files needs h5py: pip install 'shoal[io]' "
                                "(or pip install h5py)") from None
    return h5py


def _float32_matrix(arr: np.ndarray, p: Path, what: str = "vectors") -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 1 and arr.dtype != object:
        arr = arr[:, None] if arr.size else arr.reshape(0, 0)
    if arr.ndim != 2:
        raise InvalidArgument(f"{p}: expected a 2-d array of {what}, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidArgument(f"{p}: expected numeric {what}, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- vectors
def read_vectors(path, *, key: str | None = None, column: str | None = None, dtype=np.float32,
                 mmap: bool = False) -> np.ndarray:
    """Read a matrix of vectors.

    Parameters
    ----------
    path : str or Path
        One of :data:`VECTOR_FORMATS`.
    key : str, optional
        HDF5 dataset (default ``train``, as in ann-benchmarks files; ``test`` holds their queries).
    column : str, optional
        Table formats: the list column / field holding the vectors. Default: the first of :data:`VECTOR_COLUMNS`
        present, else the only list column, else every numeric column except ``id``.
    dtype : numpy dtype or None
        Result dtype (float32 by default); ``None`` keeps the file's own (uint8 for .bvecs, int32 for .ivecs).
    mmap : bool
        ``.npy`` / TEXMEX files: map the file instead of reading it (only with ``dtype=None`` or matching dtype).

    Returns
    -------
    ndarray (n, d)
    """
    p = _path(path)
    ext = _ext(p, VECTOR_FORMATS, "vectors")
    if key is not None and ext not in (".hdf5", ".h5"):
        raise InvalidArgument(f"{p}: key= selects an HDF5 dataset; this is a {ext} file")
    if ext == ".npy":
        arr = _read_npy(p, mmap)
    elif ext in _TEXMEX:
        arr = read_texmex(p, mmap=mmap)
    elif ext in (".hdf5", ".h5"):
        arr = _read_hdf5(p, key or "train")
    elif ext == ".parquet":
        arr = _vectors_from_parquet(p, column)
    elif ext in (".csv", ".tsv"):
        arr = _vectors_from_csv(p, column)
    else:
        arr = _vectors_from_jsonl(p, column)
    if arr.ndim != 2:
        raise InvalidArgument(f"{p}: expected a 2-d array of vectors, got shape {arr.shape}")
    if dtype is None:
        return arr
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidArgument(f"{p}: expected numeric vectors, got dtype {arr.dtype}")
    if mmap and arr.dtype == np.dtype(dtype):
        return arr
    return np.ascontiguousarray(arr, dtype=dtype)


def _read_npy(p: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as exc:
        raise InvalidArgument(f"{p}: not a readable .npy array of numbers ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InvalidArgument(f"{p}: corrupt .npy file ({exc})") from None


def read_texmex(path, *, mmap: bool = False) -> np.ndarray:
    """Read a ``.fvecs`` / ``.bvecs`` / ``.ivecs`` file in its own dtype (float32 / uint8 / int32), shape (n, d).

    Every record is ``int32 d`` followed by ``d`` values; all records must have the same ``d`` and the file size
    must be a whole number of records, or :class:`InvalidArgument` says what is wrong (truncated file, mixed
    dimensions, wrong extension for the contents).
    """
    p = _path(path)
    ext = _ext(p, tuple(_TEXMEX), "TEXMEX")
    vdt = _TEXMEX[ext]
    size = p.stat().st_size
    if size == 0:
        return np.zeros((0, 0), vdt)
    if size < 4:
        raise InvalidArgument(f"{p}: corrupt {ext} file: {size} bytes, shorter than one record header")
    d = int(np.fromfile(p, dtype="<i4", count=1)[0])
    if d <= 0 or d > 1 << 24:
        raise InvalidArgument(f"{p}: corrupt {ext} file: first record's dimension is {d}")
    rec = 4 + d * vdt.itemsize
    if size % rec:
        raise InvalidArgument(f"{p}: corrupt {ext} file: {size} bytes is not a whole number of {rec}-byte records "
                              f"(dimension {d}); the file is truncated, mixes dimensions, or is not {ext}")
    n = size // rec
    raw = np.memmap(p, dtype=np.uint8, mode="r", shape=(n, rec))
    dims = raw[:, :4].copy().view("<i4").ravel()
    if np.any(dims != d):
        bad = int(np.flatnonzero(dims != d)[0])
        raise InvalidArgument(f"{p}: corrupt {ext} file: record {bad} has dimension {int(dims[bad])}, "
                              f"record 0 has {d}")
    body = raw[:, 4:]
    if mmap:
        return body.view(vdt) if vdt.itemsize == 1 else np.ndarray((n, d), dtype=vdt, buffer=raw, offset=4,
                                                                    strides=(rec, vdt.itemsize))
    return np.ascontiguousarray(body).view(vdt).reshape(n, d).astype(vdt.newbyteorder("="), copy=False)


def _read_hdf5(p: Path, key: str) -> np.ndarray:
    h5py = _h5py()
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InvalidArgument(f"{p}: not a readable HDF5 file ({exc})") from None
    with f:
        if key not in f:
            names = sorted(k for k in f.keys() if isinstance(f[k], h5py.Dataset))
            raise InvalidArgument(f"{p}: no dataset {key!r}; datasets in the file: {', '.join(names) or '(none)'} "
                                  f"(choose one with key=, or --key on the command line)")
        ds = f[key]
        if not isinstance(ds, h5py.Dataset):
            raise InvalidArgument(f"{p}: {key!r} is a group, not a dataset")
        return np.asarray(ds[()])


def _list_column_to_matrix(values, p: Path, name: str) -> np.ndarray:
    """Rows of equal-length lists -> (n, d) float array."""
    pa, _ = _pyarrow()

    col = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    n = len(col)
    if col.null_count:
        bad = int(np.flatnonzero(np.asarray(col.is_null()))[0])
        raise InvalidArgument(f"{p}: column {name!r}: row {bad} has no vector (null)")
    if pa.types.is_fixed_size_list(col.type):
        flat = col.flatten()
        d = col.type.list_size
    else:
        offsets = np.asarray(col.offsets)
        lens = np.diff(offsets)
        if n and np.any(lens != lens[0]):
            bad = int(np.flatnonzero(lens != lens[0])[0])
            raise InvalidArgument(f"{p}: column {name!r}: row {bad} has {int(lens[bad])} values, row 0 has "
                                  f"{int(lens[0])}; vectors must all have the same dimension")
        d = int(lens[0]) if n else 0
        flat = col.flatten()
    if flat.null_count:
        raise InvalidArgument(f"{p}: column {name!r}: a vector holds a null value")
    arr = flat.to_numpy(zero_copy_only=False)
    return _float32_matrix(arr.reshape(n, d) if n else np.zeros((0, d)), p)


def _vectors_from_parquet(p: Path, column: str | None) -> np.ndarray:
    pa, pq = _pyarrow()
    try:
        schema = pq.read_schema(p)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"{p}: not a readable parquet file ({exc})") from None
    names = list(schema.names)
    is_list = {f.name: pa.types.is_list(f.type) or pa.types.is_large_list(f.type)
               or pa.types.is_fixed_size_list(f.type) for f in schema}
    if column is not None:
        if column not in names:
            raise InvalidArgument(f"{p}: no column {column!r}; columns: {', '.join(names)}")
        chosen = [column]
    else:
        chosen = [c for c in VECTOR_COLUMNS if c in names][:1] or [c for c in names if is_list[c]]
        if len(chosen) > 1:
            raise InvalidArgument(f"{p}: several list columns ({', '.join(chosen)}); name the vectors with column=")
    if chosen:
        name = chosen[0]
        if not is_list[name]:
            raise InvalidArgument(f"{p}: column {name!r} is {schema.field(name).type}, not a list of numbers")
        return _list_column_to_matrix(pq.read_table(p, columns=[name]).column(name), p, name)
    numeric = [f.name for f in schema if f.name != ID_COLUMN
               and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))]
    if not numeric:
        raise InvalidArgument(f"{p}: no vector column (a list column, or numeric columns); columns: {', '.join(names)}")
    table = pq.read_table(p, columns=numeric)
    cols = []
    for name in numeric:
        c = table.column(name)
        if c.null_count:
            raise InvalidArgument(f"{p}: column {name!r} has null values; vectors cannot have missing components")
        cols.append(c.to_numpy())
    return _float32_matrix(np.stack(cols, axis=1) if cols else np.zeros((0, 0)), p)


def _sniff_csv(p: Path):
    return "\t" if p.suffix.lower() == ".tsv" else ","


def _csv_rows(p: Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV/TSV file (the first row is the header)."""
    with open(p, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=_sniff_csv(p)))
    if not rows:
        return [], []
    header = [h.strip() for h in rows[0]]
    body = [r for r in rows[1:] if r and any(c.strip() for c in r)]
    for i, r in enumerate(body):
        if len(r) != len(header):
            raise InvalidArgument(f"{p}: line {i + 2} has {len(r)} fields, the header has {len(header)}")
    return header, body


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _vectors_from_csv(p: Path, column: str | None) -> np.ndarray:
    with open(p, newline="", encoding="utf-8") as f:
        first = next(csv.reader(f, delimiter=_sniff_csv(p)), None)
    if first is None:
        return np.zeros((0, 0), np.float32)
    has_header = not all(_is_number(c) for c in first if c.strip())
    if has_header:
        header, body = _csv_rows(p)
    else:
        with open(p, newline="", encoding="utf-8") as f:
            body = [r for r in csv.reader(f, delimiter=_sniff_csv(p)) if r]
        header = [str(i) for i in range(len(first))]
    if column is not None:
        if column not in header:
            raise InvalidArgument(f"{p}: no column {column!r}; columns: {', '.join(header)}")
        idx = header.index(column)
        return _float32_matrix(_parse_vector_cells([r[idx] for r in body], p, column), p)
    keep = [i for i, h in enumerate(header) if h != ID_COLUMN]
    out = np.empty((len(body), len(keep)), np.float32)
    for r, row in enumerate(body):
        for j, i in enumerate(keep):
            try:
                out[r, j] = float(row[i])
            except ValueError:
                raise InvalidArgument(f"{p}: line {r + 1 + has_header}, column {header[i]!r}: "
                                      f"{row[i]!r} is not a number") from None
    return out


def _parse_vector_cells(cells: list[str], p: Path, name: str) -> np.ndarray:
    """A column of vectors written as JSON lists (or space/semicolon-separated numbers) in CSV cells."""
    rows = []
    for i, c in enumerate(cells):
        c = c.strip()
        try:
            v = json.loads(c) if c.startswith("[") else [float(t) for t in c.replace(";", " ").split()]
        except (ValueError, json.JSONDecodeError):
            raise InvalidArgument(f"{p}: column {name!r}, row {i}: cannot read a vector from {c[:40]!r}") from None
        rows.append(v)
    return _rows_to_matrix(rows, p, name)


def _rows_to_matrix(rows: list, p: Path, name: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, 0), np.float32)
    d = len(rows[0]) if isinstance(rows[0], (list, tuple)) else -1
    for i, r in enumerate(rows):
        if not isinstance(r, (list, tuple)):
            raise InvalidArgument(f"{p}: {name!r} of row {i} is {type(r).__name__}, expected a list of numbers")
        if len(r) != d:
            raise InvalidArgument(f"{p}: {name!r} of row {i} has {len(r)} values, row 0 has {d}; "
                                  f"vectors must all have the same dimension")
    try:
        return np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{p}: {name!r} holds values that are not numbers") from None


def _jsonl_records(p: Path) -> list[dict]:
    out = []
    with open(p, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"{p}:{no}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise InvalidArgument(f"{p}:{no}: expected a JSON object per line, got {type(obj).__name__}")
            out.append(obj)
    return out


def _vectors_from_jsonl(p: Path, column: str | None) -> np.ndarray:
    recs = _jsonl_records(p)
    if not recs:
        return np.zeros((0, 0), np.float32)
    if column is None:
        column = next((c for c in VECTOR_COLUMNS if c in recs[0]), None)
        if column is None:
            raise InvalidArgument(f"{p}: no vector field; expected one of {', '.join(VECTOR_COLUMNS)} "
                                  f"(or name it with column=); fields: {', '.join(recs[0])}")
    missing = next((i for i, r in enumerate(recs) if column not in r), None)
    if missing is not None:
        raise InvalidArgument(f"{p}: record {missing} has no field {column!r}")
    return _rows_to_matrix([r[column] for r in recs], p, column)


# ---------------------------------------------------------------------------------------------------- tables
def _table(path, columns: Sequence[str] | None = None) -> tuple[Path, list[str], dict[str, list]]:
    """Read a table file into ``(path, column names, {name: list of Python values (None = missing)})``."""
    p = _path(path)
    ext = _ext(p, TABLE_FORMATS, "table")
    if ext == ".parquet":
        pa, pq = _pyarrow()
        try:
            names = list(pq.read_schema(p).names)
            table = pq.read_table(p, columns=list(columns) if columns is not None else None)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidArgument(f"{p}: not a readable parquet file ({exc})") from None
        except KeyError as exc:
            raise InvalidArgument(f"{p}: no column {exc}") from None
        cols = {name: _clean_floats(table.column(name).to_pylist()) for name in table.column_names}
        return p, names, cols
    if ext == ".jsonl":
        recs = _jsonl_records(p)
        names: list[str] = []
        seen = set()
        for r in recs:
            for k in r:
                if k not in seen:
                    seen.add(k)
                    names.append(k)
        return p, names, {k: [r.get(k) for r in recs] for k in names}
    header, body = _csv_rows(p)
    if len(set(header)) != len(header):
        raise InvalidArgument(f"{p}: duplicate column names in the header: {header}")
    cols = {h: _infer_csv_column([r[i] for r in body]) for i, h in enumerate(header)}
    return p, header, cols


def _clean_floats(values: list) -> list:
    return [None if isinstance(v, float) and math.isnan(v) else v for v in values]


def _infer_csv_column(cells: list[str]) -> list:
    """CSV cells -> ints if all are integers, floats if all are numbers, else strings; empty cells are None."""
    vals = [c.strip() for c in cells]
    present = [c for c in vals if c != ""]
    try:
        ints = [int(c) for c in present]
        it = iter(ints)
        return [None if c == "" else next(it) for c in vals]
    except ValueError:
        pass
    try:
        floats = [float(c) for c in present]
        if any(math.isnan(f) or math.isinf(f) for f in floats):
            raise ValueError
        it = iter(floats)
        return [None if c == "" else next(it) for c in vals]
    except ValueError:
        return [None if c == "" else c for c in cells]


def _finite_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def _check_text_fallback(values: list, p: Path, name: str) -> None:
    """A CSV column read as text although most of its cells are numbers (a typo, ``NA``, ``n/a``, ``-``) would
    silently become a keyword column on which every numeric filter fails: refuse it, naming the first such cell."""
    text = [(i, v) for i, v in enumerate(values) if isinstance(v, str)]
    if not text:
        return  # read as numbers (or empty)
    odd = [(i, v) for i, v in text if not _finite_number(v)]
    numbers = len(text) - len(odd)
    if not odd or numbers <= len(odd):
        return  # text, or mostly text: a keyword column
    row, value = odd[0]
    more = f" (and {len(odd) - 1:,} more value(s) that are not numbers)" if len(odd) > 1 else ""
    raise InvalidArgument(
        f"{p}: column {name!r}: {numbers:,} of {len(text):,} values are numbers but row {row} has "
        f"{value!r}{more}, so the whole column would be read as text (keyword) and numeric filters such as "
        f"'{name} < 10' would fail. Fix the value (an empty cell is a missing value), or give the type: "
        f"--schema {name}:keyword keeps the column as text, --schema {name}:float reports each bad value")


def _ids_from_column(values: list, p: Path, name: str) -> np.ndarray:
    out = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        if isinstance(v, bool) or v is None:
            raise InvalidArgument(f"{p}: {name!r} of row {i} is {v!r}, expected a non-negative integer id")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if not isinstance(v, (int, np.integer)) or v < 0 or v > np.iinfo(np.int64).max:
            raise InvalidArgument(f"{p}: {name!r} of row {i} is {v!r}, expected a non-negative integer id")
        out[i] = v
    return out


def read_attributes(path, *, id_column: str | None = ID_COLUMN, columns: Sequence[str] | None = None,
                    schema: dict[str, str] | None = None, tags_sep: str = TENANT_SEP,
                    exclude: Sequence[str] = VECTOR_COLUMNS) -> tuple[np.ndarray | None, dict[str, list]]:
    """Read per-row attributes from ``.parquet``, ``.csv`` / ``.tsv`` or ``.jsonl``.

    Parameters
    ----------
    path : str or Path
    id_column : str or None
        Column holding the user ids (returned apart); ``None`` or absent -> ids are ``None``.
    columns : sequence of str, optional
        Read only these attributes (default: all but the id column and ``exclude``).
    schema : {name: "int" | "float" | "keyword" | "tags"}, optional
        Types to coerce to: numbers are checked, ``tags`` cells given as strings (CSV) are split on ``tags_sep``.
    exclude : names skipped unless listed in ``columns`` (by default the vector columns of a file that holds both).

    Returns
    -------
    ids : int64 (n,) or None
    attrs : {name: list of n Python values}, ``None`` for a missing value.
    """
    p = _path(path)
    _ext(p, TABLE_FORMATS, "attributes")
    subset = None
    if columns is not None:
        subset = _parquet_subset(p, list(columns) + [id_column])
    p, names, cols = _table(p, subset)
    if columns is not None:
        missing = [c for c in columns if c not in cols]
        if missing:
            raise InvalidArgument(f"{p}: no column(s) {', '.join(missing)}; columns: {', '.join(names)}")
    ids = None
    if id_column and id_column in cols:
        ids = _ids_from_column(cols[id_column], p, id_column)
    keep = list(columns) if columns is not None else [n for n in names if n != id_column and n not in exclude]
    attrs = {n: cols[n] for n in keep}
    if p.suffix.lower() in (".csv", ".tsv"):
        for name in attrs:
            if name not in (schema or {}):
                _check_text_fallback(attrs[name], p, name)
    for name, typ in (schema or {}).items():
        if name not in attrs:
            raise InvalidArgument(f"{p}: schema names attribute {name!r}, not in the file; columns: {', '.join(names)}")
        attrs[name] = _coerce(attrs[name], typ, p, name, tags_sep)
    return ids, attrs


def _coerce(values: list, typ: str, p: Path, name: str, sep: str) -> list:
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if typ == "tags":
            if isinstance(v, str):
                out.append([t.strip() for t in v.split(sep) if t.strip()])
            elif isinstance(v, (list, tuple)):
                out.append([str(t) for t in v])
            else:
                out.append([str(v)])
        elif typ == "keyword":
            out.append(v if isinstance(v, str) else str(v))
        elif typ in ("int", "float"):
            try:
                num = float(v) if typ == "float" else v
                if typ == "int":
                    if isinstance(v, str):
                        num = int(v.strip())
                    elif isinstance(v, float) and v.is_integer():
                        num = int(v)
                    elif isinstance(v, bool) or not isinstance(v, int):
                        raise ValueError
            except (TypeError, ValueError):
                raise InvalidArgument(f"{p}: attribute {name!r}, row {i}: {v!r} is not a valid {typ}") from None
            out.append(num)
        else:
            raise InvalidArgument(f"attribute {name!r}: unknown type {typ!r}; valid: int, float, keyword, tags")
    return out


def read_tenants(path, column: str = "tenants", *, id_column: str | None = ID_COLUMN,
                 sep: str = TENANT_SEP, with_ids: bool = False):
    """Read a per-row list of tenant names.

    A list column (parquet), a list or string field (jsonl) or a ``sep``-separated string (CSV: ``"acme;globex"``);
    an empty or missing cell gives ``[]`` (no tenant).

    Returns
    -------
    list of n lists of str; with ``with_ids``, ``(ids int64 (n,) or None, lists)``.
    """
    p = _path(path)
    _ext(p, TABLE_FORMATS, "tenants")
    _, names, cols = _table(p, _parquet_subset(p, [column, id_column]))
    if column not in cols:
        raise InvalidArgument(f"{p}: no tenants column {column!r}; columns: {', '.join(names)}")
    out = []
    for i, v in enumerate(cols[column]):
        if v is None:
            out.append([])
        elif isinstance(v, str):
            out.append([t.strip() for t in v.split(sep) if t.strip()])
        elif isinstance(v, (list, tuple)):
            if not all(isinstance(t, (str, int)) and not isinstance(t, bool) for t in v):
                raise InvalidArgument(f"{p}: tenants of row {i} must be names (strings), got {v!r}")
            out.append([str(t) for t in v])
        elif isinstance(v, int) and not isinstance(v, bool):
            out.append([str(v)])
        else:
            raise InvalidArgument(f"{p}: tenants of row {i} must be a list of names or a '{sep}'-separated string, "
                                  f"got {v!r}")
    if not with_ids:
        return out
    ids = _ids_from_column(cols[id_column], p, id_column) if id_column and id_column in cols else None
    return ids, out


def _parquet_subset(p: Path, wanted: Sequence[str | None]) -> list[str] | None:
    """For a parquet file, the ``wanted`` columns it has (so only those are read); ``None`` (= all) otherwise."""
    if p.suffix.lower() != ".parquet":
        return None
    pa, pq = _pyarrow()
    try:
        names = set(pq.read_schema(p).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidArgument(f"{p}: not a readable parquet file ({exc})") from None
    return [c for c in wanted if c and c in names]


def read_ids(path, column: str = ID_COLUMN) -> np.ndarray:
    """Read user ids: ``.npy`` (1-d integers), ``.ivecs`` (one id per record, or the first of each), ``.txt`` (one per
    line) or the ``column`` of a table file. Returns int64 (n,); negative or non-integer ids are an error."""
    p = _path(path)
    ext = _ext(p, ID_FORMATS, "ids")
    if ext == ".npy":
        arr = _read_npy(p, False)
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise InvalidArgument(f"{p}: expected a 1-d array of ids, got shape {arr.shape}")
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
                raise InvalidArgument(f"{p}: ids must be integers")
        elif arr.dtype.kind not in "iu":
            raise InvalidArgument(f"{p}: ids must be integers, got dtype {arr.dtype}")
        vals = arr.astype(np.int64)
    elif ext == ".ivecs":
        vals = read_texmex(p)[:, 0].astype(np.int64) if p.stat().st_size else np.zeros(0, np.int64)
    elif ext == ".txt":
        with open(p, encoding="utf-8") as f:
            lines = [(no, s.strip()) for no, s in enumerate(f, 1) if s.strip()]
        vals = np.empty(len(lines), np.int64)
        for i, (no, s) in enumerate(lines):
            try:
                vals[i] = int(s)
            except ValueError:
                raise InvalidArgument(f"{p}:{no}: {s[:40]!r} is not an integer id") from None
    else:
        _, names, cols = _table(p, _parquet_subset(p, [column]))
        if column not in cols:
            raise InvalidArgument(f"{p}: no id column {column!r}; columns: {', '.join(names)}")
        return _ids_from_column(cols[column], p, column)
    if vals.size and vals.min() < 0:
        raise InvalidArgument(f"{p}: ids must be non-negative, got {int(vals.min())}")
    return vals


__all__ = ["read_vectors", "read_texmex", "read_attributes", "read_tenants", "read_ids", "MissingDependency",
           "VECTOR_FORMATS", "TABLE_FORMATS", "ID_FORMATS"]
