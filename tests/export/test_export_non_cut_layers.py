"""Target layers that are not cuts (pytorch-grad-cam's everyday layers): a conv inside a residual
block, ViT's last ``ln_1``. The head re-enters at the anchor (the block around the layer) and takes
the anchor's input as ``extra_tokens``; every graph is checked against PyTorch autograd with plain
hooks (tests/reference/autograd_cam.py), which knows nothing of anchors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from camserve.export.architectures import build_torchvision
from camserve.export.eager import TorchGraphRunner
from camserve.methods.compute import compute_maps
from camserve.runtime import OnnxGraphRunner
from tests.export.exporting import export_test_model
from tests.export.nets import BlockResidualNet
from tests.reference.autograd_cam import autograd_explain, autograd_guided


def _run_onnx(model_dir, graph: str, **inputs: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model_dir.graph_path(graph)), providers=["CPUExecutionProvider"])
    return session.run(None, {name: value.numpy() for name, value in inputs.items()})


def _check(model, layer: str, model_dir, images: torch.Tensor, targets: torch.Tensor, layout) -> None:
    logits, acts, grads, ids = autograd_explain(
        model, layer, images, targets, layout.to_nkhw, layout.from_nkhw
    )
    got_logits, got_acts, got_grads, got_ids, got_scores, anchor_input = _run_onnx(
        model_dir, "explain", images=images, targets=targets, target_kinds=torch.zeros_like(targets)
    )
    for name, mine, ref in (
        ("logits", got_logits, logits),
        ("activations", got_acts, acts),
        ("gradients", got_grads, grads),
    ):
        scale = ref.abs().max().item()
        assert scale > 0 and np.abs(mine - ref.numpy()).max() <= 1e-4 * scale, name
    np.testing.assert_array_equal(got_ids, ids.numpy())
    np.testing.assert_allclose(
        got_scores, logits.gather(1, ids).numpy(), atol=1e-4 * logits.abs().max().item()
    )
    # the head graph: logits from A and the anchor's input alone, also for edited activations
    (head_logits,) = _run_onnx(
        model_dir, "head", activations=torch.from_numpy(got_acts), extra_tokens=torch.from_numpy(anchor_input)
    )
    np.testing.assert_allclose(head_logits, logits.numpy(), atol=1e-4 * logits.abs().max().item())
    halved = torch.from_numpy(got_acts) * 0.5
    (head_halved,) = _run_onnx(
        model_dir, "head", activations=halved, extra_tokens=torch.from_numpy(anchor_input)
    )
    want, _, _, _ = autograd_explain(
        model, layer, images, targets[:, :1], layout.to_nkhw, layout.from_nkhw, activations=halved
    )
    np.testing.assert_allclose(head_halved, want.numpy(), atol=1e-4 * want.abs().max().item())


def test_conv_inside_a_residual_block(tmp_path) -> None:
    torch.manual_seed(0)
    model = BlockResidualNet().eval()
    model_dir = export_test_model(
        model, "block.conv1", (3, 8, 8), tmp_path / "m", graphs=("explain", "head", "guided")
    )
    notes = model_dir.manifest.notes
    assert notes == {"anchor": "block", "extra_shape": [4, 8, 8]}  # the block's input, per image
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[-1, 2], [0, -2], [4, -1]])
    split = TorchGraphRunner(model, "block.conv1", (3, 8, 8)).split
    _check(model, "block.conv1", model_dir, images, targets, split.layout)
    # the layer does not change the guided graph: still autograd's guided backprop of the whole model
    kinds = torch.zeros_like(targets)  # class logits
    (guided,) = _run_onnx(model_dir, "guided", images=images, targets=targets, target_kinds=kinds)
    np.testing.assert_allclose(guided, autograd_guided(model, images, targets).numpy(), rtol=1e-4, atol=1e-6)
    # the eager runner (in-process explaining) agrees with its graphs, head included
    eager = TorchGraphRunner(model, "block.conv1", (3, 8, 8))
    out = eager.explain(images, targets)
    torch.testing.assert_close(
        eager.head(out.activations, out.extra_tokens), out.logits, rtol=1e-5, atol=1e-5
    )
    # the runner the Explainer and the service use binds the anchor's input both ways (Ablation-CAM's
    # head runs on edited activations), and Ablation-CAM's maps equal the eager runner's
    onnx = OnnxGraphRunner(model_dir)
    got = onnx.explain(images, targets)
    assert got.extra_tokens is not None and got.extra_tokens.shape == (3, 4, 8, 8)
    torch.testing.assert_close(got.extra_tokens, out.extra_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        onnx.head(got.activations * 0.5, got.extra_tokens),
        eager.head(out.activations * 0.5, out.extra_tokens),
        rtol=1e-4,
        atol=1e-5,
    )
    onnx_maps = compute_maps(onnx, images, targets, ["ablationcam"], num_classes=5).maps["ablationcam"]
    eager_maps = compute_maps(eager, images, targets, ["ablationcam"], num_classes=5).maps["ablationcam"]
    torch.testing.assert_close(onnx_maps, eager_maps, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["layer4.1.conv1", "layer4.0.conv2", "layer3.1.bn2"])
def test_resnet_inner_layers(layer: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = build_torchvision("resnet18", (3, 32, 32)).eval()
    model_dir = export_test_model(model, layer, (3, 32, 32), tmp_path / "m", graphs=("explain", "head"))
    assert model_dir.manifest.notes["anchor"] == layer.rsplit(".", 1)[0]  # the basic block around it
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    split = TorchGraphRunner(model, layer, (3, 32, 32)).split
    _check(model, layer, model_dir, images, torch.tensor([[-1, 7], [3, -2]]), split.layout)
    # the explain graph runs through the runner the service uses (Grad-CAM needs no head)
    got = OnnxGraphRunner(model_dir).explain(images, torch.tensor([[-1], [3]]))
    assert got.gradients.shape == (2, 1, *model_dir.manifest.activation_shape)


@pytest.mark.slow
def test_vit_last_block_ln_1(tmp_path) -> None:
    """pytorch-grad-cam's ViT recipe: the last block's first norm (``blocks[-1].norm1`` in timm)."""
    layer = "encoder.layers.encoder_layer_11.ln_1"
    torch.manual_seed(0)
    model = build_torchvision("vit_b_16", (3, 32, 32)).eval()
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises it
    model_dir = export_test_model(model, layer, (3, 32, 32), tmp_path / "m", graphs=("explain", "head"))
    assert model_dir.manifest.notes == {"anchor": "encoder.layers.encoder_layer_11", "extra_shape": [5, 768]}
    assert model_dir.manifest.layout == "tokens" and model_dir.manifest.activation_shape == [768, 2, 2]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    split = TorchGraphRunner(model, layer, (3, 32, 32)).split
    _check(model, layer, model_dir, images, torch.tensor([[-1, 7], [3, -2]]), split.layout)
