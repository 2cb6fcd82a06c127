"""``x[slices] = number`` inside the exported function (Swin's attention mask): traced as written,
the ONNX exporter turned the number's 0-d constant into a scalar where the [h, w] block belongs and
ONNX Runtime refused the graph. camserve traces it as ``x[slices].fill_(number)``."""

from __future__ import annotations

import torch

from camserve.runtime import OnnxGraphRunner
from tests.export.exporting import export_test_model
from tests.export.nets import SliceFilledMaskHead


def test_mask_filled_by_slices_exports_with_the_right_numbers(tmp_path) -> None:
    torch.manual_seed(0)
    model = SliceFilledMaskHead().eval()
    model_dir = export_test_model(model, "body", (3, 4, 3), tmp_path / "m")
    images = torch.randn(2, 3, 4, 3, generator=torch.Generator().manual_seed(1))
    out = OnnxGraphRunner(model_dir).explain(images, torch.tensor([[1], [2]]))
    # the mask worked out by hand: quadrants 0 | 1 over row 0, 2 | 3 over rows 1-3, then row 3 = 7.5
    mask = torch.tensor([[0.0, 0, 1], [2, 2, 3], [2, 2, 3], [7.5, 7.5, 7.5]])
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(out.logits, logits, rtol=1e-5, atol=1e-5)
    # d logit_c / d h = fc.weight[c] (as [2,4,3]) * mask, for every image
    weight = model.fc.weight.detach().reshape(3, 2, 4, 3)
    for i, cls in enumerate((1, 2)):
        torch.testing.assert_close(out.gradients[i, 0], weight[cls] * mask, rtol=1e-6, atol=1e-6)
    # and the model itself was left as it was: no mode, no patched __setitem__ outside the export
    probe = torch.zeros(2, 2)
    probe[0:1, :] = 3
    assert probe.tolist() == [[3.0, 3.0], [0.0, 0.0]]
