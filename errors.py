"""Typed errors raised at shoal's public edges.

Every error is a subclass of a builtin (``ValueError``, ``KeyError``, ...) so callers that catch the builtin keep
working, and of :class:`ShoalError` so the gRPC servicer and Lambda handlers can map them to status codes in one place
(``status`` names the gRPC code). :func:`backoff_delay` is the one retry policy for the errors that are worth
retrying (UNAVAILABLE from the server, throttled or failed Lambda invocations).
"""

from __future__ import annotations

import random


class ShoalError(Exception):
    """Base of all shoal errors. ``status`` is the gRPC status code name it maps to."""

    status = "INTERNAL"

    def __str__(self) -> str:  # KeyError would otherwise repr() its message
        return str(self.args[0]) if self.args else self.__class__.__name__


class InvalidArgument(ShoalError, ValueError):
    """Bad input: wrong shape, dtype, NaN, malformed setting."""

    status = "INVALID_ARGUMENT"


class DimensionMismatch(InvalidArgument):
    """Vectors whose dimension differs from the collection's or index's."""


class SchemaError(InvalidArgument):
    """Unknown attribute or an attribute value of the wrong type."""


class NotFound(ShoalError, KeyError):
    """Unknown collection, tenant, id or object."""

    status = "NOT_FOUND"


class AlreadyExists(ShoalError, ValueError):
    status = "ALREADY_EXISTS"


class PermissionDenied(ShoalError, PermissionError):
    status = "PERMISSION_DENIED"


class Unauthenticated(ShoalError, PermissionError):
    status = "UNAUTHENTICATED"


class FailedPrecondition(ShoalError, RuntimeError):
    """The call is valid but the object is not in a state to serve it (e.g. an untrained index)."""

    status = "FAILED_PRECONDITION"


class ResourceExhausted(ShoalError, ValueError):
    """A request over a configured size limit."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ShoalError, TimeoutError):
    status = "DEADLINE_EXCEEDED"


class Cancelled(ShoalError, RuntimeError):
    status = "CANCELLED"


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry ``attempt + 1``: full-jitter exponential backoff, uniform in
    ``[0, min(cap, base * 2**attempt)]``, so that many clients retrying at once spread out."""
    return (rng or random).uniform(0.0, min(cap, base * (2 ** attempt)))
