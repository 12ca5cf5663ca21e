"""``shoal serve``: collections over gRPC (the server itself is :mod:`shoal.server.app`)."""

from __future__ import annotations

from .common import add_parser

DESCRIPTION = """Serve the collections of a data directory over gRPC (API shoal.v1: collections, points, search,
tenants, builds) until SIGTERM or Ctrl-C. Query it with shoal.Client from Python or with shoal search --server.

Start-up: the port is bound first and health checks answer NOT_SERVING; every collection is opened and warmed up;
then the server answers SERVING (clients started meanwhile wait). A collection that cannot be opened (e.g. a damaged
MANIFEST) is reported by name and not served; the others are. On SIGTERM or Ctrl-C calls in flight get --grace
seconds, then the collections are closed and the process exits 0.

Without API keys the server listens on loopback only, and every caller is admin. Keys, roles, tenant-bound keys and
TLS: docs/grpc.md.

A writable server owns its collections (other processes can read them, not write). --read-only opens nothing for
writing: it serves beside a writer (e.g. a shoal build or another program using the collections) or from a read-only
file system, and loads what the writer changed every --refresh seconds.

Exit status: 0 after a clean shutdown; 2 a bad setting (address needing keys, TLS files, a missing data directory
with --read-only); 1 other start-up errors."""


def add_serve(sub) -> None:
    """Register ``shoal serve`` on the CLI's sub-parsers."""
    from ..server import app

    p = add_parser(sub, "serve", help="serve collections over gRPC (loopback by default)", description=DESCRIPTION,
                   epilog="""examples:
  shoal serve --data data --port 50051
  shoal serve --data /mnt/snapshot --read-only --host 0.0.0.0 --keys keys.json --tls-cert c.pem --tls-key k.pem""")
    app.add_arguments(p)
    p.set_defaults(func=app.run)
