"""Factory strings: ``index_factory(d, "IVF1024(balanced),PQ16x8(residual=0),Refine")`` and ``describe(index)``.

Grammar (ARCHITECTURE.md): comma-separated stages in pipeline order; a stage is a name, an optional numeric argument
(``IVF1024``, ``PQ16x8``, ``OPQ16``) and optional settings in parentheses (flags or ``key=value``)::

    spec     := stage ("," stage)*
    stage    := NAME ARG? ("(" setting ("," setting)* ")")?
    setting  := KEY ("=" VALUE)?

The *kind* is chosen by the stage that defines it (``Flat``, ``IVF``, ``Curator``, ``OSQ``); its class gets the parsed
stages through ``from_stages`` and rejects any stage or setting it does not know, listing the valid ones.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgument

_STAGE_RE = re.compile(r"^(?P<name>[A-Za-z]+)(?P<arg>[0-9][0-9x]*)?(?:\((?P<settings>[^()]*)\))?$")

#: kind-defining stage -> "module:Class" (imported on first use, so kinds stay independent of each other)
KINDS: dict[str, str] = {
    "Flat": "shoal.index.flat:FlatIndex",
    "IVF": "shoal.index.ivfpq:IVFPQIndex",
    "Curator": "shoal.index.curator:CuratorIndex",
    "OSQ": "shoal.index.osq:OSQIndex",
}


@dataclass(frozen=True)
class Stage:
    """One parsed stage: ``name``, numeric ``arg`` (``""`` if none) and ``settings`` (flags map to ``"1"``)."""

    name: str
    arg: str = ""
    settings: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return format_stage(self.name, self.arg, self.settings)


def parse_factory(spec: str) -> list[Stage]:
    """Split a factory string into stages; raise :class:`InvalidArgument` with the offending part."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument("factory string must be a non-empty string, e.g. 'Flat' or 'IVF1024,PQ16x8'")
    parts, depth, cur = [], 0, []
    for ch in spec.replace(" ", ""):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InvalidArgument(f"factory string {spec!r}: unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise InvalidArgument(f"factory string {spec!r}: unbalanced '('")
    parts.append("".join(cur))
    stages = []
    for part in parts:
        m = _STAGE_RE.match(part)
        if not m:
            raise InvalidArgument(f"factory string {spec!r}: cannot parse stage {part!r} "
                                  "(expected NAME, NAME<number> or NAME(setting,key=value))")
        settings: dict[str, str] = {}
        if m.group("settings"):
            for item in m.group("settings").split(","):
                if not item:
                    raise InvalidArgument(f"factory string {spec!r}: empty setting in stage {part!r}")
                key, eq, value = item.partition("=")
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or (eq and not value):
                    raise InvalidArgument(f"factory string {spec!r}: bad setting {item!r} in stage {part!r}")
                settings[key] = value if eq else "1"
        stages.append(Stage(m.group("name"), m.group("arg") or "", settings))
    return stages


def format_stage(name: str, arg: str = "", settings: dict[str, Any] | None = None) -> str:
    """Inverse of the stage parser; boolean ``True`` settings print as flags."""
    text = f"{name}{arg}"
    if settings:
        items = []
        for key, value in settings.items():
            if value is True:
                items.append(key)
            elif value is False:
                items.append(f"{key}=0")
            else:
                items.append(f"{key}={value}")
        text += "(" + ",".join(items) + ")"
    return text


def take_settings(stage: Stage, spec: dict[str, Any]) -> dict[str, Any]:
    """Convert a stage's settings to the types of ``spec``'s defaults; unknown keys fail listing the valid ones.

    Parameters
    ----------
    stage : Stage
    spec : dict
        ``{key: default}``; the default's type (bool, int, float, str) is the setting's type.
    """
    out = dict(spec)
    for key, raw in stage.settings.items():
        if key not in spec:
            valid = ", ".join(spec) if spec else "(none)"
            raise InvalidArgument(f"unknown setting {key!r} for stage {stage.name}; valid settings: {valid}")
        default = spec[key]
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError
                out[key] = raw.lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                out[key] = int(raw)
            elif isinstance(default, float):
                out[key] = float(raw)
            else:
                out[key] = raw
        except ValueError:
            raise InvalidArgument(f"setting {key}={raw!r} of stage {stage.name}: expected {type(default).__name__}") from None
    return out


def resolve_kind(stages: list[Stage]) -> str:
    """Name of the kind-defining stage in ``stages``."""
    found = [s.name for s in stages if s.name in KINDS]
    if len(found) != 1:
        known = ", ".join(KINDS)
        if not found:
            names = ", ".join(s.name for s in stages)
            raise InvalidArgument(f"no index kind in stages ({names}); one of these stages is required: {known}")
        raise InvalidArgument(f"several index kinds in one factory string ({', '.join(found)}); choose one of: {known}")
    return found[0]


def kind_class(kind: str):
    """Import and return the class registered for a kind-defining stage name (or a saved ``kind``)."""
    target = KINDS.get(kind) or _BY_KIND.get(kind)
    if target is None:
        raise InvalidArgument(f"unknown index kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise InvalidArgument(f"index kind {kind!r} is not available: {exc}") from None


# saved indexes record their class's ``kind``; map those back to the registry as well
_BY_KIND = {"IVFPQ": KINDS["IVF"]}


def index_factory(d: int, spec: str, metric: str = "l2"):
    """Build an (untrained where needed) index from a factory string.

    Parameters
    ----------
    d : int
        Dimension.
    spec : str
        Factory string, e.g. ``"Flat"``, ``"IVF1024,PQ16x8"``, ``"Curator(branch=16,leaf=128)"``.
    metric : {"l2", "ip", "cosine"}
    """
    stages = parse_factory(spec)
    cls = kind_class(resolve_kind(stages))
    return cls.from_stages(d, stages, metric=metric)


def describe(index) -> str:
    """The canonical factory string of ``index``; ``index_factory(d, describe(index))`` builds the same config."""
    return index.factory_string()


def load_index(store, prefix: str, *, mmap: bool = False):
    """Load any saved index, dispatching on the ``kind`` in its ``meta.json``."""
    from .persist import load_meta

    meta = load_meta(store, prefix)
    return kind_class(meta["kind"]).load(store, prefix, mmap=mmap)
