"""A localisation task with exactly known boxes, built from scikit-learn's 8x8 digits.

Each image is a ``canvas`` x ``canvas`` RGB picture: a mildly textured, tinted, noisy background
with one or several copies (all of the same class) of grey handwritten digits pasted on it, each
copy scaled to 12-28 px, squeezed to at most 3:4 and rotated by up to 12 degrees. The box of each
copy is the exact extent of its nonzero pixels, so a saliency map can be scored against ground
truth without any labelling noise.

The 1797 scikit-learn digits are split by index: every fourth digit (index % 4 == 3, 449 digits)
feeds the "test" split, the other 1348 the "train" split, so test images never reuse a training
digit. (The digits come from 43 writers in runs; interleaving puts every writer in both splits.)
"""

from __future__ import annotations

import functools
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError

CLASS_NAMES: list[str] = [str(d) for d in range(10)]
TEST_EVERY = 4  # sklearn digit i is a test digit when i % TEST_EVERY == TEST_EVERY - 1
MIN_SIZE, MAX_SIZE = 12, 28  # side of a scaled digit, in pixels
MAX_ANGLE = 12.0  # degrees of random rotation either way
MIN_ASPECT = 0.75  # the narrower side of a digit's cell is at least this fraction of the wider one
ALPHA_CUTOFF = 0.1  # bilinear upscaling leaves faint fringes; weaker ink counts as background
SPLITS = ("train", "test")


@dataclass
class LocalisationDataset:
    """images float32 [N,3,H,W] in [0,1]; labels int64 [N]; boxes[i] int64 [M_i,4] (x0,y0,x1,y1),
    half-open pixel coordinates; masks bool [N,H,W] marks the digit pixels (union of all copies);
    instances uint8 [N,H,W] says which copy each pixel is ink of: k for boxes[i][k - 1], 0 for
    background (copies never overlap, so the split is exact)."""

    images: torch.Tensor
    labels: torch.Tensor
    boxes: list[torch.Tensor]
    masks: torch.Tensor
    class_names: list[str]
    instances: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def instance_masks(self, i: int) -> torch.Tensor:
        """The ink of each copy in image ``i``: bool [M_i,H,W], in the order of ``boxes[i]``."""
        copies = torch.arange(1, len(self.boxes[i]) + 1, dtype=self.instances.dtype)
        return self.instances[i][None] == copies[:, None, None]

    def pixel_labels(self, background: int) -> torch.Tensor:
        """Per-pixel classes int64 [N,H,W]: the image's label on its digits' ink, ``background``
        elsewhere (the dense model's training targets)."""
        return torch.where(self.masks, self.labels[:, None, None], background)


@functools.cache
def _sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # The only numpy in this module: the scikit-learn arrays become tensors at the edge.
    images = torch.from_numpy(digits.images).to(torch.float32) / 16.0  # [1797,8,8] ink in [0,1]
    labels = torch.from_numpy(digits.target).to(torch.int64)
    return images, labels


