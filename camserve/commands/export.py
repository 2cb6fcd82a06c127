"""``camserve export``: a PyTorch model -> a model directory (explain / forward / head / guided graphs,
fullgradient on request).

The explained output may be a classifier's logits, a dense (segmentation) output, a dense detection
head's scores + boxes or an embedding (``--output``, ``--output-kind``, ``--boxes-output``).

With ``--maps`` it also writes the maps graph (maps.onnx: the CAM maths as ONNX operators). With
``--triton-repository DIR`` it also writes a Triton Inference Server model repository for the
explain graph. ``--from-model MODEL_DIR`` with ``--maps`` and/or ``--triton-repository DIR`` does
either for an existing model directory without the PyTorch model.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from camserve.defaults import OUTPUT_SIZE
from camserve.errors import InvalidArgumentError
from camserve.export import DEFAULT_GRAPHS, GRAPHS, build_from_import_path, export_model, load_weights
from camserve.export.architectures import (
    ARCHITECTURES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    arch_defaults,
    build_torchvision,
    default_class_names,
)
from camserve.export.maps import DEFAULT_METHODS as DEFAULT_MAPS_METHODS
from camserve.export.maps import DTYPES as MAPS_DTYPES
from camserve.export.maps import MapsOptions, add_maps_graph, graph_methods
from camserve.methods.target_kinds import OUTPUT_KINDS
from camserve.modeldir import ModelDirectory

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a model to a camserve model directory")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--arch", help=f"torchvision architecture: {', '.join(ARCHITECTURES)}")
    source.add_argument("--module", help="import path of a factory returning an nn.Module: pkg.mod:build")
    source.add_argument(
        "--from-model",
        metavar="MODEL_DIR",
        help="an existing model directory: add the maps graph (--maps) and/or write a Triton repository",
    )
    # One of the two is required unless --from-model (checked in run()).
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="state dict file (.pth/.pt) to load")
    weights.add_argument(
        "--random-weights", action="store_true", help="seeded random weights (tests and benchmarks only)"
    )
    p.add_argument("--layer", help="dotted name of the target layer (default: per architecture)")
    p.add_argument("--input-size", help="CxHxW, e.g. 3x224x224 (default: per architecture, else 3x224x224)")
    p.add_argument(
        "--num-classes",
        type=int,
        help="classes of a torchvision model (default 1000; 21 for the segmentation models)",
    )
    p.add_argument(
        "--output",
        help="the explained output of a model returning a tuple or a dict: a name or an index "
        "(default: the first; 'out' for the segmentation models); detection: the scores [N,A,C]",
    )
    p.add_argument(
        "--output-kind",
        help=f"what the explained output is: {', '.join(OUTPUT_KINDS)} (default: 2-D classification, "
        "4-D dense; embedding and detection must be given)",
    )
    p.add_argument("--boxes-output", help="detection: the output holding the boxes [N,A,4] (input pixels)")
    p.add_argument("--class-names", help="text file with one class name per line")
    p.add_argument("--mean", help="normalisation mean, comma separated (default: ImageNet)")
    p.add_argument("--std", help="normalisation std, comma separated (default: ImageNet)")
    p.add_argument("--layout", choices=["nchw", "nhwc", "tokens"], help="layout of the layer's output")
    p.add_argument("--prefix-tokens", type=int, help="tokens layout: leading class/register tokens")
    p.add_argument(
        "--graphs",
        default=",".join(DEFAULT_GRAPHS),
        help=f"graphs to write, of {','.join(GRAPHS)} (default {','.join(DEFAULT_GRAPHS)})",
    )
    p.add_argument(
        "--maps",
        nargs="?",
        const=",".join(DEFAULT_MAPS_METHODS),
        metavar="METHODS",
        help="also write maps.onnx, the CAM maths as ONNX operators: images, targets -> logits, "
        f"target_ids, maps_<method> (default {','.join(DEFAULT_MAPS_METHODS)}; "
        f"possible: {', '.join(graph_methods())})",
    )
    p.add_argument(
        "--maps-size",
        default=OUTPUT_SIZE,
        help=f"maps.onnx's map size: input, feature or HxW (default {OUTPUT_SIZE})",
    )
    p.add_argument(
        "--maps-dtype",
        choices=MAPS_DTYPES,
        default="float32",
        help="maps.onnx's maps: float32 in [0,1] or uint8",
    )
    p.add_argument("--name", help="model name (default: the output directory's name)")
    p.add_argument("--out", help="output model directory (required unless --from-model)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument(
        "--triton-repository",
        metavar="DIR",
        help="also write a Triton model repository for the maps graph (else the explain graph): "
        "DIR/<name>/ with onnxruntime- and python-backend configs (docs/operations.md)",
    )
    p.add_argument("--triton-max-batch-size", type=int, default=16, help="Triton max_batch_size (default 16)")
    p.add_argument(
        "--triton-instance-kind",
        choices=("KIND_AUTO", "KIND_CPU", "KIND_GPU"),
        default="KIND_AUTO",
        help="Triton instance_group kind (default KIND_AUTO)",
    )
    p.add_argument("--triton-instance-count", type=int, default=1, help="Triton instances (default 1)")
    p.add_argument(
        "--triton-target-slots",
        type=int,
        default=1,
        help="onnxruntime backend: targets per image in every request (default 1)",
    )
    p.add_argument(
        "--triton-ensemble",
        action="store_true",
        help="also DIR/<name>_encoded: an ensemble taking encoded PNG/JPEG bytes",
    )
    p.set_defaults(func=run)


def _floats(text: str | None, default: list[float], argument: str, channels: int) -> list[float]:
    """One value per input channel; the default (ImageNet's, for 3 channels) needs --input-size 3xHxW."""
    if text is None:
        if len(default) != channels:
            raise InvalidArgumentError(
                argument, f"required for {channels} input channels (the default is ImageNet's, for 3)"
            )
        return default
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgumentError(
            argument, f"expected {channels} comma-separated numbers, got {text!r}"
        ) from None
    if len(values) != channels:
        raise InvalidArgumentError(
            argument, f"expected {channels} values (one per input channel), got {len(values)}"
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


def _write_triton_repository(args: argparse.Namespace, model_dir: Path | str) -> None:
    from camserve.export.triton_repository import ENSEMBLE_SUFFIX, write_triton_repository

    target = write_triton_repository(
        model_dir,
        args.triton_repository,
        force=args.force,
        ensemble=args.triton_ensemble,
        max_batch_size=args.triton_max_batch_size,
        instance_kind=args.triton_instance_kind,
        instance_count=args.triton_instance_count,
        target_slots=args.triton_target_slots,
    )
    extra = f", {target}{ENSEMBLE_SUFFIX}" if args.triton_ensemble else ""
    print(f"Triton model repository: {target}{extra} (docs/operations.md#triton-inference-server)")


def _maps_options(args: argparse.Namespace) -> MapsOptions | None:
    if args.maps is None:
        return None
    methods = tuple(m.strip() for m in args.maps.split(",") if m.strip())
    options = MapsOptions(methods, args.maps_size, args.maps_dtype)
    options.check()
    return options


def _print_maps(model_dir: ModelDirectory) -> None:
    maps = model_dir.manifest.maps
    if maps is not None:
        size = "x".join(map(str, maps.size))
        print(
            f"  maps graph: {model_dir.graph_path('maps')} -> {', '.join(maps.outputs)} ({maps.dtype} {size})"
        )


def run(args: argparse.Namespace) -> int:
    maps = _maps_options(args)
    if args.from_model:
        if not (args.triton_repository or maps):
            raise InvalidArgumentError("--from-model", "only used with --maps and/or --triton-repository DIR")
        if args.weights or args.random_weights or args.out:
            raise InvalidArgumentError(
                "--from-model",
                "reads an existing model directory: --weights, --random-weights and --out do not apply",
            )
        if maps is not None:
            _print_maps(add_maps_graph(args.from_model, maps))
        if args.triton_repository:
            _write_triton_repository(args, args.from_model)
        return 0
    if not (args.weights or args.random_weights):
        raise InvalidArgumentError("--weights", "one of --weights FILE or --random-weights is required")
    if not args.out:
        raise InvalidArgumentError("--out", "the output model directory is required")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise InvalidArgumentError("--out", f"{out} exists; pass --force to replace it")
    triton_target = Path(args.triton_repository) / (args.name or out.name) if args.triton_repository else None
    if triton_target is not None and triton_target.exists() and not args.force:
        raise InvalidArgumentError(
            "--triton-repository", f"{triton_target} exists; pass --force to replace it"
        )
    if args.output_kind is not None and args.output_kind not in OUTPUT_KINDS:
        raise InvalidArgumentError(
            "--output-kind", f"{args.output_kind!r} is not one of {', '.join(OUTPUT_KINDS)}"
        )
    if (args.boxes_output is not None) != (args.output_kind == "detection"):
        raise InvalidArgumentError(
            "--boxes-output", "--output-kind detection needs --boxes-output, and only it takes one"
        )
    layout, prefix = args.layout, args.prefix_tokens
    output = args.output
    if args.random_weights:
        log.warning("exporting with seeded random weights: the maps will mean nothing")
        torch.manual_seed(0)  # before the model is built: its initialisation is the weights
    if args.arch:
        defaults = arch_defaults(args.arch)
        input_size = parse_input_size(args.input_size) if args.input_size else defaults.input_size
        num_classes = defaults.num_classes if args.num_classes is None else args.num_classes
        model = build_torchvision(args.arch, input_size, num_classes)
        layer = args.layer or defaults.layer
        if args.layer is None or args.layer == defaults.layer:
            layout = layout or defaults.layout
            prefix = defaults.prefix_tokens if prefix is None else prefix
        output = defaults.output if output is None else output
        architecture = args.arch
        class_names = default_class_names(args.arch, num_classes)
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
    else:
        _untie_zero_layers(model)
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
        mean=_floats(args.mean, IMAGENET_MEAN, "--mean", input_size[0]),
        std=_floats(args.std, IMAGENET_STD, "--std", input_size[0]),
        class_names=class_names,
        force=args.force,
        layout=layout,
        prefix_tokens=prefix,
        graphs=[g.strip() for g in args.graphs.split(",") if g.strip()],
        maps=maps,
        output=output,
        output_kind=args.output_kind,
        boxes_output=args.boxes_output,
    )
    m = model_dir.manifest
    cam = "yes" if m.cam_weights else "no (not a classifier's GAP -> linear head)"
    print(f"exported {m.architecture} layer {m.target_layer} -> {model_dir.path}")
    print(
        f"  {m.output_kind} output [N,{','.join(map(str, m.output_shape))}] "
        f"(targets: {', '.join(m.target_spec().kinds)}), "
        f"activations [N,{','.join(map(str, m.activation_shape))}], CAM: {cam}"
    )
    _print_maps(model_dir)
    if args.triton_repository:
        _write_triton_repository(args, model_dir.path)
    return 0


def _untie_zero_layers(model: nn.Module) -> None:
    """Seeded random weights: a linear layer that its constructor zero-initialises (ViT's classifier)
    gets N(0, 0.02²) weights and bias, or every logit would tie and every gradient would be zero."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and not bool(module.weight.any()):
                nn.init.normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.normal_(module.bias, std=0.02)
