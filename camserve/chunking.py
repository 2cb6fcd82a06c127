"""One way to run a graph on more items than it should see at once: consecutive chunks of at most
``chunk_size`` items (``runtime.max_graph_batch``), outputs concatenated along the first dimension.

Every method's extra runs (Score-CAM's masked images, Ablation-CAM's ablated activations, guided
gradients, Smooth Grad-CAM++'s noisy copies) and the evaluation's perturbed images go through
``run_in_chunks``, so peak memory is bounded by one chunk's graph run, whatever the request size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch

from camserve.outputs import ExplainOutputs

Output = TypeVar("Output", torch.Tensor, ExplainOutputs)


def run_in_chunks(run: Callable[[slice], Output], count: int, chunk_size: int) -> Output:
    """``run(items)`` for the slices ``[0, c)``, ``[c, 2c)``, ... of ``count`` items (c = chunk_size),
    concatenated along dim 0. One chunk is returned as it is (no copy). ``run`` returns a tensor or
    an ``ExplainOutputs`` (concatenated field by field; a None field stays None)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    if count < 1:
        raise ValueError(f"nothing to run: count is {count}")
    parts = [run(slice(start, min(start + chunk_size, count))) for start in range(0, count, chunk_size)]
    if len(parts) == 1:
        return parts[0]
    return _concatenate(parts)


def _concatenate(parts: list[Output]) -> Output:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    joined = {
        field.name: None
        if getattr(first, field.name) is None
        else torch.cat([getattr(part, field.name) for part in parts])
        for field in dataclasses.fields(first)
    }
    return dataclasses.replace(first, **joined)