def digit_pool(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The sklearn digits of one split: ink [D,8,8] in [0,1] and labels [D]."""
    if split not in SPLITS:
        raise InvalidArgumentError("split", f"{split!r} is not one of {', '.join(SPLITS)}")
    images, labels = _sklearn_digits()
    is_test = torch.arange(len(labels)) % TEST_EVERY == TEST_EVERY - 1
    part = is_test if split == "test" else ~is_test
    return images[part], labels[part]


def warp_digit(ink: torch.Tensor, height: int, width: int, angle_degrees: float = 0.0) -> torch.Tensor:
    """Resample one [h,w] ink image to [height,width], rotated by ``angle_degrees`` about its centre
    (bilinear); ink below ALPHA_CUTOFF becomes 0."""
    angle = math.radians(angle_degrees)
    theta = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0]])
    grid = F.affine_grid(theta[None], [1, 1, height, width], align_corners=False)
    warped = F.grid_sample(ink[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        0, 0
    ]
    return torch.where(warped >= ALPHA_CUTOFF, warped.clamp(max=1.0), 0.0)


def ink_box(alpha: torch.Tensor) -> tuple[int, int, int, int]:
    """Half-open (x0, y0, x1, y1) extent of the nonzero pixels of a [h,w] ink map."""
    rows = torch.nonzero(alpha.any(dim=1)).flatten()
    cols = torch.nonzero(alpha.any(dim=0)).flatten()
    if rows.numel() == 0:
        raise InvalidArgumentError("alpha", "the digit has no ink")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def paste_digit(
    image: torch.Tensor, alpha: torch.Tensor, x: int, y: int, grey: float
) -> tuple[int, int, int, int]:
    """Alpha-blend a grey digit into ``image`` [3,H,W] in place with its top-left corner at (x, y).

    Returns the digit's exact box in image coordinates. Pixels where alpha is 0 are left untouched,
    which is what makes the box exact: everything outside it is background.
    """
    h, w = alpha.shape
    if x < 0 or y < 0 or y + h > image.shape[1] or x + w > image.shape[2]:
        raise InvalidArgumentError("x, y", f"a {w}x{h} digit at ({x}, {y}) does not fit the canvas")
    region = image[:, y : y + h, x : x + w]
    region.mul_(1.0 - alpha).add_(grey * alpha)
    x0, y0, x1, y1 = ink_box(alpha)
    return x + x0, y + y0, x + x1, y + y1


def make_background(canvas: int, textured: bool, generator: torch.Generator) -> torch.Tensor:
    """A [3,canvas,canvas] background: a dark per-channel tint, plus (if textured) a smooth random
    texture and pixel noise, so that the model cannot find digits by thresholding brightness."""
    tint = 0.05 + 0.3 * torch.rand(3, 1, 1, generator=generator)
    background = tint.expand(3, canvas, canvas).clone()
    if textured:
        coarse = torch.rand(1, 3, 4, 4, generator=generator) - 0.5
        texture = F.interpolate(coarse, size=(canvas, canvas), mode="bicubic", align_corners=False)[0]
        background += 0.3 * texture + 0.04 * torch.randn(3, canvas, canvas, generator=generator)
    return background.clamp_(0.0, 1.0)


def _place_squares(
    sizes: list[int], canvas: int, generator: torch.Generator, tries: int = 200
) -> list[tuple[int, int]] | None:
    """Top-left corners for squares of the given sides that do not overlap, or None."""
    placed: list[tuple[int, int, int]] = []
    for size in sizes:
        for _ in range(tries):
            x, y = (int(v) for v in torch.randint(0, canvas - size + 1, (2,), generator=generator))
            if all(x + size <= px or px + ps <= x or y + size <= py or py + ps <= y for px, py, ps in placed):
                placed.append((x, y, size))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def make_localisation_dataset(
    n: int,
    seed: int,
    canvas: int = 64,
    instances: tuple[int, int] = (1, 1),
    split: str = "train",
    textured: bool = True,
) -> LocalisationDataset:
    """``n`` images, deterministic from ``seed``: each holds between instances[0] and instances[1]
    (inclusive) non-overlapping copies of one class, each a different sklearn digit of that class.

    textured=False gives a flat per-image background (used by tests to check that every pixel
    outside the boxes is background).
    """
    if n < 1:
        raise InvalidArgumentError("n", f"need at least one image, got {n}")
    if canvas < MAX_SIZE:
        raise InvalidArgumentError("canvas", f"must be at least {MAX_SIZE} px, got {canvas}")
    lo, hi = instances
    if not 1 <= lo <= hi <= 4:
        raise InvalidArgumentError("instances", f"need 1 <= min <= max <= 4, got {instances}")
    pool_ink, pool_labels = digit_pool(split)
    by_class = [torch.nonzero(pool_labels == c).flatten() for c in range(len(CLASS_NAMES))]

    generator = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, canvas, canvas)
    masks = torch.zeros(n, canvas, canvas, dtype=torch.bool)
    instance_ids = torch.zeros(n, canvas, canvas, dtype=torch.uint8)
    labels = torch.randint(0, len(CLASS_NAMES), (n,), generator=generator)
    boxes: list[torch.Tensor] = []
    for i in range(n):
        label = int(labels[i])
        copies = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        choice = by_class[label][torch.randperm(len(by_class[label]), generator=generator)[:copies]]
        # Several copies must fit side by side: shrink the largest allowed size until they do.
        max_size = min(MAX_SIZE, canvas // math.ceil(math.sqrt(copies)))
        for _ in range(50):
            sizes = torch.randint(MIN_SIZE, max_size + 1, (copies,), generator=generator).tolist()
            corners = _place_squares(sizes, canvas, generator)
            if corners is not None:
                break
            max_size = max(MIN_SIZE, max_size - 2)
        else:
            raise InvalidArgumentError("canvas", f"{canvas} px is too small for {copies} separate copies")
        image = make_background(canvas, textured, generator)
        image_boxes = []
        for copy, (digit, size, (x, y)) in enumerate(zip(choice.tolist(), sizes, corners, strict=True), 1):
            aspect, upright, angle, grey = torch.rand(4, generator=generator).tolist()
            # One side of the cell is the full size, the other is squeezed: more writing styles.
            narrow = max(MIN_SIZE // 2, round(size * (MIN_ASPECT + (1 - MIN_ASPECT) * aspect)))
            height, width = (size, narrow) if upright < 0.5 else (narrow, size)
            alpha = warp_digit(pool_ink[digit], height, width, MAX_ANGLE * (2 * angle - 1))
            image_boxes.append(paste_digit(image, alpha, x, y, 0.6 + 0.4 * grey))
            masks[i, y : y + height, x : x + width] |= alpha > 0
            instance_ids[i, y : y + height, x : x + width][alpha > 0] = copy
        images[i] = image
        boxes.append(torch.tensor(image_boxes, dtype=torch.int64))
    return LocalisationDataset(images, labels, boxes, masks, list(CLASS_NAMES), instance_ids)


def save_voc_folder(ds: LocalisationDataset, directory: str | Path) -> Path:
    """Write ``ds`` as PASCAL-VOC: ``JPEGImages/NNNNNN.png`` + ``Annotations/NNNNNN.xml`` (one
    <object> per copy, with <name> and 1-based inclusive <bndbox>, as VOC does) and
    ``ImageSets/Main/all.txt`` listing the image ids. Returns the folder."""
    from PIL import Image

    root = Path(directory).expanduser()
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    pixels = torch.round(ds.images.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    ids = []
    for i in range(len(ds)):
        image_id = f"{i:06d}"
        ids.append(image_id)
        Image.fromarray(pixels[i].numpy()).save(root / "JPEGImages" / f"{image_id}.png")
        height, width = ds.images.shape[-2:]
        (root / "Annotations" / f"{image_id}.xml").write_bytes(
            _voc_xml(f"{image_id}.png", width, height, ds.class_names[int(ds.labels[i])], ds.boxes[i])
        )
    (root / "ImageSets" / "Main" / "all.txt").write_text("\n".join(ids) + "\n")
    return root


def _voc_xml(filename: str, width: int, height: int, name: str, boxes: torch.Tensor) -> bytes:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = filename
    size = ET.SubElement(annotation, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    for x0, y0, x1, y1 in boxes.tolist():
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        # VOC boxes are 1-based and inclusive: half-open [x0, x1) becomes xmin=x0+1, xmax=x1.
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = str(value)
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="utf-8", xml_declaration=True)
