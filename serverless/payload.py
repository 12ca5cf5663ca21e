"""Lambda payloads: JSON with numpy arrays inlined (zlib + base64), spilled to the object store when too large.

Synchronous Lambda invocations carry at most 6 MB of JSON each way. Arrays are sent as raw little-endian bytes,
zlib-compressed when that helps, base64-encoded. A request or response whose JSON still exceeds the limit is written
to the index's store under ``_spill/`` and replaced by a reference ``{"$spill": {"uri", "key", "bytes"}}``; the reader
fetches it, and whoever created a spill object deletes it once the call is over. The ``role`` field stays in the
envelope so that routers and the emulator's per-role counts see it without unpacking.
"""

from __future__ import annotations

import base64
import json
import uuid
import zlib
from typing import Any

import numpy as np

from .. import config
from ..errors import InvalidArgument

#: AWS Lambda's synchronous payload limit, each way (6 MB)
LAMBDA_PAYLOAD_LIMIT = 6 * 1024 * 1024
#: compress arrays larger than this many bytes
_COMPRESS_MIN = 512


def payload_limit() -> int:
    """Bytes above which payloads are spilled: ``$SHOAL_PAYLOAD_LIMIT`` (for tests), else the Lambda limit less a
    margin for the envelope."""
    limit = config.payload_limit()
    return limit if limit is not None else LAMBDA_PAYLOAD_LIMIT - 16 * 1024


def encode(obj: Any) -> Any:
    """Turn ``obj`` (dicts, lists, numbers, strings, numpy arrays and scalars) into JSON-able values."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype == object:
            raise InvalidArgument("object arrays cannot travel in a payload")
        raw = arr.tobytes()
        z = len(raw) > _COMPRESS_MIN
        if z:
            packed = zlib.compress(raw, 1)
            if len(packed) >= len(raw):
                z, packed = False, raw
        else:
            packed = raw
        return {"__nd__": {"dtype": arr.dtype.str, "shape": list(arr.shape), "z": z,
                           "b64": base64.b64encode(packed).decode("ascii")}}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def decode(obj: Any) -> Any:
    """Inverse of :func:`encode`. Raises :class:`InvalidArgument` on a malformed array."""
    if isinstance(obj, dict):
        nd = obj.get("__nd__")
        if nd is not None and len(obj) == 1:
            try:
                raw = base64.b64decode(nd["b64"], validate=True)
                if nd.get("z"):
                    raw = zlib.decompress(raw)
                dtype = np.dtype(nd["dtype"])
                shape = tuple(int(s) for s in nd["shape"])
                if dtype == object:
                    raise ValueError("object dtype")
                return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            except (KeyError, TypeError, ValueError, zlib.error) as exc:
                raise InvalidArgument(f"malformed array in payload: {exc}") from None
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    return json.dumps(encode(obj), separators=(",", ":"), allow_nan=True).encode()


def loads(data: bytes | str) -> Any:
    try:
        return decode(json.loads(data))
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"malformed payload: {exc}") from None


def _open(uri: str):
    from .cache import store_for

    return store_for(uri)


def spill_if_large(encoded: dict, store_uri: str | None, *, limit: int | None = None) -> tuple[dict, str | None]:
    """Return ``(payload, spill_key)``: the encoded payload itself, or a reference to a spilled copy.

    Parameters
    ----------
    encoded : dict
        Output of :func:`encode` (JSON-able).
    store_uri : str or None
        Where to spill; ``None`` makes an oversized payload an error.
    """
    limit = payload_limit() if limit is None else limit
    data = json.dumps(encoded, separators=(",", ":")).encode()
    if len(data) <= limit:
        return encoded, None
    if not store_uri:
        from ..errors import ResourceExhausted

        raise ResourceExhausted(f"payload of {len(data)} bytes exceeds the {limit}-byte limit and no store to spill to")
    key = f"_spill/{uuid.uuid4().hex}.json"
    _open(store_uri).put(key, zlib.compress(data, 1))
    ref = {"$spill": {"uri": store_uri, "key": key, "bytes": len(data)}}
    if "role" in encoded:
        ref["role"] = encoded["role"]
    return ref, key


def unspill(payload: dict, *, delete: bool = False) -> tuple[dict, int]:
    """Resolve a spill reference (if ``payload`` is one): ``(encoded payload, bytes fetched from the store)``."""
    ref = payload.get("$spill") if isinstance(payload, dict) else None
    if ref is None:
        return payload, 0
    try:
        store = _open(ref["uri"])
        blob = store.get(ref["key"])
    except (KeyError, TypeError) as exc:
        raise InvalidArgument(f"malformed spill reference: {exc}") from None
    if delete:
        store.delete(ref["key"])
    try:
        return json.loads(zlib.decompress(blob)), len(blob)
    except (zlib.error, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"malformed spilled payload: {exc}") from None


def delete_spill(store_uri: str | None, key: str | None) -> None:
    if store_uri and key:
        try:
            _open(store_uri).delete(key)
        except Exception:  # noqa: BLE001  (cleanup is best effort; a lifecycle rule on _spill/ catches leftovers)
            pass
