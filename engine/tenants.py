"""Tenant names <-> dense int32 tenant ids (the engine's side of the tenant contract in ARCHITECTURE.md)."""

from __future__ import annotations

from ..errors import InvalidArgument, NotFound


class TenantRegistry:
    """Tenant names <-> dense int32 ids. Ids are never reused for another name; a dropped tenant is inactive
    until granted again (it then gets its old id back)."""

    def __init__(self, names: list[str] | None = None, active: list[bool] | None = None):
        self.names: list[str] = list(names or [])
        self.ids: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.active: list[bool] = list(active) if active is not None else [True] * len(self.names)

    @staticmethod
    def check_name(name) -> str:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidArgument(f"tenant names must be non-empty strings of at most 256 characters, got {name!r}")
        return name

    def lookup(self, name) -> int:
        """Id of an existing (active) tenant; :class:`NotFound` otherwise."""
        self.check_name(name)
        tid = self.ids.get(name)
        if tid is None or not self.active[tid]:
            raise NotFound(f"unknown tenant {name!r}")
        return tid

    def ensure(self, name: str) -> int:
        """Id of ``name``, registering or re-activating it."""
        tid = self.ids.get(name)
        if tid is None:
            tid = len(self.names)
            self.names.append(name)
            self.ids[name] = tid
            self.active.append(True)
        else:
            self.active[tid] = True
        return tid

    def list(self) -> list[str]:
        return [n for n, a in zip(self.names, self.active) if a]
