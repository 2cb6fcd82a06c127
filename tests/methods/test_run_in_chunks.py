"""camserve.chunking.run_in_chunks: the one helper every method and the evaluation use to split
extra graph runs by ``runtime.max_graph_batch``."""

from __future__ import annotations

import pytest
import torch

from camserve.chunking import run_in_chunks
from camserve.outputs import ExplainOutputs


def test_tensor_outputs_are_the_unchunked_result_and_chunks_never_exceed_the_size() -> None:
    values = torch.arange(10.0).reshape(10, 1) * torch.tensor([[1.0, -1.0]])
    seen: list[slice] = []

    def run(items: slice) -> torch.Tensor:
        seen.append(items)
        return values[items] * 2

    out = run_in_chunks(run, 10, 4)
    assert torch.equal(out, values * 2)
    assert [(s.start, s.stop) for s in seen] == [(0, 4), (4, 8), (8, 10)]


def test_one_chunk_is_returned_as_it_is() -> None:
    result = torch.ones(3, 2)
    assert run_in_chunks(lambda items: result, 3, 3) is result


def test_explain_outputs_are_joined_field_by_field_and_a_missing_field_stays_missing() -> None:
    def run(items: slice) -> ExplainOutputs:
        n = items.stop - items.start
        ids = torch.arange(items.start, items.stop)
        return ExplainOutputs(
            logits=ids.float().reshape(n, 1).expand(n, 3),
            activations=ids.float().reshape(n, 1, 1, 1),
            gradients=ids.float().reshape(n, 1, 1, 1, 1),
            target_ids=ids.reshape(n, 1),
        )

    out = run_in_chunks(run, 5, 2)
    assert out.extra_tokens is None
    assert out.target_ids.flatten().tolist() == [0, 1, 2, 3, 4]
    assert out.logits.shape == (5, 3) and out.logits[:, 2].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert out.gradients.shape == (5, 1, 1, 1, 1)


@pytest.mark.parametrize(("count", "size", "message"), [(3, 0, "chunk_size"), (0, 4, "count")])
def test_impossible_chunking_is_refused(count: int, size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_in_chunks(lambda items: torch.zeros(1), count, size)
