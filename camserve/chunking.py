"""One way to run a graph on more items than it should see at once: consecutive chunks of at most
``chunk_size`` items (``runtime.max_graph_batch``), outputs concatenated along the first dimension.

Every method's extra runs (Score-CAM's masked images, Ablation-CAM's ablated activations, guided
gradients, Smooth Grad-CAM++'s noisy copies) and the evaluation's perturbed images go through
``run_in_chunks``, so peak memory is bounded by one chunk's graph run, whatever the request size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import overload

import torch

from camserve.outputs import ExplainOutputs


@overload
def run_in_chunks(run: Callable[[slice], torch.Tensor], count: int, chunk_size: int) -> torch.Tensor: ...


@overload
def run_in_chunks(run: Callable[[slice], ExplainOutputs], count: int, chunk_size: int) -> ExplainOutputs: ...


def run_in_chunks(
    run: Callable[[slice], torch.Tensor] | Callable[[slice], ExplainOutputs], count: int, chunk_size: int
) -> torch.Tensor | ExplainOutputs:
    """``run(items)`` for the slices ``[0, c)``, ``[c, 2c)``, ... of ``count`` items (c = chunk_size),
    concatenated along dim 0. One chunk is returned as it is (no copy). ``run`` returns a tensor or
    an ``ExplainOutputs`` (concatenated field by field; extra_tokens and target_scores stay None
    when absent)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if count < 1:
        raise ValueError(f"nothing to run: count is {count}")
    parts = [run(slice(start, min(start + chunk_size, count))) for start in range(0, count, chunk_size)]
    if len(parts) == 1:
        return parts[0]
    tensors = [part for part in parts if isinstance(part, torch.Tensor)]
    if len(tensors) == len(parts):
        return torch.cat(tensors)
    return _concatenate_outputs([part for part in parts if isinstance(part, ExplainOutputs)])


def _concatenate_outputs(parts: list[ExplainOutputs]) -> ExplainOutputs:
    extra = [part.extra_tokens for part in parts if part.extra_tokens is not None]
    scores = [part.target_scores for part in parts if part.target_scores is not None]
    return ExplainOutputs(
        logits=torch.cat([part.logits for part in parts]),
        activations=torch.cat([part.activations for part in parts]),
        gradients=torch.cat([part.gradients for part in parts]),
        target_ids=torch.cat([part.target_ids for part in parts]),
        extra_tokens=torch.cat(extra) if extra else None,
        target_scores=torch.cat(scores) if len(scores) == len(parts) else None,
        layers=[
            (
                torch.cat([part.layers[i][0] for part in parts]),
                torch.cat([part.layers[i][1] for part in parts]),
            )
            for i in range(len(parts[0].layers))
        ],
    )
