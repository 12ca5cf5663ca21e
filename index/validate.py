"""Checks at the edge: convert and validate user input once, so the kernels can trust it.

Every public ``add``/``search`` of an index (and the engine above it) funnels its arguments through these helpers;
they raise :mod:`shoal.errors` types with messages that name the problem.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import DimensionMismatch, InvalidArgument

MAX_ID = np.iinfo(np.int64).max

METRICS = ("l2", "ip", "cosine")


def check_metric(metric: str) -> str:
    """Return ``metric`` if known, else raise listing the known ones."""
    if metric not in METRICS:
        raise InvalidArgument(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    return metric


def as_vectors(x, d: int | None, *, name: str = "vectors") -> np.ndarray:
    """Return ``x`` as a C-contiguous float32 array of shape ``(n, d)``.

    Parameters
    ----------
    x : array_like, shape (n, d) or (d,)
        A single vector is promoted to a batch of one.
    d : int or None
        Expected dimension; ``None`` accepts any.

    Raises
    ------
    DimensionMismatch
        If the dimension differs from ``d``.
    InvalidArgument
        If ``x`` is not numeric, has the wrong rank, or holds NaN/inf.
    """
    if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
            and (d is None or x.shape[1] == d) and np.isfinite(x).all()):
        return x  # already what every caller needs: the common case costs one finiteness pass
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{name}: cannot convert to an array ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidArgument(f"{name}: expected numbers, got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{name}: expected shape (n, d), got {arr.shape}")
    if d is not None and arr.shape[1] != d:
        raise DimensionMismatch(f"{name}: dimension {arr.shape[1]} does not match the expected dimension {d}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise InvalidArgument(f"{name}: row {bad} contains NaN or inf")
    return arr


def as_ids(ids, n: int | None = None, *, name: str = "ids", allow_duplicates: bool = False) -> np.ndarray:
    """Return ``ids`` as an int64 array of non-negative user ids.

    Raises
    ------
    InvalidArgument
        On non-integer values, negatives, a count different from ``n`` or (unless allowed) duplicates.
    """
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1:
        raise InvalidArgument(f"{name}: expected a 1-d sequence, got shape {arr.shape}")
    if arr.size == 0:
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise InvalidArgument(f"{name}: ids must be integers")
        if np.any(arr > float(MAX_ID)):
            raise InvalidArgument(f"{name}: ids must be at most 2^63-1")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "u":
        if np.any(arr > MAX_ID):
            raise InvalidArgument(f"{name}: ids must be at most 2^63-1")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "i":
        arr = arr.astype(np.int64, copy=False)
    elif arr.dtype == object:
        try:
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in arr):
                raise TypeError
            arr = np.array([int(v) for v in arr], dtype=np.int64)
        except (TypeError, OverflowError):
            raise InvalidArgument(f"{name}: ids must be integers in 0..2^63-1") from None
    else:
        raise InvalidArgument(f"{name}: ids must be integers, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InvalidArgument(f"{name}: ids must be non-negative, got {int(arr.min())}")
    if n is not None and arr.shape[0] != n:
        raise InvalidArgument(f"{name}: got {arr.shape[0]} ids for {n} vectors")
    if not allow_duplicates and arr.size > 1:
        uniq, counts = np.unique(arr, return_counts=True)
        if uniq.size != arr.size:
            raise InvalidArgument(f"{name}: duplicate id {int(uniq[counts > 1][0])} in one batch")
    return np.ascontiguousarray(arr)


def check_k(k) -> int:
    """Return ``k`` as a positive int."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgument(f"k must be a positive integer, got {k!r}")
    return int(k)


def as_allowed(allowed, ntotal: int, nq: int) -> np.ndarray | None:
    """Normalise an ``allowed`` argument (see ARCHITECTURE.md) to ``None``, ``(ntotal,)`` or ``(nq, ntotal)`` bool.

    Parameters
    ----------
    allowed : None, bool array (ntotal,), bool array (nq, ntotal) or sequence of nq such masks
    """
    if allowed is None:
        return None
    if isinstance(allowed, (list, tuple)):
        if len(allowed) != nq:
            raise InvalidArgument(f"allowed: got {len(allowed)} masks for {nq} queries")
        allowed = np.stack([np.asarray(a, dtype=bool) for a in allowed]) if nq else np.zeros((0, ntotal), bool)
    arr = np.asarray(allowed)
    if arr.dtype != np.bool_:
        raise InvalidArgument(f"allowed: expected a boolean mask, got dtype {arr.dtype}")
    if arr.ndim == 1:
        if arr.shape[0] != ntotal:
            raise InvalidArgument(f"allowed: mask has {arr.shape[0]} entries for {ntotal} rows")
    elif arr.ndim == 2:
        if arr.shape != (nq, ntotal):
            raise InvalidArgument(f"allowed: expected shape ({nq}, {ntotal}), got {arr.shape}")
    else:
        raise InvalidArgument(f"allowed: expected 1-d or 2-d masks, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def as_params(params, valid: Sequence[str]) -> dict:
    """Return ``params`` as a dict after checking every key is a known search setting."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise InvalidArgument(f"params must be a dict, got {type(params).__name__}")
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "(none)"
        raise InvalidArgument(f"unknown search parameter(s) {', '.join(unknown)}; valid: {listed}")
    return dict(params)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows of a float32 matrix (cosine metric); zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)
