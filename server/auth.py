"""API keys for ``shoal serve``: hashed at rest, three roles, optional binding to one tenant.

Keys come from a JSON file (``--keys FILE``) holding only SHA-256 hashes::

    {"keys": [{"name": "ingest", "sha256": "<hex>", "role": "read-write"},
              {"name": "acme-app", "sha256": "<hex>", "role": "read-only", "tenant": "acme"}]}

or from the environment, ``SHOAL_API_KEYS="KEY:ROLE[:TENANT],..."`` (plain keys, as secret stores inject them; they are
hashed on load and the plain text is not kept). ``python -m shoal.server.auth new-key --role read-only --tenant acme``
prints a fresh key once and the JSON entry to add to the file.

Roles: ``read-only`` (search, get, count, list, describe, stats), ``read-write`` (also upsert, delete, tenant grants),
``admin`` (also create/drop collections, build, compact). A tenant-bound key acts only inside its tenant whatever the
request says; admin keys cannot be tenant-bound (their operations span tenants). Callers send
``authorization: Bearer <key>``. Keys are random 256-bit tokens, so an unsalted SHA-256 is a safe stored form.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import InvalidArgument, PermissionDenied, Unauthenticated

ROLES = ("read-only", "read-write", "admin")
_RANK = {role: i for i, role in enumerate(ROLES)}
ENV_KEYS = config.API_KEYS
KEY_PREFIX = "shoal_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name, role and (optional) tenant binding."""

    name: str
    role: str
    tenant: str | None = None

    def require(self, role: str) -> None:
        """Raise PermissionDenied unless this principal's role is at least ``role``."""
        if _RANK[self.role] < _RANK[role]:
            raise PermissionDenied(f"key {self.name!r} has role {self.role}; this call needs {role}")


#: the caller when no keys are configured (the server then only listens on loopback)
ANONYMOUS = Principal("anonymous", "admin")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh random API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _check_entry(name: str, role: str, tenant: str | None) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"key {name!r}: unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    if tenant is not None and (not isinstance(tenant, str) or not tenant):
        raise InvalidArgument(f"key {name!r}: tenant must be a non-empty string")
    if tenant is not None and role == "admin":
        raise InvalidArgument(f"key {name!r}: admin keys cannot be bound to a tenant")


class KeyRing:
    """The configured keys, by hash."""

    def __init__(self) -> None:
        self._by_hash: dict[str, Principal] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def add_hashed(self, digest: str, name: str, role: str, tenant: str | None = None) -> None:
        _check_entry(name, role, tenant)
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise InvalidArgument(f"key {name!r}: sha256 must be 64 hex digits")
        self._by_hash[digest] = Principal(name, role, tenant)

    def add(self, key: str, name: str, role: str, tenant: str | None = None) -> None:
        if len(key) < 16:
            raise InvalidArgument(f"key {name!r} is too short (at least 16 characters)")
        self.add_hashed(hash_key(key), name, role, tenant)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, env: dict | None = None) -> "KeyRing":
        """Keys from the JSON file ``path`` (if given) plus ``$SHOAL_API_KEYS`` (if set)."""
        ring = cls()
        if path is not None:
            try:
                doc = json.loads(Path(path).read_text())
                entries = doc["keys"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"cannot read API keys from {path}: {exc}") from None
            for i, entry in enumerate(entries):
                if not isinstance(entry, dict) or "sha256" not in entry or "role" not in entry:
                    raise InvalidArgument(f"{path}: key entry {i} needs 'sha256' and 'role'")
                ring.add_hashed(entry["sha256"], entry.get("name", f"key{i}"), entry["role"], entry.get("tenant"))
        spec = config.api_keys(env)
        for i, item in enumerate(s.strip() for s in spec.split(",")):
            if not item:
                continue
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise InvalidArgument(f"${ENV_KEYS} entry {i}: expected KEY:ROLE[:TENANT]")
            ring.add(parts[0], f"env{i}", parts[1], parts[2] if len(parts) == 3 else None)
        return ring

    def authenticate(self, metadata) -> Principal:
        """The principal for a call's invocation metadata; raises Unauthenticated."""
        if not self._by_hash:
            return ANONYMOUS
        token = None
        for key, value in metadata or ():
            if key == "authorization" and isinstance(value, str):
                scheme, _, rest = value.partition(" ")
                if scheme.lower() == "bearer":
                    token = rest.strip()
        if not token:
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        # the lookup is over SHA-256 digests of high-entropy keys, so its timing reveals nothing useful about a key
        principal = self._by_hash.get(hash_key(token))
        if principal is None:
            raise Unauthenticated("invalid API key")
        return principal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.server.auth")
    sub = parser.add_subparsers(dest="command", required=True)
    nk = sub.add_parser("new-key", help="print a fresh API key and its entry for the --keys file")
    nk.add_argument("--role", choices=ROLES, required=True)
    nk.add_argument("--tenant", default=None)
    nk.add_argument("--name", default="key")
    hk = sub.add_parser("hash", help="print the entry for an existing key read from stdin")
    hk.add_argument("--role", choices=ROLES, required=True)
    hk.add_argument("--tenant", default=None)
    hk.add_argument("--name", default="key")
    args = parser.parse_args(argv)
    key = new_key() if args.command == "new-key" else sys.stdin.readline().strip()
    _check_entry(args.name, args.role, args.tenant)
    entry = {"name": args.name, "sha256": hash_key(key), "role": args.role}
    if args.tenant:
        entry["tenant"] = args.tenant
    if args.command == "new-key":
        print(f"key (shown once, give it to the client): {key}")
    print(json.dumps(entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
