"""``camserve explain``: CAM maps for image files or preprocessed tensors -> .npz, overlays, a grid.

    camserve explain --method gradcam --method scorecam --target -1 --out result.npz \\
        --overlay overlays/ --grid grid.png cat.png dog.jpg
    camserve explain --model seg/ --target region:3:box=10,10,40,40 --target predicted_region:-1 scene.png

IMAGES are image files (resized and normalised as the model's manifest says) or .npy float32
tensors [N,3,H,W] already preprocessed (used as they are). Without --model the embedded default
model is used, and without IMAGES it explains a few built-in sample images (the default model's;
with --server they are sent to the named model, which resizes them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from camserve import defaults
from camserve.cli_flags import (
    add_explain_option_flags,
    add_method_flag,
    add_remote_flags,
    add_target_spec_flag,
    check_remote_flags,
    client_token,
    config_from_flags,
    parse_target_specs,
    target_spec_error,
)
from camserve.defaults import DEFAULT_METHODS
from camserve.errors import InvalidArgumentError

if TYPE_CHECKING:
    import torch

    from camserve.client import Client
    from camserve.config import CamserveConfig
    from camserve.explainer import Explainer

SAMPLE_IMAGES = 4  # built-in samples explained when no IMAGES are given with the default model
SAMPLE_SEED = 2024


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="compute class activation maps for images",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "images", nargs="*", metavar="IMAGES", help="image files or .npy [N,3,H,W] float32 tensors"
    )
    parser.add_argument(
        "--model", metavar="DIR", help="model directory from `camserve export` (default: built-in)"
    )
    add_method_flag(parser)
    add_target_spec_flag(parser)
    parser.add_argument(
        "--out",
        metavar="FILE.npz",
        help="write maps [N,T,H,W] per method, logits, target_ids, target_scores, target_kinds",
    )
    parser.add_argument("--overlay", metavar="DIR", help="write one PNG per image, method and target")
    parser.add_argument(
        "--grid", metavar="FILE.png", help="write one figure of images x methods (first target)"
    )
    parser.add_argument(
        "--colormap",
        default=defaults.OVERLAY_COLORMAP,
        metavar="NAME",
        help=f"--overlay/--grid colour map: {', '.join(defaults.OVERLAY_COLORMAPS)} "
        f"(default {defaults.OVERLAY_COLORMAP})",
    )
    parser.add_argument(
        "--image-weight",
        type=float,
        default=defaults.OVERLAY_IMAGE_WEIGHT,
        metavar="W",
        help="--overlay/--grid: W x image + (1 - W) x map, W in [0, 1] "
        f"(default {defaults.OVERLAY_IMAGE_WEIGHT})",
    )
    parser.add_argument(
        "--output-size",
        metavar="SIZE",
        help=f"'input', 'feature' or HxW, e.g. 224x224 (default {defaults.OUTPUT_SIZE})",
    )
    add_explain_option_flags(
        parser, topk_help=f"predictions listed per image (default {defaults.TOPK_PREDICTIONS})"
    )
    parser.add_argument(
        "--list-methods", action="store_true", help="list the methods this model supports and exit"
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="ask a `camserve serve` server instead of running locally; --model is then a model NAME",
    )
    add_remote_flags(parser)
    parser.set_defaults(func=run)


def build_explainer(args: argparse.Namespace, config: CamserveConfig) -> Explainer | Client:
    """The object whose ``explain(images, methods, targets)`` answers this command: a local Explainer
    on --model (None: the default model). A remote explainer (``--server host:port``, talking to
    ``camserve serve``) belongs here, returning an object with the same ``explain`` signature."""
    if args.server:
        return _remote_explainer(args, config)
    from camserve.explainer import Explainer

    return Explainer(args.model, config=config)


def _remote_explainer(args: argparse.Namespace, config: CamserveConfig) -> Client:
    """--server: a camserve.Client, which has the Explainer's explain / preprocess / supported_methods;
    --model names one of the server's models (default: its only one), the explain options go along."""
    from camserve.client import Client

    return Client(
        args.server,
        model=args.model,
        options=config.explain,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.client_cert,
        key_file=args.client_key,
        token=client_token(args),
    )


