"""The Python API: ``Explainer(model).explain(images, methods, targets)`` -> ExplainResult.

>>> from camserve import Explainer
>>> explainer = Explainer()                      # the embedded default model
>>> result = explainer.explain(["cat.png"], methods=["gradcam", "scorecam"], targets=[[-1, -2]])
>>> result.maps["gradcam"].shape                 # [N, T, H, W]
(1, 2, 64, 64)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from camserve import hostcopy
from camserve.config import CamserveConfig, ExplainOptions, RuntimeConfig, check_methods, check_options
from camserve.defaults import DEFAULT_METHODS
from camserve.errors import InvalidArgumentError
from camserve.images import ImageLike, preprocess
from camserve.methods import ComputedMaps, get_method, known_methods, method_class
from camserve.methods.compute import checked_maps
from camserve.methods.target_kinds import TARGET_KINDS, TargetSpec
from camserve.methods.targets import TargetsLike
from camserve.modeldir import ModelDirectory
from camserve.outputs import GraphRunner
from camserve.result import ExplainResult, Prediction

CAM_WEIGHTS_KEY = "weight"  # cam_weights.npz: "weight" [C,K] and "bias" [C], as camserve.export writes them

# Why a method cannot run on a model that lacks one of its requirements.
_MISSING = {
    "cam_weights": "its head is not global average pooling followed by one linear layer, so it has no "
    "class weights for CAM (gradcam gives CAM's map on such heads)",
    "guided": "it was exported without a guided-backprop graph",
    "fullgradient": "it was exported without a fullgradient graph "
    "(camserve export --graphs explain,forward,head,guided,fullgradient)",
    "forward": "it was exported without a forward graph",
    "head": "it was exported without a head graph (the layers after the target layer could not be cut out)",
    "class_logits": "it explains class logits only (logit_targets_only), and this model's output is "
    "not a classifier's (docs/targets.md)",
}


class Explainer:
    """Explains one model's predictions with CAM methods.

    model   a model directory (``camserve export`` output) as a path or ModelDirectory; None: the
            embedded default model, built into ``config.runtime.cache_dir`` on first use
    config  None: ``CamserveConfig.load()`` (defaults, then ``CAMSERVE_*`` environment variables)
    runner  what runs the graphs; None: ONNX Runtime on the model directory's graphs
            (``camserve.runtime.OnnxGraphRunner``). Pass ``camserve.export.eager.TorchGraphRunner``
            to run eager PyTorch instead.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | ModelDirectory | None = None,
        config: CamserveConfig | None = None,
        runner: GraphRunner | None = None,
    ) -> None:
        self.config = config if config is not None else CamserveConfig.load()
        check_options(self.config.explain)  # once: compute() trusts config.explain
        self.model_dir = _model_directory(model, self.config.runtime)
        self.manifest = self.model_dir.manifest
        self.target_spec: TargetSpec = self.manifest.target_spec()  # which targets the model takes
        self.runner = runner if runner is not None else _onnx_runner(self.model_dir, self.config.runtime)
        self.cam_weights = _cam_weights(self.model_dir)
        self._copy_streams = hostcopy.HostCopyStreams()  # result()'s device-to-host copies

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest.class_names)

    @property
    def input_size(self) -> tuple[int, int, int]:
        channels, height, width = self.manifest.input_size
        return int(channels), int(height), int(width)

    @property
    def supported_methods(self) -> list[str]:
        """The methods this model can run: ``cam`` only with classifier weights (GAP -> linear head),
        the guided ones only with a guided graph, those that explain class logits only
        (``logit_targets_only``) only on classifiers, and so on."""
        return [name for name in known_methods() if not self._missing(name)]

    def preprocess(self, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Images in any accepted form (see ``camserve.images``) -> float32 [N,3,H,W] model input."""
        return preprocess(images, self.manifest.input_size, self.manifest.mean, self.manifest.std)

    def explain(
        self,
        images: ImageLike | Sequence[ImageLike],
        methods: str | Sequence[str] = DEFAULT_METHODS,
        targets: TargetsLike = None,
        options: ExplainOptions | None = None,
    ) -> ExplainResult:
        """Maps of every method for every image and target.

        images   file paths, PIL images, uint8 [H,W,3] pixels or float32 [N,3,H,W] preprocessed
                 tensors, alone or in a list (``camserve.images``)
        methods  names from ``supported_methods``; all gradient methods share one explain run
        targets  None (explain each prediction), an int for all images, or an [N,T] / [1,T] table
                 of class ids where -k means the k-th best class, whose rows may also hold
                 ``Target(kind, ...)`` entries (probabilities, regions, boxes, embedding
                 similarities: ``camserve.methods.targets``, docs/targets.md); kinds the model's
                 output takes: ``target_spec.kinds``
        options  None: ``config.explain``
        """
        method_names = self.check_methods(methods)
        options = check_options(options) if options is not None else self.config.explain
        batch = self.preprocess(images)
        computed = self.compute(batch, targets, method_names, options)
        return self.result(batch, computed, options)

    def compute(
        self,
        images: torch.Tensor,
        targets: TargetsLike,
        methods: Sequence[str],
        options: ExplainOptions | None = None,
    ) -> ComputedMaps:
        """The tensor-level call under :meth:`explain`: preprocessed images [N,3,H,W] in, torch maps
        out (the service's batcher, the batch job and the evaluation call it). ``methods`` as
        :meth:`check_methods` returns them and ``options`` as ``check_options`` does: callers check
        a request once where it comes in, not once per batch."""
        return checked_maps(
            self.runner,
            images,
            targets,
            [get_method(name) for name in methods],
            spec=self.target_spec,
            options=options if options is not None else self.config.explain,
            runtime=self.config.runtime,
            cam_weights=self.cam_weights,
            model_name=self.name,
        )

    def check_methods(self, methods: str | Sequence[str]) -> tuple[str, ...]:
        """The method names in order, duplicates dropped; InvalidArgumentError for none or unknown
        names, UnsupportedError (with why) for methods this model cannot run
        (``camserve.config.check_methods``, the service's check too)."""
        names = [methods] if isinstance(methods, str) else list(methods)
        if not names:
            raise InvalidArgumentError("methods", "no method given")
        return check_methods(
            [("methods", name) for name in names], self.supported_methods, self.name, self._why
        )

    def _why(self, name: str) -> str | None:
        missing = self._missing(name)
        return None if missing is None else _MISSING.get(missing, missing)

    def _missing(self, name: str) -> str | None:
        if method_class(name).logit_targets_only and self.target_spec.output_kind != "classification":
            return "class_logits"
        for requirement in sorted(method_class(name).requires):
            if requirement == "cam_weights":
                if self.cam_weights is None:
                    return requirement
            elif not self.model_dir.has_graph(requirement):
                return requirement
        return None

    def result(self, images: torch.Tensor, computed: ComputedMaps, options: ExplainOptions) -> ExplainResult:
        """:meth:`compute`'s tensors -> the ExplainResult on the host (maps, predictions, ...): every
        tensor leaves the device in one ``hostcopy.to_host`` call (one host wait per batch)."""
        tensors = {("logits", ""): computed.logits, ("target_ids", ""): computed.target_ids}
        tensors[("target_scores", "")] = computed.target_scores
        tensors[("images", "")] = images
        tensors.update({("maps", method): maps for method, maps in computed.maps.items()})
        tensors.update({("rgb", method): rgb for method, rgb in computed.rgb.items()})
        host = hostcopy.to_host(tensors, self._copy_streams)
        logits = host[("logits", "")].to(torch.float32)
        probabilities = torch.softmax(logits, dim=1)
        top = probabilities.topk(min(options.topk_predictions, probabilities.shape[1]), dim=1)
        names = self.class_names
        predictions = [
            [
                Prediction(int(class_id), names[int(class_id)], float(probability))
                for probability, class_id in zip(row_probabilities, row_ids, strict=True)
            ]
            for row_probabilities, row_ids in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        return ExplainResult(
            maps={method: _numpy(host[("maps", method)]) for method in computed.maps},
            logits=logits.numpy(),
            probabilities=probabilities.numpy(),
            target_ids=host[("target_ids", "")].to(torch.int64).numpy(),
            target_scores=_numpy(host[("target_scores", "")]),
            target_kinds=np.asarray(TARGET_KINDS)[computed.target_kinds.cpu().numpy()],
            predictions=predictions,
            images=_numpy(host[("images", "")]),
            class_names=names,
            mean=list(self.manifest.mean),
            std=list(self.manifest.std),
            rgb={method: _numpy(host[("rgb", method)]) for method in computed.rgb},
            model_name=self.name,
        )


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host tensor (``hostcopy.to_host``'s) as float32 numpy."""
    return tensor.to(torch.float32).contiguous().numpy()


def _model_directory(
    model: str | os.PathLike[str] | ModelDirectory | None, runtime: RuntimeConfig
) -> ModelDirectory:
    if isinstance(model, ModelDirectory):
        return model
    if model is None:
        from camserve.default_model import default_model_dir

        found = default_model_dir(cache_dir=runtime.cache_dir)
        return found if isinstance(found, ModelDirectory) else ModelDirectory(found)
    if isinstance(model, str | os.PathLike):
        return ModelDirectory(Path(model))
    raise InvalidArgumentError(
        "model", f"expected a model directory path, a ModelDirectory or None, got {type(model).__name__}"
    )


def _onnx_runner(model_dir: ModelDirectory, runtime: RuntimeConfig) -> GraphRunner:
    from camserve.runtime import OnnxGraphRunner  # imports onnxruntime: only when it is needed

    return OnnxGraphRunner(model_dir, runtime)


def _cam_weights(model_dir: ModelDirectory) -> torch.Tensor | None:
    """Classifier W [C,K] from cam_weights.npz, None when the head is not GAP -> linear."""
    entry = model_dir.manifest.cam_weights
    if entry is None:
        return None
    path = model_dir.path / entry.file
    with np.load(path, allow_pickle=False) as data:
        if CAM_WEIGHTS_KEY not in data.files:
            raise InvalidArgumentError(
                "model", f"{path}: no {CAM_WEIGHTS_KEY!r} array (has {', '.join(data.files)})"
            )
        return torch.from_numpy(np.ascontiguousarray(data[CAM_WEIGHTS_KEY], dtype=np.float32))
