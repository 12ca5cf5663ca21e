"""Imported by the emulator's forkserver before it forks workers: loads the handler's modules and botocore's service
models once, so every forked worker starts with them, much as a Lambda SnapStart snapshot would. Cold/warm *data*
behaviour is unchanged: the data cache is empty. Importing the handler is a container's init phase: with
``$SHOAL_KERNELS`` set (the emulator sets it) the compiled numba kernels are loaded from the cache
(:func:`shoal.serverless.kernels.init_container`), so the workers inherit them and no invocation compiles. Kernels are
loaded, never run, here: a parallel numba kernel starts OpenMP threads, and a process with OpenMP threads must not
fork."""

from __future__ import annotations

from . import handler  # noqa: F401
from . import osq_backend  # noqa: F401
from ..index import flat, osq  # noqa: F401  (the kinds processors load; imported, kernels not run)


def _warm() -> None:
    try:
        import boto3

        for service in ("s3", "lambda"):  # fills the default session's loader cache; no connection is opened
            boto3.client(service, region_name="us-east-1")
    except Exception:  # noqa: BLE001  (an optimisation only)
        pass


_warm()
