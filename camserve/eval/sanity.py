"""Sanity check for saliency maps: cascading model-parameter randomisation.

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, section 3.1: re-initialise the
model's weights layer by layer, from the output (top) towards the input, keeping earlier
randomisations (the cascade), and compare each method's maps on the randomised model with its maps
on the trained model. A method whose maps explain the *model* must change as its weights are
destroyed: the Spearman rank correlation between trained and randomised maps must fall. A method
whose maps stay the same is an edge detector, not an explanation.

How the randomised models run: the check takes a PyTorch ``nn.Module`` and a callable that turns a
model into maps (``camserve eval`` wraps it in ``camserve.export.eager.TorchGraphRunner``,
the eager-autograd GraphRunner, and runs the CAM methods on it). Re-exporting an ONNX model directory
for every stage of the cascade would test the same maths through minutes of export per stage; the
ONNX runner and the eager runner are checked against each other by the export tests. The maps of both
models are taken for the *same* target classes (those the trained model was asked about), since the
randomised model's own predictions are meaningless.

Re-initialisation uses each layer's own ``reset_parameters()`` (PyTorch's default initialiser:
Kaiming-uniform for conv/linear, weight 1 / bias 0 / fresh running statistics for batch norm) under a
fixed seed. Adebayo et al. draw from a truncated normal; either destroys what training learned.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from camserve.errors import InvalidArgumentError

if TYPE_CHECKING:
    from camserve.explainer import Explainer
    from camserve.outputs import GraphRunner

log = logging.getLogger(__name__)

MapsForModel = Callable[[nn.Module], dict[str, torch.Tensor]]


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..P along the last dimension, ties sharing the mean of their ranks (as scipy.stats.rankdata).

    Sorted once; each tie group's first and last position come from running max/min over the group
    boundaries, so it is O(P log P) and batched.
    """
    p = values.shape[-1]
    sorted_values, order = torch.sort(values, dim=-1, stable=True)
    pos = torch.arange(p, device=values.device).expand_as(order)
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[..., 1:] = sorted_values[..., 1:] != sorted_values[..., :-1]
    ends = torch.ones_like(starts)
    ends[..., :-1] = starts[..., 1:]
    first = torch.where(starts, pos, torch.zeros_like(pos)).cummax(dim=-1).values
    last = torch.where(ends, pos, torch.full_like(pos, p - 1)).flip(-1).cummin(dim=-1).values.flip(-1)
    sorted_ranks = (first + last).to(torch.float64) / 2 + 1
    ranks = torch.empty_like(sorted_ranks)
    ranks.scatter_(-1, order, sorted_ranks)
    return ranks


