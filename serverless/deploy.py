"""``shoal deploy``: create or update the S3 bucket and the Lambda functions of a serverless deployment (boto3).

One function serves every role (the event's ``role`` picks it); optionally one processor function per partition
(``NAME-p0 .. NAME-p{P-1}``) so warm containers keep serving the same partition's data, as in SQUASH. The code is
either a zip of the ``shoal`` package (numpy, numba and faiss must then come from a layer: they are too large and
platform-specific to zip here) or a container image built from ``serverless/Dockerfile`` and pushed to ECR.
The execution role must already exist (``--role-arn``); it needs ``s3:GetObject``/``PutObject``/``DeleteObject``
on the bucket and ``lambda:InvokeFunction`` on the functions.
"""

from __future__ import annotations

import io
import os
import time
import zipfile
from dataclasses import dataclass, field

from ..errors import InvalidArgument

HANDLER = "shoal.serverless.handler.handler"
RUNTIME = "python3.11"
#: package folders that go into the zip (tests, bench and the virtualenv stay out)
_PACKAGE_DIRS = ("engine", "filters", "index", "quantization", "serverless", "server", "storage")


@dataclass
class DeploySpec:
    """What to deploy.

    Parameters
    ----------
    function : str
        Name of the function serving every role (and the prefix of per-partition processors).
    role_arn : str
        Execution role ARN (``arn:aws:iam::ACCOUNT:role/NAME``).
    bucket : str, optional
        Created when missing.
    zip_bytes / image_uri :
        The code: a zip (default: :func:`build_zip`) or a container image URI.
    memory_mb, timeout_s : int
        Lambda allows 128..10,240 MB and 1..900 s.
    env : dict
        Environment variables (``SHOAL_CACHE_MB`` bounds the container cache).
    partitions : int
        ``> 0`` also deploys ``{function}-p{i}`` processor functions, one per partition.
    layers : list of str
        Layer ARNs (e.g. one with numpy, numba, faiss for zip deployments).
    """

    function: str
    role_arn: str
    bucket: str | None = None
    zip_bytes: bytes | None = None
    image_uri: str | None = None
    memory_mb: int = 2048
    timeout_s: int = 120
    env: dict = field(default_factory=dict)
    partitions: int = 0
    layers: list = field(default_factory=list)
    architecture: str = "x86_64"

    def check(self) -> None:
        if not self.function or len(self.function) > 54:
            raise InvalidArgument("function name must have 1..54 characters (room for the -pN suffix)")
        if not self.role_arn.startswith("arn:") or ":role/" not in self.role_arn:
            raise InvalidArgument(f"--role-arn must be an IAM role ARN, got {self.role_arn!r}")
        if not 128 <= self.memory_mb <= 10240:
            raise InvalidArgument(f"memory must be 128..10240 MB, got {self.memory_mb}")
        if not 1 <= self.timeout_s <= 900:
            raise InvalidArgument(f"timeout must be 1..900 s, got {self.timeout_s}")
        if self.zip_bytes is not None and self.image_uri is not None:
            raise InvalidArgument("give a zip package or an image URI, not both")
        if self.architecture not in ("x86_64", "arm64"):
            raise InvalidArgument("architecture must be x86_64 or arm64")

    def function_names(self) -> list[str]:
        return [self.function] + [f"{self.function}-p{i}" for i in range(self.partitions)]


def package_root() -> str:
    """The directory of the ``shoal`` package (this module's grandparent: no import of the package root)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build_zip(root: str | None = None) -> bytes:
    """Zip the ``shoal`` package's Python sources as ``shoal/...`` (a Lambda zip package without dependencies)."""
    root = root or package_root()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(os.listdir(root)):
            if name.endswith(".py") or name == "py.typed":
                zf.write(os.path.join(root, name), f"shoal/{name}")
        for sub in _PACKAGE_DIRS:
            base = os.path.join(root, sub)
            for dirpath, dirs, files in os.walk(base):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                for f in sorted(files):
                    if f.endswith((".py", ".pyi", ".proto")):
                        full = os.path.join(dirpath, f)
                        zf.write(full, "shoal/" + os.path.relpath(full, root).replace(os.sep, "/"))
    return buf.getvalue()


def _wait_updated(client, name: str, timeout: float = 300.0) -> None:
    """Wait until a function accepts the next update (``LastUpdateStatus`` leaves ``InProgress``)."""
    deadline = time.monotonic() + timeout
    while True:
        cfg = client.get_function_configuration(FunctionName=name)
        status = cfg.get("LastUpdateStatus", "Successful")
        state = cfg.get("State", "Active")
        if status == "Failed" or state == "Failed":
            raise RuntimeError(f"function {name}: update failed: {cfg.get('LastUpdateStatusReason')}")
        if status != "InProgress" and state != "Pending":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"function {name} still updating after {timeout:.0f} s")
        time.sleep(1.0)


def deploy(spec: DeploySpec, *, endpoint_url: str | None = None, region: str | None = None,
           lambda_client=None, s3_client=None, log=print) -> dict:
    """Create or update the bucket and functions; returns ``{"bucket", "functions": [{name, arn, action}]}``."""
    from botocore.exceptions import ClientError

    from ..storage import aws_client

    spec.check()
    lam = lambda_client or aws_client("lambda", endpoint_url, region)
    report: dict = {"bucket": None, "functions": []}
    if spec.bucket:
        from ..storage import S3Store

        S3Store(spec.bucket, endpoint_url=endpoint_url, client=s3_client or aws_client(
            "s3", endpoint_url, region)).ensure_bucket()
        report["bucket"] = spec.bucket
        log(f"bucket s3://{spec.bucket} ready")
    if spec.image_uri:
        code = {"ImageUri": spec.image_uri}
        kind = {"PackageType": "Image"}
    else:
        code = {"ZipFile": spec.zip_bytes if spec.zip_bytes is not None else build_zip()}
        kind = {"PackageType": "Zip", "Runtime": RUNTIME, "Handler": HANDLER}
    env = {"Variables": {str(k): str(v) for k, v in spec.env.items()}}
    config = {"Role": spec.role_arn, "MemorySize": spec.memory_mb, "Timeout": spec.timeout_s, "Environment": env}
    if spec.layers and not spec.image_uri:
        config["Layers"] = list(spec.layers)
    for name in spec.function_names():
        try:
            lam.get_function(FunctionName=name)
            exists = True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            exists = False
        if exists:
            lam.update_function_code(FunctionName=name, **code)
            _wait_updated(lam, name)
            cfg = dict(config)
            if not spec.image_uri:
                cfg.update(Runtime=RUNTIME, Handler=HANDLER)
            out = lam.update_function_configuration(FunctionName=name, **cfg)
            _wait_updated(lam, name)
            action = "updated"
        else:
            out = lam.create_function(FunctionName=name, Code=code, Architectures=[spec.architecture],
                                      Description="shoal serverless vector search (coordinator/allocator/processor)",
                                      **kind, **config)
            action = "created"
        report["functions"].append({"name": name, "arn": out["FunctionArn"], "action": action,
                                    "memory_mb": spec.memory_mb, "timeout_s": spec.timeout_s})
        log(f"function {name}: {action} ({spec.memory_mb} MB, {spec.timeout_s} s)")
    return report
