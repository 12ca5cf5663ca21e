"""Directory-of-arrays persistence: ``PREFIX/meta.json`` plus one ``PREFIX/NAME.npy`` per array.

Every index saves through :func:`save_arrays` and loads through :func:`load_arrays`, on any
:class:`~shoal.storage.ObjectStore`. ``meta.json`` is written last, so a reader that finds it finds every array.
With ``mmap=True`` arrays are memory-mapped where the store has a local file (local directory, or an S3 store with a
cache directory), so a cold start maps rather than copies. :func:`read_npy_rows` reads a row range of one array with
a ranged GET, so a serverless worker fetches only the bytes it needs.
"""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import numpy as np

from ..errors import FailedPrecondition, InvalidArgument

FORMAT_VERSION = 1


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def save_arrays(store, prefix: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as ``.npy`` objects and ``meta`` (plus ``format_version`` and the array names) as JSON."""
    prefix = prefix.strip("/")
    for name, arr in arrays.items():
        store.put(f"{prefix}/{name}.npy", _npy_bytes(np.asarray(arr)))
    full = dict(meta)
    full["format_version"] = FORMAT_VERSION
    full["arrays"] = sorted(arrays)
    store.put(f"{prefix}/meta.json", json.dumps(full, indent=1, sort_keys=True).encode())


def load_meta(store, prefix: str, *, kind: str | None = None) -> dict[str, Any]:
    """Read and check ``PREFIX/meta.json``."""
    meta = json.loads(store.get(f"{prefix.strip('/')}/meta.json"))
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise FailedPrecondition(f"{prefix}: index format version {version} is not supported (expected {FORMAT_VERSION})")
    if kind is not None and meta.get("kind") != kind:
        raise InvalidArgument(f"{prefix}: holds a {meta.get('kind')!r} index, not {kind!r}")
    return meta


def load_array(store, key: str, *, mmap: bool = False) -> np.ndarray:
    """Load one ``.npy`` object, memory-mapped when asked and possible."""
    if mmap:
        path = store.local_path(key)
        if path is not None:
            return np.load(path, mmap_mode="r", allow_pickle=False)
    return np.load(io.BytesIO(store.get(key)), allow_pickle=False)


def load_arrays(store, prefix: str, *, kind: str | None = None, mmap: bool = False,
                names: list[str] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load ``meta`` and the named arrays (all by default) saved by :func:`save_arrays`."""
    prefix = prefix.strip("/")
    meta = load_meta(store, prefix, kind=kind)
    wanted = meta["arrays"] if names is None else names
    arrays = {name: load_array(store, f"{prefix}/{name}.npy", mmap=mmap) for name in wanted}
    return meta, arrays


def npy_header(store, key: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """Return ``(dtype, shape, data_offset)`` of a C-order ``.npy`` object with one small ranged read."""
    head = store.get_range(key, 0, 4096)
    if head[:6] != b"\x93NUMPY":
        raise InvalidArgument(f"{key}: not an .npy file")
    major = head[6]
    if major == 1:
        hlen = struct.unpack("<H", head[8:10])[0]
        start = 10
    else:
        hlen = struct.unpack("<I", head[8:12])[0]
        start = 12
    if start + hlen > len(head):
        head = store.get_range(key, 0, start + hlen)
    header = eval_npy_header(head[start:start + hlen].decode("latin1"))
    if header["fortran_order"]:
        raise InvalidArgument(f"{key}: Fortran-order arrays are not supported for ranged reads")
    return np.dtype(header["descr"]), tuple(header["shape"]), start + hlen


def eval_npy_header(text: str) -> dict:
    """Parse the dict literal of an ``.npy`` header without ``eval``."""
    import ast

    return ast.literal_eval(text)


def read_npy_rows(store, key: str, start: int, stop: int, header=None) -> np.ndarray:
    """Read rows ``[start, stop)`` (along axis 0) of a saved array with one ranged GET; ``header`` (the
    :func:`npy_header` of ``key``, when the caller keeps it) saves the request that reads it."""
    dtype, shape, offset = npy_header(store, key) if header is None else header
    n = shape[0] if shape else 0
    start, stop = max(0, start), min(n, stop)
    row_shape = shape[1:]
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize
    if stop <= start:
        return np.empty((0, *row_shape), dtype=dtype)
    data = store.get_range(key, offset + start * row_bytes, offset + stop * row_bytes)
    return np.frombuffer(data, dtype=dtype).reshape(stop - start, *row_shape)
