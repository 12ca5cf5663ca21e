"""shoal errors <-> gRPC status codes, in one place for the servicer and the client.

The server maps every exception a handler raises to a status code and a one-line message: shoal's typed errors by
their ``status`` name, ``ValueError``/``TypeError`` (e.g. the filter parser's errors) to INVALID_ARGUMENT, and
anything else to INTERNAL with a generic message and an error id (the traceback goes to the server's log, never to the
caller). The nearest error class the client knows travels in the trailing metadata ``shoal-error-type`` so the client
can raise the same subclass (``DimensionMismatch`` rather than just ``InvalidArgument``).
"""

from __future__ import annotations

import logging
import uuid

import grpc

from .. import errors as _e

log = logging.getLogger("shoal.server")

ERROR_TYPE_KEY = "shoal-error-type"


class Unavailable(_e.ShoalError, ConnectionError):
    """The server is not reachable, still loading, or shutting down (retried by the client with backoff)."""

    status = "UNAVAILABLE"


class Internal(_e.ShoalError, RuntimeError):
    """The server failed; details are in its log under the error id in the message."""

    status = "INTERNAL"


class Unimplemented(_e.ShoalError, NotImplementedError):
    status = "UNIMPLEMENTED"


class Unknown(_e.ShoalError, RuntimeError):
    status = "UNKNOWN"


#: one exception class per status code, for the client (shoal.errors where one fits)
CLASS_OF_CODE: dict[grpc.StatusCode, type[_e.ShoalError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: _e.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: _e.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: _e.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: _e.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: _e.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: _e.Unauthenticated,
    grpc.StatusCode.FAILED_PRECONDITION: _e.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _e.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: _e.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: _e.Cancelled,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
    grpc.StatusCode.UNKNOWN: Unknown,
}

#: subclasses the client may raise when the server names them in ``shoal-error-type``
_KNOWN_SUBCLASSES = {cls.__name__: cls for cls in (_e.DimensionMismatch, _e.SchemaError)}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """``(code, message)`` for an exception raised while serving a call; logs unexpected ones with their traceback."""
    if isinstance(exc, _e.ShoalError):
        code = getattr(grpc.StatusCode, exc.status, grpc.StatusCode.INTERNAL)
        if code is not grpc.StatusCode.INTERNAL:
            return code, str(exc)
    elif isinstance(exc, (ValueError, TypeError)):
        # the filter parser's FilterSyntaxError / FilterTypeError and numpy conversion errors: the caller's input
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc) or type(exc).__name__
    elif isinstance(exc, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory serving this request"
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s", error_id, exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error (id {error_id}; see the server log)"


def abort(context: grpc.ServicerContext, exc: BaseException, trailing=()) -> None:
    """Finish the call with the status that ``exc`` maps to (raises, as ``context.abort`` does).

    ``trailing`` adds metadata pairs (e.g. how many points a failed stream had applied).
    """
    code, message = status_of(exc)
    meta = tuple(trailing)
    known = next((c.__name__ for c in type(exc).__mro__ if _KNOWN_SUBCLASSES.get(c.__name__) is c), None)
    if code is not grpc.StatusCode.INTERNAL and known:
        meta += ((ERROR_TYPE_KEY, known),)
    if meta:
        context.set_trailing_metadata(meta)
    context.abort(code, message)


def error_from_rpc(err: grpc.RpcError) -> _e.ShoalError:
    """The typed exception for a failed call (client side)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    cls = CLASS_OF_CODE.get(code, Unknown)
    try:
        trailing = dict(err.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - some RpcError kinds (e.g. channel closed) carry no metadata
        trailing = {}
    named = _KNOWN_SUBCLASSES.get(trailing.get(ERROR_TYPE_KEY, ""))
    if named is not None and issubclass(named, cls):
        cls = named
    exc = cls(details)
    exc.code = code
    return exc
