"""Object storage: one small interface, a local-directory store (the embedded default) and an S3 store.

Keys are ``/``-separated relative paths. ``put`` is atomic in both stores: a reader sees the old object or the new one,
never a torn one (local: write a temporary file, fsync, rename; S3: a single PutObject is atomic by nature).
"""

from __future__ import annotations

import abc
import os
import tempfile
import threading
import uuid
from urllib.parse import urlparse

from ..errors import InvalidArgument, NotFound


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key:
        raise InvalidArgument(f"invalid object key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise InvalidArgument(f"invalid object key {key!r}: empty, '.' or '..' path components")
    return key


class ObjectStore(abc.ABC):
    """The storage interface indexes and collections save through."""

    uri: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Return the whole object. Raises :class:`NotFound`."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object (a ranged GET on S3)."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write the object atomically."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted keys that start with ``prefix``."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error."""

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Return the object's size in bytes. Raises :class:`NotFound`."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except NotFound:
            return False

    def local_path(self, key: str) -> str | None:
        """A filesystem path holding the object, for memory-mapping; ``None`` when there is none."""
        return None

    def child(self, prefix: str) -> "ObjectStore":
        """A view of this store rooted at ``prefix``."""
        return PrefixedStore(self, prefix)

    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix):
            self.delete(key)


class PrefixedStore(ObjectStore):
    """A view of another store under a key prefix."""

    def __init__(self, base: ObjectStore, prefix: str):
        self.base = base
        self.prefix = prefix.strip("/")
        self.uri = base.uri.rstrip("/") + "/" + self.prefix

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{_check_key(key)}" if self.prefix else key

    def get(self, key):
        return self.base.get(self._k(key))

    def get_range(self, key, start, end):
        return self.base.get_range(self._k(key), start, end)

    def put(self, key, data):
        self.base.put(self._k(key), data)

    def list(self, prefix=""):
        full = self.prefix + "/" + prefix if self.prefix else prefix
        n = len(self.prefix) + 1 if self.prefix else 0
        return [k[n:] for k in self.base.list(full)]

    def delete(self, key):
        self.base.delete(self._k(key))

    def size(self, key):
        return self.base.size(self._k(key))

    def local_path(self, key):
        return self.base.local_path(self._k(key))


class LocalStore(ObjectStore):
    """Objects as files under a root directory."""

    def __init__(self, root: str, *, create: bool = True):
        self.root = os.path.abspath(os.fspath(root))
        if create:
            os.makedirs(self.root, exist_ok=True)
        elif not os.path.isdir(self.root):
            raise NotFound(f"store directory {self.root} does not exist")
        self.uri = "file://" + self.root

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *_check_key(key).split("/"))

    def get(self, key):
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def get_range(self, key, start, end):
        if start < 0 or end < start:
            raise InvalidArgument(f"invalid byte range [{start}, {end})")
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def put(self, key, data):
        path = self._path(key)
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        fsync_dir(directory)

    def list(self, prefix=""):
        out = []
        for dirpath, _dirs, files in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}"
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key):
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        # prune directories the delete emptied (a deleted generation leaves none behind), never the top level
        top = os.path.join(self.root, key.split("/", 1)[0])
        parent = os.path.dirname(path)
        while parent.startswith(top + os.sep):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)

    def size(self, key):
        try:
            return os.stat(self._path(key)).st_size
        except FileNotFoundError:
            raise NotFound(f"object {key!r} not found in {self.uri}") from None

    def local_path(self, key):
        path = self._path(key)
        return path if os.path.exists(path) else None


def fsync_dir(directory: str) -> None:
    """fsync a directory so a rename or new file in it survives a crash."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


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
        self.endpoint_url = endpoint_url or os.environ.get("SHOAL_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
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
        _check_key(key)
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


def open_store(uri, **kwargs) -> ObjectStore:
    """Open a store from a URI: ``s3://bucket/prefix``, ``file:///path`` or a plain directory path."""
    if isinstance(uri, ObjectStore):
        return uri
    uri = os.fspath(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, **kwargs)
    if parsed.scheme == "file":
        return LocalStore(parsed.path, **kwargs)
    if parsed.scheme and len(parsed.scheme) > 1:
        raise InvalidArgument(f"unsupported store URI scheme {parsed.scheme!r}; use a path, file:// or s3://")
    return LocalStore(uri, **kwargs)
