"""Generate the gRPC Python code from ``server/proto/shoal/v1/shoal.proto`` (``make proto``).

Run ``python -m shoal.server.gen_proto`` after editing the .proto; ``--check`` regenerates into a temporary folder and
fails if the committed files differ (the test suite does this). The generator is pinned: a different grpcio-tools
bundles a different protoc whose output (and runtime version checks) differ, so it refuses to run with another.

grpcio-tools writes the service module's import of the message module from the include path
(``from shoal.v1 import shoal_pb2``); that would look for a top-level package ``shoal.v1``. The proto keeps its clean
include path (its descriptor is registered as ``shoal/v1/shoal.proto``, which reflection clients see), and the one
import line is rewritten to a relative import so the modules load as ``shoal.server.proto.shoal.v1.*`` wherever shoal
is installed.
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import sys
import tempfile
from pathlib import Path

GRPCIO_TOOLS_VERSION = "1.85.1"
PROTO_ROOT = Path(__file__).resolve().parent / "proto"
PROTOS = ["shoal/v1/shoal.proto"]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_files(root: Path = PROTO_ROOT) -> list[Path]:
    """Paths (relative to ``root``) of every generated file."""
    out = []
    for proto in PROTOS:
        stem = proto[: -len(".proto")]
        out += [Path(stem + suffix) for suffix in GENERATED_SUFFIXES]
    return out


def _rewrite_imports(path: Path) -> None:
    """Turn ``from shoal.v1 import x_pb2`` (include-path import) into ``from . import x_pb2``."""
    text = path.read_text()
    for proto in PROTOS:
        package = str(Path(proto).parent).replace("/", ".")
        text = text.replace(f"from {package} import ", "from . import ")
    path.write_text(text)


def generate(out_dir: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) on :data:`PROTOS` writing into ``out_dir``; returns the written files."""
    version = importlib.metadata.version("grpcio-tools")
    if version != GRPCIO_TOOLS_VERSION:
        raise SystemExit(f"gen_proto needs grpcio-tools=={GRPCIO_TOOLS_VERSION} (found {version}): "
                         f"pip install grpcio-tools=={GRPCIO_TOOLS_VERSION}")
    from grpc_tools import protoc

    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto shipped with the tools
    out_dir.mkdir(parents=True, exist_ok=True)
    for proto in PROTOS:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
                f"--pyi_out={out_dir}", f"--grpc_python_out={out_dir}", str(PROTO_ROOT / proto)]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {proto}")
    files = [out_dir / rel for rel in generated_files()]
    for path in files:
        _rewrite_imports(path)
    return files


def stale_files() -> list[str]:
    """Generated files whose committed content differs from a fresh generation (empty = up to date)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = []
        for rel in generated_files():
            committed, fresh = PROTO_ROOT / rel, Path(tmp) / rel
            if not committed.exists() or not filecmp.cmp(committed, fresh, shallow=False):
                stale.append(str(rel))
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shoal.server.gen_proto", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated code (run `make proto`): " + ", ".join(stale), file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    for path in generate():
        print(f"wrote {path.relative_to(PROTO_ROOT.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
