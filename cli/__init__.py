"""The ``shoal`` command: build a collection from files, search it, describe it, serve it, run the demos.

Subcommands live in :data:`COMMANDS` as ``name -> "module:function"``; the function receives the argparse
sub-parsers object and adds its parser (with ``set_defaults(func=handler)``). Front ends (``serve``, ``push``,
``deploy``, ``lambda-local``) add one line there and keep their heavy imports (grpc, boto3) inside their handler, so
``shoal --help`` and ``shoal info`` stay fast.

Modules: :mod:`.collection` (build, search, info), :mod:`.serve`, :mod:`.serverless` (push, deploy, lambda-local,
``search --serverless``), :mod:`.demo` and :mod:`.demo_grpc`; :mod:`.common` holds the helpers they share (progress,
``--param`` and ``--schema`` parsing, vector files) and :mod:`.readers` the file-format readers. Nothing outside this
package imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
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
  shoal build base.fvecs --data data/ --name sift --metric l2 --index "IVF1024,PQ16x8"
  shoal build emb.npy --attrs meta.parquet --ids doc_id --tenants owner --data data/ --name docs --metric cosine
  shoal search --data data/ --name docs --vector "0.1,0.2,..." -k 5 --filter 'year >= 2020 and lang = "en"'
  shoal search --data data/ --name sift --query-file queries.fvecs -k 10 --nprobe 16 --json
  shoal info --data data/
  shoal demo --data data/demo
  shoal serve --data data/ --port 50051
"""


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="shoal: a vector search engine. Build collections from files, search them, "
                                  "serve them.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
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
        return code
    except KeyboardInterrupt:
        print(f"shoal {args.command}: interrupted", file=sys.stderr)
        return 130
