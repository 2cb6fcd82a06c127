"""A model directory: the graphs ``camserve export`` writes and the manifest that describes them.

Layout::

    DIR/manifest.json      this module's Manifest, as JSON
    DIR/explain.onnx       images [N,C,H,W], targets [N,T], target_kinds [N,T] (+ target_data [N,T,L])
                           -> logits, activations, gradients, target_ids, target_scores (+ extra_tokens)
                           (``Manifest.explain_inputs``; exports before target kinds: images, targets)
    DIR/forward.onnx       images -> logits (class scores; forward only: Score-CAM, evaluation)
    DIR/head.onnx          activations [M,K,h,w] (+ extra_tokens) -> logits (Ablation-CAM)
    DIR/guided.onnx        images + the explain graph's target inputs -> input gradients [N,T,C,H,W]
    DIR/fullgradient.onnx  optional: images, targets -> FullGrad maps [N,T,H,W] (class logits)
    DIR/cam_weights.npz    arrays 'weight' [C,K] and 'bias' [C], only when the head is GAP -> linear (CAM)
    DIR/maps.onnx          optional (``export --maps``): images, targets -> logits, target_ids and one
                           map [N,T,H',W'] per method, the CAM maths as ONNX operators (``Manifest.maps``)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.methods.target_kinds import OUTPUT_KINDS, TargetSpec

MANIFEST_NAME = "manifest.json"
FORMAT = "camserve-model/1"


@dataclass
class GraphFile:
    file: str
    sha256: str


@dataclass
class MapsGraph:
    """What ``maps.onnx`` computes: ``outputs`` = logits, target_ids, then one map per method, in
    ``methods`` order, min-max normalised per map, of ``size`` [H', W'] and ``dtype``."""

    methods: list[str]
    inputs: list[str]
    outputs: list[str]
    size: list[int]  # [H', W']
    dtype: str  # "float32" (in [0, 1]) or "uint8" (round(255 m))
    eps: float  # maps whose max - min <= eps are all zeros


@dataclass
class Manifest:
    name: str
    architecture: str  # torchvision name, or "module:pkg.mod:factory"
    target_layer: str
    input_size: list[int]  # [3, H, W]
    mean: list[float]
    std: list[float]
    class_names: list[str]
    activation_shape: list[int]  # [K, h, w] after the token reshape
    layout: str  # "nchw", "nhwc" or "tokens": how the layer's raw output was reshaped to [N,K,h,w]
    prefix_tokens: int = 0  # tokens dropped by the "tokens" layout (class/register tokens)
    # what the explain graph explains (camserve.methods.target_kinds); the defaults are what exports
    # before target kinds were: a classifier's logits, targets = class ids only
    output_kind: str = "classification"
    output_shape: list[int] = field(default_factory=list)  # per image: [C] | [C,h',w'] | [A,C] | [D]
    explain_inputs: list[str] = field(default_factory=lambda: ["images", "targets"])
    outputs: list[str] = field(default_factory=list)  # the model's outputs: dict keys / tuple indices
    output: str | None = None  # the explained one (None: the first, or the only tensor)
    boxes_output: str | None = None  # detection: the boxes [N,A,4]
    graphs: dict[str, GraphFile] = field(default_factory=dict)
    cam_weights: GraphFile | None = None  # present only for GAP -> linear heads
    maps: MapsGraph | None = None  # present only with a maps graph (graphs["maps"])
    versions: dict[str, str] = field(default_factory=dict)
    opset: int = 18
    format: str = FORMAT
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_kind not in OUTPUT_KINDS:
            raise InvalidArgumentError(
                "manifest", f"output_kind {self.output_kind!r} is not one of {', '.join(OUTPUT_KINDS)}"
            )
        if not self.output_shape:
            self.output_shape = [len(self.class_names)]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def target_spec(self) -> TargetSpec:
        """What targets the model takes (its output kind and shape, its input size)."""
        return TargetSpec(
            self.output_kind,
            self.num_classes,
            tuple(int(v) for v in self.output_shape),
            (int(self.input_size[1]), int(self.input_size[2])),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        if data.get("format") != FORMAT:
            raise InvalidArgumentError("manifest", f"format {data.get('format')!r} is not {FORMAT!r}")
        data["graphs"] = {k: GraphFile(**v) for k, v in data.get("graphs", {}).items()}
        if data.get("cam_weights"):
            data["cam_weights"] = GraphFile(**data["cam_weights"])
        if data.get("maps"):
            data["maps"] = MapsGraph(**data["maps"])
        return cls(**data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModelDirectory:
    """A loaded model directory: its manifest and the paths of its graphs."""

    def __init__(self, path: str | Path, verify: bool = True) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise NotFoundError(
                f"model directory {self.path}: no {MANIFEST_NAME} (run `camserve export` first)"
            )
        try:
            self.manifest = Manifest.from_dict(json.loads(manifest_path.read_text()))
        except (TypeError, json.JSONDecodeError) as exc:
            raise InvalidArgumentError("manifest", f"{manifest_path}: {exc}") from None
        if verify:
            self.verify()

    @property
    def name(self) -> str:
        return self.manifest.name

    def graph_path(self, graph: str) -> Path:
        if graph not in self.manifest.graphs:
            known = ", ".join(sorted(self.manifest.graphs))
            raise NotFoundError(f"model {self.name!r} has no {graph!r} graph (has: {known})")
        return self.path / self.manifest.graphs[graph].file

    def has_graph(self, graph: str) -> bool:
        return graph in self.manifest.graphs

    def verify(self) -> None:
        """Check every graph's checksum against the manifest."""
        files = list(self.manifest.graphs.values())
        if self.manifest.cam_weights is not None:
            files.append(self.manifest.cam_weights)
        for entry in files:
            path = self.path / entry.file
            if not path.is_file():
                raise NotFoundError(f"model directory {self.path}: {entry.file} is missing")
            if sha256_file(path) != entry.sha256:
                raise InvalidArgumentError(
                    "model", f"{path}: checksum differs from the manifest (file changed after export)"
                )
