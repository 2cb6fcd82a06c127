"""Plans and runs one explanation batch: one explain-graph run shared by every requested method,
then each method's maps, resized to the requested output size and min-max normalised.

This is the tensor-level entry point (the Python API, the CLI and the service all end here);
``camserve.Explainer`` wraps it with image loading, target parsing and numpy results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from camserve import kernels
from camserve.chunking import run_in_chunks
from camserve.config import ExplainOptions, RuntimeConfig, check_options, resolve_output_size
from camserve.errors import InvalidArgumentError
from camserve.methods import smoothing
from camserve.methods.base import CamMethod, MethodContext, MethodMaps, check_target_kinds, get_method
from camserve.methods.target_kinds import IMAGE_KINDS, KIND_CODE, TargetSpec, TargetTable
from camserve.methods.targets import (
    TargetsLike,
    classification_spec,
    image_targets_as_vectors,
    parse_target_table,
    resolve_targets,
)
from camserve.outputs import ExplainOutputs, GraphRunner


@dataclass
class ComputedMaps:
    """maps[method] [N,T,H',W'] float32 (H'xW' the output size); rgb[method] [N,T,3,H,W] for methods
    with colour evidence (guided); logits [N,C] (class scores); target_ids [N,T] resolved;
    feature_size (h, w); target_scores [N,T] the explained scalars; target_kinds [N,T] their kind
    codes (``target_kinds.TARGET_KINDS``)."""

    maps: dict[str, torch.Tensor]
    rgb: dict[str, torch.Tensor]
    logits: torch.Tensor
    target_ids: torch.Tensor
    feature_size: tuple[int, int]
    target_scores: torch.Tensor
    target_kinds: torch.Tensor


def parse_methods(methods: str | Sequence[str]) -> list[CamMethod]:
    """Method objects for ``methods`` (a name or a sequence of names), duplicates dropped."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise InvalidArgumentError("methods", "no method given")
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError("methods", f"expected method names, got {name!r}")
    return [get_method(name) for name in dict.fromkeys(names)]


def compute_maps(
    runner: GraphRunner,
    images: torch.Tensor,
    targets: TargetsLike,
    methods: str | Sequence[str],
    *,
    spec: TargetSpec | None = None,
    num_classes: int | None = None,
    options: ExplainOptions | None = None,
    runtime: RuntimeConfig | None = None,
    cam_weights: torch.Tensor | None = None,
    model_name: str = "model",
) -> ComputedMaps:
    """Maps of ``methods`` for preprocessed ``images`` [N,3,H,W] and ``targets`` (see
    ``camserve.methods.targets``) from one explain-graph run plus what each method adds; the
    method names and ``options`` are checked here (:func:`checked_maps` when they were already)."""
    method_objects = parse_methods(methods)
    return checked_maps(
        runner,
        images,
        targets,
        method_objects,
        spec=spec,
        num_classes=num_classes,
        options=check_options(options or ExplainOptions()),
        runtime=runtime,
        cam_weights=cam_weights,
        model_name=model_name,
    )


