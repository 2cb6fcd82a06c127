"""camserve: Class Activation Maps (Grad-CAM and co.) for image classifiers, exported to ONNX and
served over gRPC.

Every sub-command is a module of ``camserve.commands`` with ``register(subparsers)``, which adds its
parser and sets ``func``; all are imported here, so a missing or broken one fails at once. A
CamserveError becomes one line on stderr and its exit status (2; 3 for a disk that cannot be written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from camserve.commands import batch, bench, default_model, explain, export, serve
from camserve.commands import eval as eval_command
from camserve.errors import CamserveError
from camserve.logs import configure_logging

DESCRIPTION = """\
Class Activation Maps (Grad-CAM, Grad-CAM++, Score-CAM, ...) for image classifiers: export a PyTorch
model to ONNX graphs, explain images with it, serve explanations over gRPC, explain whole datasets
and score the methods. Without --model every command uses the built-in digits model."""
EPILOG = """examples:
  camserve explain --method gradcam --grid grid.png          # the built-in model's sample images
  camserve export --arch resnet50 --weights r50.pth --out models/resnet50
  camserve serve --models models                              # gRPC on 127.0.0.1:50051
  camserve batch --input images/ --out maps/                  # a dataset -> Parquet shards
  camserve eval                                               # faithfulness and localisation scores

`camserve COMMAND --help` describes each command; docs/*.md hold the details."""

COMMANDS: tuple[ModuleType, ...] = (export, explain, serve, batch, eval_command, bench, default_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="camserve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="configuration file (.toml, .yaml or .json)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not args.verbose:  # the ONNX exporter's passes log every rewrite at INFO
        for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except CamserveError as exc:
        print(f"camserve {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
