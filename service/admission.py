"""Admission by cost: what a request will cost, computed from the request alone (counts, options and
image headers; nothing decoded, nothing run), checked against the ``[service]`` limits before any work.

The figures (docs/service.md, "Limits and the memory bound"):

images        images in the request                                  <= service.max_request_images
targets       targets of its largest image                           <= service.max_targets_per_image
pixels        decoded pixels of all its images (from the headers)    <= service.max_request_pixels
work_bytes    working memory of its costliest image in a batch       <= service.max_image_work_bytes
graph_runs    graph runs (explain, noisy copies, Score-CAM, Ablation) <= service.max_request_graph_runs
answer_bytes  the answer's size                                      <= service.max_message_bytes

``work_bytes`` of one image (float32, 4 bytes a value; C x H x W the model input, K x h x w the target
layer, summed over the layers of a multi-layer export, T targets, M methods, S noisy copies, P output
pixels, G guided methods, R augmented copies (6 with aug_smooth, else 1) and r_m those of method m):

    4 x [ R(1 + S) x (C·H·W + K·h·w + 2·T·K·h·w     the explain run(s): input, A, G (parts + concatenation)
                      + T·L)                        and the targets' data (L: a mask's h'·w', a vector's D)
          + 2 x R·S x T·K·h·w                       Smooth Grad-CAM++'s g^2, g^3 over the noisy gradients
          + 2 x T x max_m(r_m·E_m) x K·h·w          gradients a method holds beyond the explain run's
                                                    (E_m = ``extra_gradients``: Finer-CAM's 3 comparisons)
          + 2 x T x P x sum_m r_m                   maps before and after resizing / normalising
          + (G > 0) x 2·T·C·H·W + G x T·C·H·W ]     guided gradients and each guided method's colour map

Graph runs of one image: R(1 + S) explain-graph images, plus each method's extra runs times r_m.

A batch holds at most ``service.max_batch_size`` images and a model runs one batch at a time, so the
maps' working memory of a server is bounded by models x max_batch_size x max_image_work_bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from camserve.config import ExplainOptions, ServiceConfig, resolve_output_size
from camserve.errors import ResourceExhaustedError
from camserve.methods.base import method_class
from camserve.modeldir import Manifest

FLOAT32 = 4
#: Per map entry of an answer: method name, indices, shape and message framing (an upper bound).
MAP_OVERHEAD_BYTES = 128
#: PNG overlays: at most the raw RGB bytes plus zlib's worst-case overhead and the PNG chunks.
PNG_OVERHEAD = 1.01


@dataclass(frozen=True)
class AnswerShape:
    """What the answer holds besides its fixed parts, for its size."""

    map_methods: tuple[str, ...]  # methods whose maps are sent
    map_itemsize: int  # bytes per map value: 4 (float32), 2 (float16) or 1 (uint8)
    rgb_methods: tuple[str, ...] = ()  # methods sent with their [T,3,H,W] float32 colour maps
    overlay: bool = False  # one PNG [H,W,3] per map
    id_bytes: int = 0  # the request's `id`, which the answer echoes


@dataclass(frozen=True)
class RequestCost:
    images: int
    targets: int  # of the image with the most
    pixels: int  # decoded pixels of all images
    work_bytes: int  # of the costliest image
    graph_runs: int
    answer_bytes: int
    id_bytes: int = 0  # of answer_bytes: the echoed `id`


def output_pixels(options: ExplainOptions, manifest: Manifest) -> int:
    height, width = resolve_output_size(
        options.output_size,
        (int(manifest.input_size[1]), int(manifest.input_size[2])),
        (int(manifest.activation_shape[1]), int(manifest.activation_shape[2])),
    )
    return height * width


def request_cost(
    targets: Sequence[int],
    pixels: int,
    methods: Sequence[str],
    options: ExplainOptions,
    answer: AnswerShape,
    manifest: Manifest,
) -> RequestCost:
    """The cost of a request whose images have ``targets[i]`` targets each and ``pixels`` decoded
    pixels in all."""
    count = len(targets)
    most = max(targets, default=0)
    input_values = math.prod(int(v) for v in manifest.input_size)
    channels = int(manifest.activation_shape[0])
    # A and G of every target layer (a multi-layer export returns each layer's from the one run)
    layer_values = sum(math.prod(int(v) for v in shape) for shape in manifest.activation_shapes)
    out = output_pixels(options, manifest)
    described = [method_class(m)() for m in methods]
    copies = max((method.noisy_copies(options) for method in described), default=0)
    colour = sum(1 for method in described if method.colour)
    augmented = [method.augmented_copies(options) for method in described]
    repeats = max(augmented, default=1)
    extra: dict[str, int] = {}  # methods naming the same runs share them
    for method, method_copies in zip(described, augmented, strict=True):
        for runs_of, runs_per_image in method.extra_runs(options, channels).items():
            extra[runs_of] = max(extra.get(runs_of, 0), method_copies * runs_per_image)
    runs = repeats * (1 + copies)
    # methods run one after another: the most gradients any one of them holds at once
    held_gradients = max(
        (c * m.extra_gradients(options) for m, c in zip(described, augmented, strict=True)), default=0
    )
    work = FLOAT32 * (
        runs * (input_values + layer_values + 2 * most * layer_values)
        + 2 * repeats * copies * most * layer_values
        + 2 * most * sum(augmented) * out
        + (2 * most * input_values if colour else 0)
        + colour * most * input_values
        + runs * most * manifest.target_spec().data_length  # target data [T, L] of each run's table
        + 2 * most * held_gradients * layer_values
    )
    per_image_runs = runs + sum(extra.values())
    fixed = FLOAT32 * len(manifest.class_names) + options.topk_predictions * 64
    per_target = len(answer.map_methods) * (MAP_OVERHEAD_BYTES + out * answer.map_itemsize)
    per_target += len(answer.rgb_methods) * FLOAT32 * input_values
    if answer.overlay:
        per_target += len(answer.map_methods) * math.ceil(input_values * PNG_OVERHEAD + 1024)
    # per target: its id (8 B), kind (1 B) and score (4 B), then its maps
    answer_bytes = answer.id_bytes + sum(fixed + 13 * t + t * per_target for t in targets)
    return RequestCost(count, most, pixels, work, count * per_image_runs, answer_bytes, answer.id_bytes)


def admit(cost: RequestCost, service: ServiceConfig) -> None:
    """ResourceExhaustedError naming the first limit ``cost`` is over, and the request's figure."""
    checks = (
        ("images", cost.images, "max_request_images", "send fewer images per request"),
        ("targets of one image", cost.targets, "max_targets_per_image", "ask for fewer targets"),
        ("decoded pixels", cost.pixels, "max_request_pixels", "send smaller or fewer images"),
        (
            "working memory of one image",
            cost.work_bytes,
            "max_image_work_bytes",
            "ask for fewer targets, fewer noisy copies (smooth_n) or a smaller output size",
        ),
        ("graph runs", cost.graph_runs, "max_request_graph_runs", "send fewer images or cheaper methods"),
        (
            "answer size",
            cost.answer_bytes,
            "max_message_bytes",
            "ask for fewer targets or methods, a smaller output size or uint8 maps",
        ),
    )
    for what, figure, limit_name, advice in checks:
        limit = getattr(service, limit_name)
        if limit_name == "max_message_bytes" and cost.id_bytes > limit // 2:
            advice = f"the echoed `id` alone is {_figure(cost.id_bytes, limit_name)}: send a shorter id"
        if figure > limit:
            raise ResourceExhaustedError(
                f"request refused before any work: its {what} is {_figure(figure, limit_name)}, over "
                f"service.{limit_name} = {_figure(limit, limit_name)}; {advice}"
            )


def _figure(value: int, limit_name: str) -> str:
    if not limit_name.endswith("_bytes") or value < 1024 * 1024:
        return f"{value}" if not limit_name.endswith("_bytes") else f"{value} bytes"
    return f"{value} bytes ({value / 2**20:.1f} MiB)"
