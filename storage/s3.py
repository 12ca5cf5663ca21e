"""Objects in an S3 bucket under a prefix, through boto3 (a single PutObject is atomic by nature)."""

from __future__ import annotations

import os
import threading
import uuid

from .. import config
from ..errors import InvalidArgument, NotFound
from .aws import aws_client
from .base import ObjectStore, check_key


class S3Store(ObjectStore):
    """Objects in an S3 bucket under a prefix, through boto3.

    Parameters
    ----------
    bucket, prefix : str
    endpoint_url : str, optional
        For S3-compatible servers (moto in tests). Defaults to ``$SHOAL_S3_ENDPOINT`` or ``$AWS_ENDPOINT_URL``.
    cache_dir : str, optional
        Where :meth:`local_path` downloads objects so that loads can memory-map them (Lambda: ``/tmp``).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, client=None,
                 cache_dir: str | None = None):
        if not bucket:
            raise InvalidArgument("S3 store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url or config.s3_endpoint()
        self._client = client
        self._lock = threading.Lock()
        self.cache_dir = cache_dir
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @property
    def client(self):
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = aws_client("s3", self.endpoint_url)
        return self._client

    def _k(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _not_found(self, exc, key):
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"object {key!r} not found in {self.uri}")
        if code == "NoSuchBucket":
            return NotFound(f"bucket {self.bucket!r} not found")
        return None

    def get(self, key):
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()
        except ClientError as exc:
            err = self._not_found(exc, key)
            if err:
                raise err from None
            raise

    def get_range(self, key, start, end):
        from botocore.exceptions import ClientError

        if start < 0 or end < start:
            raise InvalidArgument(f"invalid byte range [{start}, {end})")
        if end == start:
            return b""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._k(key), Range=f"bytes={start}-{end - 1}")
            return resp["Body"].read()
        except ClientError as exc:
            err = self._not_found(exc, key)
            if err:
                raise err from None
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""
            raise

    def put(self, key, data):
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=bytes(data))

    def list(self, prefix=""):
        full = self._k(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        n = len(self.prefix) + 1 if self.prefix else 0
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][n:] for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, key):
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def size(self, key):
        from botocore.exceptions import ClientError

        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._k(key))["ContentLength"])
        except ClientError as exc:
            err = self._not_found(exc, key)
            if err:
                raise err from None
            raise

    def local_path(self, key):
        if self.cache_dir is None:
            return None
        path = os.path.join(self.cache_dir, self.bucket, *self._k(key).split("/"))
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.part"
            with open(tmp, "wb") as f:
                f.write(self.get(key))
            os.replace(tmp, path)
        return path

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (used by ``shoal push`` / ``deploy``)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            region = self.client.meta.region_name
            kwargs = {}
            if region and region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self.client.create_bucket(Bucket=self.bucket, **kwargs)
