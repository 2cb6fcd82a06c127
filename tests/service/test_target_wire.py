"""Targets as request data, without a server: the mask decoders (PNG, raw, RLE, files), camserve.v1's
Target messages into :class:`Target`s checked by ``target_kinds.check_one``, and the batch rows of
``*_image`` targets of coalesced requests."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from camserve.errors import InvalidArgumentError
from camserve.methods.target_kinds import KIND_CODE, TARGET_KINDS, Target, TargetSpec, build_table
from camserve.service.batch_runner import ImageWork, batch_rows, target_codes
from camserve.service.codec import _targets, decode_target
from camserve.target_masks import file_mask, png_mask, raw_mask, rle_mask
from camserve.v1 import camserve_pb2 as pb

DENSE = TargetSpec("dense", 3, (3, 4, 6), (32, 48))  # 3 classes, output grid 4x6, input 32x48
EMBEDDING = TargetSpec("embedding", 5, (5,), (32, 32))
CLASSIFIER = TargetSpec("classification", 10, (10,), (32, 32))


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


# -- the decoders ----------------------------------------------------------------------------------


def test_png_mask_is_greyscale_over_255_and_a_1_bit_png_is_0_or_1():
    values = np.array([[0, 51, 255], [102, 0, 204]], dtype=np.uint8)
    np.testing.assert_allclose(png_mask(_png(values), "m"), values / 255.0, rtol=0, atol=1e-7)
    bits = np.array([[0, 255, 255], [0, 0, 255]], dtype=np.uint8)
    mask = png_mask(_png(bits, "1"), "m", grid=(2, 3))
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1]])
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = 255  # white pixel -> L 255
    assert png_mask(_png(rgb), "m")[0, 0] == pytest.approx(1.0)


def test_png_mask_of_another_size_or_format_is_refused_before_decoding():
    with pytest.raises(InvalidArgumentError, match=r"m: is 2x3; the model's dense output is 4x6"):
        png_mask(_png(np.zeros((2, 3), np.uint8)), "m", grid=(4, 6))
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(buffer, format="JPEG")
    with pytest.raises(InvalidArgumentError, match=r"m: JPEG images are not accepted \(accepted: PNG\)"):
        png_mask(buffer.getvalue(), "m")
    with pytest.raises(InvalidArgumentError, match=r"m: the image cannot be decoded \(truncated PNG"):
        png_mask(_png(np.zeros((4, 6), np.uint8))[:40], "m")


def test_raw_mask_is_row_major_uint8_over_255():
    data = bytes([0, 255, 51, 0, 0, 102])
    np.testing.assert_allclose(raw_mask(data, 2, 3, "m"), [[0, 1, 0.2], [0, 0, 0.4]], atol=1e-7)
    with pytest.raises(InvalidArgumentError, match=r"m.data: holds 5 bytes; a 2x3 uint8 mask needs 6"):
        raw_mask(data[:5], 2, 3, "m")
    with pytest.raises(InvalidArgumentError, match=r"m.height: a mask is 1\.\."):
        raw_mask(b"", 0, 3, "m")
    with pytest.raises(InvalidArgumentError, match="m: is 2x3; the model's dense output is 4x6"):
        raw_mask(data, 2, 3, "m", grid=(4, 6))


def test_rle_mask_is_column_major_zeros_first_as_pycocotools():
    # a 3x2 mask (h=3, w=2): column 0 = 0,1,1; column 1 = 1,0,0 -> runs 1 zero, 3 ones, 2 zeros
    mask = rle_mask(3, 2, [1, 3, 2], "m")
    np.testing.assert_array_equal(mask, [[0, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(rle_mask(2, 2, [0, 4], "m"), np.ones((2, 2)))  # starts with ones
    with pytest.raises(InvalidArgumentError, match=r"m.counts: the runs cover 5 pixels; a 3x2 mask has 6"):
        rle_mask(3, 2, [1, 3, 1], "m")


def test_file_masks_png_and_npy(tmp_path):
    (tmp_path / "m.png").write_bytes(_png(np.full((4, 6), 255, np.uint8)))
    np.testing.assert_array_equal(file_mask(tmp_path / "m.png", "f", (4, 6)), np.ones((4, 6)))
    weights = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    np.save(tmp_path / "m.npy", weights)
    np.testing.assert_array_equal(file_mask(tmp_path / "m.npy", "f", (4, 6)), weights)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
    with pytest.raises(InvalidArgumentError, match="f: .*bad.npy: expected a 2-D array"):
        file_mask(tmp_path / "bad.npy", "f")
    with pytest.raises(InvalidArgumentError, match=r"f: .*m.txt: a mask file is .png or .npy"):
        file_mask(tmp_path / "m.txt", "f")
    with pytest.raises(InvalidArgumentError, match=r"f: .*none.png: No such file"):
        file_mask(tmp_path / "none.png", "f")


# -- camserve.v1 Target messages -------------------------------------------------------------------


def test_the_wire_enum_has_the_codes_of_target_kinds():
    assert [pb.TargetKind.Value(f"TARGET_KIND_{k.upper()}") for k in TARGET_KINDS] == list(
        range(len(TARGET_KINDS))
    )
    assert len(pb.TargetKind.keys()) == len(TARGET_KINDS)


def test_region_targets_by_box_png_raw_and_rle_give_their_masks_in_the_table():
    grid = np.zeros((4, 6), np.uint8)
    grid[1:3, 2:5] = 255
    rle = np.asfortranarray(grid // 255).reshape(-1, order="F")
    counts, value, run = [], 0, 0
    for v in rle:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    image = pb.Image(
        target_specs=[
            pb.Target(kind=pb.TARGET_KIND_REGION, class_id=2, mask=pb.Mask(png=_png(grid))),
            pb.Target(
                kind=pb.TARGET_KIND_REGION,
                class_id=1,
                mask=pb.Mask(raw=pb.RawMask(height=4, width=6, data=grid.tobytes())),
            ),
            pb.Target(
                kind=pb.TARGET_KIND_REGION,
                class_id=0,
                mask=pb.Mask(rle=pb.RleMask(height=4, width=6, counts=counts)),
            ),
            # the cells whose centres lie in x 16..40, y 8..24 (cells are 8x8 input pixels)
            pb.Target(kind=pb.TARGET_KIND_REGION, class_id=0, box=pb.Box(x1=16, y1=8, x2=40, y2=24)),
            pb.Target(kind=pb.TARGET_KIND_PREDICTED_REGION),
        ]
    )
    targets = _targets(image, "images[0]", DENSE, 1)
    table = build_table([targets], DENSE, 1)
    expected = (grid / 255.0).reshape(-1)
    for t in range(4):
        np.testing.assert_array_equal(table.data[0, t].numpy(), expected)
    assert table.ids[0].tolist() == [2, 1, 0, 0, -1]
    assert table.kinds[0].tolist() == [3, 3, 3, 3, 4]
    assert target_codes(targets, DENSE).tolist() == [3, 3, 3, 3, 4]
    assert target_codes((5,), DENSE).tolist() == [KIND_CODE["predicted_region"]]


@pytest.mark.parametrize(
    ("target", "field", "message"),
    [
        (
            pb.Target(
                kind=pb.TARGET_KIND_REGION, mask=pb.Mask(raw=pb.RawMask(height=2, width=2, data=b"1234"))
            ),
            "images[1].target_specs[0].mask.raw",
            "is 2x2; the model's dense output is 4x6",
        ),
        (
            pb.Target(kind=pb.TARGET_KIND_REGION, box=pb.Box(x1=10, y1=5, x2=60, y2=20)),
            "images[1].target_specs[0].box",
            "is not a box inside the 48x32 input",
        ),
        (
            pb.Target(
                kind=pb.TARGET_KIND_REGION, mask=pb.Mask(rle=pb.RleMask(height=4, width=6, counts=[3]))
            ),
            "images[1].target_specs[0].mask.rle.counts",
            "the runs cover 3 pixels",
        ),
        (
            pb.Target(kind=pb.TARGET_KIND_PROBABILITY),
            "images[1].target_specs[0].kind",
            "takes targets of kind",
        ),
        (pb.Target(kind=pb.TARGET_KIND_REGION), "images[1].target_specs[0]", "exactly one of mask and box"),
        (
            pb.Target(kind=pb.TARGET_KIND_REGION, mask=pb.Mask()),
            "images[1].target_specs[0].mask",
            "set one of",
        ),
        (
            pb.Target(kind=pb.TargetKind.ValueType(42)),
            "images[1].target_specs[0].kind",
            "unknown target kind 42",
        ),
        (
            pb.Target(kind=pb.TARGET_KIND_PREDICTED_REGION, class_id=3),
            "images[1].target_specs[0].class_id",
            "class 3 is out of range",
        ),
    ],
)
def test_bad_dense_targets_name_the_field(target, field, message):
    image = pb.Image(target_specs=[target])
    with pytest.raises(InvalidArgumentError) as info:
        _targets(image, "images[1]", DENSE, 2)
    assert info.value.argument == field
    assert message in str(info.value)


def test_embedding_targets_vector_and_image():
    vector = [0.5, -1.0, 2.0, 0.0, 1.0]
    image = pb.Image(
        target_specs=[
            pb.Target(kind=pb.TARGET_KIND_COSINE, vector=vector),
            pb.Target(kind=pb.TARGET_KIND_DOT_IMAGE, image=1),
        ]
    )
    cosine, other = _targets(image, "images[0]", EMBEDDING, 2)
    assert isinstance(cosine, Target) and isinstance(other, Target)
    np.testing.assert_array_equal(cosine.vector, np.asarray(vector, np.float32))
    assert (other.kind, other.image) == ("dot_image", 1)
    bad = [
        (pb.Target(kind=pb.TARGET_KIND_COSINE, vector=[1.0, 2.0]), ".vector", "the model's embedding has 5"),
        (pb.Target(kind=pb.TARGET_KIND_COSINE_IMAGE, image=2), ".image", "in [0, 1], got 2"),
        (pb.Target(kind=pb.TARGET_KIND_COSINE_IMAGE), ".image", "got None"),
    ]
    for target, suffix, message in bad:
        with pytest.raises(InvalidArgumentError) as info:
            _targets(pb.Image(target_specs=[target]), "images[0]", EMBEDDING, 2)
        assert info.value.argument == "images[0].target_specs[0]" + suffix
        assert message in str(info.value)


def test_classification_targets_default_class_and_both_fields_refused():
    image = pb.Image(target_specs=[pb.Target(kind=pb.TARGET_KIND_PROBABILITY), pb.Target(class_id=3)])
    first, second = _targets(image, "images[0]", CLASSIFIER, 1)
    assert isinstance(first, Target) and (first.kind, first.class_id) == ("probability", -1)
    assert isinstance(second, Target) and (second.kind, second.class_id) == ("logit", 3)
    assert _targets(pb.Image(targets=[4, -2]), "images[0]", CLASSIFIER, 1) == (4, -2)
    assert _targets(pb.Image(), "images[0]", CLASSIFIER, 1) == (-1,)
    both = pb.Image(targets=[1], target_specs=[pb.Target(class_id=1)])
    with pytest.raises(InvalidArgumentError) as info:
        _targets(both, "images[0]", CLASSIFIER, 1)
    assert info.value.argument == "images[0].target_specs"
    assert "at most one of targets and target_specs" in str(info.value)
    assert decode_target(pb.Target(kind=pb.TARGET_KIND_SIGMOID, class_id=0), "t", CLASSIFIER).class_id == 0


# -- *_image targets in a coalesced batch ----------------------------------------------------------


def test_image_targets_become_batch_rows_of_their_own_request():
    pixels = np.zeros((1, 2, 2), np.float32)
    other = ImageWork(pixels, (Target("cosine", vector=np.ones(5)),), ("gradcam",))
    first = ImageWork(pixels, (Target("cosine_image", image=1),), ("gradcam",), request=7, index=0)
    second = ImageWork(pixels, (Target("dot_image", image=0),), ("gradcam",), request=7, index=1)
    rows = batch_rows([other, first, second])
    assert rows[0][0] is other.targets[0]
    assert isinstance(rows[1][0], Target) and rows[1][0].image == 2  # request image 1 -> batch row 2
    assert isinstance(rows[2][0], Target) and rows[2][0].image == 1
    with pytest.raises(InvalidArgumentError, match="image 1 of the request is not in its batch"):
        batch_rows([first])
