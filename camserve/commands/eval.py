"""``camserve eval``: faithfulness and localisation metrics of CAM methods -> a report folder.

    camserve eval --model DIR --data DIR --method gradcam --method gradcam++ --out report/

Without --data it evaluates on the generated localisation benchmark (digits with exact boxes,
single-instance and multi-instance images); without --model, on the embedded default model. It
writes metrics.csv (one row per image and map), summary.md (maps x metrics, mean ± 95 % CI, the case
studies and the sanity check) and PNG figures. Progress goes to stderr.

--data is a folder of images with PASCAL-VOC XML boxes (Annotations/ + JPEGImages/, or an .xml beside
each image); object names must be the model's class names. The sanity check (cascading weight
randomisation) needs the PyTorch model: it is built in for the default model; for an exported
torchvision or module:... architecture pass its weights with --sanity-weights.
"""

from __future__ import annotations

import argparse
import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from camserve import defaults as d
from camserve.cli_flags import add_method_flag

if TYPE_CHECKING:
    import torch
    from torch import nn

    from camserve.config import CamserveConfig
    from camserve.explainer import Explainer
    from camserve.outputs import GraphRunner

log = logging.getLogger(__name__)

# Flags whose default is a value (camserve.defaults, also EvalSettings' defaults): shown in --help and
# left out of the report's command line when unchanged.
FLAG_DEFAULTS = {
    "multi_images": d.EVAL_MULTI_IMAGES,
    "seed": d.EVAL_SEED,
    "fraction": d.EVAL_FRACTION,
    "threshold": d.EVAL_THRESHOLD,
    "steps": d.EVAL_STEPS,
    "fill": d.EVAL_FILL,
    "insertion_start": d.EVAL_INSERTION_START,
    "sanity_images": d.EVAL_SANITY_IMAGES,
    "examples": d.EVAL_EXAMPLES,
    "out": d.EVAL_OUT,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate CAM methods: faithfulness, localisation, sanity check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--model", metavar="DIR", help="model directory (default: the built-in model)")
    parser.add_argument(
        "--data", metavar="DIR", help="images with PASCAL-VOC XML boxes (default: the generated benchmark)"
    )
    parser.add_argument("--image-set", metavar="NAME", help="VOC layout: only ImageSets/Main/NAME.txt")
    add_method_flag(parser, default="every CAM method the model supports")
    parser.add_argument(
        "--images",
        type=int,
        metavar="N",
        help=f"single-instance benchmark images (default {d.EVAL_SINGLE_IMAGES}), or the first N of --data "
        "(default all)",
    )
    parser.add_argument(
        "--multi-images",
        type=int,
        metavar="N",
        help=f"multi-instance (2-4 copies) benchmark images (default {d.EVAL_MULTI_IMAGES}; 0: none)",
    )
    parser.add_argument(
        "--seed", type=int, help="benchmark images and random baseline maps (default %(default)s)"
    )
    parser.add_argument("--fraction", type=float, help="top fraction of pixels (default %(default)s)")
    parser.add_argument(
        "--threshold", type=float, help="segment threshold, fraction of the max (default %(default)s)"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        metavar="PX",
        help="pointing-game tolerance (default: 15 px at 224 px, scaled)",
    )
    parser.add_argument("--steps", type=int, help="deletion/insertion steps (default %(default)s)")
    parser.add_argument(
        "--fill",
        choices=("black", "mean"),
        help="what removed pixels become: black (the image x map of the papers) or the mean colour "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--insertion-start",
        choices=("blur", "fill"),
        help="insertion starts from a blurred image (RISE) or the fill (default %(default)s)",
    )
    parser.add_argument("--no-curves", action="store_true", help="skip deletion/insertion (the slowest part)")
    parser.add_argument(
        "--road", action="store_true", help="add ROAD (MoRF/LeRF with noisy linear imputation; slow)"
    )
    parser.add_argument(
        "--sanity-images",
        type=int,
        metavar="N",
        help="images for the randomisation sanity check (default %(default)s; 0: skip it)",
    )
    parser.add_argument(
        "--sanity-weights", metavar="FILE", help="PyTorch weights of the exported model, for the sanity check"
    )
    parser.add_argument("--batch-size", type=int, metavar="N", help="images per graph run (default: config)")
    parser.add_argument(
        "--threads", type=int, metavar="N", help="CPU threads for ONNX Runtime and torch (default: config)"
    )
    parser.add_argument(
        "--examples", type=int, help="images of each subset in the figure grid (default %(default)s)"
    )
    parser.add_argument("--no-figures", action="store_true", help="write no PNG figures")
    parser.add_argument("--out", metavar="DIR", help="report folder (default: %(default)s/)")
    parser.set_defaults(func=run, **FLAG_DEFAULTS)


def _check_args(args: argparse.Namespace) -> None:
    from camserve.errors import InvalidArgumentError

    for name in ("images", "multi_images", "sanity_images", "examples"):
        value = getattr(args, name)
        if value is not None and value < 0:
            raise InvalidArgumentError(f"--{name.replace('_', '-')}", f"must be >= 0, got {value}")
    if args.images == 0 and (args.data is not None or args.multi_images == 0):
        raise InvalidArgumentError("--images", "no images to evaluate")
    if args.batch_size is not None and args.batch_size < 1:
        raise InvalidArgumentError("--batch-size", f"must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise InvalidArgumentError("--threads", f"must be >= 1, got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError("--out", f"{out} exists and is not a directory")


def command_line(args: argparse.Namespace) -> str:
    """The command as a user would type it, from the parsed flags that differ from the defaults."""
    words = ["camserve", "eval"]
    for flag, value in (
        ("--model", args.model),
        ("--data", args.data),
        ("--image-set", args.image_set),
        ("--images", args.images),
        ("--multi-images", _changed(args, "multi_images")),
        ("--seed", _changed(args, "seed")),
        ("--fraction", _changed(args, "fraction")),
        ("--threshold", _changed(args, "threshold")),
        ("--tolerance", args.tolerance),
        ("--steps", _changed(args, "steps")),
        ("--fill", _changed(args, "fill")),
        ("--insertion-start", _changed(args, "insertion_start")),
        ("--sanity-images", _changed(args, "sanity_images")),
        ("--sanity-weights", args.sanity_weights),
        ("--out", args.out),
    ):
        if value is not None:
            words += [flag, str(value)]
    for name in args.methods or []:
        words += ["--method", name]
    switches = (("--no-curves", args.no_curves), ("--road", args.road), ("--no-figures", args.no_figures))
    words += [flag for flag, on in switches if on]
    return shlex.join(words)


def _changed(args: argparse.Namespace, name: str) -> object:
    """The flag's value when it differs from its default, else None (left out of the command line)."""
    value = getattr(args, name)
    return None if value == FLAG_DEFAULTS[name] else value


def eager_runner(explainer: Explainer) -> Callable[[nn.Module], GraphRunner]:
    """``model`` -> a GraphRunner running it in eager PyTorch, split as ``explainer``'s manifest says."""
    from camserve.export.eager import TorchGraphRunner

    manifest = explainer.manifest
    channels, height, width = manifest.input_size

    def runner(model: nn.Module) -> GraphRunner:
        return TorchGraphRunner(
            model,
            manifest.target_layer,
            (channels, height, width),
            layout=manifest.layout,
            prefix_tokens=manifest.prefix_tokens,
        )

    return runner


def torch_model_for(explainer: Explainer, weights: str | None) -> nn.Module | None:
    """The PyTorch model behind the explainer's model directory, or None (with the reason logged)."""
    from camserve.default_model import ARCHITECTURE, load_default_model

    manifest = explainer.manifest
    arch = manifest.architecture
    if arch == ARCHITECTURE:
        return load_default_model(weights)
    if weights is None:
        log.warning(
            "sanity check skipped: it needs the PyTorch model of %r; pass its weights with --sanity-weights",
            manifest.name,
        )
        return None
    from camserve.export import build_from_import_path, load_weights

    if ":" in arch:
        model = build_from_import_path(arch.removeprefix("module:"))
    else:
        from camserve.export.architectures import build_torchvision

        input_size = cast("tuple[int, int, int]", tuple(manifest.input_size))  # the manifest's [3, H, W]
        model = build_torchvision(arch, input_size, manifest.num_classes)
    return load_weights(model, weights).eval()


def _agrees(explainer: Explainer, model: nn.Module, images: torch.Tensor) -> bool:
    """Whether the PyTorch model computes the exported graph's logits (else its maps mean nothing)."""
    import torch

    with torch.no_grad():
        ours = model(images)
    theirs = explainer.runner.forward(images).to(ours)
    error = float((ours - theirs).abs().max())
    tolerance = 1e-3 * (1.0 + float(theirs.abs().max()))
    if error > tolerance:
        log.warning(
            "sanity check skipped: the PyTorch model's logits differ from the exported graph's by %.3g "
            "(other weights?)",
            error,
        )
        return False
    return True


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    import torch

    from camserve.config import CamserveConfig

    runtime = {}
    if args.batch_size is not None:
        runtime["max_graph_batch"] = args.batch_size
    if args.threads is not None:
        runtime["intra_op_threads"] = args.threads
    config = CamserveConfig.load(args.config, overrides={"runtime": runtime} if runtime else None)
    threads = torch.get_num_threads()
    if config.runtime.intra_op_threads > 0:
        # the metrics' perturbations and boxes are torch ops on the CPU: same budget as ONNX Runtime
        torch.set_num_threads(config.runtime.intra_op_threads)
    try:
        return _evaluate(args, config)
    finally:
        torch.set_num_threads(threads)


def _evaluate(args: argparse.Namespace, config: CamserveConfig) -> int:
    from camserve.errors import CamserveError
    from camserve.eval.data import BenchmarkData, EvalData, VocFolder
    from camserve.eval.evaluate import EvalSettings, Progress, evaluate, is_dense
    from camserve.eval.report import ReportContext, write_report
    from camserve.eval.sanity import explainer_sanity_check
    from camserve.explainer import Explainer
    from camserve.images import normalize
    from camserve.methods import method_class

    explainer = Explainer(args.model, config=config)
    manifest = explainer.manifest
    dense = is_dense(explainer)
    if args.methods:
        methods = list(dict.fromkeys(args.methods))
    else:
        # colour evidence (guided backprop) is pixel-level, not a CAM: left out unless asked for
        # (supported_methods already leaves out what a dense model's region targets cannot take)
        methods = [m for m in explainer.supported_methods if not method_class(m).colour]
    explainer.check_methods(methods)
    size = (int(manifest.input_size[1]), int(manifest.input_size[2]))

    if args.data is not None:
        data = VocFolder(args.data, manifest.class_names, size, image_set=args.image_set)
        subsets: list[tuple[EvalData, int | None]] = [(data, args.images)]
        description = f"PASCAL-VOC folder {args.data} ({min(len(data), args.images or len(data))} images)"
    else:
        single = d.EVAL_SINGLE_IMAGES if args.images is None else args.images
        subsets = []
        if single:
            subsets.append((BenchmarkData(single, seed=args.seed, size=size), None))
        if args.multi_images:
            subsets.append(
                (BenchmarkData(args.multi_images, seed=args.seed + 1, instances=(2, 4), size=size), None)
            )
        description = (
            f"the generated localisation benchmark (test-split digits, seed {args.seed}): {single} "
            f"single-instance and {args.multi_images} multi-instance (2-4 copies) images"
        )

    settings = EvalSettings(
        methods=tuple(methods),
        fraction=args.fraction,
        threshold=args.threshold,
        tolerance=args.tolerance,
        steps=args.steps,
        curves=not args.no_curves and not dense,  # region evaluation has no perturbation curves
        road=args.road,
        fill=args.fill,
        insertion_start=args.insertion_start,
        batch_size=config.runtime.max_graph_batch,
        seed=args.seed,
        examples=args.examples,
    )
    total = sum(min(len(data), limit or len(data)) for data, limit in subsets)
    log.info("evaluating %s on %d images: %s + baselines", manifest.name, total, ", ".join(methods))
    results = evaluate(explainer, subsets, settings, Progress(total, "eval"))

    sanity = None
    if args.sanity_images and dense:
        log.info("sanity check skipped: it randomises classifiers; region evaluation has none yet")
    elif args.sanity_images:
        first, limit = subsets[0]
        batch = first.batch(range(min(args.sanity_images, len(first), limit or len(first))))
        images = normalize(batch.images, manifest.mean, manifest.std)
        try:
            model = torch_model_for(explainer, args.sanity_weights)
        except CamserveError as exc:  # the report is still worth writing without it
            log.warning("sanity check skipped: cannot build the PyTorch model (%s)", exc)
            model = None
        if model is not None and _agrees(explainer, model, images):
            log.info("sanity check: cascading randomisation on %d images", len(batch))
            sanity = explainer_sanity_check(
                explainer, model, images, batch.labels[:, None], methods, eager_runner(explainer), args.seed
            )

    notes = [
        f"Model: {manifest.name} ({manifest.architecture}), target layer `{manifest.target_layer}`, "
        f"input {size[0]}x{size[1]}."
    ]
    context = ReportContext(manifest.name, description, command_line(args), settings, notes)
    written = write_report(
        results, Path(args.out), context, manifest.class_names, sanity, not args.no_figures
    )
    for name in written:
        log.info("wrote %s", Path(args.out) / name)
    return 0
