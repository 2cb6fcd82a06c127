"""Target kinds through compute_maps: a runner that explains any kind (``KindsRunner``: autograd of
``target_kinds.target_scores`` on a tiny conv -> GAP -> linear model, as the exported graphs do) and
maps compared with autograd of the same scalar written by hand on the model; what the extra runs
(noisy copies, guided, chunks) are given."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.methods import compute_maps
from camserve.methods.target_kinds import (
    KIND_CODE,
    Target,
    TargetSpec,
    TargetTable,
    class_scores,
    target_scores,
)
from camserve.methods.targets import resolve_targets
from camserve.outputs import ExplainOutputs

TORCH = RuntimeConfig(kernels="torch")


class KindsRunner:
    """explain / guided / forward of ``body`` (images -> A) then ``head`` (A -> output), any target
    kind of ``output_kind``; ``seen`` records the tables every graph call got."""

    def __init__(self, output_kind: str = "classification") -> None:
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).double().eval()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)).double().eval()
        self.output_kind = output_kind
        self.seen: dict[str, list[TargetTable]] = {"explain": [], "guided": []}

    def _scores(
        self, output: torch.Tensor, table: TargetTable
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, t = table.shape
        logits = class_scores(self.output_kind, output).reshape(n, t, -1)[:, 0].detach()
        ids = resolve_targets(table.ids, logits) if self.output_kind != "embedding" else table.ids
        data = None if table.data is None else table.data.double().reshape(n * t, -1)
        scores = target_scores(self.output_kind, output, ids.reshape(-1), table.kinds.reshape(-1), data, t)
        return logits, ids, scores

    def explain(self, images: torch.Tensor, targets: TargetTable) -> ExplainOutputs:
        self.seen["explain"].append(targets)
        n, t = targets.shape
        acts = self.body(images.double()).detach()
        leaf = acts.repeat_interleave(t, dim=0).requires_grad_(True)
        logits, ids, scores = self._scores(self.head(leaf), targets)
        (grads,) = torch.autograd.grad(scores.sum(), leaf)
        return ExplainOutputs(
            logits, acts, grads.reshape(n, t, *acts.shape[1:]), ids, None, scores.detach().reshape(n, t)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_scores(self.output_kind, self.head(self.body(images.double()))).detach()

    def guided(self, images: torch.Tensor, targets: TargetTable) -> torch.Tensor:
        self.seen["guided"].append(targets)
        n, t = targets.shape
        rep = images.double().repeat_interleave(t, dim=0).requires_grad_(True)
        _, _, scores = self._scores(self.head(self.body(rep)), targets)
        (grads,) = torch.autograd.grad(scores.sum(), rep)
        return grads.reshape(n, t, *images.shape[1:])


def images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(3)) * 2 - 1


def hand_gradcam(runner: KindsRunner, image: torch.Tensor, scalar) -> torch.Tensor:
    """Grad-CAM of ``scalar(output)`` by autograd on the model itself."""
    acts = runner.body(image[None].double()).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(scalar(runner.head(acts)[0]), acts)
    return torch.relu((g.mean(dim=(2, 3), keepdim=True) * acts).sum(1))[0].detach()


SPEC = TargetSpec("classification", 5, (5,), (6, 6))


def test_probability_and_sigmoid_targets_give_the_hand_written_scalars_maps():
    runner = KindsRunner()
    batch = images()
    targets = [[Target("probability", -1), Target("sigmoid", 2), 3]]
    out = compute_maps(
        runner,
        batch,
        targets,
        ["gradcam"],
        spec=SPEC,
        options=ExplainOptions(output_size="feature", normalize=False),
        runtime=TORCH,
    )
    logits = runner.forward(batch)
    best = logits.argmax(1)
    probabilities = torch.softmax(logits, 1)
    want_scores = torch.stack(
        [probabilities[torch.arange(2), best], torch.sigmoid(logits[:, 2]), logits[:, 3]], dim=1
    )
    torch.testing.assert_close(out.target_scores, want_scores)
    assert (
        out.target_kinds.tolist()
        == [[KIND_CODE["probability"], KIND_CODE["sigmoid"], KIND_CODE["logit"]]] * 2
    )
    assert out.target_ids.tolist() == [[int(best[n]), 2, 3] for n in range(2)]
    for n in range(2):
        c = int(best[n])
        scalars = (lambda y, c=c: torch.softmax(y, 0)[c], lambda y: torch.sigmoid(y[2]), lambda y: y[3])
        for t, scalar in enumerate(scalars):
            torch.testing.assert_close(
                out.maps["gradcam"][n, t].double(),
                hand_gradcam(runner, batch[n], scalar),
                rtol=1e-5,
                atol=1e-6,
            )


def test_noisy_copies_explain_the_clean_images_class_with_its_kind():
    runner = KindsRunner()
    batch = images()
    options = ExplainOptions(smooth_n=3)
    compute_maps(
        runner,
        batch,
        [[Target("probability", -1)]],
        ["smoothgradcam++"],
        spec=SPEC,
        options=options,
        runtime=TORCH,
    )
    (table,) = runner.seen["explain"]
    assert table.shape == (2 * 4, 1)  # the clean images and 3 noisy copies, one run
    best = runner.forward(batch).argmax(1)
    assert table.ids[:, 0].tolist() == best.repeat(4).tolist()  # resolved on the clean images
    assert (table.kinds == KIND_CODE["probability"]).all()


def test_guided_gets_the_targets_kinds_with_resolved_ids():
    runner = KindsRunner()
    batch = images()
    out = compute_maps(
        runner, batch, [[Target("sigmoid", -2), 1]], ["guidedbackprop"], spec=SPEC, runtime=TORCH
    )
    (table,) = runner.seen["guided"]
    assert table.ids.tolist() == out.target_ids.tolist()
    assert table.kinds.tolist() == [[KIND_CODE["sigmoid"], KIND_CODE["logit"]]] * 2
    # the guided gradient of the sigmoid target is sigma' times the logit's: same map once normalised
    logit_table = TargetTable(out.target_ids, torch.zeros_like(out.target_ids))
    plain = runner.guided(batch, logit_table)
    ratio = out.rgb["guidedbackprop"][:, 0] / plain[:, 0].float()
    finite = plain[:, 0].abs() > 1e-6
    scale = torch.sigmoid(runner.forward(batch).gather(1, out.target_ids[:, :1]))
    want = (scale * (1 - scale)).float().reshape(2, 1, 1, 1).expand_as(ratio)
    torch.testing.assert_close(ratio[finite], want[finite], rtol=1e-4, atol=1e-6)


def test_image_targets_do_not_depend_on_chunks():
    spec = TargetSpec("embedding", 0, (5,), (6, 6))
    batch = images(3)
    rows = [
        [Target("cosine_image", image=2), Target("dot", vector=np.arange(5.0))],
        [Target("dot_image", image=0), Target("cosine_image", image=1)],
        [Target("cosine_image", image=0), Target("dot_image", image=2)],
    ]
    results = []
    for chunk in (1, 8):
        runner = KindsRunner("embedding")
        runtime = RuntimeConfig(kernels="torch", max_graph_batch=chunk)
        results.append(compute_maps(runner, batch, rows, ["gradcam"], spec=spec, runtime=runtime))
    e = runner.forward(batch)
    cos = torch.nn.functional.cosine_similarity
    want = torch.stack(
        [
            torch.stack([cos(e[0], e[2], dim=0), e[0] @ torch.arange(5.0).double()]),
            torch.stack([e[1] @ e[0], cos(e[1], e[1], dim=0)]),
            torch.stack([cos(e[2], e[0], dim=0), e[2] @ e[2]]),
        ]
    )
    for out in results:
        torch.testing.assert_close(out.target_scores, want)
        assert out.target_ids.tolist() == [[2, 0], [0, 1], [0, 2]]
        assert out.target_kinds[0].tolist() == [KIND_CODE["cosine_image"], KIND_CODE["dot"]]
    torch.testing.assert_close(results[0].maps["gradcam"], results[1].maps["gradcam"])
