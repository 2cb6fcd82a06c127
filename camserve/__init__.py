"""camserve: Class Activation Maps for image classifiers, exported to ONNX and served over gRPC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
