"""``camserve export``: a PyTorch classifier -> a model directory (explain / forward / head / guided graphs)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from camserve.errors import InvalidArgumentError
from camserve.export import GRAPHS, build_from_import_path, export_model, load_weights
from camserve.export.architectures import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    arch_defaults,
    build_torchvision,
    imagenet_class_names,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a classifier to a camserve model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help=f"torchvision architecture: {', '.join(ARCHITECTURES)}")
    source.add_argument("--module", help="import path of a factory returning an nn.Module: pkg.mod:build")
    weights = p.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="state dict file (.pth/.pt) to load")
    weights.add_argument(
        "--random-weights", action="store_true", help="seeded random weights (tests and benchmarks only)"
    )
    p.add_argument("--layer", help="dotted name of the target layer (default: per architecture)")
    p.add_argument("--input-size", help="CxHxW, e.g. 3x224x224 (default: per architecture, else 3x224x224)")
    p.add_argument(
        "--num-classes", type=int, default=1000, help="classes of a torchvision model (default 1000)"
    )
    p.add_argument("--class-names", help="text file with one class name per line")
    p.add_argument("--mean", help="normalisation mean, comma separated (default: ImageNet)")
    p.add_argument("--std", help="normalisation std, comma separated (default: ImageNet)")
    p.add_argument("--layout", choices=["nchw", "nhwc", "tokens"], help="layout of the layer's output")
    p.add_argument("--prefix-tokens", type=int, help="tokens layout: leading class/register tokens")
    p.add_argument("--graphs", default=",".join(GRAPHS), help=f"graphs to write (default {','.join(GRAPHS)})")
    p.add_argument("--name", help="model name (default: the output directory's name)")
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=run)


def _floats(text: str | None, default: list[float], argument: str) -> list[float]:
    if text is None:
        return default
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(
            argument, f"expected three comma-separated numbers, got {text!r}"
        ) from None
    if len(values) != 3:
        raise InvalidArgumentError(
            argument, f"expected three values (one per colour channel), got {len(values)}"
        )
    return values


def parse_input_size(text: str) -> tuple[int, int, int]:
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidArgumentError(
            "--input-size", f"expected CxHxW such as 3x224x224, got {text!r}"
        ) from None
    if len(size) != 3:
        raise InvalidArgumentError("--input-size", f"expected CxHxW such as 3x224x224, got {text!r}")
    return size


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InvalidArgumentError("--out", f"{out} exists; pass --force to replace it")
    layout, prefix = args.layout, args.prefix_tokens
    if args.random_weights:
        log.warning("exporting with seeded random weights: the maps will mean nothing")
        torch.manual_seed(0)  # before the model is built: its initialisation is the weights
    if args.arch:
        defaults = arch_defaults(args.arch)
        input_size = parse_input_size(args.input_size) if args.input_size else defaults.input_size
        model = build_torchvision(args.arch, input_size, args.num_classes)
        layer = args.layer or defaults.layer
        if args.layer is None or args.layer == defaults.layer:
            layout = layout or defaults.layout
            prefix = defaults.prefix_tokens if prefix is None else prefix
        architecture = args.arch
        class_names = imagenet_class_names() if args.num_classes == 1000 else None
    else:
        if not args.layer:
            raise InvalidArgumentError("--layer", "required with --module (there is no default layer)")
        input_size = parse_input_size(args.input_size or "3x224x224")
        model = build_from_import_path(args.module)
        layer = args.layer
        architecture = f"module:{args.module}"
        class_names = None
    if args.weights:
        load_weights(model, args.weights)
    if args.class_names:
        path = Path(args.class_names)
        if not path.is_file():
            raise InvalidArgumentError("--class-names", f"no such file: {path}")
        class_names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    model_dir = export_model(
        model,
        layer,
        input_size,
        out,
        name=args.name or out.name,
        architecture=architecture,
        mean=_floats(args.mean, IMAGENET_MEAN, "--mean"),
        std=_floats(args.std, IMAGENET_STD, "--std"),
        class_names=class_names,
        force=args.force,
        layout=layout,
        prefix_tokens=prefix,
        graphs=[g.strip() for g in args.graphs.split(",") if g.strip()],
    )
    m = model_dir.manifest
    cam = "yes" if m.cam_weights else "no (head is not GAP -> linear)"
    print(f"exported {m.architecture} layer {m.target_layer} -> {model_dir.path}")
    print(f"  activations [N,{','.join(map(str, m.activation_shape))}], {m.num_classes} classes, CAM: {cam}")
    return 0
