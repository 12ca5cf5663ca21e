"""What a query batch costs on AWS Lambda: billed duration x memory (GB-s) x price + a price per request.

Prices (us-east-1, on-demand, as published by AWS in 2024-2025; pass others for other regions or architectures):
x86_64 ``0.0000166667`` USD per GB-second, arm64 ``0.0000133334``; ``0.20`` USD per million requests. Duration is
billed per invocation rounded up to the millisecond, for the whole time the handler runs, *including* the time an
allocator waits for its children, which is why deep trees cost more. Work a parent ran inline (after a 429) is inside
the parent's billed time and is not billed again. Storage requests (S3 GETs, ``0.0004`` USD per 1,000) are added
when ``get_requests`` are reported.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass

#: Lambda gives a container's init phase (the handler's import) at most 10 s; a longer one is cut and run again
#: inside the first invocation, under the function's timeout. The init phase is billed like an invocation (container
#: images always were; zip packages on managed runtimes since August 2025).
INIT_LIMIT_MS = 10_000.0


@dataclass(frozen=True)
class Prices:
    gb_second: float = 0.0000166667
    per_request: float = 0.20 / 1e6
    s3_get: float = 0.0004 / 1000


X86 = Prices()
ARM64 = Prices(gb_second=0.0000133334)


@dataclass(frozen=True)
class InitAssumptions:
    """What a real Lambda container adds to the init phase measured here (stated, not measured).

    ``runtime_ms``: the Lambda runtime's own start before it imports the handler; ``image_read_ms``: first reads of
    the image's libraries (numpy, numba, llvmlite, boto3; Lambda loads container images lazily, from a cache);
    ``cpu_scale``: how much slower than one core of the measuring machine a 2,048 MB function (about 1.2 vCPU) runs
    the import and the kernel loads.
    """

    runtime_ms: float = 300.0
    image_read_ms: float = 1500.0
    cpu_scale: float = 1.5


def lambda_init_ms(import_ms: float, kernels_ms: float, assumptions: InitAssumptions = InitAssumptions()) -> float:
    """Estimated init phase of a Lambda container of the image, from the handler's import time without kernels and
    the time its init phase took to seed and load the compiled kernels (both measured in fresh processes, e.g. by
    ``bench/serverless.py``); compare with :data:`INIT_LIMIT_MS`."""
    a = assumptions
    return a.runtime_ms + a.image_read_ms + (import_ms + kernels_ms) * a.cpu_scale


def invocation_cost(ms: float, memory_mb: int, prices: Prices = X86) -> float:
    """USD for one invocation of ``ms`` milliseconds at ``memory_mb``."""
    billed_s = math.ceil(max(ms, 0.0)) / 1000.0
    return billed_s * (memory_mb / 1024.0) * prices.gb_second + prices.per_request


def summarize(metrics: list[dict], prices: Prices = X86) -> dict:
    """Totals over the per-invocation records a search returns (one per node and processor in the tree).

    Returns counts per role (invoked and inline), cold and warm containers, cache hits and misses, bytes fetched from
    storage, payload bytes, compute milliseconds per role (sum and max), GB-seconds and USD; and the cold start
    apart: ``first_ms`` (per role, the longest first invocation of a container), ``init_ms`` (the longest init phase a
    container itself ran, billed too) and ``compiles`` / ``compile_ms`` (numba kernels compiled inside
    invocations: 0 when the init phase loaded them).
    """
    out = {"invocations": defaultdict(int), "inline": defaultdict(int), "cold": defaultdict(int),
           "warm": defaultdict(int), "ms_sum": defaultdict(float), "ms_max": defaultdict(float),
           "bytes_fetched": 0, "get_requests": 0, "cache_hits": 0, "cache_misses": 0, "req_bytes": 0,
           "resp_bytes": 0, "max_req_bytes": 0, "max_resp_bytes": 0, "spilled_requests": 0, "spilled_responses": 0,
           "gb_s": 0.0,
           "cost_usd": 0.0, "first_ms": defaultdict(float), "init_ms": 0.0, "compiles": 0, "compile_ms": 0.0}
    for m in metrics:
        role = m.get("role", "?")
        out["ms_sum"][role] += float(m.get("ms", 0.0))
        out["ms_max"][role] = max(out["ms_max"][role], float(m.get("ms", 0.0)))
        out["bytes_fetched"] += int(m.get("bytes_fetched", 0))
        out["get_requests"] += int(m.get("get_requests", 0))
        out["cache_hits"] += int(m.get("cache_hits", 0))
        out["cache_misses"] += int(m.get("cache_misses", 0))
        out["cost_usd"] += int(m.get("get_requests", 0)) * prices.s3_get
        if m.get("inline"):
            out["inline"][role] += 1
            continue
        out["invocations"][role] += 1
        out["cold" if m.get("cold") else "warm"][role] += 1
        out["compiles"] += int(m.get("compiles", 0))
        out["compile_ms"] += float(m.get("compile_ms", 0.0))
        if m.get("cold"):
            out["first_ms"][role] = max(out["first_ms"][role], float(m.get("ms", 0.0)))
            init = m.get("init") or {}
            if not init.get("inherited", True):
                out["init_ms"] = max(out["init_ms"], float(init.get("init_ms", 0.0)))
        out["req_bytes"] += int(m.get("req_bytes", 0))
        out["resp_bytes"] += int(m.get("resp_bytes", 0))
        out["max_req_bytes"] = max(out["max_req_bytes"], int(m.get("req_bytes", 0)))
        out["max_resp_bytes"] = max(out["max_resp_bytes"], int(m.get("resp_bytes", 0)))
        out["spilled_requests"] += int(bool(m.get("spilled_request")))
        out["spilled_responses"] += int(bool(m.get("spilled_response_bytes")))
        mem = int(m.get("memory_mb", 1024))
        out["gb_s"] += math.ceil(float(m.get("ms", 0.0))) / 1000.0 * mem / 1024.0
        out["cost_usd"] += invocation_cost(float(m.get("ms", 0.0)), mem, prices)
    for key in ("invocations", "inline", "cold", "warm", "ms_sum", "ms_max", "first_ms"):
        out[key] = dict(out[key])
    out["prices"] = asdict(prices)
    return out
