"""The models a server holds: found once at start-up under one root directory, looked up by name.

A model's name is its directory's name. Requests name models; names are only ever looked up in the
table built here, never joined to a path, so a request cannot reach outside the configured root.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from camserve.config import CamserveConfig, ServiceConfig
from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.explainer import Explainer
from camserve.images import preprocess
from camserve.modeldir import MANIFEST_NAME, Manifest, ModelDirectory
from camserve.service import metrics
from camserve.service.batcher import DynamicBatcher
from camserve.service.runner import ExplainBatchRunner, ImageResult, ImageWork

log = logging.getLogger(__name__)

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
MAX_IMAGE_PIXELS = 50_000_000  # decoded size limit: a small file must not expand into gigabytes
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


@dataclass
class ServedModel:
    name: str
    explainer: Explainer
    batcher: DynamicBatcher[ImageWork, ImageResult]

    @property
    def manifest(self) -> Manifest:
        return self.explainer.manifest

    @property
    def supported_methods(self) -> list[str]:
        return list(self.explainer.supported_methods)

    def preprocess_encoded(self, data: bytes, field: str) -> np.ndarray:
        """PNG/JPEG bytes -> float32 [3,H,W], resized and normalised as the manifest says (the same
        preprocessing as the in-process Explainer)."""
        m = self.manifest
        return preprocess(decode_image(data, field), m.input_size, m.mean, m.std)[0].numpy()


def decode_image(data: bytes, field: str) -> Image.Image:
    """Encoded image bytes -> an RGB PIL image; InvalidArgumentError naming ``field`` otherwise."""
    try:
        image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)  # reads the header only
    except UnidentifiedImageError:
        formats = ", ".join(IMAGE_FORMATS)
        raise InvalidArgumentError(field, f"not an image in a known format ({formats})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgumentError(field, f"the image cannot be decoded ({exc})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidArgumentError(
            field, f"image is {width}x{height}; at most {MAX_IMAGE_PIXELS} pixels are decoded"
        )
    try:
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgumentError(field, f"the image cannot be decoded ({exc})") from None


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
        models = {}
        for name, path in directories.items():
            explainer = make(ModelDirectory(path), config)
            models[name] = ServedModel(name, explainer, make_batcher(name, explainer, config.service))
            log.info("model %s loaded from %s", name, path)
        return cls(models)

    def get(self, name: str) -> ServedModel:
        if not name:
            raise InvalidArgumentError("model", f"required (served: {', '.join(self._models)})")
        try:
            return self._models[name]
        except KeyError:
            raise NotFoundError(
                f"model {name!r} is not served here (served: {', '.join(self._models)})"
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
