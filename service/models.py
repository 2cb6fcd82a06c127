"""The models a server holds: found once at start-up under one root directory, looked up by name.

A model's name is its directory's name. Requests name models; names are only ever looked up in the
table built here, never joined to a path, so a request cannot reach outside the configured root.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camserve.config import CamserveConfig, ServiceConfig
from camserve.defaults import DECODE_PIXEL_BUDGET, MAX_IMAGE_PIXELS
from camserve.doctor import describe_stack
from camserve.encoded_images import DecodeBudget, ImageHeader, check_image, decode_checked
from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.explainer import Explainer
from camserve.images import preprocess
from camserve.modeldir import MANIFEST_NAME, Manifest, ModelDirectory
from camserve.runtime import OnnxGraphRunner, warm_up
from camserve.service import metrics
from camserve.service.batch_runner import ExplainBatchRunner, ImageResult, ImageWork
from camserve.service.batcher import DynamicBatcher
from camserve.service.cancellation import check_request_alive
from camserve.service.errors import clip

log = logging.getLogger(__name__)

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

ExplainerFactory = Callable[[ModelDirectory, CamserveConfig], Explainer]


def discover_models(root: str | Path) -> dict[str, Path]:
    """Model directories (holding a manifest.json) directly under ``root``; ``root`` itself when it is
    one. Directories that resolve outside ``root`` (symlinks) are skipped with a warning."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise NotFoundError(f"service.models: {root} is not a directory")
    if (root / MANIFEST_NAME).is_file():
        return {root.name: root}
    found: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if not (child / MANIFEST_NAME).is_file():
            continue
        resolved = child.resolve()
        if not resolved.is_relative_to(root):
            log.warning("skipping model %s: it resolves to %s, outside %s", child.name, resolved, root)
            continue
        if not MODEL_NAME.match(child.name):
            log.warning(
                "skipping model directory %r: names are letters, digits, '.', '_' and '-'", child.name
            )
            continue
        found[child.name] = resolved
    if not found:
        raise NotFoundError(f"service.models: no model directories (with {MANIFEST_NAME}) under {root}")
    return found


#: glibc's mallopt parameter, and the size from which freed blocks go straight back to the system.
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 20


