"""How each Triton kernel is launched for a given shape: one pure function per kernel, no triton.

``kernels/triton_cam.py`` launches exactly what these functions return, and the compile test
(tests/kernels/test_kernel_compile.py) compiles every configuration :func:`launch_configs` lists
for real GPU targets: the one source of truth for tile sizes, flags, grids and warps.

Tiles. Every tile is [BLOCK_T, BLOCK_K, BLOCK_HW] (targets x channels x pixels) with exactly
``TILE_ELEMENTS`` elements, so a few float32 tiles stay in the registers of 8 warps. BLOCK_HW steps
by 4x (16, 64, 256, 1024): a 7x7 plane fills 49/64 lanes, 14x14 196/256, 28x28 784/1024, and a
plane above 1024 pixels is walked in 1024-pixel tiles. BLOCK_T is 1 or 4 and BLOCK_K fills the rest.
Coarse steps keep the set of compiled kernels small (one compile per configuration on a GPU, and
the CI compile test) at the cost of some masked lanes, which cost no memory traffic.

Bytes-moved model (s = element size of A and G, 4 for float32), per image:

* ``gradient_weighted_cam`` (fused, h*w <= 1024): reads K*hw*s of A and T*K*hw*s of G once, writes
  T*hw*s. Both inputs enter the map, so that is the minimum. A launch over N images and
  ceil(T/BLOCK_T) target blocks has N*ceil(T/BLOCK_T) programs: a service batch of 1-16 images
  would use 1-16 of a GPU's ~100+ SMs. The channel loop is therefore split over S programs
  (``splits``) until about ``PROGRAMS_WANTED`` programs run; each writes a float32 partial map
  [T,hw] and a second launch (``_sum_splits_relu_kernel``) adds the S partials and applies the
  ReLU. That costs 2*S*T*hw*4 extra bytes (write + read of the partials), against K*hw*s*(1+T)
  read: a fraction 8*S*T / (K*s*(1+T)). Each split holds at least ``MIN_CHANNELS_PER_SPLIT``
  channels, so the fraction stays <= 8/(MIN_CHANNELS_PER_SPLIT*s) (6% for float32 at 32
  channels, 12.5% for 16-bit), and usually far less: ResNet-50 layer4 (K=2048, 7x7), N=1, T=1:
  S=32 splits of 64 channels, 25 KB of partials against 803 KB of input (3%), and 32 programs
  instead of 1. From N*ceil(T/BLOCK_T) >= PROGRAMS_WANTED on there is no split (S=1) and the
  kernel writes the ReLU'd map itself.
* ``channel_sum_relu`` (weighted sum / Layer-CAM / HiRes-CAM): reads K*hw*s of A per target block
  plus T*K*s of weights or T*K*hw*s of gradients, writes T*hw*s; split over channels exactly as
  above (same partials, same finishing kernel).
* ``channel_weights``: reads T*K*hw*s of G (and K*hw*s of A for Grad-CAM++/XGrad-CAM), writes T*K*s
  per method; its grid already spans channel blocks (N*ceil(K/BLOCK_K)*ceil(T/BLOCK_T) programs),
  so it needs no split. Several methods: one launch computes all three rules (the extra ones are
  arithmetic on tiles already loaded; A is read anyway by Grad-CAM++ and XGrad-CAM), so only four
  flag sets exist: each rule alone, or all.
* ``upsample_normalize``: reads h*w*s per map, writes H*W*s (H*W bytes as uint8). One program per
  map has to find the map's min and max before writing anything; with few maps the rows of each
  output are split over ``row_bands`` programs that each recompute the min/max pass (arithmetic on
  an L1-resident source plane, no extra DRAM bytes) and write only their band.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

TILE_ELEMENTS = 4096
PIXEL_BLOCKS: tuple[int, ...] = (16, 64, 256, 1024)  # BLOCK_HW choices; the last one tiles larger planes
TARGET_BLOCKS: tuple[int, ...] = (1, 4)
MAX_FUSED_PLANE = PIXEL_BLOCKS[-1]  # h*w up to this fits one tile: weights and combine fuse
PROGRAMS_WANTED = 264  # about two programs per SM of a 132-SM GPU (H100/H200); the launcher passes 2x the SMs
MIN_CHANNELS_PER_SPLIT = 32
NUM_WARPS = 8
# upsample_normalize: [BLOCK_H, BLOCK_W] output tiles of 2048 elements, BLOCK_W by output width
UPSAMPLE_WIDTHS: tuple[int, ...] = (16, 64, 256)
UPSAMPLE_TILE = 2048
MIN_ROWS_PER_BAND = 8

WEIGHT_METHOD_CODES: dict[str, int] = {"gradcam": 0, "gradcam++": 1, "xgradcam": 2}
WEIGHT_FLAGS: dict[str, tuple[bool, bool, bool]] = {  # (GRADCAM, GRADCAMPP, XGRADCAM)
    "gradcam": (True, False, False),
    "gradcam++": (False, True, False),
    "xgradcam": (False, False, True),
}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: which ``@triton.jit`` function, its compile-time constants, its grid."""

    kernel: str  # name in kernels/triton_cam.py
    constexprs: tuple[tuple[str, int | bool], ...]
    grid: tuple[int, ...]
    num_warps: int = NUM_WARPS
    scalars: tuple[tuple[str, int], ...] = ()  # runtime arguments this plan chose (K_PER_SPLIT, ...)

    @property
    def constants(self) -> dict[str, int | bool]:
        return dict(self.constexprs)

    def scalar(self, name: str) -> int:
        return dict(self.scalars)[name]

    def config(self) -> tuple[str, tuple[tuple[str, int | bool], ...], int]:
        """What a compile depends on (the grid does not)."""
        return self.kernel, self.constexprs, self.num_warps


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pixel_block(pixels: int) -> int:
    """The smallest BLOCK_HW holding ``pixels``, or the largest (the plane is tiled)."""
    return next((b for b in PIXEL_BLOCKS if pixels <= b), PIXEL_BLOCKS[-1])


