"""The maps graph against camserve.Explainer: max |maps.onnx - Explainer| per method on 16 images x 3
targets (ranks and ids), and the seconds ``add_maps_graph`` takes (maths export + composition +
verification) on a copy of the model directory.

Usage: python bench/maps_graph.py MODEL_DIR [--size input|feature|HxW]
(the default model's directory: ``camserve default-model build``; images are digits for it, seeded
normal noise for other models)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from camserve import Explainer
from camserve.config import CamserveConfig, ExplainOptions
from camserve.default_model import ARCHITECTURE
from camserve.export.maps import MapsOptions, add_maps_graph, graph_methods, output_name
from camserve.modeldir import ModelDirectory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--size", default="input")
    args = parser.parse_args()
    source = ModelDirectory(args.model_dir)
    methods = tuple(m for m in graph_methods() if m != "cam" or source.manifest.cam_weights is not None)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "model"
        shutil.copytree(source.path, copy)
        started = time.perf_counter()
        model_dir = add_maps_graph(copy, MapsOptions(methods=methods, output_size=args.size))
        print(f"add_maps_graph: {time.perf_counter() - started:.1f} s")
        h, w = model_dir.manifest.input_size[1:]
        if model_dir.manifest.architecture == ARCHITECTURE:
            from camserve.default_model.data import make_localisation_dataset
            from camserve.default_model.net import normalize

            images = normalize(make_localisation_dataset(16, seed=11, instances=(1, 3)).images)
        else:
            images = torch.randn(16, 3, h, w, generator=torch.Generator().manual_seed(4))
        targets = np.array([[-1, -2, 3]] * 16, np.int64)
        session = ort.InferenceSession(str(model_dir.graph_path("maps")), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(None, {"images": images.numpy(), "targets": targets}), strict=True))
        config = CamserveConfig(explain=ExplainOptions(output_size=args.size))
        want = Explainer(model_dir, config=config).explain(images, methods=list(methods), targets=targets)
        for method in methods:
            error = float(np.abs(got[output_name(method)] - want.maps[method]).max())
            print(f"{method:10s} max |maps.onnx - Explainer| = {error:.2e}")


if __name__ == "__main__":
    main()