def spearman_rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rho between maps a and b [...,H,W] -> [...] (float64): the Pearson correlation of their
    average ranks (Spearman, 1904). A constant map has no ranking; its correlation is defined as 0."""
    if a.shape != b.shape or a.dim() < 2:
        raise InvalidArgumentError(
            "maps", f"need two maps of one shape [...,H,W], got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    ra = average_ranks(a.reshape(*a.shape[:-2], -1).double())
    rb = average_ranks(b.reshape(*b.shape[:-2], -1).double())
    ra = ra - ra.mean(-1, keepdim=True)
    rb = rb - rb.mean(-1, keepdim=True)
    denom = (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()
    num = (ra * rb).sum(-1)
    return torch.where(denom > 0, num / denom.clamp_min(1e-300), torch.zeros_like(num))


def randomisation_order(model: nn.Module) -> list[str]:
    """Names of the modules the cascade re-initialises, top (output) first: every module that has a
    ``reset_parameters`` method and parameters of its own, in reverse registration order (the order
    of ``named_modules``, which for sequential networks is the forward order)."""
    names = [
        name
        for name, module in model.named_modules()
        if name
        and hasattr(module, "reset_parameters")
        and any(True for _ in module.parameters(recurse=False))
    ]
    return names[::-1]


@dataclass
class SanityResult:
    """Spearman rho between the trained model's maps and the maps after each cascade stage.

    stages        names of the layers randomised at each stage (cumulative: stage s has layers 0..s random)
    correlations  method -> [S, N, T] float64, rho per stage, image and target
    """

    stages: list[str]
    correlations: dict[str, torch.Tensor] = field(default_factory=dict)

    def mean_curve(self, method: str) -> torch.Tensor:
        """Mean rho per stage [S] for one method."""
        return self.correlations[method].flatten(1).mean(-1)

    def final(self, method: str) -> torch.Tensor:
        """rho per map after the whole cascade (every layer random), flattened [N*T]."""
        return self.correlations[method][-1].reshape(-1)


def cascading_randomisation(
    model: nn.Module,
    maps_for_model: MapsForModel,
    stages: list[str] | None = None,
    seed: int = 0,
) -> SanityResult:
    """Adebayo et al.'s cascading randomisation test (see the module docstring).

    ``maps_for_model(model)`` returns {method: maps [N,T,H,W]} for a fixed batch of images and targets;
    it is called once on ``model`` and once per stage on a randomised deep copy (``model`` itself is
    not changed). ``stages`` defaults to ``randomisation_order(model)``: every parameterised layer,
    top first.
    """
    order = randomisation_order(model) if stages is None else list(stages)
    modules = dict(model.named_modules())
    for name in order:
        if name not in modules or not hasattr(modules[name], "reset_parameters"):
            raise InvalidArgumentError(
                "stages", f"{name!r} is not a module of the model with reset_parameters"
            )
    if not order:
        raise InvalidArgumentError("model", "has no layer with parameters to randomise")
    was_training = model.training
    model.eval()
    reference = maps_for_model(model)  # no torch.no_grad(): gradient methods need autograd
    result = SanityResult(stages=order)
    per_stage: dict[str, list[torch.Tensor]] = {m: [] for m in reference}
    randomised = copy.deepcopy(model).eval()
    random_modules = dict(randomised.named_modules())
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for name in order:
            random_modules[name].reset_parameters()
            maps = maps_for_model(randomised)
            for method, ref in reference.items():
                if method not in maps or maps[method].shape != ref.shape:
                    raise InvalidArgumentError(
                        "maps_for_model",
                        f"returned no maps of shape "
                        f"{tuple(ref.shape)} for {method!r} after randomising {name}",
                    )
                per_stage[method].append(spearman_rank_correlation(ref, maps[method]))
            log.debug("sanity: randomised %s", name)
    finally:
        torch.random.set_rng_state(generator_state)
        model.train(was_training)
    result.correlations = {m: torch.stack(v) for m, v in per_stage.items()}
    return result


def classifier_weights(model: nn.Module, like: torch.Tensor | None) -> torch.Tensor | None:
    """The weight [C,K] of the model's last ``nn.Linear`` with the shape of ``like`` (the exported
    classifier weights CAM uses), so that CAM on a randomised model reads the randomised classifier."""
    if like is None:
        return None
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and tuple(module.weight.shape) == tuple(like.shape):
            found = module.weight
    return None if found is None else found.detach().clone()


def explainer_sanity_check(
    explainer: Explainer,
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    methods: Sequence[str],
    runner_for: Callable[[nn.Module], GraphRunner],
    seed: int = 0,
) -> SanityResult:
    """Cascading randomisation of ``model`` (the PyTorch model behind ``explainer``'s model directory)
    for ``methods``, on preprocessed ``images`` [N,3,H,W] and ``targets`` [N,T] (class ids).

    Every model, trained or randomised, runs through ``runner_for(model)`` (the CLI passes
    ``TorchGraphRunner``: eager autograd, the same functions the ONNX graphs are traced from; the core
    does not import the exporter) and ``camserve.methods.compute_maps`` with the explainer's options,
    so the maps are those ``camserve explain`` gives, at the input's size.
    """
    from dataclasses import replace

    from camserve.methods import compute_maps, method_class

    manifest = explainer.manifest
    options = replace(explainer.config.explain, output_size="input", normalize=True)
    methods = list(methods)
    needs_weights = [m for m in methods if "cam_weights" in method_class(m).requires]
    if needs_weights and classifier_weights(model, explainer.cam_weights) is None:
        log.warning(
            "sanity: no linear layer of the model matches the CAM weights; leaving %s out", needs_weights
        )
        methods = [m for m in methods if m not in needs_weights]
    if not methods:
        raise InvalidArgumentError("methods", "no method left for the sanity check")

    def maps_for_model(candidate: nn.Module) -> dict[str, torch.Tensor]:
        computed = compute_maps(
            runner_for(candidate),
            images,
            targets,
            methods,
            num_classes=manifest.num_classes,
            options=options,
            runtime=explainer.config.runtime,
            cam_weights=classifier_weights(candidate, explainer.cam_weights),
            model_name=manifest.name,
        )
        return {name: maps.detach().cpu() for name, maps in computed.maps.items()}

    return cascading_randomisation(model, maps_for_model, seed=seed)
