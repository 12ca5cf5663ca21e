"""The ``shoal`` command: build a collection from files, search it, describe it, serve it, run the demos.

Subcommands live in :data:`COMMANDS` as ``name -> "module:function"``; the function receives the argparse
sub-parsers object and adds its parser (with ``set_defaults(func=handler)``). Front ends (``serve``, ``push``,
``deploy``, ``lambda-local``) add one line there and keep their heavy imports (grpc, boto3) inside their handler, so
``shoal --help`` and ``shoal info`` stay fast.

Modules: :mod:`.collection` (build, search, info, repair), :mod:`.serve`, :mod:`.serverless` (push, deploy, lambda-local,
``search --serverless``), :mod:`.demo` and :mod:`.demo_grpc`; :mod:`.common` holds the helpers they share (progress,
``--param`` and ``--schema`` parsing, vector files, help formatting), :mod:`.results` the one result shape every
search prints (table or ``--json``) and :mod:`.readers` the file-format readers. Nothing outside this package imports
it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from ..errors import FailedPrecondition, PermissionDenied, ShoalError

#: subcommand -> "module:function(subparsers)" that registers it (imported when the parser is built)
COMMANDS: dict[str, str] = {
    "build": "shoal.cli.collection:add_build",
    "search": "shoal.cli.collection:add_search",
    "info": "shoal.cli.collection:add_info",
    "repair": "shoal.cli.collection:add_repair",
    "demo": "shoal.cli.demo:add_demo",
    "serve": "shoal.cli.serve:add_serve",
    "demo-grpc": "shoal.cli.demo_grpc:add_demo_grpc",
    "push": "shoal.cli.serverless:add_push",
    "deploy": "shoal.cli.serverless:add_deploy",
    "lambda-local": "shoal.cli.serverless:add_lambda_local",
}

EPILOG = """examples:
  shoal build base.fvecs --data data --name sift --metric l2 --index "IVF1024,PQ16x8"
  shoal build emb.npy --attrs meta.parquet --ids doc_id --tenants owner --data data --name docs --metric cosine
  shoal search --data data --name docs --vector 0.1,0.2,0.3,0.4 -k 5 --filter 'year >= 2020 and lang = "en"'
  shoal search --data data --name sift --query-file queries.fvecs -k 10 --nprobe 16 --json
  shoal info --data data
  shoal serve --data data --port 50051
  shoal search --server 127.0.0.1:50051 --name docs --ids 7 -k 5
  shoal push --data data --name docs --to s3://bucket/docs
  shoal demo

Exit status: 0 success; 2 bad input or a refused operation (unknown collection, wrong dimension, malformed filter,
a name that exists, a collection another process holds, a damaged log); 1 other errors; 130 interrupted.
Each subcommand's --help says more; docs/cli.md documents them all."""


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from .common import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="shoal", description="shoal: a vector search engine. Build collections from files, search them "
                                  "(locally, over gRPC or through serverless functions), serve them.",
        epilog=EPILOG, formatter_class=HelpFormatter)

    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an unexpected error (exit status 1), print the Python traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, target in COMMANDS.items():
        module, _, func = target.partition(":")
        getattr(importlib.import_module(module), func)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shoal`` command; returns the exit status: 0 success; 2 bad input or a refused operation (invalid
    argument, unknown name, already exists, held by another process); 1 any other failure; 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ShoalError, ValueError, OSError) as exc:
        code = 2 if isinstance(exc, (ValueError, KeyError, FailedPrecondition, PermissionDenied)) else 1
        print(f"shoal {args.command}: error: {exc}", file=sys.stderr)
        if args.traceback:
            traceback.print_exc()
        return code
    except KeyboardInterrupt:
        print(f"shoal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - e.g. an AWS client error: one line, exit 1 (--traceback for more)
        print(f"shoal {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.traceback:
            traceback.print_exc()
        return 1
