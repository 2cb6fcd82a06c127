"""``camserve batch --targets-column``: one row's JSON text -> ints and Targets, files relative to the
dataset, every entry checked by ``target_kinds.check_one`` with its field named."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from camserve.batch.targets import row_targets
from camserve.errors import InvalidArgumentError
from camserve.methods.target_kinds import Target, TargetSpec

DENSE = TargetSpec("dense", 3, (3, 4, 6), (32, 48))
EMBEDDING = TargetSpec("embedding", 4, (4,), (32, 32))


def test_dense_row_of_png_npy_rle_box_and_ints(tmp_path):
    grid = np.zeros((4, 6), np.uint8)
    grid[1:3, 2:5] = 255
    (tmp_path / "masks").mkdir()
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    (tmp_path / "masks" / "a.png").write_bytes(buffer.getvalue())
    np.save(tmp_path / "masks" / "a.npy", grid / 255.0)
    text = json.dumps(
        [
            {"kind": "region", "class_id": 2, "mask": "masks/a.png"},
            {"kind": "region", "class_id": 1, "mask": "masks/a.npy"},
            {"kind": "region", "mask": {"size": [2, 2], "counts": [1, 2, 1]}},
            {"kind": "region", "class_id": 0, "box": [16, 8, 40, 24]},
            1,
        ]
    )
    with pytest.raises(InvalidArgumentError) as info:
        row_targets(text, tmp_path, DENSE, "targets")
    assert info.value.argument == "targets[2].mask"  # the RLE is 2x2, the output 4x6
    assert "the model's dense output is 4x6" in str(info.value)
    rows = json.loads(text)
    rows[2] = {"kind": "predicted_region", "class_id": -1}
    png, npy, predicted, box, plain = row_targets(json.dumps(rows), tmp_path, DENSE, "targets")
    assert isinstance(png, Target) and isinstance(npy, Target) and isinstance(box, Target)
    np.testing.assert_array_equal(png.mask, grid / 255.0)
    np.testing.assert_allclose(npy.mask, grid / 255.0)
    assert (png.class_id, npy.class_id, box.box) == (2, 1, (16, 8, 40, 24))
    assert isinstance(predicted, Target) and predicted.kind == "predicted_region"
    assert plain == 1
    assert row_targets(None, tmp_path, DENSE) == (-1,)


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("[1, ", "targets", "not JSON"),
        ("[]", "targets", "non-empty JSON list"),
        ("[5]", "targets[0].class_id", "class 5 is out of range"),
        ('[{"kind": "region", "class_id": 0, "box": [0, 0, 60, 10]}]', "targets[0].box", "not a box inside"),
        ('[{"kind": "region", "class_id": "a", "box": [0, 0, 6, 10]}]', "targets[0].class_id", "an integer"),
        ('[{"kind": "region", "mask": "none.png"}]', "targets[0].mask", "No such file"),
        ('[{"kind": "logit"}]', "targets[0].kind", "takes targets of kind"),
        ('[{"colour": 1}]', "targets[0].colour", "unknown field"),
    ],
)
def test_bad_dense_rows_name_the_entry(tmp_path, text, field, message):
    with pytest.raises(InvalidArgumentError) as info:
        row_targets(text, tmp_path, DENSE, "targets")
    assert info.value.argument == field
    assert message in str(info.value)


def test_embedding_rows_vector_inline_or_npy_and_no_image_kinds(tmp_path):
    np.save(tmp_path / "c.npy", np.array([1, 0, 0, 2], np.float32))
    text = json.dumps([{"kind": "cosine", "vector": "c.npy"}, {"kind": "dot", "vector": [0, 1, 0, 0]}])
    cosine, dot = row_targets(text, tmp_path, EMBEDDING)
    assert isinstance(cosine, Target) and isinstance(dot, Target)
    np.testing.assert_array_equal(cosine.vector, [1, 0, 0, 2])
    np.testing.assert_array_equal(dot.vector, [0, 1, 0, 0])
    for bad, field, message in [
        ([{"kind": "cosine", "vector": [1, 2]}], "targets[0].vector", "has 4 dimensions"),
        ([{"kind": "cosine_image", "image": 0}], "targets[0].image", "unknown field"),
        ([{"kind": "cosine_image"}], "targets[0].kind", "a batch row is one image"),
    ]:
        with pytest.raises(InvalidArgumentError) as info:
            row_targets(json.dumps(bad), tmp_path, EMBEDDING)
        assert info.value.argument == field
        assert message in str(info.value)
