"""Every ``SHOAL_*`` environment variable: its default, what it does, and the one function that reads it.

:data:`SETTINGS` is the table (README's "Configuration" section prints it; a test keeps the two in step and fails on
a ``SHOAL_*`` name used anywhere that the table lacks). The library reads its variables only here, through the
functions below, each when the setting is used rather than once at import: the tests set them per test, the local
Lambda emulator per worker process and AWS per function, all after ``import shoal`` may have happened. The test and
benchmark harnesses read their own few (:data:`HARNESS`) where they are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from .errors import InvalidArgument


@dataclass(frozen=True)
class Setting:
    """One environment variable: ``default`` as the documentation states it, ``reader`` the module that uses it."""

    name: str
    default: str
    reader: str
    doc: str


SETTINGS = (
    Setting("SHOAL_S3_ENDPOINT", "unset: `$AWS_ENDPOINT_URL`, else AWS", "storage/s3.py",
            "S3 endpoint of `s3://` stores (moto or MinIO on loopback in tests)"),
    Setting("SHOAL_LAMBDA_ENDPOINT", "unset: AWS", "serverless/invokers.py",
            "Lambda API endpoint the invoker calls; the emulator sets it in its workers, so children call it back"),
    Setting("SHOAL_INDEX", "unset", "serverless/handler.py",
            "the coordinator's index URI when the request names none (`shoal deploy --index` sets it)"),
    Setting("SHOAL_CACHE_MB", "unset: half the function's memory, else 1024", "serverless/cache.py",
            "bytes (MiB) a Lambda container's cache of loaded partitions may hold"),
    Setting("SHOAL_ROW_BLOCK_KB", "16", "serverless/cache.py",
            "KiB per ranged GET block of vector rows a serverless processor re-ranks"),
    Setting("SHOAL_ROW_GAP_KB", "256", "serverless/cache.py",
            "missing row blocks closer than this many KiB are joined into one ranged GET"),
    Setting("SHOAL_PAYLOAD_LIMIT", "unset: 6 MB less 16 KiB", "serverless/payload.py",
            "bytes above which a request or response is spilled to the store (tests lower it)"),
    Setting("SHOAL_FAULTS_FILE", "unset: no faults", "serverless/faults.py",
            "JSON list of faults to inject; the emulator's workers install the hook that reads it (tests and chaos "
            "drills: the production handler never reads it)"),
    Setting("SHOAL_KERNELS", "unset: none", "serverless/kernels.py",
            "directory of compiled numba kernels (`python -m shoal.serverless.kernels build DIR`) that a Lambda "
            "container loads in its init phase; the image and the emulator's workers set it"),
    Setting("SHOAL_API_KEYS", "unset: no keys", "server/auth.py",
            "plain API keys `KEY:ROLE[:TENANT],...` for `shoal serve`, added to `--keys`"),
)

HARNESS = (
    Setting("SHOAL_HYPOTHESIS_PROFILE", "default", "tests/conftest.py",
            "`ci` draws property-test examples from a fixed seed (`.ci/run` sets it)"),
    Setting("SHOAL_BENCH_CACHE", "bench/cache", "bench/datasets.py", "where benchmarks cache datasets and ground truth"),
    Setting("SHOAL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist", "bench/datasets.py",
            "folder of the four Fashion-MNIST `*-ubyte.gz` files"),
)

#: the variable name of the plain API keys (``LocalServer`` keeps it out of its child's environment)
API_KEYS = "SHOAL_API_KEYS"


def _get(name: str, env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return value if value else None


def _number(name: str) -> float | None:
    value = _get(name)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(f"${name} must be a number, got {value!r}") from None


def s3_endpoint() -> str | None:
    """``$SHOAL_S3_ENDPOINT``, else ``$AWS_ENDPOINT_URL``, else None (AWS)."""
    return _get("SHOAL_S3_ENDPOINT") or _get("AWS_ENDPOINT_URL")


def lambda_endpoint() -> str | None:
    """``$SHOAL_LAMBDA_ENDPOINT`` or None (AWS)."""
    return _get("SHOAL_LAMBDA_ENDPOINT")


def default_index() -> str | None:
    """``$SHOAL_INDEX``: the coordinator's index URI when a request names none."""
    return _get("SHOAL_INDEX")


def cache_mb() -> float | None:
    """``$SHOAL_CACHE_MB`` or None."""
    return _number("SHOAL_CACHE_MB")


def row_block_kb() -> float:
    """``$SHOAL_ROW_BLOCK_KB`` (default 16)."""
    value = _number("SHOAL_ROW_BLOCK_KB")
    return 16.0 if value is None else value


def row_gap_kb() -> float:
    """``$SHOAL_ROW_GAP_KB`` (default 256)."""
    value = _number("SHOAL_ROW_GAP_KB")
    return 256.0 if value is None else value


def payload_limit() -> int | None:
    """``$SHOAL_PAYLOAD_LIMIT`` in bytes, or None."""
    value = _get("SHOAL_PAYLOAD_LIMIT")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"$SHOAL_PAYLOAD_LIMIT must be an integer, got {value!r}") from None


def faults_file() -> str | None:
    """``$SHOAL_FAULTS_FILE`` or None (test harness only)."""
    return _get("SHOAL_FAULTS_FILE")


def kernels_dir() -> str | None:
    """``$SHOAL_KERNELS`` or None."""
    return _get("SHOAL_KERNELS")


def api_keys(env: Mapping[str, str] | None = None) -> str:
    """``$SHOAL_API_KEYS`` (of ``env`` when given) or ``""``."""
    return _get(API_KEYS, env) or ""
