"""Flags that several commands share, declared once so their names, types and help agree."""

from __future__ import annotations

import argparse
import os

from camserve.defaults import DEFAULT_METHODS
from camserve.errors import InvalidArgumentError

_Adder = argparse.ArgumentParser | argparse._ArgumentGroup


def add_remote_flags(parser: argparse.ArgumentParser) -> None:
    """--tls, --ca-file, --client-cert, --client-key, --token-file: how to reach a --server (shared
    with `camserve bench`)."""
    remote = parser.add_argument_group("with --server: TLS and authentication")
    remote.add_argument("--tls", action="store_true", help="TLS, verified against the system's root CAs")
    remote.add_argument(
        "--ca-file", metavar="PEM", help="CA certificate(s) that verify the server (implies --tls)"
    )
    remote.add_argument(
        "--client-cert", metavar="PEM", help="this client's certificate, for mTLS (implies --tls)"
    )
    remote.add_argument("--client-key", metavar="PEM", help="the key of --client-cert")
    remote.add_argument(
        "--token-file",
        metavar="FILE",
        help="send `authorization: Bearer <token>` with the token in FILE (or set CAMSERVE_AUTH_TOKEN)",
    )


_REMOTE_FLAGS = {
    "tls": "--tls",
    "ca_file": "--ca-file",
    "client_cert": "--client-cert",
    "client_key": "--client-key",
    "token_file": "--token-file",
}


def check_remote_flags(args: argparse.Namespace) -> None:
    """TLS and token flags belong to --server; alone they would be silently ignored."""
    if args.server:
        return
    given = [flag for name, flag in _REMOTE_FLAGS.items() if getattr(args, name)]
    if given:
        raise InvalidArgumentError(given[0], "applies only with --server HOST:PORT")


def client_token(args: argparse.Namespace) -> str | None:
    """The bearer token from --token-file, else CAMSERVE_AUTH_TOKEN, else None."""
    if args.token_file:
        from camserve.wire import read_token_file

        return read_token_file(args.token_file, "--token-file")
    token = os.environ.get("CAMSERVE_AUTH_TOKEN")
    if not token:
        return None
    from camserve.wire import check_token

    return check_token(token.strip(), "CAMSERVE_AUTH_TOKEN")


def add_method_flag(parser: _Adder, default: str | None = None) -> None:
    """``--method NAME`` (repeatable) into ``args.methods``; ``default`` words the help's default."""
    shown = default if default is not None else " ".join(DEFAULT_METHODS)
    parser.add_argument(
        "--method",
        action="append",
        dest="methods",
        metavar="NAME",
        help=f"a CAM method; repeat for several (default: {shown}; see `camserve explain --list-methods`)",
    )


def add_target_flag(parser: _Adder) -> None:
    """``--target CLASS`` (repeatable) into ``args.targets``: a class id or -k, the k-th best class."""
    parser.add_argument(
        "--target",
        action="append",
        dest="targets",
        type=int,
        metavar="CLASS",
        help="class id to explain, or -k for each image's k-th best class; repeat for several (default: -1)",
    )


def add_smoothing_flags(parser: _Adder) -> None:
    """``--eigen-smooth`` / ``--aug-smooth`` into ``args.eigen_smooth`` / ``args.aug_smooth``
    (``ExplainOptions``; docs/methods.md, "Options")."""
    parser.add_argument(
        "--eigen-smooth",
        action="store_true",
        help="first principal component of the weighted activations instead of their sum",
    )
    parser.add_argument(
        "--aug-smooth",
        action="store_true",
        help="mean of the maps of 6 copies of each image: flipped or not x input scaled 0.9/1/1.1 "
        "(6x the graph work)",
    )