def blocks(targets: int, pixels: int) -> tuple[int, int, int]:
    """BLOCK_T, BLOCK_K, BLOCK_HW: BLOCK_T*BLOCK_K*BLOCK_HW == TILE_ELEMENTS."""
    block_t = TARGET_BLOCKS[0] if targets <= TARGET_BLOCKS[0] else TARGET_BLOCKS[-1]
    block_hw = pixel_block(pixels)
    return block_t, TILE_ELEMENTS // (block_t * block_hw), block_hw


def splits(
    programs: int, channels: int, block_k: int, programs_wanted: int = PROGRAMS_WANTED
) -> tuple[int, int]:
    """(S, channels per split): how many programs share one image's channel loop (see the model above).

    Channels per split are a multiple of BLOCK_K and at least MIN_CHANNELS_PER_SPLIT."""
    step = block_k * _cdiv(MIN_CHANNELS_PER_SPLIT, block_k) if block_k < MIN_CHANNELS_PER_SPLIT else block_k
    most = max(1, _cdiv(channels, step))
    wanted = max(1, min(most, _cdiv(programs_wanted, max(programs, 1))))
    per_split = step * _cdiv(_cdiv(channels, wanted), step)
    return _cdiv(channels, per_split), per_split


def channel_weights(n: int, t: int, k: int, hw: int, methods: Sequence[str]) -> Launch:
    """``_channel_weights_kernel``: one method's flags, or all three rules for several methods."""
    block_t, block_k, block_hw = blocks(t, hw)
    gradcam, gradcampp, xgradcam = WEIGHT_FLAGS[methods[0]] if len(methods) == 1 else (True, True, True)
    constexprs = (
        ("GRADCAM", gradcam),
        ("GRADCAMPP", gradcampp),
        ("XGRADCAM", xgradcam),
        ("NEED_SUM_A", gradcampp or xgradcam),
        ("ONE_HW_TILE", hw <= block_hw),
        ("BLOCK_T", block_t),
        ("BLOCK_K", block_k),
        ("BLOCK_HW", block_hw),
    )
    return Launch("_channel_weights_kernel", constexprs, (n, _cdiv(k, block_k), _cdiv(t, block_t)))


def _finish(n: int, t: int, hw: int) -> Launch:
    block = pixel_block(hw)
    return Launch("_sum_splits_relu_kernel", (("BLOCK_HW", block),), (n * t, _cdiv(hw, block)), 4)


def channel_sum_relu(
    n: int,
    t: int,
    k: int,
    hw: int,
    per_pixel: bool,
    relu_coeffs: bool,
    programs_wanted: int = PROGRAMS_WANTED,
) -> list[Launch]:
    """``_channel_sum_relu_kernel`` (S splits of the channel loop), then the partials' sum if S > 1."""
    block_t, block_k, block_hw = blocks(t, hw)
    base = n * _cdiv(hw, block_hw) * _cdiv(t, block_t)
    split_count, per_split = splits(base, k, block_k, programs_wanted)
    constexprs = (
        ("PER_PIXEL", per_pixel),
        ("RELU_COEFFS", relu_coeffs and per_pixel),
        ("BLOCK_T", block_t),
        ("BLOCK_K", block_k),
        ("BLOCK_HW", block_hw),
    )
    grid = (n * _cdiv(t, block_t), _cdiv(hw, block_hw), split_count)
    launches = [Launch("_channel_sum_relu_kernel", constexprs, grid, scalars=(("K_PER_SPLIT", per_split),))]
    return launches + ([_finish(n, t, hw)] if split_count > 1 else [])


