"""The ``camserve`` command: one sub-command per module in ``camserve.commands``.

Each command module defines ``register(subparsers)`` which adds its parser and sets ``func``.
A CamserveError becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from camserve.errors import CamserveError

COMMANDS = ("export", "explain", "batch", "serve", "eval", "bench", "default_model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="camserve", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="configuration file (.toml, .yaml or .json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"camserve.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"camserve.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # the ONNX exporter's passes log every rewrite at INFO
        for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except CamserveError as exc:
        print(f"camserve {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
