"""Invoking handlers through the AWS Lambda API (boto3); the in-process invoker is :mod:`.local`'s.

Both invokers take and return *encoded* payloads (JSON-able dicts from :func:`.payload.encode`) so the same bytes
travel either way. Errors:

- :class:`Throttled` (HTTP 429 ``TooManyRequestsException``) after the configured retries; the fan-out tree catches it
  to run the child's work inline instead of waiting for capacity it may itself be holding.
- :class:`RemoteError` when the function ran and failed (``FunctionError`` set): carries the remote ``errorType`` and
  ``errorMessage`` (e.g. a processor's "partition 3 ..." message), never swallowed.
- Transient transport failures and 5xx answers are retried with full-jitter exponential backoff.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from typing import Any

from .. import config
from ..errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, ShoalError, backoff_delay

THROTTLE_CODES = {"TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded",
                  "EC2ThrottledException"}


class Throttled(ResourceExhausted):
    """The Lambda service refused the invocation for lack of concurrency (429), retries exhausted."""


class RemoteError(ShoalError, RuntimeError):
    """A function ran and failed; ``error_type`` and ``remote_message`` are the remote ``errorType``/``errorMessage``.
    """

    status = "INTERNAL"

    def __init__(self, function: str, error_type: str, remote_message: str, *, function_error: str = "Unhandled"):
        self.function = function
        self.error_type = error_type
        self.remote_message = remote_message
        self.function_error = function_error
        super().__init__(f"{function}: {error_type}: {remote_message}")


def remote_error_from_payload(function: str, body: bytes, function_error: str = "Unhandled") -> RemoteError:
    try:
        err = json.loads(body or b"{}")
    except json.JSONDecodeError:
        err = {"errorMessage": body[:2000].decode("utf-8", "replace")}
    if not isinstance(err, dict):
        err = {"errorMessage": str(err)}
    return RemoteError(function, str(err.get("errorType", function_error)), str(err.get("errorMessage", "")),
                       function_error=function_error)


class Invoker:
    """Interface: ``invoke(function, payload) -> (response, info)``; counts invocations per function."""

    def __init__(self):
        self.counts: Counter = Counter()
        self._count_lock = threading.Lock()

    def _count(self, function: str) -> None:
        with self._count_lock:
            self.counts[function] += 1

    def invoke(self, function: str, payload: dict, *, throttle_retries: int | None = None) -> tuple[Any, dict]:
        raise NotImplementedError


class LambdaInvoker(Invoker):
    """Synchronous (``RequestResponse``) invocations through boto3's Lambda client.

    Parameters
    ----------
    endpoint_url : str, optional
        Lambda API endpoint; the local emulator's URL in tests. Defaults to ``$SHOAL_LAMBDA_ENDPOINT`` (set by the
        emulator in its workers), else AWS.
    max_attempts : int
        Attempts per invocation on throttling, 5xx and connection errors (botocore's own retries are disabled so
        that these settings are the only ones).
    base_delay, max_delay : float
        Backoff settings in seconds.
    read_timeout : float
        Socket read timeout: at least the function's timeout (Lambda's limit is 900 s).
    """

    def __init__(self, endpoint_url: str | None = None, *, client=None, region: str | None = None,
                 max_attempts: int = 6, base_delay: float = 0.05, max_delay: float = 2.0, read_timeout: float = 910.0,
                 seed: int | None = None):
        super().__init__()
        if max_attempts < 1:
            raise InvalidArgument("max_attempts must be >= 1")
        self.endpoint_url = endpoint_url or config.lambda_endpoint()
        self.region = region
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.read_timeout = read_timeout
        self._client = client
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.retries: Counter = Counter()

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    from botocore.config import Config

                    from ..storage import aws_client

                    cfg = Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=self.read_timeout,
                                 connect_timeout=10, max_pool_connections=64)
                    self._client = aws_client("lambda", self.endpoint_url, self.region, config=cfg)
        return self._client

    def invoke(self, function: str, payload: dict, *, throttle_retries: int | None = None) -> tuple[Any, dict]:
        """Invoke ``function`` with ``payload`` (JSON-able); returns ``(decoded JSON response, info)``.

        ``throttle_retries`` caps the retries on 429 (``0``: raise :class:`Throttled` at once, as the tree wants).
        ``info`` has ``req_bytes``, ``resp_bytes``, ``attempts`` and ``ms`` (round trip).
        """
        from botocore.exceptions import (ClientError, ConnectionClosedError, EndpointConnectionError,
                                         ReadTimeoutError)

        body = json.dumps(payload, separators=(",", ":")).encode()
        t0 = time.perf_counter()
        throttles = 0
        max_throttles = self.max_attempts - 1 if throttle_retries is None else throttle_retries
        attempt = 0
        while True:
            attempt += 1
            try:
                self._count(function)
                resp = self.client.invoke(FunctionName=function, InvocationType="RequestResponse", Payload=body)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                message = exc.response.get("Error", {}).get("Message", str(exc))
                if code in THROTTLE_CODES or status == 429:
                    if throttles >= max_throttles:
                        raise Throttled(f"{function}: throttled ({code or status}) after {attempt} attempts: "
                                        f"{message}") from None
                    throttles += 1
                    self.retries["throttle"] += 1
                    time.sleep(backoff_delay(throttles - 1, self.base_delay, self.max_delay, self._rng))
                    continue
                if status >= 500 and attempt < self.max_attempts:
                    self.retries["5xx"] += 1
                    time.sleep(backoff_delay(attempt - 1, self.base_delay, self.max_delay, self._rng))
                    continue
                if code in ("RequestTooLargeException", "RequestEntityTooLargeException") or status == 413:
                    raise ResourceExhausted(f"{function}: request of {len(body)} bytes is too large: {message}") \
                        from None
                raise RemoteError(function, code or f"HTTP{status}", message, function_error="Service") from None
            except (EndpointConnectionError, ConnectionClosedError) as exc:
                if attempt < self.max_attempts:
                    self.retries["connection"] += 1
                    time.sleep(backoff_delay(attempt - 1, self.base_delay, self.max_delay, self._rng))
                    continue
                raise RemoteError(function, type(exc).__name__, str(exc), function_error="Service") from None
            except ReadTimeoutError as exc:
                raise DeadlineExceeded(f"{function}: no response within {self.read_timeout} s ({exc})") from None
            data = resp["Payload"].read()
            info = {"req_bytes": len(body), "resp_bytes": len(data), "attempts": attempt,
                    "ms": (time.perf_counter() - t0) * 1e3}
            if resp.get("FunctionError"):
                raise remote_error_from_payload(function, data, resp["FunctionError"])
            try:
                return json.loads(data), info
            except json.JSONDecodeError as exc:
                raise RemoteError(function, "MalformedResponse", f"response is not JSON: {exc}") from None