def gradient_weighted_cam(
    n: int, t: int, k: int, hw: int, method: str, programs_wanted: int = PROGRAMS_WANTED
) -> list[Launch]:
    """Fused weights + combine for planes up to MAX_FUSED_PLANE pixels; else weights, then combine."""
    if hw > MAX_FUSED_PLANE:
        return [
            channel_weights(n, t, k, hw, [method]),
            *channel_sum_relu(n, t, k, hw, False, False, programs_wanted),
        ]
    block_t, block_k, block_hw = blocks(t, hw)
    split_count, per_split = splits(n * _cdiv(t, block_t), k, block_k, programs_wanted)
    constexprs = (
        ("METHOD", WEIGHT_METHOD_CODES[method]),
        ("BLOCK_T", block_t),
        ("BLOCK_K", block_k),
        ("BLOCK_HW", block_hw),
    )
    grid = (n * _cdiv(t, block_t), split_count)
    launches = [
        Launch("_gradient_weighted_cam_kernel", constexprs, grid, scalars=(("K_PER_SPLIT", per_split),))
    ]
    return launches + ([_finish(n, t, hw)] if split_count > 1 else [])


def upsample_normalize(
    maps: int,
    out_h: int,
    out_w: int,
    resize: bool,
    normalize: bool,
    to_uint8: bool,
    programs_wanted: int = PROGRAMS_WANTED,
) -> Launch:
    """``_upsample_normalize_kernel``: grid (maps, row bands)."""
    block_w = next((b for b in UPSAMPLE_WIDTHS if out_w <= b), UPSAMPLE_WIDTHS[-1])
    block_h = UPSAMPLE_TILE // block_w
    bands = max(1, min(_cdiv(programs_wanted, maps), _cdiv(out_h, max(block_h, MIN_ROWS_PER_BAND))))
    constexprs = (
        ("RESIZE", resize),
        ("NORMALIZE", normalize),
        ("TO_UINT8", to_uint8),
        ("BLOCK_H", block_h),
        ("BLOCK_W", block_w),
    )
    rows = block_h * _cdiv(_cdiv(out_h, bands), block_h)  # a multiple of BLOCK_H
    grid = (maps, _cdiv(out_h, rows))
    return Launch("_upsample_normalize_kernel", constexprs, grid, scalars=(("ROWS_PER_BAND", rows),))


def launch_configs() -> Iterator[Launch]:
    """Every distinct configuration (kernel, constexprs, warps) the launchers above can return.

    The shapes swept cover every branch: BLOCK_T and BLOCK_HW depend on T and h*w only through the
    step they fall in, ONE_HW_TILE on h*w > MAX_FUSED_PLANE, splits on N*T, and the upsample
    block on the output width; so one representative per step reaches every configuration."""
    seen: set[tuple[str, tuple[tuple[str, int | bool], ...], int]] = set()
    targets = (1, 2, 5)
    pixels = (*PIXEL_BLOCKS, MAX_FUSED_PLANE + 1)
    images = (1, 512)  # split and unsplit
    channels = 2048
    method_sets: list[list[str]] = [[m] for m in WEIGHT_METHOD_CODES] + [list(WEIGHT_METHOD_CODES)]
    candidates: list[Launch] = []
    for n, t, hw in itertools.product(images, targets, pixels):
        for methods in method_sets:
            candidates.append(channel_weights(n, t, channels, hw, methods))
        for method in WEIGHT_METHOD_CODES:
            candidates += gradient_weighted_cam(n, t, channels, hw, method)
        for per_pixel, relu in ((False, False), (True, False), (True, True)):
            candidates += channel_sum_relu(n, t, channels, hw, per_pixel, relu)
    for width in (*UPSAMPLE_WIDTHS, UPSAMPLE_WIDTHS[-1] + 1):
        for resize, normalize, to_uint8 in itertools.product((False, True), repeat=3):
            if not (resize or normalize or to_uint8):
                continue  # nothing to launch: the dispatcher returns the maps as they are
            candidates.append(upsample_normalize(1, width, width, resize, normalize, to_uint8))
    for launch in candidates:
        if launch.config() not in seen:
            seen.add(launch.config())
            yield launch


def bytes_moved(
    n: int, t: int, k: int, hw: int, element_size: int = 4, programs_wanted: int = PROGRAMS_WANTED
) -> dict[str, float]:
    """The model above for ``gradient_weighted_cam`` (fused path): minimum bytes, bytes with the
    chosen split, and the split count; the benchmarks divide these by time for GB/s."""
    launches = gradient_weighted_cam(n, t, k, hw, "gradcam", programs_wanted)
    split_count = launches[0].grid[-1] if launches[0].kernel == "_gradient_weighted_cam_kernel" else 1
    minimum = n * (k * hw * (1 + t) + t * hw) * element_size
    partials = 2 * split_count * n * t * hw * 4 if split_count > 1 else 0
    return {
        "minimum": float(minimum),
        "with_splits": float(minimum + partials),
        "splits": float(split_count),
        "programs": float(math.prod(launches[0].grid)),
    }
