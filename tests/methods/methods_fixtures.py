"""Runners and autograd references shared by the method tests.

``ScriptedRunner`` serves hand-written tensors (golden tests); ``CountingRunner`` wraps any runner
and records the batch size of every graph call. The autograd references (hooks and
``torch.autograd.grad`` on the model itself) live in ``tests.reference.autograd_cam``.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.export.eager import TorchGraphRunner
from camserve.methods import MethodContext
from camserve.methods.target_kinds import TargetTable
from camserve.methods.targets import resolve_targets
from camserve.outputs import ExplainOutputs

# The golden tensors (K = 2 channels, 2x2 maps) whose maps the golden tests work out by hand.
A1 = [[1.0, 2.0], [0.0, 1.0]]  # sum 4, mean 1
A2 = [[0.0, 1.0], [4.0, 0.0]]  # sum 5, mean 1.25
G1 = [[1.0, 1.0], [1.0, 1.0]]  # dy0/dA^1: constant 1
G2 = [[1.0, -1.0], [1.0, 0.0]]  # dy0/dA^2
HEAD_W = [[1.0, 2.0], [3.0, -1.0]]  # head y_c = sum_k W_ck mean(A^k): y0 = 3.5, y1 = 1.75


def golden_activations() -> torch.Tensor:
    return torch.tensor([[A1, A2]])  # [1,2,2,2]


class ScriptedRunner:
    """A GraphRunner over fixed tensors: activations [N,K,h,w]; class_gradients [N,C,K,h,w] (what
    dy_c/dA would be); the head is GAP then the linear map ``head_weights`` [C,K]; forward(x) scores
    class c as forward_signs[c] * (sum of x's first colour channel); guided returns ``guided_gradients``."""

    def __init__(
        self,
        activations: torch.Tensor,
        class_gradients: torch.Tensor,
        head_weights: torch.Tensor,
        forward_signs: torch.Tensor | None = None,
        guided_gradients: torch.Tensor | None = None,
    ) -> None:
        self.activations = activations
        self.class_gradients = class_gradients
        self.head_weights = head_weights
        self.forward_signs = forward_signs
        self.guided_gradients = guided_gradients
        self.calls: dict[str, list[int]] = defaultdict(list)

    def explain(self, images: torch.Tensor, targets: TargetTable) -> ExplainOutputs:
        self.calls["explain"].append(images.shape[0])
        logits = self.activations.mean(dim=(-2, -1)) @ self.head_weights.T
        ids = resolve_targets(targets.ids, logits)
        rows = torch.arange(ids.shape[0]).unsqueeze(1)
        return ExplainOutputs(logits, self.activations, self.class_gradients[rows, ids], ids)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        self.calls["head"].append(activations.shape[0])
        return activations.mean(dim=(-2, -1)) @ self.head_weights.T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls["forward"].append(images.shape[0])
        return images[:, 0].sum(dim=(-2, -1)).unsqueeze(1) * self.forward_signs.unsqueeze(0)

    def guided(self, images: torch.Tensor, targets: TargetTable) -> torch.Tensor:
        self.calls["guided"].append(images.shape[0])
        return self.guided_gradients


def golden_runner() -> ScriptedRunner:
    """A1, A2 with gradients G1, G2 for class 0 (class 1 gets their negatives) and the HEAD_W head."""
    grads_class0 = torch.tensor([G1, G2])
    class_gradients = torch.stack([grads_class0, -grads_class0]).unsqueeze(0)  # [1,C=2,K=2,2,2]
    return ScriptedRunner(
        golden_activations(),
        class_gradients,
        torch.tensor(HEAD_W),
        forward_signs=torch.tensor([1.0, -1.0]),
    )


def context_for(outputs: ExplainOutputs, images: torch.Tensor, **kwargs) -> MethodContext:
    """A MethodContext as compute_maps builds it, for calling one method directly."""
    return MethodContext(
        runner=kwargs.pop("runner", None),
        images=images,
        outputs=outputs,
        options=kwargs.pop("options", ExplainOptions()),
        runtime=kwargs.pop("runtime", RuntimeConfig(kernels="torch")),
        **kwargs,
    )


class CountingRunner:
    """Wraps a runner; ``calls[graph]`` lists the batch size of every call, ``seen[graph]`` the inputs."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: dict[str, list[int]] = defaultdict(list)
        self.seen: dict[str, list[torch.Tensor]] = defaultdict(list)

    def _record(self, graph: str, tensor: torch.Tensor) -> None:
        self.calls[graph].append(int(tensor.shape[0]))
        self.seen[graph].append(tensor.detach().clone())

    def explain(self, images, targets):
        self._record("explain", images)
        return self.inner.explain(images, targets)

    def forward(self, images):
        self._record("forward", images)
        return self.inner.forward(images)

    def head(self, activations, extra_tokens=None):
        self._record("head", activations)
        return self.inner.head(activations, extra_tokens)

    def guided(self, images, targets):
        self._record("guided", images)
        return self.inner.guided(images, targets)


class GapLinearHeadRunner(TorchGraphRunner):
    """TorchGraphRunner on a torchvision ResNet cut at ``layer4`` whose head runs only avgpool + fc,
    as the exported head graph does. (The eager SplitModel.head also runs the body on a dummy image,
    which makes hundreds of ablation runs slow on a CPU; the tests check both heads agree.)"""

    def __init__(self, model: nn.Module, input_size: tuple[int, int, int]) -> None:
        super().__init__(model, "layer4", input_size)
        self.fc = copy.deepcopy(model.fc).eval().requires_grad_(False)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(activations.mean(dim=(-2, -1)))
