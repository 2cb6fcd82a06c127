"""Targets as data (camserve.methods.target_kinds, camserve.methods.targets): the scalars of every
kind worked out by hand on tiny tensors, their gradients against autograd of the same scalar written
by hand, the one validator (build_table) and its errors, and how the Python forms become a table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.methods import get_method, known_methods, method_class
from camserve.methods.base import check_target_kinds
from camserve.methods.target_kinds import (
    KIND_CODE,
    Target,
    TargetSpec,
    TargetTable,
    box_mask,
    build_table,
    target_scores,
)
from camserve.methods.targets import image_targets_as_vectors, parse_target_table

CLASSIFIER = TargetSpec("classification", 3, (3,), (8, 8))
DENSE = TargetSpec("dense", 2, (2, 2, 2), (8, 8))
DETECTOR = TargetSpec("detection", 2, (3, 2), (32, 32))
EMBEDDING = TargetSpec("embedding", 3, (3,), (8, 8))


def codes(*kinds: str) -> torch.Tensor:
    return torch.tensor([KIND_CODE[k] for k in kinds])


# -- the scalars, by hand ------------------------------------------------------------------------


def test_classification_scores_are_the_logit_softmax_and_sigmoid():
    y = torch.tensor([[1.0, 2.0, 0.0]]).repeat(3, 1)  # one image, T = 3 copies
    got = target_scores(
        "classification", y, torch.tensor([1, 1, 0]), codes("logit", "probability", "sigmoid"), None, 3
    )
    e = math.e
    want = [2.0, e**2 / (e + e**2 + 1), 1 / (1 + math.exp(-1.0))]
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_dense_scores_sum_a_class_over_a_mask_or_its_predicted_pixels():
    # class 0 = [[1,2],[3,4]], class 1 = [[4,0],[0,5]]: argmax is class 1 at (0,0),(1,1), class 0 elsewhere
    plane = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 5.0]]])
    output = plane.unsqueeze(0).repeat(4, 1, 1, 1)
    data = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.0, 0.0, 2.0], [0.0] * 4, [0.0] * 4])
    kinds = codes("region", "region", "predicted_region", "predicted_region")
    got = target_scores("dense", output, torch.tensor([0, 0, 0, 1]), kinds, data, 4)
    assert got.tolist() == [1 + 4, 0.5 * 1 + 2 * 4, 2 + 3, 4 + 5]


def test_detection_scores_sum_the_anchors_matched_by_iou():
    scores = torch.tensor([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0]]).unsqueeze(0).repeat(3, 1, 1)  # [M,A=3,C=2]
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20], [20, 20, 30, 30]]).unsqueeze(0).repeat(3, 1, 1)
    # box 1: IoU 1, 0.5, 0 -> anchors 0 and 1; box 2: IoU 100/140, 140/200, 0 -> 0 and 1;
    # box 3: IoU 0, 0, 16/100 -> below 0.5, but the best match is always taken -> anchor 2
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 14], [20, 20, 24, 24]])
    got = target_scores(
        "detection", scores, torch.tensor([1, 0, 0]), codes("box", "box", "box"), boxes, 3, anchors
    )
    assert got.tolist() == [5 + 6, 1 + 2, 3]


def test_embedding_scores_are_dot_products_and_cosines_to_a_concept_or_another_image():
    e0, e1 = [3.0, 4.0], [1.0, 0.0]
    output = torch.tensor([e0, e0, e1, e1])  # N = 2 images, T = 2 targets each
    data = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    kinds = codes("dot", "cosine_image", "cosine", "dot_image")
    got = target_scores("embedding", output, torch.tensor([0, 1, 0, 0]), kinds, data, 2)
    # [3,4].[1,1] = 7; cos([3,4],[1,0]) = 3/5; cos([1,0],[0,2]) = 0; [1,0].[3,4] = 3
    assert got.tolist() == pytest.approx([7.0, 0.6, 0.0, 3.0], abs=1e-7)


def test_box_mask_takes_the_cells_whose_centres_lie_in_the_box():
    assert box_mask((0, 0, 4, 4), (8, 8), (4, 4)).tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0] * 4, [0] * 4]
    assert box_mask((2, 0, 8, 2), (8, 8), (4, 4)).tolist() == [[0, 1, 1, 1], [0] * 4, [0] * 4, [0] * 4]
    # smaller than a cell: the cell holding its centre (0.3, 0.3)
    assert box_mask((0.1, 0.1, 0.5, 0.5), (8, 8), (4, 4)).tolist()[0] == [1, 0, 0, 0]
    assert box_mask((0.1, 0.1, 0.5, 0.5), (8, 8), (4, 4)).sum() == 1
    # non-square input H=4, W=8 on a 2x2 grid: x in [4, 8) is column 1, both rows
    assert box_mask((4, 0, 8, 4), (4, 8), (2, 2)).tolist() == [[0, 1], [0, 1]]


# -- gradients against autograd of the same scalar written by hand -------------------------------


def _grad(scalar: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(scalar.sum(), leaf)
    return g


def test_classification_gradients_equal_the_hand_written_scalars_and_the_softmax_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 4, dtype=torch.float64)
    acts = torch.randn(2, 4, 2, 2, dtype=torch.float64)
    for kind, hand in (
        ("logit", lambda y, c: y[c]),
        ("probability", lambda y, c: torch.softmax(y, 0)[c]),
        ("sigmoid", lambda y, c: torch.sigmoid(y[c])),
    ):
        leaf = acts.clone().requires_grad_(True)
        y = leaf.mean(dim=(2, 3)) @ w.T  # GAP -> linear head
        got = _grad(
            target_scores("classification", y, torch.tensor([2, 0]), codes(kind, kind), None, 1), leaf
        )
        leaf2 = acts.clone().requires_grad_(True)
        y2 = leaf2.mean(dim=(2, 3)) @ w.T
        want = _grad(torch.stack([hand(y2[n], c) for n, c in enumerate((2, 0))]), leaf2)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        if kind == "probability":  # ds/dy_j = p_c (delta_cj - p_j), then through the mean and W
            with torch.no_grad():
                p = torch.softmax(y, 1)
                onehot = F.one_hot(torch.tensor([2, 0]), 3).double()
                dy = p.gather(1, torch.tensor([[2], [0]])) * (onehot - p)
                formula = (dy @ w)[:, :, None, None].expand(2, 4, 2, 2) / 4
            torch.testing.assert_close(got, formula, rtol=1e-12, atol=1e-12)


def test_dense_detection_and_embedding_gradients_equal_the_hand_written_scalars():
    torch.manual_seed(1)
    acts = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64)
    mask = torch.tensor([[0.5, 0.0], [1.0, 2.0]], dtype=torch.float64)

    def dense(leaf):
        return torch.einsum("ck,nkhw->nchw", w, leaf)

    leaf = acts.clone().requires_grad_(True)
    got = _grad(
        target_scores("dense", dense(leaf), torch.tensor([1]), codes("region"), mask.reshape(1, 4), 1), leaf
    )
    leaf2 = acts.clone().requires_grad_(True)
    want = _grad((dense(leaf2)[0, 1] * mask).sum(), leaf2)
    torch.testing.assert_close(got, want)

    leaf = acts.clone().requires_grad_(True)
    out = dense(leaf)
    got = _grad(
        target_scores("dense", out, torch.tensor([0]), codes("predicted_region"), torch.zeros(1, 4), 1), leaf
    )
    leaf2 = acts.clone().requires_grad_(True)
    out2 = dense(leaf2)
    predicted = (out2.detach().argmax(1)[0] == 0).double()  # the mask is data, not differentiated
    torch.testing.assert_close(got, _grad((out2[0, 0] * predicted).sum(), leaf2))

    # detection: the 4 cells are anchors with fixed boxes; scores [1,A=4,C=2]
    anchors = torch.tensor([[[0.0, 0, 4, 4], [4, 0, 8, 4], [0, 4, 4, 8], [4, 4, 8, 8]]], dtype=torch.float64)
    leaf = acts.clone().requires_grad_(True)
    scores = dense(leaf).flatten(2).transpose(1, 2)
    box = torch.tensor([[0.0, 0, 8, 4]], dtype=torch.float64)  # IoU 0.5 with anchors 0 and 1
    got = _grad(target_scores("detection", scores, torch.tensor([1]), codes("box"), box, 1, anchors), leaf)
    leaf2 = acts.clone().requires_grad_(True)
    scores2 = dense(leaf2).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, _grad(scores2[0, 0, 1] + scores2[0, 1, 1], leaf2))

    v = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    for kind, hand in (
        ("dot", lambda e: e @ v[0]),
        ("cosine", lambda e: e @ v[0] / (e.norm() * v[0].norm())),
    ):
        leaf = acts.clone().requires_grad_(True)
        e = leaf.mean(dim=(2, 3)) @ w.T
        got = _grad(target_scores("embedding", e, torch.tensor([0]), codes(kind), v, 1), leaf)
        leaf2 = acts.clone().requires_grad_(True)
        torch.testing.assert_close(got, _grad(hand((leaf2.mean(dim=(2, 3)) @ w.T)[0]), leaf2))


# -- build_table: the one validator ----------------------------------------------------------------


def test_build_table_gives_ids_kinds_and_data_for_every_output_kind():
    table = build_table([[1, Target("probability", 2)], [Target("sigmoid", -1), 0]], CLASSIFIER, 2)
    assert table.ids.tolist() == [[1, 2], [-1, 0]]
    assert table.kinds.tolist() == [[0, 1], [2, 0]] and table.data is None

    table = build_table(
        [[Target("region", 1, box=(0, 0, 4, 4)), Target("region", 0, mask=np.array([[0, 1], [1, 0]])), 1]],
        DENSE,
        2,
    )
    assert table.ids.tolist() == [[1, 0, 1]] * 2  # one row repeated for both images
    assert table.kinds[0].tolist() == [
        KIND_CODE["region"],
        KIND_CODE["region"],
        KIND_CODE["predicted_region"],
    ]
    assert table.data[0].tolist() == [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]

    table = build_table([[Target("box", 1, box=(1, 2, 3, 4))]], DETECTOR, 1)
    assert table.data.tolist() == [[[1, 2, 3, 4]]] and table.ids.tolist() == [[1]]

    table = build_table(
        [[Target("cosine", vector=np.array([1.0, 2.0, 3.0])), Target("dot_image", image=1)]] * 2, EMBEDDING, 2
    )
    assert table.ids.tolist() == [[0, 1], [0, 1]]
    assert table.data[0].tolist() == [[1, 2, 3], [0, 0, 0]]


@pytest.mark.parametrize(
    ("target", "spec", "field", "words"),
    [
        (
            Target("region", 0, mask=np.ones((3, 3))),
            DENSE,
            "targets[0][0].mask",
            "is 3x3; the model's dense output is 2x2",
        ),
        (Target("region", 0, box=(0, 0, 9, 4)), DENSE, "targets[0][0].box", "not a box inside the 8x8 input"),
        (
            Target("box", 0, box=(5, 5, 5, 9)),
            DETECTOR,
            "targets[0][0].box",
            "not a box inside the 32x32 input",
        ),
        (
            Target("cosine", vector=np.ones(4)),
            EMBEDDING,
            "targets[0][0].vector",
            "embedding has 3 dimensions",
        ),
        (
            Target("region", 0, mask=np.ones((2, 2))),
            CLASSIFIER,
            "targets[0][0].kind",
            "classification output takes",
        ),
        (
            Target("probability", 1),
            DENSE,
            "targets[0][0].kind",
            "takes targets of kind predicted_region, region",
        ),
        (Target("softmax", 1), CLASSIFIER, "targets[0][0].kind", "unknown kind 'softmax'"),
        (Target("cosine_image", image=2), EMBEDDING, "targets[0][0].image", "in [0, 0], got 2"),
        (Target("logit", 3), CLASSIFIER, "targets[0][0].class_id", "class 3 is out of range"),
        (Target("region", 0), DENSE, "targets[0][0]", "exactly one of mask and box"),
        (1, DETECTOR, "targets[0][0].box", "expected four numbers"),
    ],
)
def test_build_table_errors_name_the_field(target, spec, field, words):
    with pytest.raises(
        InvalidArgumentError, match=r"^" + field.replace("[", r"\[").replace("]", r"\]")
    ) as info:
        build_table([[target]], spec, 1)
    assert info.value.argument == field and words in str(info.value)


# -- the Python forms -> a table -------------------------------------------------------------------


def test_parse_target_table_takes_ints_targets_and_dicts():
    spec = TargetSpec("classification", 5, (5,), (8, 8))
    assert parse_target_table(None, 2, spec).ids.tolist() == [[-1], [-1]]
    assert parse_target_table(3, 2, spec).ids.tolist() == [[3], [3]]
    table = parse_target_table([[1, 2]], 2, spec)
    assert table.ids.tolist() == [[1, 2], [1, 2]] and table.all_default
    table = parse_target_table(Target("probability", 2), 2, spec)
    assert table.ids.tolist() == [[2], [2]] and table.kinds.tolist() == [[1], [1]]
    table = parse_target_table(
        [[Target("sigmoid", 1), 4], [{"kind": "probability", "class_id": 0}, -1]], 2, spec
    )
    assert table.ids.tolist() == [[1, 4], [0, -1]] and table.kinds.tolist() == [[2, 0], [1, 0]]
    assert parse_target_table(table, 2, spec) is table
    with pytest.raises(InvalidArgumentError, match="expected rows of targets"):
        parse_target_table([Target("probability", 2)], 2, spec)
    with pytest.raises(InvalidArgumentError, match="fields: kind, class_id"):
        parse_target_table([[{"kind": "probability", "klass": 0}]], 2, spec)
    with pytest.raises(InvalidArgumentError, match="out of range"):
        parse_target_table([[7]], 2, spec)


def test_parse_target_table_plain_ints_are_the_outputs_default_kind():
    table = parse_target_table([[1, -1]], 1, DENSE)
    assert table.kinds.tolist() == [[KIND_CODE["predicted_region"]] * 2] and table.data.shape == (1, 2, 4)
    with pytest.raises(InvalidArgumentError, match=r"targets\[0\]\[0\]\.box"):
        parse_target_table(1, 1, DETECTOR)
    with pytest.raises(InvalidArgumentError, match=r"targets\[0\]\[0\]\.vector"):
        parse_target_table(None, 1, EMBEDDING)


def test_image_targets_become_vectors_of_the_named_image_and_keep_their_index():
    rows = [
        [Target("cosine_image", image=1), Target("dot", vector=np.ones(3))],
        [Target("dot_image", image=0), Target("cosine", vector=np.zeros(3))],
    ]
    table = build_table(rows, EMBEDDING, 2)
    embeddings = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    got = image_targets_as_vectors(table, embeddings)
    assert got.ids.tolist() == [[1, 0], [0, 0]]
    assert got.kinds.tolist() == [
        [KIND_CODE["cosine"], KIND_CODE["dot"]],
        [KIND_CODE["dot"], KIND_CODE["cosine"]],
    ]
    assert got.data.tolist() == [[[4, 5, 6], [1, 1, 1]], [[1, 2, 3], [0, 0, 0]]]
    output = embeddings.repeat_interleave(2, dim=0)  # each image's embedding, T = 2 copies
    before = target_scores(
        "embedding", output, table.ids.flatten(), table.kinds.flatten(), table.data.flatten(0, 1), 2
    )
    after = target_scores(
        "embedding", output, got.ids.flatten(), got.kinds.flatten(), got.data.flatten(0, 1), 2
    )
    torch.testing.assert_close(before, after)


# -- methods that explain class logits only --------------------------------------------------------


def test_methods_that_rerun_the_model_for_class_logits_declare_it():
    refused = {name for name in known_methods() if method_class(name).logit_targets_only}
    assert {
        "cam",
        "scorecam",
        "ablationcam",
        "sscam",
        "iscam",
        "shapleycam",
        "finercam",
        "fullgrad",
    } <= refused
    assert not refused & {"gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"}
    assert not refused & {"gradcamelementwise", "guidedbackprop", "guidedgradcam", "smoothgradcam++"}


def test_logit_only_methods_are_refused_for_other_kinds_naming_method_and_kind():
    methods = [get_method(name) for name in known_methods()]
    logits = TargetTable.of_ids(torch.tensor([[1, -1]]))
    check_target_kinds(methods, logits, "classification")  # every method takes class logits
    table = build_table([[Target("probability", 1), 0]], CLASSIFIER, 1)
    check_target_kinds([get_method("gradcam"), get_method("guidedgradcam")], table, "classification")
    with pytest.raises(
        UnsupportedError, match=r"'scorecam'.*class logits only.*of kind probability \(the model"
    ) as info:
        check_target_kinds([get_method("gradcam"), get_method("scorecam")], table, "classification")
    assert "'gradcam'" not in str(info.value).split("explain")[0]
    check_target_kinds([get_method("finercam")], ["logit", "logit"], "classification")
    with pytest.raises(UnsupportedError, match=r"'finercam'.*of kind sigmoid, region \("):
        check_target_kinds([get_method("finercam")], ["region", "logit", "sigmoid"], "classification")
    dense = parse_target_table(0, 1, DENSE)
    with pytest.raises(UnsupportedError, match=r"'ablationcam'.*predicted_region.*output is dense"):
        check_target_kinds([get_method("ablationcam")], dense, "dense")
