"""Export a PyTorch classifier to camserve's ONNX graphs (see ``api.export_model``)."""

from __future__ import annotations

from camserve.export.api import DEFAULT_GRAPHS, GRAPHS, build_from_import_path, export_model, load_weights

__all__ = ["DEFAULT_GRAPHS", "GRAPHS", "build_from_import_path", "export_model", "load_weights"]