def checked_maps(
    runner: GraphRunner,
    images: torch.Tensor,
    targets: TargetsLike,
    methods: Sequence[CamMethod],
    *,
    spec: TargetSpec | None = None,
    num_classes: int | None = None,
    options: ExplainOptions,
    runtime: RuntimeConfig | None = None,
    cam_weights: torch.Tensor | None = None,
    model_name: str = "model",
) -> ComputedMaps:
    """:func:`compute_maps` for methods and options checked once where the request came in (the
    service's codecs, ``Explainer.explain``, the batch job's and the evaluation's start).

    ``spec`` says which targets the model takes (``Manifest.target_spec()``); ``num_classes``
    alone stands for a classifier's spec."""
    runtime = runtime or RuntimeConfig()
    method_objects = list(methods)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InvalidArgumentError(
            "images", f"expected a non-empty [N,3,H,W] batch, got shape {list(images.shape)}"
        )
    if spec is None:
        if num_classes is None:
            raise TypeError("checked_maps needs the model's target spec (or num_classes for a classifier)")
        spec = classification_spec(num_classes, images.shape)
    num_images = images.shape[0]
    target_table = parse_target_table(targets, num_images, spec)
    check_target_kinds(method_objects, target_table, spec.output_kind)
    kinds = target_table.kinds
    repeats = max(method.augmented_copies(options) for method in method_objects)
    augmented = repeats > 1
    copies = max(method.noisy_copies(options) for method in method_objects)
    negative = bool((target_table.ids < 0).any())
    image_kind = any(bool((kinds == KIND_CODE[kind]).any()) for kind in IMAGE_KINDS)
    if ((copies or augmented) and negative) or image_kind:
        # Noisy and augmented copies must explain the clean image's class, not their own top class;
        # an image's embedding target must not depend on which rows share its graph run.
        logits = _forward_batched(runner, images, runtime.max_graph_batch)
        target_table = image_targets_as_vectors(target_table, logits)
        if negative:
            target_table = TargetTable(
                resolve_targets(target_table.ids, logits), target_table.kinds, target_table.data
            )
    # With aug_smooth the batch is the R augmented copies of every image (copy-major; the clean
    # images are copy ``identity_copy()``), all in one explain run with the noisy copies.
    run_images = smoothing.augment(images) if augmented else images
    run_count = run_images.shape[0]
    noisy_gradients = None
    if copies == 0:
        outputs = _explain_batched(runner, run_images, target_table.repeat(repeats), runtime.max_graph_batch)
    else:
        noisy = _noisy_copies(run_images, copies, options.smooth_sigma, options.smooth_seed)
        batch = torch.cat([run_images, noisy.flatten(0, 1)])
        everything = _explain_batched(
            runner, batch, target_table.repeat(repeats * (copies + 1)), runtime.max_graph_batch
        )
        outputs = _rows(everything, slice(0, run_count))
        noisy_gradients = everything.gradients[run_count:].unflatten(0, (copies, run_count))

    weight_rules = tuple(dict.fromkeys(rule for method in method_objects for rule in method.weight_rules))

    contexts: dict[tuple[bool, bool], MethodContext] = {}

    def context(augmented_rows: bool, eigen: bool) -> MethodContext:
        """The context of the clean images or of every copy, with options.eigen_smooth as the
        method takes it; one per combination, so products shared in a context (channel weights,
        Grad-CAM maps) are only shared between methods that read them alike."""
        key = (augmented_rows, eigen)
        if key not in contexts:
            rows = slice(0, run_count) if augmented_rows else clean_rows
            table = target_table.repeat(repeats if augmented_rows else 1)
            contexts[key] = MethodContext(
                runner=runner,
                images=run_images[rows],
                outputs=_rows(outputs, rows),
                options=dataclasses.replace(options, eigen_smooth=eigen),
                runtime=runtime,
                noisy_gradients=None if noisy_gradients is None else noisy_gradients[:, rows],
                cam_weights=cam_weights,
                model_name=model_name,
                weight_rules=weight_rules,
                targets=TargetTable(outputs.target_ids[rows], table.kinds, table.data),
            )
        return contexts[key]

    clean_rows = slice(0, num_images)
    if augmented:
        start = smoothing.identity_copy() * num_images
        clean_rows = slice(start, start + num_images)
    input_size = (int(images.shape[-2]), int(images.shape[-1]))
    feature_size = (int(outputs.activations.shape[-2]), int(outputs.activations.shape[-1]))
    size = resolve_output_size(options.output_size, input_size, feature_size)
    maps: dict[str, torch.Tensor] = {}
    rgb: dict[str, torch.Tensor] = {}
    for method in method_objects:
        augmented_method = method.augmented_copies(options) > 1
        eigen = options.eigen_smooth and method.eigen_smoothable
        result = layer_maps(method, context(augmented_method, eigen), size)
        if (result.rgb is not None) != method.colour:
            raise TypeError(
                f"CAM method {method.name!r}: colour = {method.colour} but rgb is {result.rgb is not None}"
            )
        if augmented_method:
            # each copy normalised at the output size, flipped back, the copies averaged
            per_copy = _finish(
                result.maps, method, size, dataclasses.replace(options, normalize=True), runtime.kernels
            )
            mean = smoothing.deaugment(per_copy, num_images)
            if options.normalize:
                mean = kernels.upsample_normalize(mean, None, True, options.eps, backend=runtime.kernels)
            maps[method.name] = mean.to(torch.float32)
        else:
            maps[method.name] = _finish(result.maps, method, size, options, runtime.kernels).to(torch.float32)
        if result.rgb is not None:
            colour = smoothing.deaugment(result.rgb, num_images) if augmented_method else result.rgb
            rgb[method.name] = colour.to(torch.float32)
    clean_outputs = _rows(outputs, clean_rows)
    scores = clean_outputs.target_scores
    if scores is None:  # a hand-made runner: the logits are the scores of logit targets
        if not target_table.all_default:
            raise TypeError("the runner returned no target_scores for targets that are not class logits")
        scores = clean_outputs.logits.gather(1, clean_outputs.target_ids.to(clean_outputs.logits.device))
    return ComputedMaps(
        maps, rgb, clean_outputs.logits, clean_outputs.target_ids, feature_size, scores, kinds
    )


