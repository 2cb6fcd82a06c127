"""Evaluation data: images with their class and true boxes, in batches at the model's input size.

Two sources:

* ``BenchmarkData`` — the in-repo localisation benchmark (``camserve.default_model.data``): digits
  pasted on textured backgrounds with exact boxes, single-instance or multi-instance (2-4 copies).
* ``VocFolder`` — any folder of images with PASCAL-VOC XML box files, read lazily (one batch of images
  in memory at a time). Two layouts are recognised:

  - VOC:      ``ROOT/Annotations/*.xml`` and ``ROOT/JPEGImages/<filename>`` (the XML's <filename>, or
              the XML's stem with any image extension); ``ImageSets/Main/<image_set>.txt`` selects ids
              when ``image_set`` is given;
  - ImageNet: image files anywhere under ROOT (e.g. ``ROOT/<class>/<name>.JPEG``), each with an XML of
              the same stem beside it; images without an XML are skipped (logged).

  Class names come from the model's manifest: each <object><name> must be one of them (exact, or
  ignoring case). An image's label is its most frequent object class (the first in the file on a tie)
  and its boxes are the boxes of that class. VOC boxes are 1-based and inclusive (xmin = 1 is the first
  pixel); they become half-open 0-based (x0 = xmin - 1, x1 = xmax). Images are stretched to the model's
  input size (bilinear, antialiased, no crop, as ``camserve.images.preprocess`` does), and the boxes are
  scaled with them (so they may have fractional coordinates).

Images are returned as pixels in [0, 1]; the evaluation normalises them with the manifest's mean/std.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError, NotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class EvalBatch:
    """images float32 [B,3,H,W] in [0, 1]; labels int64 [B]; boxes[i] float32 [M_i,4] half-open
    (x0, y0, x1, y1) at the images' size; ids name each image (file stem or benchmark index);
    masks[i] bool [M_i,H,W] the pixels of each object, in the boxes' order, when the data knows them
    (the benchmark), else None."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    ids: list[str]
    masks: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class EvalData:
    """A sized source of evaluation batches."""

    name: str = "data"

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> EvalBatch:
        raise NotImplementedError

    def batches(self, batch_size: int, limit: int | None = None) -> Iterator[EvalBatch]:
        """Consecutive batches of at most ``batch_size`` images, the first ``limit`` images only."""
        if batch_size < 1:
            raise InvalidArgumentError("batch_size", f"must be at least 1, got {batch_size}")
        total = len(self) if limit is None else min(limit, len(self))
        for start in range(0, total, batch_size):
            yield self.batch(range(start, min(total, start + batch_size)))


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def _scale_boxes(boxes: torch.Tensor, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> torch.Tensor:
    sy, sx = to_hw[0] / from_hw[0], to_hw[1] / from_hw[1]
    return boxes.float() * torch.tensor([sx, sy, sx, sy])


class BenchmarkData(EvalData):
    """The generated localisation benchmark: ``make_localisation_dataset(n, seed, instances=...,
    split="test")``, resized to ``size`` when the model's input is not the canvas size."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        instances: tuple[int, int] = (1, 1),
        size: tuple[int, int] = (64, 64),
        canvas: int = 64,
    ) -> None:
        from camserve.default_model.data import make_localisation_dataset

        ds = make_localisation_dataset(n, seed, canvas=canvas, instances=instances, split="test")
        self.name = (
            "single-instance" if instances == (1, 1) else f"multi-instance ({instances[0]}-{instances[1]})"
        )
        self.class_names = ds.class_names
        self._images = _resize(ds.images, size)
        self._labels = ds.labels
        self._boxes = [_scale_boxes(b, (canvas, canvas), size) for b in ds.boxes]
        # copy ids per pixel, resized like the images (nearest: the ids stay ids)
        self._instances = F.interpolate(ds.instances[:, None].float(), size=size, mode="nearest")[:, 0]

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def batch(self, indices: Sequence[int]) -> EvalBatch:
        idx = list(indices)
        masks = [
            self._instances[i][None] == torch.arange(1, len(self._boxes[i]) + 1).reshape(-1, 1, 1)
            for i in idx
        ]
        return EvalBatch(
            self._images[idx], self._labels[idx], [self._boxes[i] for i in idx], [str(i) for i in idx], masks
        )


@dataclass
class VocRecord:
    image: Path
    label: int
    boxes: torch.Tensor  # [M,4] half-open, at the file's own resolution
    size: tuple[int, int]  # (H, W) from the XML, or (0, 0) when it has no <size>


class VocFolder(EvalData):
    """Images with PASCAL-VOC XML boxes (see the module docstring), loaded lazily at ``size``."""

    def __init__(
        self,
        root: str | Path,
        class_names: Sequence[str],
        size: tuple[int, int],
        image_set: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise NotFoundError(f"data: no such directory: {self.root}")
        self.name = self.root.name
        self.class_names = list(class_names)
        self.size = (int(size[0]), int(size[1]))
        self._classes = {name: i for i, name in enumerate(self.class_names)}
        self._classes_folded = {name.casefold(): i for i, name in enumerate(self.class_names)}
        pairs = self._find_pairs(image_set)
        if not pairs:
            raise NotFoundError(
                f"data: {self.root} has no images with PASCAL-VOC XML annotations (expected Annotations/ + "
                "JPEGImages/, or an .xml beside each image)"
            )
        self.records = [self._parse(xml, image) for xml, image in pairs]

    def __len__(self) -> int:
        return len(self.records)

    def _find_pairs(self, image_set: str | None) -> list[tuple[Path, Path]]:
        annotations = self.root / "Annotations"
        if annotations.is_dir():
            if image_set is not None:
                listing = self.root / "ImageSets" / "Main" / f"{image_set}.txt"
                if not listing.is_file():
                    raise NotFoundError(f"image_set: no such file: {listing}")
                ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
                xmls = [annotations / f"{i}.xml" for i in ids]
                for xml in xmls:
                    if not xml.is_file():
                        raise NotFoundError(f"data: {listing} lists {xml.stem} but {xml} does not exist")
            else:
                xmls = sorted(annotations.glob("*.xml"))
            return [(xml, self._voc_image(xml)) for xml in xmls]
        if image_set is not None:
            raise InvalidArgumentError("image_set", f"{self.root} is not in the VOC layout (no Annotations/)")
        pairs, missing = [], 0
        for image in sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            xml = image.with_suffix(".xml")
            if xml.is_file():
                pairs.append((xml, image))
            else:
                missing += 1
        if missing:
            log.warning(
                "data: %d images under %s have no .xml annotation and are skipped", missing, self.root
            )
        return pairs

    def _voc_image(self, xml: Path) -> Path:
        folder = self.root / "JPEGImages"
        filename = _parse_xml(xml).findtext("filename")
        if filename and (folder / filename).is_file():
            return folder / filename
        for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
            if (folder / f"{xml.stem}{suffix}").is_file():
                return folder / f"{xml.stem}{suffix}"
        raise NotFoundError(f"data: no image in {folder} for annotation {xml.name}")

    def _class_id(self, name: str, xml: Path) -> int:
        if name in self._classes:
            return self._classes[name]
        if name.casefold() in self._classes_folded:
            return self._classes_folded[name.casefold()]
        known = ", ".join(self.class_names[:10]) + (", ..." if len(self.class_names) > 10 else "")
        raise InvalidArgumentError(
            "data", f"{xml}: object class {name!r} is not a class of the model ({known})"
        )

    def _parse(self, xml: Path, image: Path) -> VocRecord:
        root = _parse_xml(xml)
        objects = []
        for obj in root.iter("object"):
            name = (obj.findtext("name") or "").strip()
            bndbox = obj.find("bndbox")
            if bndbox is None:
                raise InvalidArgumentError("data", f"{xml}: object {name!r} has no <bndbox>")
            try:
                xmin, ymin, xmax, ymax = (
                    float(bndbox.findtext(tag) or "") for tag in ("xmin", "ymin", "xmax", "ymax")
                )
            except ValueError:
                raise InvalidArgumentError(
                    "data", f"{xml}: object {name!r} has a non-numeric <bndbox>"
                ) from None
            if xmax < xmin or ymax < ymin:
                raise InvalidArgumentError("data", f"{xml}: object {name!r} has xmax < xmin or ymax < ymin")
            objects.append((self._class_id(name, xml), (xmin - 1, ymin - 1, xmax, ymax)))
        if not objects:
            raise InvalidArgumentError("data", f"{xml}: no <object> with a box")
        counts = Counter(c for c, _ in objects)
        label = max(counts, key=lambda c: (counts[c], -[o[0] for o in objects].index(c)))
        boxes = torch.tensor([box for c, box in objects if c == label], dtype=torch.float32)
        width, height = root.findtext("size/width"), root.findtext("size/height")
        size = (int(height), int(width)) if width and height else (0, 0)
        return VocRecord(image, label, boxes, size)

    def batch(self, indices: Sequence[int]) -> EvalBatch:
        from PIL import Image, UnidentifiedImageError

        images, labels, boxes, ids = [], [], [], []
        for i in indices:
            rec = self.records[i]
            try:
                with Image.open(rec.image) as im:
                    rgb = np.asarray(im.convert("RGB")).copy()  # numpy only at the file edge
            except (UnidentifiedImageError, OSError) as exc:
                raise InvalidArgumentError("data", f"{rec.image} is not a readable image ({exc})") from None
            pixels = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255.0).unsqueeze(0)
            hw = (int(pixels.shape[-2]), int(pixels.shape[-1]))
            if rec.size != (0, 0) and rec.size != hw:
                log.warning(
                    "data: %s is %dx%d but its XML says %dx%d; using the image's size",
                    rec.image,
                    hw[1],
                    hw[0],
                    rec.size[1],
                    rec.size[0],
                )
            images.append(_resize(pixels, self.size))
            labels.append(rec.label)
            boxes.append(_scale_boxes(rec.boxes, hw, self.size))
            ids.append(rec.image.stem)
        return EvalBatch(torch.cat(images), torch.tensor(labels, dtype=torch.int64), boxes, ids)


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise InvalidArgumentError("data", f"{path} is not valid XML ({exc})") from None
