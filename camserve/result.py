"""What ``Explainer.explain`` returns: maps per method, logits, targets and predictions, as numpy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from camserve.errors import InvalidArgumentError
from camserve.files import write_atomic
from camserve.images import denormalize, display_rgb
from camserve.methods.target_kinds import IMAGE_KINDS, OUTPUT_KINDS


@dataclass(frozen=True)
class Prediction:
    class_id: int
    name: str
    probability: float  # softmax of the logits


@dataclass
class ExplainResult:
    """Maps and predictions for N images and T targets per image.

    maps[method]  float32 [N,T,H',W']  ReLU'd maps, min-max normalised to [0, 1] per map unless
                                       ExplainOptions.normalize is False; H'xW' is the output size
    rgb[method]   float32 [N,T,3,H,W]  signed colour evidence of guidedbackprop / guidedgradcam
    logits        float32 [N,C]        class scores (a classifier's logits; see
                                       ``target_kinds.class_scores`` for other outputs)
    probabilities float32 [N,C]        softmax of the logits
    target_ids    int64   [N,T]        the classes explained (negative targets resolved; the
                                       image index for ``*_image`` targets)
    target_scores float32 [N,T]        the explained scalars (a logit, a probability, a region's
                                       sum, a similarity...: ``target_kinds.target_scores``)
    target_kinds  str     [N,T]        their kinds ("logit", "probability", ...)
    predictions   per image, the top-k classes by probability
    images        float32 [N,3,H,W]    the preprocessed input the graphs saw (for overlays)
    """

    maps: dict[str, np.ndarray]
    logits: np.ndarray
    probabilities: np.ndarray
    target_ids: np.ndarray
    predictions: list[list[Prediction]]
    images: np.ndarray
    class_names: list[str]
    mean: list[float]
    std: list[float]
    rgb: dict[str, np.ndarray] = field(default_factory=dict)
    model_name: str = ""
    target_scores: np.ndarray | None = None  # None only where a front door does not carry them yet
    target_kinds: np.ndarray | None = None

    @property
    def methods(self) -> list[str]:
        return list(self.maps)

    def class_name(self, class_id: int) -> str:
        return self.class_names[class_id] if 0 <= class_id < len(self.class_names) else str(class_id)

    def target_label(self, image: int, target: int) -> str:
        """How people read target [image, target]: its class name, with its kind unless a logit."""
        class_id = int(self.target_ids[image, target])
        kind = "logit" if self.target_kinds is None else str(self.target_kinds[image, target])
        if kind == "logit":
            return self.class_name(class_id)
        if kind in IMAGE_KINDS:
            return f"{kind} to image {class_id}"
        if kind in OUTPUT_KINDS["embedding"]:
            return f"{kind} to the concept"
        return f"{kind} of {self.class_name(class_id)}"

    def pixels(self) -> np.ndarray:
        """The input as displayable RGB [N,H,W,3] in [0, 1] (preprocessing undone; grey for inputs
        of other than 3 channels, see ``camserve.images.display_rgb``)."""
        return display_rgb(denormalize(torch.from_numpy(self.images), self.mean, self.std)).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        """What :meth:`save_npz` writes: one array per method, ``<method>_rgb`` for colour evidence,
        ``logits``, ``target_ids``, ``target_scores``, ``target_kinds``, ``probabilities`` and
        ``class_names``."""
        out: dict[str, np.ndarray] = dict(self.maps)
        out.update({f"{method}_rgb": array for method, array in self.rgb.items()})
        out["logits"] = self.logits
        out["target_ids"] = self.target_ids
        if self.target_scores is not None:
            out["target_scores"] = self.target_scores
        if self.target_kinds is not None:
            out["target_kinds"] = np.asarray(self.target_kinds, dtype=str)
        out["probabilities"] = self.probabilities
        out["class_names"] = np.asarray(self.class_names, dtype=str)
        return out

    def save_npz(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`arrays` to ``path`` atomically (a temporary file in the same directory, then
        a rename): a reader never sees a partial file, and a failure leaves none behind."""
        return save_npz_atomic(path, self.arrays())


def save_npz_atomic(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """np.savez of ``arrays`` to ``path`` through a temporary file and os.replace."""
    target = Path(path)
    if target.is_dir():
        raise InvalidArgumentError("out", f"{target} is a directory; give a file name such as result.npz")
    if not target.parent.is_dir():
        raise InvalidArgumentError("out", f"directory {target.parent} does not exist")
    # a file object: savez would append ".npz" to a name
    write_atomic(target, lambda fh: np.savez(fh, allow_pickle=False, **arrays), prefix=f".{target.name}.")
    return target
