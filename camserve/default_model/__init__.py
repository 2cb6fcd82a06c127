"""The embedded default models: DigitCamNet trained on the digits localisation task, and its dense
(segmentation) variant DigitSegNet trained on the same scenes' exact masks.

Its weights ship with camserve (``weights.pt``, ~200 kB, reproducible with
``python -m camserve.default_model.train``), so ``camserve explain`` and ``camserve serve`` work
with no model argument and no download: the first use exports the model directory into the
cache (``default_model_dir``) and later uses find it there. The dense model ships beside it
(``dense_weights.pt``, ``python -m camserve.default_model.train --dense``) and is exported, with
output kind "dense", by ``dense_model_dir``.
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from camserve.default_model.data import CLASS_NAMES
from camserve.default_model.net import INPUT_SIZE, MEAN, STD, TARGET_LAYER, DigitCamNet, DigitSegNet
from camserve.errors import CamserveError, InvalidArgumentError, NotFoundError
from camserve.modeldir import ModelDirectory, sha256_file

logger = logging.getLogger(__name__)

WEIGHTS_PATH = Path(__file__).with_name("weights.pt")
TRAINING_RECORD_PATH = Path(__file__).with_name("training.json")
MODEL_NAME = "digits"
ARCHITECTURE = "camserve-digits"
SHORT_SHA = 12  # hex digits of the weights' sha256 in the cache folder's name
# The exported graphs' interface, in the cache folder's name: a checkout whose export writes other
# graphs (2: target kinds, issue 21) builds its own folder beside an older one, never over it
GRAPHS_VERSION = 2
DENSE_WEIGHTS_PATH = Path(__file__).with_name("dense_weights.pt")
DENSE_TRAINING_RECORD_PATH = Path(__file__).with_name("dense_training.json")
DENSE_MODEL_NAME = "digits-dense"
DENSE_ARCHITECTURE = "camserve-digits-dense"
#: The dense model's classes: the digits keep their ids, the background is last (net.BACKGROUND).
DENSE_CLASS_NAMES = [*CLASS_NAMES, "background"]
# every graph, so that every method runs on the default model; a cached directory missing one (exported
# by an older camserve) is exported again
GRAPHS = ("explain", "forward", "head", "guided", "fullgradient")

__all__ = [
    "ARCHITECTURE",
    "DENSE_ARCHITECTURE",
    "DENSE_CLASS_NAMES",
    "DENSE_MODEL_NAME",
    "DENSE_WEIGHTS_PATH",
    "MODEL_NAME",
    "WEIGHTS_PATH",
    "DigitCamNet",
    "DigitSegNet",
    "default_model_dir",
    "dense_model_dir",
    "export_default_model",
    "export_dense_model",
    "load_default_model",
    "load_dense_model",
]


def load_default_model(weights: str | Path | None = None) -> DigitCamNet:
    """A DigitCamNet in eval mode with the committed weights (or the state_dict at ``weights``)."""
    model = DigitCamNet(num_classes=len(CLASS_NAMES))
    _load_state(model, WEIGHTS_PATH if weights is None else Path(weights).expanduser())
    return model.eval()


def load_dense_model(weights: str | Path | None = None) -> DigitSegNet:
    """A DigitSegNet in eval mode with the committed dense weights (or the state_dict at ``weights``)."""
    model = DigitSegNet(num_classes=len(DENSE_CLASS_NAMES))
    _load_state(model, DENSE_WEIGHTS_PATH if weights is None else Path(weights).expanduser())
    return model.eval()


def _load_state(model: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise NotFoundError(f"weights: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (pickle.UnpicklingError, RuntimeError, KeyError, EOFError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidArgumentError(
            "weights", f"{path} is not a {type(model).__name__} state_dict ({reason})"
        ) from None


def export_default_model(out_dir: str | Path, weights: str | Path | None = None, force: bool = False) -> Path:
    """Export the default model (committed weights, or ``weights``) to the model directory ``out_dir``."""
    from camserve.export import export_model

    model_dir = export_model(
        load_default_model(weights),
        TARGET_LAYER,
        INPUT_SIZE,
        Path(out_dir).expanduser(),
        name=MODEL_NAME,
        architecture=ARCHITECTURE,
        mean=list(MEAN),
        std=list(STD),
        class_names=list(CLASS_NAMES),
        force=force,
        graphs=GRAPHS,
    )
    return model_dir.path


def export_dense_model(out_dir: str | Path, weights: str | Path | None = None, force: bool = False) -> Path:
    """Export the dense model (committed weights, or ``weights``) to the model directory ``out_dir``,
    output kind "dense": logits [11,64,64], region and predicted_region targets."""
    from camserve.export import export_model

    model_dir = export_model(
        load_dense_model(weights),
        TARGET_LAYER,
        INPUT_SIZE,
        Path(out_dir).expanduser(),
        name=DENSE_MODEL_NAME,
        architecture=DENSE_ARCHITECTURE,
        mean=list(MEAN),
        std=list(STD),
        class_names=list(DENSE_CLASS_NAMES),
        force=force,
        output_kind="dense",
    )
    return model_dir.path


def default_model_dir(
    cache_dir: str = "~/.cache/camserve", rebuild: bool = False, weights: str | Path | None = None
) -> Path:
    """The default model's exported directory, ``<cache_dir>/default-model-<weights sha>-g<GRAPHS_VERSION>``.

    Exported from the committed weights (or ``weights``) on first use, or again when ``rebuild``
    is set, the cached copy fails its checksums or lacks one of ``GRAPHS``. Safe when several
    processes start at once: each exports into its own staging folder and renames it into place; a
    process that finds the place taken uses the winner's directory.
    """
    weights_path = WEIGHTS_PATH if weights is None else Path(weights).expanduser()
    return _cached_export(cache_dir, "default-model", weights_path, export_default_model, rebuild, GRAPHS)


def dense_model_dir(
    cache_dir: str = "~/.cache/camserve", rebuild: bool = False, weights: str | Path | None = None
) -> Path:
    """The dense model's exported directory, ``<cache_dir>/dense-model-<weights sha>-g<GRAPHS_VERSION>``; as
    :func:`default_model_dir` (first use exports, checksums checked, safe under races)."""
    weights_path = DENSE_WEIGHTS_PATH if weights is None else Path(weights).expanduser()
    return _cached_export(cache_dir, "dense-model", weights_path, export_dense_model, rebuild, graphs=())


def _cached_export(
    cache_dir: str,
    prefix: str,
    weights_path: Path,
    export: Callable[[Path, Path], Path],
    rebuild: bool,
    graphs: tuple[str, ...],
) -> Path:
    if not weights_path.is_file():
        raise NotFoundError(f"weights: no such file {weights_path}")
    root = Path(cache_dir).expanduser()
    final = root / f"{prefix}-{sha256_file(weights_path)[:SHORT_SHA]}-g{GRAPHS_VERSION}"
    if final.exists() and not rebuild:
        try:
            missing = set(graphs) - set(ModelDirectory(final).manifest.graphs)
            if not missing:
                return final
            lacking = ", ".join(sorted(missing))
            logger.warning("cached default model %s lacks graphs %s; exporting it again", final, lacking)
            rebuild = True
        except CamserveError as exc:
            logger.warning("cached default model %s is unusable (%s); exporting it again", final, exc)
            rebuild = True
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-staging-", dir=root))
    except OSError as exc:
        raise InvalidArgumentError("cache_dir", f"cannot write to {root}: {exc}") from None
    try:
        logger.info("exporting %s to %s", prefix, final)
        export(staging / "model", weights_path)
        _move_into_place(staging / "model", final, replace=rebuild, trash=staging / "replaced")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _move_into_place(built: Path, final: Path, replace: bool, trash: Path) -> None:
    """Rename ``built`` to ``final``. If ``final`` exists: keep it (another process won the race)
    unless ``replace``, in which case it is moved aside to ``trash`` first."""
    for _ in range(5):
        try:
            os.rename(built, final)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        if not replace:
            ModelDirectory(final)  # the winner's copy must be complete
            return
        try:
            os.rename(final, trash)
        except FileNotFoundError:
            pass  # someone else moved it; try again
        shutil.rmtree(trash, ignore_errors=True)
    raise CamserveError(f"could not move the exported default model into {final}: it keeps reappearing")
