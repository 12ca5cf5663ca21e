"""Shared fixtures: fixed seeds, fake AWS credentials, and moto's S3 server on a loopback port."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from hypothesis import settings

# CI (.ci/run sets SHOAL_HYPOTHESIS_PROFILE=ci) draws each property test's examples from a fixed seed, so whether a
# change lands never depends on the luck of the draw; `make test` elsewhere keeps exploring new examples.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("SHOAL_HYPOTHESIS_PROFILE", "default"))

# Tests never reach real AWS: fake credentials, a fixed region, no instance metadata look-ups.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def moto_endpoint():
    """URL of a moto server (S3, Lambda, IAM, ...) running in a child process on a loopback port."""
    from shoal.serverless.emulator import start_moto_server

    try:
        proc, url = start_moto_server()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_bucket(moto_endpoint):
    """A fresh, empty bucket on the moto server; returns ``(endpoint_url, bucket_name)``."""
    import uuid

    import boto3

    name = "shoal-test-" + uuid.uuid4().hex[:12]
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return moto_endpoint, name


@pytest.fixture(scope="session")
def kernels_dir(tmp_path_factory):
    """An EMPTY directory for compiled kernels: the first emulator of this process builds them there (the forkserver,
    which loads them, is one per process, so every in-process emulator of the test session uses this directory)."""
    return str(tmp_path_factory.mktemp("kernels"))
