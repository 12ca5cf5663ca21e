"""Conversions between Python/numpy values and shoal.v1 messages, shared by the servicer and the client.

Vectors are packed little-endian float32 bytes, ids packed int64 and scores packed float32: ``np.frombuffer`` on the
receiving side, no per-float Python objects on either.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

from ..errors import DimensionMismatch, InvalidArgument
from .proto.shoal.v1 import shoal_pb2 as pb

F32 = np.dtype("<f4")
I64 = np.dtype("<i8")


# ------------------------------------------------------------------------------------------------------ arrays
def as_f32(x, name: str = "vectors") -> np.ndarray:
    """``x`` as a float32 array; InvalidArgument (not numpy's ValueError) when it does not hold numbers."""
    try:
        return np.asarray(x, dtype=F32)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{name}: expected numbers (float32), got {type(x).__name__}") from None


def pack_vectors(x, name: str = "vectors") -> tuple[bytes, int, int]:
    """``(bytes, n, d)`` of ``x`` as row-major little-endian float32 (a single vector is a batch of one)."""
    arr = as_f32(x, name)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{name}: expected shape (n, d), got {arr.shape}")
    return np.ascontiguousarray(arr).tobytes(), arr.shape[0], arr.shape[1]


def unpack_vectors(data: bytes, d: int, n: int | None = None, *, name: str = "vectors") -> np.ndarray:
    """float32 ``(n, d)`` from packed bytes; checks the length against ``d`` (and ``n`` when given)."""
    if len(data) % 4:
        raise InvalidArgument(f"{name}: {len(data)} bytes is not a whole number of float32 values")
    flat = np.frombuffer(data, dtype=F32)
    if n is not None:
        if flat.size != n * d:
            got = flat.size / n if n else flat.size
            raise DimensionMismatch(f"{name}: {n} vectors of dimension {got:g} do not match the collection's "
                                    f"dimension {d}")
    elif flat.size % d:
        raise DimensionMismatch(f"{name}: {flat.size} floats are not a whole number of {d}-dimensional vectors")
    return flat.reshape(-1, d)


def pack_array(a, dtype) -> bytes:
    return np.ascontiguousarray(a, dtype=dtype).tobytes()


# ------------------------------------------------------------------------------------------------------ attributes
def to_value(v: Any) -> pb.Value | None:
    """One attribute value as a message; ``None`` (and float NaN) mean missing."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return pb.Value(int_value=int(v))
    if isinstance(v, (int, np.integer)):
        return pb.Value(int_value=int(v))
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else pb.Value(float_value=float(v))
    if isinstance(v, str):
        return pb.Value(keyword_value=v)
    if isinstance(v, (list, tuple, set, frozenset, np.ndarray)):
        tags = [str(t) for t in v]
        return pb.Value(tags_value=pb.TagList(tags=tags))
    raise InvalidArgument(f"attribute value {v!r} of type {type(v).__name__} is not a number, string or list of tags")


def from_value(v: pb.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "tags_value":
        return list(v.tags_value.tags)
    return None if kind is None else getattr(v, kind)


def to_attributes(attrs: Mapping[str, Any] | None) -> pb.Attributes:
    msg = pb.Attributes()
    for name, value in (attrs or {}).items():
        m = to_value(value)
        if m is not None:
            msg.values[str(name)].CopyFrom(m)
    return msg


def from_attributes(msg: pb.Attributes) -> dict[str, Any]:
    return {name: from_value(v) for name, v in msg.values.items()}


def rows_of_attrs(attrs, n: int) -> list[dict] | None:
    """Per-point dicts from ``None``, a list of dicts, or a columnar ``{name: sequence of n}``."""
    if attrs is None:
        return None
    if isinstance(attrs, Mapping):
        cols = {k: list(v) for k, v in attrs.items()}
        for k, v in cols.items():
            if len(v) != n:
                raise InvalidArgument(f"attribute {k!r} has {len(v)} values for {n} points")
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]
    rows = list(attrs)
    if len(rows) != n:
        raise InvalidArgument(f"{len(rows)} attribute rows for {n} points")
    return rows


# ------------------------------------------------------------------------------------------------------ filters, params
def to_filter(filter) -> pb.Filter | None:
    """A filter message from an expression string, a JSON-AST dict, or ``None``."""
    if filter is None:
        return None
    if isinstance(filter, str):
        return pb.Filter(expression=filter)
    if isinstance(filter, Mapping):
        return pb.Filter(ast_json=json.dumps(filter))
    from .. import filters  # an AST node of the filter language

    return pb.Filter(ast_json=json.dumps(filters.to_json(filter)))


def from_filter(msg: pb.Filter | None, has_field: bool = True) -> str | dict | None:
    if not has_field or msg is None:
        return None
    kind = msg.WhichOneof("kind")
    if kind == "expression":
        return msg.expression
    if kind == "ast_json":
        try:
            obj = json.loads(msg.ast_json)
        except ValueError as exc:
            raise InvalidArgument(f"filter AST is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidArgument("filter AST must be a JSON object")
        return obj
    return None


def to_params(params: Mapping[str, Any] | None) -> dict[str, pb.ParamValue]:
    out = {}
    for name, v in (params or {}).items():
        if isinstance(v, (bool, np.bool_)):
            out[name] = pb.ParamValue(bool_value=bool(v))
        elif isinstance(v, (int, np.integer)):
            out[name] = pb.ParamValue(int_value=int(v))
        elif isinstance(v, (float, np.floating)):
            out[name] = pb.ParamValue(float_value=float(v))
        elif isinstance(v, str):
            out[name] = pb.ParamValue(string_value=v)
        else:
            raise InvalidArgument(f"search param {name!r}: {v!r} is not a number, bool or string")
    return out


def from_params(msg) -> dict[str, Any] | None:
    out = {name: getattr(v, v.WhichOneof("kind")) for name, v in msg.items() if v.WhichOneof("kind")}
    return out or None


# ------------------------------------------------------------------------------------------------------ JSON
def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    return str(o)


def dumps(obj) -> str:
    """JSON text of an engine dict (numpy scalars and arrays included)."""
    return json.dumps(obj, default=_json_default, sort_keys=True)
