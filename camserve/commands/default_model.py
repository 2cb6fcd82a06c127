"""``camserve default-model build``: export (and optionally retrain) the embedded default model."""

from __future__ import annotations

import argparse
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from camserve.config import CamserveConfig

if TYPE_CHECKING:
    from camserve.default_model.train import TrainingPlan

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "default-model",
        help="the embedded default model (digits CNN)",
        description="The embedded default model: a small CNN trained on digits pasted on 64x64 canvases.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build",
        help="export the default model's directory and print where it is",
        description="Export the default model's directory (into the cache unless --out is given) and "
        "print its path.",
    )
    build.add_argument(
        "--out", type=Path, help="export here instead of <cache_dir>/default-model-<sha>-g<version>"
    )
    build.add_argument(
        "--retrain",
        action="store_true",
        help="train the weights from scratch first (1-2 min on 2 idle cores, longer on a busy machine)",
    )
    build.add_argument("--force", action="store_true", help="export again even if the directory exists")
    build.add_argument(
        "--dense",
        action="store_true",
        help="the dense variant (DigitSegNet, per-pixel classes, region targets) instead; "
        "<cache_dir>/dense-model-<sha>-g<version>",
    )
    build.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from camserve.default_model import WEIGHTS_PATH, default_model_dir, export_default_model

    config = CamserveConfig.load(args.config)
    cache_dir = Path(config.runtime.cache_dir).expanduser()
    if args.dense:
        return _dense(args, cache_dir)
    weights = _retrain(cache_dir) if args.retrain else WEIGHTS_PATH
    if args.out is not None:
        path = export_default_model(args.out, weights, force=args.force)
    else:
        path = default_model_dir(str(cache_dir), rebuild=args.force, weights=weights)
    print(path)
    return 0


def _dense(args: argparse.Namespace, cache_dir: Path) -> int:
    from camserve.default_model import dense_model_dir, export_dense_model
    from camserve.errors import InvalidArgumentError

    if args.retrain:
        raise InvalidArgumentError(
            "--retrain",
            "retrains the classifier; train the dense model with "
            "python -m camserve.default_model.train --dense --out FILE",
        )
    if args.out is not None:
        print(export_dense_model(args.out, force=args.force))
    else:
        print(dense_model_dir(str(cache_dir), rebuild=args.force))
    return 0


def _retrain(cache_dir: Path, plan: TrainingPlan | None = None) -> Path:
    """Train (with the shipped plan unless told otherwise); the weights and their training.json go
    to <cache_dir>/retrained-<sha>/. Returns the weights' path."""
    from camserve.default_model import WEIGHTS_PATH
    from camserve.default_model.train import TrainingPlan, train, write_weights

    plan = plan or TrainingPlan()
    result = train(plan)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".retrained-", dir=cache_dir))
    record = write_weights(result, plan, staging / "weights.pt")
    sha = str(record["weights_sha256"])
    folder = cache_dir / f"retrained-{sha[:12]}"
    if folder.exists():
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    else:
        staging.rename(folder)
    shipped = hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    if sha == shipped:
        logger.info("retrained weights are bit-identical to the shipped ones (sha256 %s)", sha)
    else:
        logger.warning(
            "retrained weights differ from the shipped ones (sha256 %s vs %s): another machine or torch "
            "build gives other float rounding; test accuracy %.4f",
            sha[:12],
            shipped[:12],
            result.test_accuracy,
        )
    return folder / "weights.pt"
