"""camserve: Class Activation Maps for image classifiers, exported to ONNX and served over gRPC."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# torch's OpenMP threads (the CAM maths) sleep when idle instead of spinning: they share the cores with
# ONNX Runtime's threads and, in the service, the event loop and gRPC. Spinning made batched runs up
# to 100x slower on a busy 2-core host. Read when torch loads: an explicit setting wins, and it does
# nothing if torch was imported before camserve.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["Client", "ExplainResult", "Explainer", "Prediction", "__version__"]

if TYPE_CHECKING:
    from camserve.client import Client
    from camserve.explainer import Explainer
    from camserve.result import ExplainResult, Prediction

# Loaded on first use, so that `import camserve` (and the CLI's start-up) does not import torch.
_LAZY = {
    "Client": "camserve.client",
    "Explainer": "camserve.explainer",
    "ExplainResult": "camserve.result",
    "Prediction": "camserve.result",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'camserve' has no attribute {name!r}")