def return_freed_buffers_to_the_system() -> bool:
    """Make glibc serve allocations of 1 MiB and more with mmap, so that a decoded image's buffers
    leave the process when freed. Otherwise glibc raises that threshold after each big free and keeps
    freed buffers in per-thread arenas: decodes one after another on different worker threads would
    each leave their image behind, and the pixel budget would bound the work but not the RSS.
    False (and nothing changed) where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


class PixelBudget(DecodeBudget):
    """Decode costs all requests together may hold at once (``service.decode_pixel_budget``; see
    ``camserve.encoded_images.DecodeBudget``). A waiting decode gives up as soon as its request is over
    (deadline or cancellation), a running one at its next 64 KiB of input."""

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity, "service.decode_pixel_budget", check_request_alive)


@dataclass
class ServedModel:
    name: str
    explainer: Explainer
    batcher: DynamicBatcher[ImageWork, ImageResult]
    pixel_budget: PixelBudget = field(default_factory=lambda: PixelBudget(DECODE_PIXEL_BUDGET))

    @property
    def manifest(self) -> Manifest:
        return self.explainer.manifest

    @property
    def supported_methods(self) -> list[str]:
        return list(self.explainer.supported_methods)

    def preprocess_encoded(self, data: bytes | ImageHeader, field: str, budgeted: bool = True) -> np.ndarray:
        """Encoded image bytes (or their ``open_image`` header) -> float32 [C,H,W], resized and
        normalised as the manifest says (the same preprocessing as the in-process Explainer).
        ``budgeted``: hold the image's decode cost in the pixel budget while decoding (see
        ``ServiceRequest.decode``). The decode stops at its next block of input once the call is over."""
        check_request_alive(f"decoding {field}")
        header = open_image(data, field) if isinstance(data, bytes) else data
        with self._budget(header.cost, field, budgeted):
            m = self.manifest
            stop = lambda: check_request_alive(f"decoding {field}")  # noqa: E731
            image = decode_checked(header, field, stop=stop, channels=m.input_size[0])
            return preprocess(image, m.input_size, m.mean, m.std)[0].numpy()

    def preprocess_pixels(self, pixels: np.ndarray, field: str, budgeted: bool = True) -> list[np.ndarray]:
        """uint8 pixels [N,H,W,C] -> float32 [C,H,W] per image, within the pixel budget."""
        check_request_alive(f"preprocessing {field}")
        with self._budget(int(pixels.shape[0] * pixels.shape[1] * pixels.shape[2]), field, budgeted):
            m = self.manifest
            return list(preprocess(np.ascontiguousarray(pixels), m.input_size, m.mean, m.std).numpy())

    def _budget(self, pixels: int, field: str, budgeted: bool) -> contextlib.AbstractContextManager[None]:
        return self.pixel_budget.hold(pixels, field) if budgeted else contextlib.nullcontext()


def open_image(data: bytes, field: str) -> ImageHeader:
    """Encoded image bytes -> their checked header (``camserve.encoded_images``: accepted formats,
    MAX_IMAGE_PIXELS, truncation, scans and chunks); InvalidArgumentError naming ``field`` otherwise.
    Nothing is decompressed: cheap enough for the event loop on a small request."""
    return check_image(data, field, MAX_IMAGE_PIXELS)


def decode_image(data: bytes | ImageHeader, field: str, channels: int = 3) -> Image.Image:
    """Encoded image bytes (or their header from ``open_image``) -> a PIL image of ``channels``
    (see ``decode_checked``); InvalidArgumentError naming ``field`` otherwise."""
    header = open_image(data, field) if isinstance(data, bytes) else data
    return decode_checked(header, field, channels=channels)


class ModelRegistry:
    """Name -> ServedModel, each with its own dynamic batcher."""

    def __init__(self, models: dict[str, ServedModel]) -> None:
        self._models = dict(models)

    @classmethod
    def load(
        cls,
        directories: dict[str, Path],
        config: CamserveConfig,
        explainer_factory: ExplainerFactory | None = None,
    ) -> ModelRegistry:
        make = explainer_factory or (lambda directory, cfg: Explainer(directory, config=cfg))
        budget = PixelBudget(config.service.decode_pixel_budget)  # one budget for the whole server
        models = {}
        for name, path in directories.items():
            explainer = make(ModelDirectory(path), config)
            warm_up_model(name, explainer, config)
            batcher = make_batcher(name, explainer, config.service)
            models[name] = ServedModel(name, explainer, batcher, budget)
            log.info("model %s loaded from %s", name, path)
        return cls(models)

    def get(self, name: str) -> ServedModel:
        if not name:
            raise InvalidArgumentError("model", f"required (served: {', '.join(self._models)})")
        try:
            return self._models[name]
        except KeyError:
            raise NotFoundError(
                f"model {clip(name)!r} is not served here (served: {', '.join(self._models)})"
            ) from None

    def __iter__(self) -> Iterator[ServedModel]:
        return iter(self._models.values())

    @property
    def names(self) -> list[str]:
        return list(self._models)

    def start(self) -> None:
        for model in self:
            model.batcher.start()

    async def close(self) -> None:
        for model in self:
            await model.batcher.close()


def warm_up_model(name: str, explainer: Explainer, config: CamserveConfig) -> None:
    """Create the model's ONNX Runtime sessions and compile its CAM kernels now, before the server
    reports SERVING, so the first request does not pay for them (``camserve.runtime.warm_up``)."""
    runner = explainer.runner
    if not isinstance(runner, OnnxGraphRunner):  # an embedder's own runner: nothing of ours to warm
        return
    timings = warm_up(runner, config.runtime.kernels)
    steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in timings.items())
    log.info("model %s warmed up on %s in %.2f s (%s)", name, runner.device, sum(timings.values()), steps)
    provider = runner.session("explain").get_providers()[0]
    log.info("model %s runs on %s", name, describe_stack(runner.device, provider))


def make_batcher(
    name: str, explainer: Explainer, service: ServiceConfig
) -> DynamicBatcher[ImageWork, ImageResult]:
    batcher: DynamicBatcher[ImageWork, ImageResult] = DynamicBatcher(
        ExplainBatchRunner(explainer),
        max_batch_size=service.max_batch_size,
        max_queue_delay_ms=service.max_queue_delay_ms,
        max_queue_size=service.max_queue_size,
        name=name,
        on_batch=metrics.batch_observer(name),
    )
    metrics.track_pending(name, lambda: batcher.queued)
    return batcher
