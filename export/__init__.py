"""Export a PyTorch classifier to camserve's ONNX graphs (see ``api.export_model``)."""

from __future__ import annotations

from camserve.export.api import GRAPHS, build_from_import_path, export_model, load_weights

__all__ = ["GRAPHS", "build_from_import_path", "export_model", "load_weights"]