def _rows(outputs: ExplainOutputs, rows: slice) -> ExplainOutputs:
    """The explain outputs of images ``rows`` of the run."""
    if rows == slice(0, outputs.logits.shape[0]):
        return outputs
    return outputs.rows(rows)


def layer_maps(method: CamMethod, ctx: MethodContext, size: tuple[int, int]) -> MethodMaps:
    """``method``'s maps. With several target layers and ``layer_fusion`` "mean" or "product", as
    pytorch-grad-cam does with several ``target_layers``: the method runs on each layer, each map is
    min-max normalised and upsampled to ``size`` (for "product", RefineCAM's, normalised again there),
    then the maps are averaged (``aggregate_multi_layers``) or multiplied; ``_finish`` normalises the
    result."""
    count = len(ctx.layers)
    fusion = method.layer_fusion
    if count == 1 or fusion not in ("mean", "product"):
        return method.compute(ctx)
    eps, backend = ctx.options.eps, ctx.backend
    maps = []
    for i in range(count):
        own = kernels.upsample_normalize(
            method.compute(ctx.for_layer(i)).maps, None, True, eps, backend=backend
        )
        maps.append(kernels.upsample_normalize(own, size, fusion == "product", eps, backend=backend))
    stacked = torch.stack(maps)
    return MethodMaps(stacked.mean(dim=0) if fusion == "mean" else stacked.prod(dim=0))


def _finish(
    maps: torch.Tensor, method: CamMethod, size: tuple[int, int], options: ExplainOptions, backend: str
) -> torch.Tensor:
    """Resize ``method``'s maps to ``size`` and min-max normalise (unless options.normalize is False)."""
    if method.resolution == "input" and tuple(maps.shape[-2:]) != size:
        # Input-resolution evidence (guided gradients) is high-frequency: a smaller output averages
        # each output pixel's footprint (bilinear sampling would keep arbitrary pixels); a larger
        # one is bilinear.
        n, t, h, w = maps.shape
        flat = maps.reshape(n * t, 1, h, w)
        if size[0] <= h and size[1] <= w:
            flat = F.adaptive_avg_pool2d(flat, size)
        else:
            flat = F.interpolate(flat, size=size, mode="bilinear", align_corners=False)
        maps = flat.reshape(n, t, *size)
        return kernels.upsample_normalize(maps, None, options.normalize, options.eps, backend=backend)
    return kernels.upsample_normalize(maps, size, options.normalize, options.eps, backend=backend)


def _noisy_copies(images: torch.Tensor, copies: int, sigma_fraction: float, seed: int) -> torch.Tensor:
    """[S,N,3,H,W]: images + N(0, sigma^2), sigma = sigma_fraction * (max - min) of each image.

    Every image gets the same S noise patterns (drawn from ``seed``), so an image's map does not
    depend on which other images share its batch (the service coalesces requests)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn((copies, 1, *images.shape[1:]), generator=generator, dtype=torch.float32)
    value_range = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))  # [N]
    sigma = (sigma_fraction * value_range).reshape(1, -1, 1, 1, 1)
    return images.unsqueeze(0) + noise.to(images.device) * sigma


def _explain_batched(
    runner: GraphRunner, images: torch.Tensor, targets: TargetTable, batch: int
) -> ExplainOutputs:
    return run_in_chunks(
        lambda items: runner.explain(images[items], targets.rows(items)), images.shape[0], batch
    )


def _forward_batched(runner: GraphRunner, images: torch.Tensor, batch: int) -> torch.Tensor:
    return run_in_chunks(lambda items: runner.forward(images[items]), images.shape[0], batch)
