"""Invoking the handler in this process, with the same JSON round trip and errors as Lambda (tests, laptops)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ..errors import backoff_delay
from .handler import LocalContext, handler as default_handler, use_child_invoker
from .invokers import Invoker, RemoteError, Throttled


class LocalInvoker(Invoker):
    """Runs the handler in this process, with the same JSON round trip as Lambda.

    Parameters
    ----------
    handler : callable, optional
        ``handler(event, context) -> dict``; defaults to :func:`shoal.serverless.handler.handler`.
    max_concurrency : int, optional
        Simulated account concurrency: an invocation beyond it raises :class:`Throttled` (after the same retry policy
        as :class:`LambdaInvoker` when ``throttle_retries`` allows), so the tree's inline fallback can be exercised.
    """

    def __init__(self, handler=None, *, max_concurrency: int | None = None, max_attempts: int = 6,
                 base_delay: float = 0.01, max_delay: float = 0.2):
        super().__init__()
        if handler is None:
            handler = default_handler
        self.handler = handler
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.active = 0
        self.throttled = 0
        self._lock = threading.Lock()

    def _enter(self) -> bool:
        with self._lock:
            if self.max_concurrency is not None and self.active >= self.max_concurrency:
                self.throttled += 1
                return False
            self.active += 1
            return True

    def invoke(self, function: str, payload: dict, *, throttle_retries: int | None = None) -> tuple[Any, dict]:
        body = json.dumps(payload, separators=(",", ":")).encode()
        t0 = time.perf_counter()
        max_throttles = self.max_attempts - 1 if throttle_retries is None else throttle_retries
        throttles = 0
        while not self._enter():
            if throttles >= max_throttles:
                raise Throttled(f"{function}: throttled (local concurrency {self.max_concurrency})")
            throttles += 1
            time.sleep(backoff_delay(throttles - 1, self.base_delay, self.max_delay))
        self._count(function)
        try:
            with use_child_invoker(self):
                out = self.handler(json.loads(body), LocalContext(function))
        except Exception as exc:  # noqa: BLE001  (a function error, reported like Lambda's FunctionError)
            raise RemoteError(function, type(exc).__name__, str(exc)) from None
        finally:
            with self._lock:
                self.active -= 1
        data = json.dumps(out, separators=(",", ":")).encode()
        return json.loads(data), {"req_bytes": len(body), "resp_bytes": len(data), "attempts": throttles + 1,
                                  "ms": (time.perf_counter() - t0) * 1e3}
