"""``shoal serve``: collections over gRPC (the server itself is :mod:`shoal.server.app`)."""

from __future__ import annotations


def add_serve(sub) -> None:
    """Register ``shoal serve`` on the CLI's sub-parsers."""
    from ..server import app

    p = sub.add_parser("serve", help="serve collections over gRPC (loopback by default)",
                       description=app.__doc__.split("\n\n")[0] + " See docs/grpc.md.")
    app.add_arguments(p)
    p.set_defaults(func=app.run)
