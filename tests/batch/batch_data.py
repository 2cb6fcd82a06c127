"""A generated dataset for the batch tests: images of mixed sizes and formats in sub-folders, a
grayscale, an RGBA, a preprocessed .npy, plus a corrupt and a truncated file that must fail."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from camserve.batch.encoding import MapEncoding
from camserve.batch.job import JobConfig
from camserve.batch.sources import SourceSpec
from camserve.config import CamserveConfig

GOOD_IMAGES = 300  # generated RGB images, plus the three special good ones below
SPECIAL_GOOD = ("gray.png", "rgba.png", "tensor.npy")
BAD = ("broken/corrupt.jpg", "broken/truncated.png")
METHODS = ("gradcam", "gradcam++", "guidedbackprop")  # guidedbackprop: stored at input resolution


def make_dataset(root: Path, count: int = GOOD_IMAGES, seed: int = 0) -> list[str]:
    """Write the dataset under ``root``; returns the ids (relative paths) of the good images."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ids = []
    for index in range(count):
        height, width = (int(v) for v in rng.integers(12, 160, size=2))
        # smooth blobs rather than white noise: the maps then have structure
        coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        name = f"set{index % 3}/img{index:04d}." + ("jpg" if index % 2 else "png")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
        ids.append(name)
    Image.fromarray(rng.integers(0, 256, size=(50, 70), dtype=np.uint8), mode="L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 256, size=(64, 40, 4), dtype=np.uint8), mode="RGBA").save(
        root / "rgba.png"
    )
    np.save(root / "tensor.npy", rng.standard_normal((3, 64, 64)).astype(np.float32))
    ids.extend(SPECIAL_GOOD)
    (root / "broken").mkdir()
    (root / BAD[0]).write_bytes(
        b"\xff\xd8\xff\xe0 this is not a JPEG" + bytes(rng.integers(0, 256, 200, dtype=np.uint8))
    )
    whole = root / "whole.png"
    Image.fromarray(rng.integers(0, 256, size=(80, 80, 3), dtype=np.uint8)).save(whole)
    (root / BAD[1]).write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return sorted(ids)


def make_job(
    input: Path | str,
    out: Path | str,
    methods: tuple[str, ...] = METHODS,
    encoding: MapEncoding | None = None,
    **fields: object,
) -> JobConfig:
    source = fields.pop("source", None) or SourceSpec(input=str(input))
    return JobConfig(
        model=None,
        out=str(out),
        source=source,  # type: ignore[arg-type]
        methods=methods,
        targets=fields.pop("targets", None),  # type: ignore[arg-type]
        config=fields.pop("config", None) or CamserveConfig.load(env={}),  # type: ignore[arg-type]
        encoding=encoding or MapEncoding(),
        batch_size=fields.pop("batch_size", 16),  # type: ignore[arg-type]
        shard_size=fields.pop("shard_size", 64),  # type: ignore[arg-type]
        decode_workers=2,
    )
