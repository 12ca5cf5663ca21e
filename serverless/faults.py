"""Fault injection for tests and chaos drills: make chosen invocations raise, hang or answer garbage.

The production handler reads no faults: the local emulator's workers :func:`install` :func:`hook` into it (through
:func:`shoal.serverless.handler.set_fault_hook`) when ``$SHOAL_FAULTS_FILE`` names a JSON file holding a list of specs,
re-read on every invocation so a running emulator can be reconfigured::

    [{"role": "processor", "partition": 2, "mode": "raise" | "sleep" | "malformed", "seconds": 5, "times": 1}]

Roles: ``processor`` (optionally one ``partition``), ``allocator`` (optionally one ``node``), ``coordinator`` (raise
or sleep: e.g. to hold a container busy). Work an allocator runs inline (after a refused invocation) is never faulted.

``times`` (optional) limits how often a spec fires, counted across processes in a side file next to the spec file,
so "fail once, then succeed" can be expressed.
"""

from __future__ import annotations

import json
import os
import time

from .. import config


class InjectedFault(RuntimeError):
    pass


def _specs() -> list[tuple[int, dict]]:
    path = config.faults_file()
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        text = f.read().strip()
    return list(enumerate(json.loads(text))) if text else []


def _fire(path: str, i: int, spec: dict) -> bool:
    times = spec.get("times")
    if times is None:
        return True
    counter = f"{path}.fired.{i}"
    # one byte appended per firing: O_APPEND makes the count exact across processes
    fd = os.open(counter, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    return os.path.getsize(counter) <= int(times)


def matching(role: str, partition: int | None = None, node: int | None = None) -> dict | None:
    """The first spec that matches this invocation and may still fire (counting the firing), else ``None``."""
    path = config.faults_file()
    for i, spec in _specs():
        if spec.get("role", role) != role:
            continue
        if "partition" in spec and spec["partition"] != partition:
            continue
        if "node" in spec and spec["node"] != node:
            continue
        if _fire(path, i, spec):
            return spec
    return None


def before(spec: dict | None) -> None:
    """Apply a ``raise`` or ``sleep`` fault before the work."""
    if spec is None:
        return
    if spec.get("mode") == "raise":
        raise InjectedFault(spec.get("message", "injected failure"))
    if spec.get("mode") == "sleep":
        time.sleep(float(spec.get("seconds", 60)))


def _malformed(role: str):
    def answer(out: dict) -> dict:
        D = out["D"]
        # one column short; a processor's single column becomes a string
        out["D"] = D[:, :-1] if role != "processor" or D.shape[1] > 1 else "garbage"
        return out
    return answer


def hook(role: str, *, partition: int | None = None, node: int | None = None):
    """The handler's fault hook: apply a matching ``raise`` or ``sleep`` spec now; for a ``malformed`` one return the
    function that spoils the role's result."""
    spec = matching(role, partition=partition, node=node)
    before(spec)
    return _malformed(role) if spec is not None and spec.get("mode") == "malformed" else None


def install() -> None:
    """Make this process's handler consult the faults file (the emulator's workers call this)."""
    from .handler import set_fault_hook

    set_fault_hook(hook)
