"""Index builds as jobs: every build (explicit, background, automatic, over gRPC) is one :class:`BuildJob`, registered
on its collection while it runs, so closing waits for it and dropping cancels it."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

from ..errors import Cancelled


class BuildCancelled(Cancelled):
    """A build stopped because its collection was dropped or closed; nothing it built was swapped in."""


class BuildJob:
    """Progress and outcome of one index build.

    Attributes
    ----------
    spec : str
        Factory string being built.
    full : bool
        A rebuild from every record (``False``: the current index extended with the tail).
    stage : str
        ``queued``, ``train``, ``add``, ``calibrate``, ``swap``, ``snapshot``, ``done``, ``failed`` or ``cancelled``.
    error : BaseException or None
    """

    def __init__(self, spec: str, full: bool, explicit: bool = True):
        self.spec = spec
        self.full = full
        self.explicit = explicit
        self.stage = "queued"
        self.done = 0
        self.total = 0
        self.error: BaseException | None = None
        self.started = time.time()
        self.finished: float | None = None
        self.count = 0
        self.summary: dict[str, Any] = {}
        self._event = threading.Event()
        self._cancel: str | None = None
        self.thread: threading.Thread | None = None

    @property
    def progress(self) -> float:
        if self.stage == "done":
            return 1.0
        return self.done / self.total if self.total else 0.0

    @property
    def running(self) -> bool:
        return not self._event.is_set()

    def cancel(self, why: str) -> None:
        """Ask the build to stop at its next checkpoint (between stages and between added chunks)."""
        self._cancel = why

    def checkpoint(self) -> None:
        """Raise :class:`BuildCancelled` if the build was asked to stop."""
        if self._cancel is not None:
            raise BuildCancelled(f"index build of {self.spec} cancelled: {self._cancel}")

    def finish(self, error: BaseException | None = None) -> None:
        if error is not None:
            self.error = error
            self.stage = "cancelled" if isinstance(error, BuildCancelled) else "failed"
        self.finished = time.time()
        self._event.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the build to finish; returns whether it did. Re-raises nothing (see ``error``)."""
        return self._event.wait(timeout)

    def to_dict(self) -> dict[str, Any]:
        end = self.finished or time.time()
        return {"index": self.spec, "full": self.full, "stage": self.stage, "done": self.done, "total": self.total,
                "progress": self.progress, "count": self.count, "seconds": round(end - self.started, 3),
                "error": None if self.error is None else f"{type(self.error).__name__}: {self.error}"}


def stderr_progress(done: int, total: int, stage: str) -> None:
    """A one-line progress bar on stderr (``progress=True``)."""
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(width * frac)
    sys.stderr.write(f"\r{stage:>9} [{bar:<{width}}] {done}/{total}")
    if done >= total and stage in ("add", "calibrate"):
        sys.stderr.write("\n")
    sys.stderr.flush()
