"""camserve: Class Activation Maps for image classifiers, exported to ONNX and served over gRPC."""

from __future__ import annotations

__version__ = "0.1.0"