def run(args: argparse.Namespace) -> int:
    from camserve.config import check_overlay_style

    check_remote_flags(args)
    config = config_from_flags(args)
    specs = args.targets or []
    targets = [parse_target_specs(specs)] if specs else None  # [1,T]: the same targets for every image
    _check_output_paths(args)
    style = check_overlay_style(args.colormap, args.image_weight, ("--colormap", "--image-weight"))
    explainer = build_explainer(args, config)
    if args.list_methods:
        from camserve.methods import method_class

        width = max(map(len, explainer.supported_methods))
        for name in explainer.supported_methods:
            print(f"{name:{width}s}  {method_class(name).cost}")
        return 0
    images, names = _load_inputs(args, explainer)
    methods = args.methods or list(DEFAULT_METHODS)
    try:
        result = explainer.explain(images, methods=methods, targets=targets)
    except InvalidArgumentError as exc:
        raise target_spec_error(exc, specs) from None

    written: list[Path] = []
    if args.out:
        written.append(result.save_npz(args.out))
    if args.overlay or args.grid:
        from camserve.visualize import save_grid, save_overlays

        normalised = config.explain.normalize
        if args.overlay:
            written.extend(save_overlays(result, args.overlay, names, normalised, style))
        if args.grid:
            written.append(save_grid(result, args.grid, names=names, normalised=normalised, style=style))

    for index, name in enumerate(names):
        best = result.predictions[index][0]
        explained = ", ".join(result.target_label(index, t) for t in range(result.target_ids.shape[1]))
        print(f"{name}: predicted {best.name!r} (p = {best.probability:.3f}); explained: {explained}")
    for path in written:
        print(f"wrote {path}")
    return 0


def _check_output_paths(args: argparse.Namespace) -> None:
    """Refuse unusable output paths before any work is done."""
    for flag, value in (("out", args.out), ("grid", args.grid)):
        if value is None:
            continue
        path = Path(value)
        if path.is_dir():
            raise InvalidArgumentError(flag, f"{path} is a directory; give a file name")
        if not path.parent.is_dir():
            raise InvalidArgumentError(flag, f"directory {path.parent} does not exist")
    if args.overlay is not None and Path(args.overlay).exists() and not Path(args.overlay).is_dir():
        raise InvalidArgumentError("overlay", f"{args.overlay} exists and is not a directory")


def _load_inputs(args: argparse.Namespace, explainer: Explainer | Client) -> tuple[torch.Tensor, list[str]]:
    """The preprocessed batch [N,3,H,W] and one display name per image."""
    import torch

    if not args.images:
        # The samples are the default model's; a server resizes them for whichever model it serves.
        if args.model is not None and not args.server:
            raise InvalidArgumentError(
                "IMAGES",
                "give at least one image file or .npy tensor (only the default model has built-in samples)",
            )
        return _sample_images(explainer)
    batches, names = [], []
    for item in args.images:
        batch = explainer.preprocess(item)
        batches.append(batch)
        stem = Path(item).stem
        names.extend([stem] if batch.shape[0] == 1 else [f"{stem}-{i}" for i in range(batch.shape[0])])
    return torch.cat(batches), names


def _sample_images(explainer: Explainer | Client) -> tuple[torch.Tensor, list[str]]:
    """A few images of the default model's test split, as uint8 pixels through normal preprocessing."""
    import torch

    from camserve.default_model.data import make_localisation_dataset

    dataset = make_localisation_dataset(SAMPLE_IMAGES, seed=SAMPLE_SEED, split="test")
    pixels = (dataset.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    names = [f"sample{i}-digit{int(label)}" for i, label in enumerate(dataset.labels)]
    return explainer.preprocess(pixels), names
