"""What ``camserve bench`` sends: the images (the default model's samples, a folder, or generated) and
one pre-serialised request per image for the chosen API, so that the client processes spend their CPU
on gRPC, not on building messages."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from camserve.errors import InvalidArgumentError, NotFoundError

if TYPE_CHECKING:
    from camserve.loadgen.oip import GraphModel
    from camserve.modeldir import Manifest

APIS = ("explain", "stream", "oip")  # camserve.v1 Explain, camserve.v1 ExplainStream, OIP ModelInfer
SAMPLE_SEED = 1234
# Files sent as they are: only the formats a server decodes (camserve.defaults.IMAGE_FORMATS).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Workload:
    """Everything a client process needs to send requests (picklable: it travels to the processes)."""

    api: str
    model: str
    methods: tuple[str, ...]
    targets: tuple[int, ...]
    requests: tuple[bytes, ...]  # serialised request messages, one image each, cycled through
    pixels: tuple[np.ndarray, ...]  # the same images as uint8 [H,W,3] (in-process figures)
    encoded: tuple[bytes, ...]  # PNG/JPEG bytes as sent with the camserve.v1 APIs; empty for oip


def sample_images(count: int) -> list[np.ndarray]:
    """The default model's test images (64x64 digits on clutter), uint8 [H,W,3]."""
    import torch

    from camserve.default_model.data import make_localisation_dataset

    dataset = make_localisation_dataset(count, seed=SAMPLE_SEED, split="test")
    pixels = (dataset.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(pixels)


def generated_images(count: int, height: int, width: int, seed: int = SAMPLE_SEED) -> list[np.ndarray]:
    """Random RGB images of the given size (smooth noise, so PNG sizes are realistic, not worst case)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(count, max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return [np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.BILINEAR)) for c in coarse]


def folder_images(folder: str, count: int) -> tuple[list[np.ndarray], list[bytes]]:
    """Up to ``count`` images of ``folder`` (sorted by name): pixels and the files' own bytes."""
    root = Path(folder)
    if not root.is_dir():
        raise NotFoundError(f"--images: {folder} is not a directory")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise InvalidArgumentError("--images", f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    pixels, encoded = [], []
    for path in files:
        data = path.read_bytes()
        try:
            pixels.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        except OSError as exc:
            raise InvalidArgumentError("--images", f"{path} cannot be read as an image ({exc})") from None
        encoded.append(data)
    return pixels, encoded


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def parse_size(text: str) -> tuple[int, int]:
    """``"224x224"`` -> (224, 224); InvalidArgumentError naming --image-size otherwise."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidArgumentError("--image-size", f"expected HxW such as 224x224, got {text!r}") from None
    if not (1 <= height <= 8192 and 1 <= width <= 8192):
        raise InvalidArgumentError("--image-size", f"sides must be in 1..8192, got {text!r}")
    return height, width


def build_workload(
    api: str,
    model: str,
    methods: tuple[str, ...],
    targets: tuple[int, ...],
    count: int,
    folder: str | None = None,
    size: tuple[int, int] | None = None,
    graph: GraphModel | None = None,
    manifest: Manifest | None = None,
) -> Workload:
    """``count`` images (a folder's, generated of ``size``, else the default model's samples) as requests.

    ``graph`` (api oip): a model that takes the graph's own inputs (Triton on an exported repository):
    the images are preprocessed here with ``manifest``'s size, mean and std."""
    if api not in APIS:
        raise InvalidArgumentError("api", f"one of {', '.join(APIS)}, got {api!r}")
    encoded: list[bytes]
    if folder is not None:
        pixels, encoded = folder_images(folder, count)
    else:
        pixels = generated_images(count, *size) if size else sample_images(count)
        encoded = [png_bytes(p) for p in pixels] if api != "oip" else []
    if api == "oip" and graph is not None and graph.takes_graph_inputs:
        from camserve.images import preprocess
        from camserve.loadgen.oip import graph_request, map_outputs

        if manifest is None:
            raise InvalidArgumentError("--model-dir", f"needed to preprocess images for {model!r}")
        outputs = map_outputs(manifest, methods)
        requests = [
            graph_request(
                model,
                graph,
                outputs,
                targets,
                preprocess(p, manifest.input_size, manifest.mean, manifest.std).numpy(),
            )
            for p in pixels
        ]
        encoded = []
    elif api == "oip":
        requests = [_infer_request(model, methods, targets, p) for p in pixels]
        encoded = []
    else:
        requests = [_explain_request(model, methods, targets, e) for e in encoded]
    return Workload(api, model, methods, targets, tuple(requests), tuple(pixels), tuple(encoded))


def _explain_request(model: str, methods: tuple[str, ...], targets: tuple[int, ...], data: bytes) -> bytes:
    from camserve.v1 import camserve_pb2 as pb

    image = pb.Image(encoded=data, targets=list(targets))
    return pb.ExplainRequest(model=model, methods=list(methods), images=[image]).SerializeToString()


def _infer_request(
    model: str, methods: tuple[str, ...], targets: tuple[int, ...], pixels: np.ndarray
) -> bytes:
    """A ModelInferRequest with the image as PIXELS (UINT8 [1,H,W,3]), like tritonclient sends it."""
    from camserve.inference import grpc_service_pb2 as ip

    request = ip.ModelInferRequest(model_name=model)
    request.parameters["methods"].string_param = ",".join(methods)
    request.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, *pixels.shape])
    request.raw_input_contents.append(np.ascontiguousarray(pixels).tobytes())
    if targets:
        request.inputs.add(name="TARGETS", datatype="INT64", shape=[1, len(targets)])
        request.raw_input_contents.append(np.asarray([targets], dtype="<i8").tobytes())
    return request.SerializeToString()
