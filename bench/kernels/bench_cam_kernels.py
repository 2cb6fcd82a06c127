"""Benchmark: the fused Triton CAM kernels vs the unfused torch chain (``kernels/reference.py``).

Shapes: ResNet-50 layer4 (K=2048, 7x7) and VGG-16 features (K=512, 14x14), batch 64, T=1 target,
maps upsampled to 224x224 and min-max normalised. On a CUDA machine every path is timed with
torch.cuda.Event (warm-up first, L2 flushed before each timed call, median of --reps), and the
Triton paths' achieved bytes/s are compared with a measured device-to-device copy bandwidth. On the
CPU it times the torch chain only (the Triton interpreter is no benchmark).

    python bench/kernels/bench_cam_kernels.py                 # all paths, both shapes
    python bench/kernels/bench_cam_kernels.py --batch 8 --uint8

Rows: "<method> map" is A, G -> 224x224 map; the Triton path is the fused weights+combine kernel then
the upsample-normalise kernel (two launches). "gradcam map, unfused" runs the weights, combine and
upsample kernels (three launches). "weights x3" computes the weights of Grad-CAM, Grad-CAM++ and
XGrad-CAM (one launch vs three torch chains).

Then "post-processing share": a real model (`--share-archs`, default resnet50 and vgg16, seeded random
weights) is exported at 224², its explain graph run by ONNX Runtime on `--share-batch` images (CUDA
provider + IO binding on a GPU, CPU provider otherwise), and the CAM maths of Grad-CAM, Grad-CAM++,
XGrad-CAM and Layer-CAM together (weights, channel sum, upsample, normalise; backend `auto`) is timed
on those outputs; the ratio is printed (goal < 5 % of the ONNX Runtime time). `--share-archs ""`
skips it.

"MB" is what the Triton path moves: A and G (or the small maps) read once, the output written once,
plus the small [N,T,h,w] map (and, unfused, the weights) between its kernels; GB/s = MB / triton
time. The torch chain moves more (weights, intermediate maps, the full-size map several times).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path as FilePath  # "Path" is a benchmark path below

import torch

from camserve import kernels
from camserve.errors import InvalidArgumentError
from camserve.kernels import reference
from camserve.runtime import check_device, device_kind

sys.path.insert(0, str(FilePath(__file__).resolve().parents[1]))  # bench/: the shared timing helper
from timing import cuda_median_ms, median_seconds  # noqa: E402


@dataclass(frozen=True)
class Shape:
    name: str
    channels: int
    height: int
    width: int


SHAPES = (Shape("resnet50.layer4", 2048, 7, 7), Shape("vgg16.features", 512, 14, 14))


@dataclass(frozen=True)
class Path:
    name: str
    torch_fn: Callable[[], torch.Tensor]
    triton_fn: Callable[[], torch.Tensor]
    min_bytes: int
    triton_variant: bool = False  # same torch chain as the row above: a GPU-only comparison


def _paths(
    a: torch.Tensor, g: torch.Tensor, maps: torch.Tensor, size: tuple[int, int], to_uint8: bool
) -> list[Path]:
    n, t, k, h, w = g.shape
    elem = a.element_size()
    read_ag = a.numel() * elem + g.numel() * elem
    out_bytes = n * t * size[0] * size[1] * (1 if to_uint8 else elem)
    map_bytes = n * t * h * w * elem  # the small map, written by one kernel and read by the next
    paths = []

    def cam_chain(method: str, backend: str) -> Callable[[], torch.Tensor]:
        if backend == "torch":
            return lambda: reference.upsample_normalize(
                reference.weighted_sum_relu(a, reference.channel_weights(a, g, method)),
                size,
                True,
                1e-7,
                to_uint8,
            )
        return lambda: kernels.upsample_normalize(
            kernels.gradient_weighted_cam(a, g, method, backend="triton"),
            size,
            True,
            1e-7,
            to_uint8,
            "triton",
        )

    for method in ("gradcam", "gradcam++", "xgradcam"):
        paths.append(
            Path(
                f"{method} map",
                cam_chain(method, "torch"),
                cam_chain(method, "triton"),
                read_ag + 2 * map_bytes + out_bytes,
            )
        )
    paths.append(
        Path(
            "gradcam map, unfused",
            cam_chain("gradcam", "torch"),
            lambda: kernels.upsample_normalize(
                kernels.weighted_sum_relu(a, kernels.channel_weights(a, g, "gradcam", "triton"), "triton"),
                size,
                True,
                1e-7,
                to_uint8,
                "triton",
            ),
            read_ag + 2 * n * t * k * elem + 2 * map_bytes + out_bytes,  # + weights written and read
            triton_variant=True,
        )
    )
    paths.append(
        Path(
            "layercam map",
            lambda: reference.upsample_normalize(
                reference.elementwise_sum_relu(a, g, True), size, True, 1e-7, to_uint8
            ),
            lambda: kernels.upsample_normalize(
                kernels.elementwise_sum_relu(a, g, True, "triton"), size, True, 1e-7, to_uint8, "triton"
            ),
            read_ag + 2 * map_bytes + out_bytes,
        )
    )
    methods = ("gradcam", "gradcam++", "xgradcam")
    paths.append(
        Path(
            "weights x3 (one pass)",
            lambda: torch.stack([reference.channel_weights(a, g, m) for m in methods]),
            lambda: torch.stack(list(kernels.channel_weights_for_methods(a, g, methods, "triton").values())),
            read_ag + 3 * n * t * k * elem,
        )
    )
    paths.append(
        Path(
            "upsample+normalize",
            lambda: reference.upsample_normalize(maps, size, True, 1e-7, to_uint8),
            lambda: kernels.upsample_normalize(maps, size, True, 1e-7, to_uint8, "triton"),
            map_bytes + out_bytes,
        )
    )
    return paths


def _copy_bandwidth(device: torch.device, reps: int) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write) of a 1 GiB buffer."""
    src = torch.empty(256 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = cuda_median_ms(lambda: dst.copy_(src), reps, torch.empty(0, device=device))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


class _CachedOutputs:
    """A GraphRunner that returns one stored explain result: times the CAM maths alone."""

    def __init__(self, outputs) -> None:
        self.outputs = outputs

    def explain(self, images: torch.Tensor, targets: torch.Tensor):
        return self.outputs


def _postprocess_share(arch: str, batch: int, size: int, device: torch.device, reps: int) -> None:
    """ONNX Runtime time of the explain graph vs the CAM maths of the four gradient methods."""
    import tempfile

    from camserve.config import ExplainOptions, RuntimeConfig
    from camserve.export import export_model
    from camserve.export.architectures import ARCHITECTURES, build_torchvision
    from camserve.methods import compute_maps
    from camserve.runtime import OnnxGraphRunner

    torch.manual_seed(0)
    model = build_torchvision(arch, (3, size, size)).eval()
    runtime = RuntimeConfig(device=device.type, intra_op_threads=torch.get_num_threads(), inter_op_threads=1)
    methods = ("gradcam", "gradcam++", "xgradcam", "layercam")
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    targets = torch.full((batch, 1), -1, dtype=torch.int64, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(fn: Callable[[], object], reps: int) -> float:
        return 1e3 * median_seconds(fn, reps, sync)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_model(
            model,
            ARCHITECTURES[arch].layer,
            (3, size, size),
            FilePath(tmp) / arch,
            name=arch,
            architecture=arch,
            mean=[0.0] * 3,
            std=[1.0] * 3,
            graphs=("explain",),
            verify=False,
        )
        runner = OnnxGraphRunner(model_dir, runtime)
        outputs = runner.explain(images, targets)
        ort_ms = timed(lambda: runner.explain(images, targets), reps)
        cached = _CachedOutputs(outputs)
        post_ms = timed(
            lambda: compute_maps(
                cached,
                images,
                targets,
                methods,
                num_classes=model_dir.manifest.num_classes,
                options=ExplainOptions(),
                runtime=runtime,
            ),
            max(reps, 20),  # milliseconds each: more repeats steady the median cheaply
        )
    k, h, w = outputs.activations.shape[1:]
    print(
        f"{arch:<18} K={k:<5d} {h}x{w:<3d} batch {batch:3d}  ONNX Runtime {ort_ms:9.1f} ms   "
        f"CAM maths (4 methods) {post_ms:7.1f} ms   share {100 * post_ms / ort_ms:5.2f} %"
    )


def _max_error(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x.double() - y.double()).abs().max().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--targets", type=int, default=1)
    parser.add_argument("--size", type=int, default=224, help="output maps are size x size")
    parser.add_argument("--reps", type=int, default=0, help="timed calls per path (default 50 GPU, 5 CPU)")
    parser.add_argument("--uint8", action="store_true", help="quantise the output maps to uint8")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--share-archs", default="resnet50,vgg16", help='"" skips the share section')
    parser.add_argument("--share-batch", type=int, default=0, help="default 64 on a GPU, 8 on the CPU")
    args = parser.parse_args(argv)

    try:
        kind = device_kind(check_device(args.device, "--device"))
    except InvalidArgumentError as exc:
        parser.error(str(exc))
    cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    device = torch.device(args.device if kind == "cuda" else "cuda" if cuda else "cpu")
    reps = args.reps or (50 if cuda else 5)
    size = (args.size, args.size)
    torch.manual_seed(0)

    if cuda:
        bandwidth = _copy_bandwidth(device, reps)
        flush = torch.empty(256 * 2**20 // 4, dtype=torch.float32, device=device)  # 256 MiB > any L2
        print(f"device: {torch.cuda.get_device_name(device)}; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads); torch chain only")
    dtype_out = "uint8" if args.uint8 else "float32"
    print(f"batch {args.batch}, T={args.targets}, output {args.size}x{args.size}, {dtype_out}")

    header = f"{'shape':<17} {'path':<24} {'torch ms':>9}"
    if cuda:
        header += f" {'triton ms':>9} {'speedup':>7} {'MB':>7} {'GB/s':>6} {'% copy':>6} {'max err':>8}"
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        n, t, k, h, w = args.batch, args.targets, shape.channels, shape.height, shape.width
        a = torch.randn(n, k, h, w, device=device).clamp_min(0)
        g = 1e-3 * torch.randn(n, t, k, h, w, device=device)
        maps = torch.rand(n, t, h, w, device=device)
        for path in _paths(a, g, maps, size, args.uint8):
            if not cuda:
                if path.triton_variant:
                    continue
                print(f"{shape.name:<17} {path.name:<24} {1e3 * median_seconds(path.torch_fn, reps):9.3f}")
                continue
            torch_ms = cuda_median_ms(path.torch_fn, reps, flush)
            triton_ms = cuda_median_ms(path.triton_fn, reps, flush)
            rate = path.min_bytes / (triton_ms * 1e-3)
            err = _max_error(path.triton_fn(), path.torch_fn())
            print(
                f"{shape.name:<17} {path.name:<24} {torch_ms:9.3f} {triton_ms:9.3f} "
                f"{torch_ms / triton_ms:6.2f}x {path.min_bytes / 1e6:7.1f} {rate / 1e9:6.0f} "
                f"{100 * rate / bandwidth:5.0f}% {err:8.1e}"
            )

    archs = [arch for arch in args.share_archs.split(",") if arch]
    if archs:
        share_batch = args.share_batch or (64 if cuda else 8)
        print()
        print(
            f"post-processing share of the explain time "
            f"({'triton' if cuda else 'torch'} CAM maths, goal < 5 %)"
        )
        for arch in archs:
            _postprocess_share(arch, share_batch, 224, device, reps if cuda else 3)


if __name__ == "__main__":
    main()
