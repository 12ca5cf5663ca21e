"""The boto3 client helper shared by the S3 store, the Lambda invoker and deployment."""

from __future__ import annotations

from urllib.parse import urlparse

from ..errors import InvalidArgument


def aws_client(service: str, endpoint_url: str | None = None, region: str | None = None, **kwargs):
    """A boto3 client for ``service`` with the checks a user needs before the first request.

    Against a local endpoint (moto, ``shoal lambda-local``, MinIO on loopback) a missing region defaults to
    ``us-east-1`` and missing credentials to placeholders, since those servers accept any; against AWS a missing
    region is an :class:`InvalidArgument` that says how to set one, instead of botocore's ``NoRegionError`` deep in
    a traceback.
    """
    import boto3

    session = boto3.session.Session()
    region = region or session.region_name
    local = bool(endpoint_url) and urlparse(endpoint_url).hostname in ("127.0.0.1", "localhost", "::1")
    if region is None:
        if not local:
            raise InvalidArgument(f"no AWS region for {service}: set AWS_DEFAULT_REGION (or AWS_REGION), or a "
                                  f"profile's region")
        region = "us-east-1"
    if local and "aws_access_key_id" not in kwargs and session.get_credentials() is None:
        kwargs.update(aws_access_key_id="local", aws_secret_access_key="local")
    return session.client(service, endpoint_url=endpoint_url, region_name=region, **kwargs)
