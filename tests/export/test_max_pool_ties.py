"""Max-pool ties in the head: the gradient goes to the FIRST maximal element of each window in
row-major order — PyTorch's rule, and the one the exported graph keeps (ONNX MaxPool's indices
output + ScatterElements pick the same element). Checked on exact ties: equal ones, and all-zero
windows after a ReLU (the common case)."""

from __future__ import annotations

import torch

from camserve.runtime import OnnxGraphRunner
from tests.export.exporting import export_test_model
from tests.export.nets import MaxPoolHead


def test_ties_go_to_the_first_element_in_row_major_order(tmp_path) -> None:
    torch.manual_seed(0)
    model = MaxPoolHead().eval()
    with torch.no_grad():
        model.body[0].weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).reshape(2, 3, 1, 1))
    model_dir = export_test_model(model, "body", (3, 4, 4), tmp_path / "m")
    images = torch.zeros(1, 3, 4, 4)
    images[0, 0, 0, 1] = images[0, 0, 1, 0] = 2.0  # channel 0, window (0,0): a tie between (0,1) and (1,0)
    images[0, 1, 2, 2] = images[0, 1, 3, 3] = 1.0  # channel 1, window (1,1): a tie between (2,2) and (3,3)
    targets = torch.tensor([[0, 2]])
    out = OnnxGraphRunner(model_dir).explain(images, targets)
    w = model.fc.weight.detach().reshape(3, 2, 2, 2)  # [class, channel, pooled row, pooled col]
    for t, cls in enumerate((0, 2)):
        expected = torch.zeros(2, 4, 4)
        for ch in range(2):
            for i in range(2):
                for j in range(2):
                    window = images[0, ch, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].flatten()
                    first = int(torch.nonzero(window == window.max())[0])  # row-major index
                    expected[ch, 2 * i + first // 2, 2 * j + first % 2] = w[cls, ch, i, j]
        assert torch.equal(out.gradients[0, t], expected)
    # spelled out for one window: the tie at (0,1)/(1,0) sends the gradient to (0,1)
    assert out.gradients[0, 0, 0, 0, 1] == w[0, 0, 0, 0] and out.gradients[0, 0, 0, 1, 0] == 0
    # an all-zero window sends it to its top-left element
    assert out.gradients[0, 0, 0, 2, 2] == w[0, 0, 1, 1] and out.gradients[0, 0, 0, 3, 3] == 0
