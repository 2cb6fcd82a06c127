"""camserve.images: what is accepted, what it becomes, and clear errors for everything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.images import denormalize, normalize, normalize_pixels, preprocess
from tests.explainer.tiny_model import INPUT_SIZE, MEAN, STD


def prep(images):
    return preprocess(images, INPUT_SIZE, MEAN, STD)


def test_uint8_pixels_are_scaled_and_normalised_per_channel():
    pixels = torch.randint(0, 256, (16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batch = prep(pixels.numpy())
    # (x/255 - mean)/std, channel by channel; no resize at the input size
    unit = pixels.permute(2, 0, 1).float() / 255.0
    expected = (unit - torch.tensor(MEAN).reshape(3, 1, 1)) / torch.tensor(STD).reshape(3, 1, 1)
    assert batch.shape == (1, *INPUT_SIZE) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], expected, atol=1e-6)
    assert torch.allclose(denormalize(batch, MEAN, STD)[0], unit, atol=1e-6)
    assert torch.allclose(normalize(denormalize(batch, MEAN, STD), MEAN, STD), batch, atol=1e-5)


@pytest.mark.parametrize(
    ("mean", "std"), [(MEAN, STD), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.0,) * 3, (1.0,) * 3)]
)
def test_the_pixel_lookup_table_gives_normalize_numbers_bit_for_bit(mean, std):
    """The CPU path at the input size (a table of the 256 values per channel) against torch's
    ``normalize(pixels / 255)``: every uint8 value in every channel, equal to the last bit."""
    every_value = np.stack([np.arange(256, dtype=np.uint8)] * 3, axis=-1).reshape(1, 16, 16, 3)
    pixels = np.concatenate([every_value, every_value[:, ::-1, ::-1, ::-1]])  # channels see other values
    want = normalize(torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div_(255.0), mean, std)
    got = normalize_pixels(pixels, mean, std)
    assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == (2, 3, 16, 16)
    assert torch.equal(torch.from_numpy(got), want)
    assert torch.equal(preprocess(list(pixels), (3, 16, 16), mean, std), want)  # the path preprocess takes


def test_preprocessed_float32_tensors_are_used_as_they_are():
    x = torch.randn(2, *INPUT_SIZE)
    assert torch.equal(prep(x), x)
    assert torch.equal(prep(x[0]), x[:1])  # [3,H,W] is one image
    assert torch.equal(prep(x.numpy()), x)


def test_npy_files_are_preprocessed_tensors(tmp_path):
    x = torch.randn(3, *INPUT_SIZE).numpy()
    np.save(tmp_path / "batch.npy", x)
    assert torch.equal(prep(tmp_path / "batch.npy"), torch.from_numpy(x))
    np.save(tmp_path / "double.npy", x.astype(np.float64))
    with pytest.raises(InvalidArgumentError, match="must be float32, got float64"):
        prep(tmp_path / "double.npy")


def test_pil_modes_are_converted_to_rgb():
    grey = Image.new("L", (16, 16), color=100)
    rgba = Image.new("RGBA", (16, 16), color=(100, 100, 100, 7))
    assert torch.equal(prep(grey), prep(rgba))
    assert torch.equal(prep(grey), prep(np.full((16, 16, 3), 100, dtype=np.uint8)))


@pytest.mark.parametrize(
    "images, argument, fragment",
    [
        (torch.randn(1, 3, 8, 8), "images", r"must be \[N,3,16,16\]"),
        (
            torch.randn(1, 4, 16, 16),
            "images",
            r"must be \[N,3,\d+,\d+\] \(the model.s input size\), got \[1, 4,",
        ),
        (np.zeros((16, 16, 4), dtype=np.uint8), "images", r"\[H,W,3\] or \[N,H,W,3\]"),
        (np.zeros((16, 16), dtype=np.uint8), "images", r"\[H,W,3\]"),
        (torch.zeros(3, 16, 16, dtype=torch.uint8), "images", r"permute\(1, 2, 0\)"),
        (np.zeros((1, 3, 16, 16), dtype=np.float64), "images", "dtype float64 is not accepted"),
        (np.zeros((16, 16, 3), dtype=np.int32), "images", "dtype int32"),
        (np.zeros((0, 16, 3), dtype=np.uint8), "images", "empty"),
        ([], "images", "no images"),
        (torch.zeros(0, 3, 16, 16), "images", "empty batch"),
        ([torch.randn(1, *INPUT_SIZE), 3.5], "images[1]", "got float"),
    ],
)
def test_bad_images_name_the_argument(images, argument, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment) as info:
        prep(images)
    assert info.value.argument == argument


def test_nan_and_inf_pixels_name_the_image():
    x = torch.zeros(3, *INPUT_SIZE)
    x[2, 1, 4, 4] = float("inf")
    with pytest.raises(InvalidArgumentError, match="image 2 has NaN or infinite values"):
        prep(x)
    x[2, 1, 4, 4] = float("nan")
    with pytest.raises(InvalidArgumentError, match="image 2"):
        prep([x[:2], x[2:]])


def test_files_that_are_missing_or_not_images(tmp_path):
    with pytest.raises(NotFoundError, match="no such file"):
        prep(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(InvalidArgumentError, match="not a readable image") as info:
        prep([torch.randn(1, *INPUT_SIZE), tmp_path / "notes.png"])
    assert info.value.argument == "images[1]"
