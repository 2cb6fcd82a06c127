"""Attention traced for export: the in-projection of ``nn.MultiheadAttention`` stays one matrix
product. Traced as PyTorch runs it, its transposed [L,N,E] input makes matmul expand the [E,3E]
weight L times for a bmm (1.4 GB per ViT-B/16 block at 224², which once made the export run out of
memory); camserve traces attention with contiguous query/key/value."""

from __future__ import annotations

import torch
from torch import nn

from camserve.export.tracing import trace


def _input_gradient_of_attention(mha: nn.MultiheadAttention):
    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        y = mha(x, x, x, need_weights=False)[0]
        return y, torch.autograd.grad((y * y).sum(), x)[0]

    return fn


def test_the_in_projection_weight_is_not_expanded_per_token_and_numbers_hold() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval().requires_grad_(False)
    fn = _input_gradient_of_attention(mha)
    graph = trace(fn, [torch.randn(2, 5, 8)])
    expanded_matrices = [
        node
        for node in graph.graph.nodes
        if node.target is torch.ops.aten.expand.default and node.args[0].meta["val"].dim() == 2
    ]
    assert expanded_matrices == []  # before the fix: the [8, 24] in-projection weight, expanded to [5, 8, 24]
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))  # another batch size
    for got, want in zip(graph(x), fn(x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
