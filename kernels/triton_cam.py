"""Triton kernels for the CAM maths; ``kernels/reference.py`` defines the numbers they must match.

Use them through ``camserve.kernels`` (the backend switch); importing this module imports triton.
Triton decides when a ``@triton.jit`` function is *decorated*, i.e. when this module is imported,
whether the kernels are compiled for the GPU or run by the Triton interpreter (numpy, any tensor
on the CPU). So ``TRITON_INTERPRET=1`` must be in the environment before this module is first
imported for CPU tensors to work; ``INTERPRETED`` records what Triton decided.

Layouts: A [N,K,h,w], G [N,T,K,h,w], weights [N,T,K], maps [N,T,h,w]. The launchers make each h*w
plane contiguous (a no-op for the graphs' outputs) and pass the outer strides, so views such as
``G[:, 2:3]`` are not copied. Program ids are widened to int64 before they multiply the batch
stride, so a batch may exceed 2**31 elements; offsets inside one image are int32 and the launchers
refuse an image whose slice spans 2**31 elements or more. Loads are in the input dtype
(float32/float16/bfloat16), all arithmetic is float32, stores cast to the output dtype.

Tiles, grids and warps come from ``kernels/launch.py`` (pure functions, also enumerated by the
compile test); its docstring holds the bytes-moved model that justifies each grid.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from camserve.errors import UnsupportedError
from camserve.kernels import launch

#: Whether Triton decorated the kernels below for its interpreter (TRITON_INTERPRET set at import).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

_INT32_LIMIT = 2**31
_GRID_YZ_LIMIT = 65535  # CUDA's limit on grid dimensions 1 and 2


def _launched_kernel(*aligned: str) -> Callable[[Callable[..., None]], Any]:
    """``@triton.jit`` for a kernel the launchers launch, specialised on nothing the caller controls.

    By default the JIT compiles a new variant on the device when an integer argument is 1 (made a
    constant) or a multiple of 16, or when a pointer is or is not 16-byte aligned: views such as
    ``out[1]`` and sizes such as T = 16 would compile variants the ahead-of-time compile test never
    saw. Every runtime argument is in ``do_not_specialize`` except the pointers named in ``aligned``:
    buffers the launchers allocate themselves (torch's allocators align them to 64 bytes or more), so
    their alignment hint, which lets the stores vectorise, is always given. A kernel thus has one
    variant per constexpr set and dtype, the one ``tests/kernels/kernel_compile.py`` compiles."""

    def decorate(fn: Callable[..., None]) -> Any:
        runtime_args = [
            name
            for name, parameter in inspect.signature(fn).parameters.items()
            if "constexpr" not in str(parameter.annotation) and name not in aligned
        ]
        return triton.jit(fn, do_not_specialize=runtime_args, do_not_specialize_on_alignment=runtime_args)

    return decorate


# --------------------------------------------------------------------------------------------------
# Shared pieces (inlined into the kernels by Triton)

# Triton's reductions (tl.sum, tl.min, tl.max) are @triton.jit functions, decorated when triton is
# first imported: if that happened before TRITON_INTERPRET was set (another library imported
# triton), they are compiled-mode functions the interpreter cannot call. Under the interpreter they
# are therefore decorated again from their own Python source (JITFunction.fn), in this module's
# mode; compiled kernels call tl.sum / tl.min / tl.max themselves.
if INTERPRETED:
    _tl_sum, _tl_min, _tl_max = (triton.jit(reduction.fn) for reduction in (tl.sum, tl.min, tl.max))
else:
    _tl_sum, _tl_min, _tl_max = tl.sum, tl.min, tl.max


@triton.jit
def _sum(x, AXIS: tl.constexpr):
    return _tl_sum(x, AXIS)


@triton.jit
def _min_all(x):
    return _tl_min(x, None)


@triton.jit
def _max_all(x):
    return _tl_max(x, None)


@triton.jit
def _gradcam_sums(g):
    """sum_ij g over a pixel tile: [BT,BK,BHW] -> [BT,BK]."""
    return _sum(g, 2)


@triton.jit
def _gradcampp_sums(g, sum_a):
    """sum_ij alpha_ij ReLU(g_ij) over a pixel tile, as in the reference: ReLU(g) / (2 + S g),
    0 where that denominator is 0 (masked padding has g = 0, so it adds 0).
    g [BT,BK,BHW], sum_a [BK] -> [BT,BK]."""
    relu_g = tl.maximum(g, 0.0)
    denom = relu_g * sum_a[None, :, None] + 2.0
    nonzero = denom != 0.0
    return _sum(tl.where(nonzero, relu_g / tl.where(nonzero, denom, 1.0), 0.0), 2)


@triton.jit
def _xgradcam_sums(a, g):
    """sum_ij A_ij g_ij over a pixel tile: a [BK,BHW], g [BT,BK,BHW] -> [BT,BK]."""
    return _sum(a[None, :, :] * g, 2)


@triton.jit
def _xgradcam_finish(sums, sum_a):
    """sum_ij A g / sum_ij A, 0 where sum_ij A = 0 (an all-zero channel)."""
    nonzero = sum_a != 0.0
    return tl.where(nonzero[None, :], sums / tl.where(nonzero, sum_a, 1.0)[None, :], 0.0)


@triton.jit
def _round_half_to_even(x):
    """torch.round semantics (ties to even) without libdevice, so the interpreter runs it too."""
    down = tl.floor(x)
    frac = x - down
    down_is_odd = (down - 2.0 * tl.floor(down * 0.5)) != 0.0
    up = (frac > 0.5) | ((frac == 0.5) & down_is_odd)
    return tl.where(up, down + 1.0, down)


# --------------------------------------------------------------------------------------------------
# 1. Channel weights: one spatial reduction per (image, target, channel), several methods at once


@_launched_kernel()  # its three outputs are views of one buffer: out[1], out[2] may be unaligned
def _channel_weights_kernel(
    a_ptr,
    g_ptr,
    w_gradcam_ptr,
    w_gradcampp_ptr,
    w_xgradcam_ptr,
    T,
    K,
    HW,
    stride_an,
    stride_ak,
    stride_gn,
    stride_gt,
    stride_gk,
    stride_wn,
    stride_wt,
    GRADCAM: tl.constexpr,
    GRADCAMPP: tl.constexpr,
    XGRADCAM: tl.constexpr,
    NEED_SUM_A: tl.constexpr,
    ONE_HW_TILE: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """Weights [N,T,K] of each flagged method; grid (N, cdiv(K, BLOCK_K), cdiv(T, BLOCK_T)).

    Bytes per image: reads K*h*w*s of A (only when Grad-CAM++ or XGrad-CAM is flagged: they need
    sum_ij A; once per block of BLOCK_T <= 4 targets) and T*K*h*w*s of G, writes T*K*s per method
    (s = element size). Every element of G enters every flagged weight, so reading it once is the
    minimum; A is read once because the plane of BLOCK_K channels is one register tile when
    h*w <= BLOCK_HW (ONE_HW_TILE), and otherwise a second time (from L2, by the same program) for
    XGrad-CAM: a pass for sum_ij A, then one for A*g.
    Grad-CAM++'s alpha needs sum_ij A before any pixel is summed; that is why A comes first.
    """
    pid_n = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    pid_t = tl.program_id(2)
    k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_HW)
    k_ok = k < K
    t_ok = t < T
    a_rows = a_ptr + pid_n * stride_an + k[:, None] * stride_ak  # [BK,1]
    g_rows = g_ptr + pid_n * stride_gn + t[:, None, None] * stride_gt + k[None, :, None] * stride_gk
    g_rows_ok = t_ok[:, None, None] & k_ok[None, :, None]

    sum_a = tl.full([BLOCK_K], 0.0, dtype=tl.float32)
    sums_gradcam = tl.full([BLOCK_T, BLOCK_K], 0.0, dtype=tl.float32)
    sums_gradcampp = tl.full([BLOCK_T, BLOCK_K], 0.0, dtype=tl.float32)
    sums_xgradcam = tl.full([BLOCK_T, BLOCK_K], 0.0, dtype=tl.float32)
    if ONE_HW_TILE:
        p_ok = p < HW
        g = tl.load(g_rows + p[None, None, :], mask=g_rows_ok & p_ok[None, None, :], other=0.0)
        g = g.to(tl.float32)
        if NEED_SUM_A:
            a = tl.load(a_rows + p[None, :], mask=k_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
            sum_a = _sum(a, 1)
            if XGRADCAM:
                sums_xgradcam = _xgradcam_sums(a, g)
        if GRADCAM:
            sums_gradcam = _gradcam_sums(g)
        if GRADCAMPP:
            sums_gradcampp = _gradcampp_sums(g, sum_a)
    else:
        if NEED_SUM_A:
            # One [BK,BHW] accumulator reduced once after the loop: reducing inside the loop and
            # using the loop-carried sum twice afterwards (XGrad-CAM) made Triton's
            # TritonGPUOptimizeThreadLocality pass fail for float32 (issue 17).
            a_tile = tl.full([BLOCK_K, BLOCK_HW], 0.0, dtype=tl.float32)
            for start in range(0, HW, BLOCK_HW):
                pp = start + p
                a = tl.load(a_rows + pp[None, :], mask=k_ok[:, None] & (pp < HW)[None, :], other=0.0)
                a_tile += a.to(tl.float32)
            sum_a = _sum(a_tile, 1)
        for start in range(0, HW, BLOCK_HW):
            pp = start + p
            pp_ok = pp < HW
            g = tl.load(g_rows + pp[None, None, :], mask=g_rows_ok & pp_ok[None, None, :], other=0.0)
            g = g.to(tl.float32)
            if GRADCAM:
                sums_gradcam += _gradcam_sums(g)
            if GRADCAMPP:
                sums_gradcampp += _gradcampp_sums(g, sum_a)
            if XGRADCAM:
                a = tl.load(a_rows + pp[None, :], mask=k_ok[:, None] & pp_ok[None, :], other=0.0)
                sums_xgradcam += _xgradcam_sums(a.to(tl.float32), g)

    w_offsets = pid_n * stride_wn + t[:, None] * stride_wt + k[None, :]
    w_ok = t_ok[:, None] & k_ok[None, :]
    if GRADCAM:
        w = sums_gradcam / HW
        tl.store(w_gradcam_ptr + w_offsets, w.to(w_gradcam_ptr.dtype.element_ty), mask=w_ok)
    if GRADCAMPP:
        tl.store(w_gradcampp_ptr + w_offsets, sums_gradcampp.to(w_gradcampp_ptr.dtype.element_ty), mask=w_ok)
    if XGRADCAM:
        w = _xgradcam_finish(sums_xgradcam, sum_a)
        tl.store(w_xgradcam_ptr + w_offsets, w.to(w_xgradcam_ptr.dtype.element_ty), mask=w_ok)


# --------------------------------------------------------------------------------------------------
# 2. Combine: per pixel, ReLU(sum_k c_k A^k) with c a channel weight or a per-pixel gradient


@_launched_kernel("out_ptr", "partial_ptr")
def _channel_sum_relu_kernel(
    a_ptr,
    c_ptr,
    out_ptr,
    T,
    K,
    HW,
    stride_an,
    stride_ak,
    stride_cn,
    stride_ct,
    stride_ck,
    stride_on,
    stride_ot,
    partial_ptr,
    K_PER_SPLIT,
    stride_ps,
    PER_PIXEL: tl.constexpr,
    RELU_COEFFS: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """Maps [N,T,h,w]; grid (N*cdiv(T, BLOCK_T), cdiv(h*w, BLOCK_HW), S).

    Program (., ., s) sums channels [s*K_PER_SPLIT, (s+1)*K_PER_SPLIT); with S = 1 it writes the
    ReLU'd map, else its float32 partial sum to partial_ptr [S,N,T,h*w] (stride_ps per split) for
    ``_sum_splits_relu_kernel``.

    PER_PIXEL False: c = weights [N,T,K] (Grad-CAM family, ReLU(sum_k w_k A^k)).
    PER_PIXEL True:  c = gradients [N,T,K,h,w]; RELU_COEFFS True is Layer-CAM (ReLU(g)), False
    HiRes-CAM (g).
    Bytes per image: reads K*h*w*s of A once per block of BLOCK_T targets (once for T <= 4), plus
    4*T*K of weights or T*K*h*w*s of gradients, writes T*h*w*s. Each output pixel needs every
    channel of A at that pixel, so A and the coefficients are each read once: the minimum.
    """
    t_blocks = (T + BLOCK_T - 1) // BLOCK_T  # not tl.cdiv: a @jit function of the standard library
    pid_n = (tl.program_id(0) // t_blocks).to(tl.int64)
    pid_t = tl.program_id(0) % t_blocks
    pid_p = tl.program_id(1)
    pid_s = tl.program_id(2)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    p = pid_p * BLOCK_HW + tl.arange(0, BLOCK_HW)
    t_ok = t < T
    p_ok = p < HW
    a_base = a_ptr + pid_n * stride_an
    c_base = c_ptr + pid_n * stride_cn
    acc = tl.full([BLOCK_T, BLOCK_HW], 0.0, dtype=tl.float32)
    k_start = pid_s * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_end
        a_ok = k_ok[:, None] & p_ok[None, :]
        a = tl.load(a_base + k[:, None] * stride_ak + p[None, :], mask=a_ok, other=0.0).to(tl.float32)
        if PER_PIXEL:
            c_offsets = t[:, None, None] * stride_ct + k[None, :, None] * stride_ck + p[None, None, :]
            c_ok = t_ok[:, None, None] & k_ok[None, :, None] & p_ok[None, None, :]
            c = tl.load(c_base + c_offsets, mask=c_ok, other=0.0).to(tl.float32)
            if RELU_COEFFS:
                c = tl.maximum(c, 0.0)
            acc += _sum(c * a[None, :, :], 1)
        else:
            c_offsets = t[:, None] * stride_ct + k[None, :] * stride_ck
            c = tl.load(c_base + c_offsets, mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            acc += _sum(c[:, :, None] * a[None, :, :], 1)
    _store_map_or_partial(
        acc, out_ptr, partial_ptr, pid_n, pid_s, t, p, T, K, HW, K_PER_SPLIT, stride_on, stride_ot, stride_ps
    )


# --------------------------------------------------------------------------------------------------
# 1+2 fused: weights and combine in one pass over A and G (planes up to launch.MAX_FUSED_PLANE pixels)


@_launched_kernel("out_ptr", "partial_ptr")
def _gradient_weighted_cam_kernel(
    a_ptr,
    g_ptr,
    out_ptr,
    T,
    K,
    HW,
    stride_an,
    stride_ak,
    stride_gn,
    stride_gt,
    stride_gk,
    stride_on,
    stride_ot,
    partial_ptr,
    K_PER_SPLIT,
    stride_ps,
    METHOD: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    """ReLU(sum_k w_k A^k) with w from METHOD (0 Grad-CAM, 1 Grad-CAM++, 2 XGrad-CAM), the
    weights never leaving registers; grid (N*cdiv(T, BLOCK_T), S), one whole h*w plane per tile.
    A channel's weight needs only that channel's plane, so the S programs of one image split the
    channel loop; partial sums as in ``_channel_sum_relu_kernel``.

    Bytes per image: reads K*h*w*s of A and T*K*h*w*s of G once (T <= 4), writes T*h*w*s. The
    unfused chain also writes and re-reads the weights and reads A a second time: for T = 1 this
    kernel moves about 2/3 of its bytes. Reading A and G once is the minimum: every element enters
    the map.
    """
    t_blocks = (T + BLOCK_T - 1) // BLOCK_T  # not tl.cdiv: a @jit function of the standard library
    pid_n = (tl.program_id(0) // t_blocks).to(tl.int64)
    pid_t = tl.program_id(0) % t_blocks
    pid_s = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_HW)
    t_ok = t < T
    p_ok = p < HW
    a_base = a_ptr + pid_n * stride_an
    g_base = g_ptr + pid_n * stride_gn
    acc = tl.full([BLOCK_T, BLOCK_HW], 0.0, dtype=tl.float32)
    k_start = pid_s * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < k_end
        a_ok = k_ok[:, None] & p_ok[None, :]
        a = tl.load(a_base + k[:, None] * stride_ak + p[None, :], mask=a_ok, other=0.0).to(tl.float32)
        g_offsets = t[:, None, None] * stride_gt + k[None, :, None] * stride_gk + p[None, None, :]
        g_ok = t_ok[:, None, None] & k_ok[None, :, None] & p_ok[None, None, :]
        g = tl.load(g_base + g_offsets, mask=g_ok, other=0.0).to(tl.float32)
        if METHOD == 0:
            w = _gradcam_sums(g) / HW
        elif METHOD == 1:
            w = _gradcampp_sums(g, _sum(a, 1))
        else:
            w = _xgradcam_finish(_xgradcam_sums(a, g), _sum(a, 1))
        acc += _sum(w[:, :, None] * a[None, :, :], 1)
    _store_map_or_partial(
        acc, out_ptr, partial_ptr, pid_n, pid_s, t, p, T, K, HW, K_PER_SPLIT, stride_on, stride_ot, stride_ps
    )


@triton.jit
def _store_map_or_partial(
    acc, out_ptr, partial_ptr, pid_n, pid_s, t, p, T, K, HW, K_PER_SPLIT, stride_on, stride_ot, stride_ps
):
    """ReLU(acc) into the map when one program holds all channels (S = 1), else the float32
    partial sum of this split into partial_ptr [S,N,T,HW]."""
    ok = (t < T)[:, None] & (p < HW)[None, :]
    if K_PER_SPLIT >= K:
        cam = tl.maximum(acc, 0.0)
        out_offsets = pid_n * stride_on + t[:, None] * stride_ot + p[None, :]
        tl.store(out_ptr + out_offsets, cam.to(out_ptr.dtype.element_ty), mask=ok)
    else:
        offsets = pid_s.to(tl.int64) * stride_ps + (pid_n * T + t[:, None]) * HW + p[None, :]
        tl.store(partial_ptr + offsets, acc, mask=ok)


@_launched_kernel("out_ptr", "partial_ptr")
def _sum_splits_relu_kernel(partial_ptr, out_ptr, S, HW, stride_ps, BLOCK_HW: tl.constexpr):
    """out[n,t] = ReLU(sum_s partial[s,n,t]); grid (N*T, cdiv(HW, BLOCK_HW)); out contiguous.

    Bytes: reads S*T*HW*4 per image, writes T*HW*s: the overhead the split's model counts."""
    row = tl.program_id(0).to(tl.int64)
    p = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    ok = p < HW
    acc = tl.full([BLOCK_HW], 0.0, dtype=tl.float32)
    src = partial_ptr + row * HW + p
    for _ in range(0, S):
        acc += tl.load(src, mask=ok, other=0.0)
        src += stride_ps  # pointer arithmetic is 64-bit: no int32 product of split and stride
    tl.store(out_ptr + row * HW + p, tl.maximum(acc, 0.0).to(out_ptr.dtype.element_ty), mask=ok)


# --------------------------------------------------------------------------------------------------
# 3. Bilinear upsampling fused with per-map min-max normalisation and uint8 quantisation


@triton.jit
def _bilinear_tile(src, y, x, h, w, scale_h, scale_w, y_ok, x_ok, RESIZE: tl.constexpr):
    """Values of the [BH,BW] output tile at rows y [BH], columns x [BW] of one map at ``src``.

    Source coordinates as F.interpolate(mode="bilinear", align_corners=False): s = scale*(d+0.5)-0.5,
    clamped below at 0; s0 = floor(s), s1 = s0+1 except on the last row/column; lerp weight s-s0.
    ATen's compiled code evaluates s as one fused multiply-add (CPU and CUDA); float64 gives that
    correctly rounded float32 everywhere (the product is exact in 53 bits; the interpreter's fma is
    not fused). Values are lerps (v0 + l*(v1-v0)) rather than weight sums: equal up to an ulp, but
    a constant map stays exactly constant, so its min-max range is exactly 0.
    """
    ok = y_ok[:, None] & x_ok[None, :]
    if RESIZE:
        # float32 scale x float64 tensor promotes to float64 (the scale is exact in either)
        sy = (scale_h * (y.to(tl.float64) + 0.5) - 0.5).to(tl.float32)
        sx = (scale_w * (x.to(tl.float64) + 0.5) - 0.5).to(tl.float32)
        sy = tl.maximum(sy, 0.0)
        sx = tl.maximum(sx, 0.0)
        y0 = tl.minimum(sy.to(tl.int32), h - 1)  # truncation is floor: s >= 0
        x0 = tl.minimum(sx.to(tl.int32), w - 1)
        ly = sy - y0.to(tl.float32)
        lx = sx - x0.to(tl.float32)
        y1 = tl.where(y0 < h - 1, y0 + 1, y0)
        x1 = tl.where(x0 < w - 1, x0 + 1, x0)
        v00 = tl.load(src + y0[:, None] * w + x0[None, :], mask=ok, other=0.0).to(tl.float32)
        v01 = tl.load(src + y0[:, None] * w + x1[None, :], mask=ok, other=0.0).to(tl.float32)
        v10 = tl.load(src + y1[:, None] * w + x0[None, :], mask=ok, other=0.0).to(tl.float32)
        v11 = tl.load(src + y1[:, None] * w + x1[None, :], mask=ok, other=0.0).to(tl.float32)
        top = v00 + lx[None, :] * (v01 - v00)
        bottom = v10 + lx[None, :] * (v11 - v10)
        v = top + ly[:, None] * (bottom - top)
    else:
        v = tl.load(src + y[:, None] * w + x[None, :], mask=ok, other=0.0).to(tl.float32)
    return v


@_launched_kernel("out_ptr")
def _upsample_normalize_kernel(
    src_ptr,
    out_ptr,
    h,
    w,
    H,
    W,
    scale_h,
    scale_w,
    eps,
    stride_src,
    stride_out,
    ROWS_PER_BAND,
    RESIZE: tl.constexpr,
    NORMALIZE: tl.constexpr,
    TO_UINT8: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """Rows [b*ROWS_PER_BAND, (b+1)*ROWS_PER_BAND) of one [H,W] output map per program (map, b)
    from its [h,w] source map; grid (N*T, bands). Each band program runs the min/max pass over the
    whole map itself (arithmetic on a cached plane) so that no second launch is needed.

    NORMALIZE: a first pass computes every output value for min and max without writing, the
    second recomputes and writes (m - min) / (max - min), or zeros where max - min <= eps.
    Bytes per map: reads h*w*s once from global memory (the later gathers hit L1: the plane is a
    few hundred bytes), writes H*W*s (float) or H*W (uint8). Writing the output once is the
    minimum; recomputing an interpolated value costs a few cached loads and FMAs, cheaper than
    writing unnormalised values and reading them back. (Fusing this into the combine kernel would
    save only the h*w map's write and read, so it is a separate launch.)
    """
    pid = tl.program_id(0).to(tl.int64)
    band_start = tl.program_id(1) * ROWS_PER_BAND
    band_end = tl.minimum(band_start + ROWS_PER_BAND, H)
    src = src_ptr + pid * stride_src
    dst = out_ptr + pid * stride_out
    rows = tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_W)
    if NORMALIZE:
        lo = tl.full([BLOCK_H, BLOCK_W], float("inf"), dtype=tl.float32)
        hi = tl.full([BLOCK_H, BLOCK_W], float("-inf"), dtype=tl.float32)
        for y0 in range(0, H, BLOCK_H):
            y = y0 + rows
            for x0 in range(0, W, BLOCK_W):
                x = x0 + cols
                y_ok = y < H
                x_ok = x < W
                v = _bilinear_tile(src, y, x, h, w, scale_h, scale_w, y_ok, x_ok, RESIZE)
                ok = y_ok[:, None] & x_ok[None, :]
                lo = tl.minimum(lo, tl.where(ok, v, float("inf")))
                hi = tl.maximum(hi, tl.where(ok, v, float("-inf")))
        low = _min_all(lo)
        spread = _max_all(hi) - low
        has_range = spread > eps
        divisor = tl.where(has_range, spread, 1.0)
    for y0 in range(band_start, band_end, BLOCK_H):
        y = y0 + rows
        for x0 in range(0, W, BLOCK_W):
            x = x0 + cols
            y_ok = y < band_end
            x_ok = x < W
            v = _bilinear_tile(src, y, x, h, w, scale_h, scale_w, y_ok, x_ok, RESIZE)
            if NORMALIZE:
                v = tl.where(has_range, (v - low) / divisor, 0.0)
            if TO_UINT8:
                if not NORMALIZE:  # quantize_uint8: maps already in [0, 1]; clip as the reference does
                    v = tl.minimum(tl.maximum(v, 0.0), 1.0)
                v = _round_half_to_even(v * 255.0)
            offsets = y[:, None] * W + x[None, :]
            tl.store(dst + offsets, v.to(out_ptr.dtype.element_ty), mask=y_ok[:, None] & x_ok[None, :])


# --------------------------------------------------------------------------------------------------
# Launchers. Inputs are validated by camserve.kernels; these lay out, allocate and launch what
# kernels/launch.py chooses.


def _device_context(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


# Under the interpreter more programs only cost time (upsample bands repeat the min/max pass), but
# two still exercise the split and band paths that a GPU takes.
INTERPRETER_PROGRAMS_WANTED = 2


@functools.cache
def _programs_wanted(device: torch.device) -> int:
    """About two programs per SM of ``device`` (see kernels/launch.py)."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS_WANTED
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def _plane_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The kernels index a pixel as plane offset y*w + x: make the last two dims row-major."""
    h, w = x.shape[-2], x.shape[-1]
    if (w == 1 or x.stride(-1) == 1) and (h == 1 or x.stride(-2) == w):
        return x
    return x.contiguous()


def _check_image_offsets(name: str, x: torch.Tensor) -> None:
    """In-image offsets are int32 in the kernels: the largest offset inside one image must fit."""
    largest = sum((size - 1) * stride for size, stride in zip(x.shape[1:], x.stride()[1:], strict=True))
    if largest >= _INT32_LIMIT:
        raise UnsupportedError(
            f"{name}: one image spans {largest + 1} elements, more than the triton kernels index "
            f"(2**31); use the torch backend"
        )


def _run(step: launch.Launch, device: torch.device, *args: object) -> None:
    """Launch ``step`` with the positional kernel arguments ``args`` (its constexprs come from it)."""
    if step.grid[0] >= _INT32_LIMIT or any(size > _GRID_YZ_LIMIT for size in step.grid[1:]):
        raise UnsupportedError(
            f"{step.kernel}: grid {step.grid} exceeds CUDA's limits; use the torch backend"
        )
    kernel = globals()[step.kernel]
    with _device_context(device):
        kernel[step.grid](*args, **step.constants, num_warps=step.num_warps)


def _partials(
    steps: Sequence[launch.Launch], split_axis: int, n: int, t: int, hw: int, like: torch.Tensor
) -> torch.Tensor:
    """The float32 [S,N,T,hw] buffer of a split launch (an unused 1-element one when S = 1)."""
    split_count = steps[0].grid[split_axis]
    shape = (split_count, n, t, hw) if split_count > 1 else (1,)
    return torch.empty(shape, dtype=torch.float32, device=like.device)


def _finish_splits(steps: Sequence[launch.Launch], partials: torch.Tensor, out: torch.Tensor) -> None:
    if len(steps) > 1:
        hw = out.shape[-1] * out.shape[-2]
        _run(steps[1], out.device, partials, out, partials.shape[0], hw, partials.stride(0))


def _run_channel_loop(
    steps: Sequence[launch.Launch], split_axis: int, a: torch.Tensor, coeffs: torch.Tensor, out: torch.Tensor
) -> torch.Tensor:
    """Run a kernel that sums A against per-channel coefficients (weights [N,T,K] or gradients
    [N,T,K,h,w]) into ``out`` [N,T,h,w], its channel loop split as ``steps`` plans."""
    n, t, h, w = out.shape
    partials = _partials(steps, split_axis, n, t, h * w, a)
    strides = (a.stride(0), a.stride(1), coeffs.stride(0), coeffs.stride(1), coeffs.stride(2))
    split = (partials, steps[0].scalar("K_PER_SPLIT"), partials.stride(0))
    _run(
        steps[0],
        a.device,
        a,
        coeffs,
        out,
        t,
        a.shape[1],
        h * w,
        *strides,
        out.stride(0),
        out.stride(1),
        *split,
    )
    _finish_splits(steps, partials, out)
    return out


def channel_weights(
    activations: torch.Tensor, gradients: torch.Tensor, methods: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Weights [N,T,K] for each of ``methods`` (names of ``reference.WEIGHT_METHODS``) in one launch."""
    a = _plane_contiguous(activations)
    g = _plane_contiguous(gradients)
    n, t, k, h, w = g.shape
    _check_image_offsets("activations", a)
    _check_image_offsets("gradients", g)
    step = launch.channel_weights(n, t, k, h * w, methods)
    rules = list(launch.WEIGHT_METHOD_CODES)  # slot order of the kernel's three outputs
    out = torch.empty((len(rules), n, t, k), dtype=g.dtype, device=g.device)
    slots = dict(zip(rules, out, strict=True))
    if out.numel() > 0:
        _run(
            step,
            g.device,
            a,
            g,
            out[0],
            out[1],
            out[2],
            t,
            k,
            h * w,
            a.stride(0),
            a.stride(1),
            g.stride(0),
            g.stride(1),
            g.stride(2),
            out.stride(1),
            out.stride(2),
        )
    return {method: slots[method] for method in methods}


def _channel_sum_relu(
    activations: torch.Tensor, coeffs: torch.Tensor, per_pixel: bool, relu_coeffs: bool
) -> torch.Tensor:
    a = _plane_contiguous(activations)
    c = _plane_contiguous(coeffs) if per_pixel else coeffs
    n, k, h, w = a.shape
    t = c.shape[1]
    _check_image_offsets("activations", a)
    _check_image_offsets("gradients" if per_pixel else "weights", c)
    out = torch.empty((n, t, h, w), dtype=a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    steps = launch.channel_sum_relu(n, t, k, h * w, per_pixel, relu_coeffs, _programs_wanted(a.device))
    return _run_channel_loop(steps, 2, a, c, out)


def weighted_sum_relu(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A^k): A [N,K,h,w], w [N,T,K] -> [N,T,h,w]."""
    return _channel_sum_relu(activations, weights, per_pixel=False, relu_coeffs=False)


def elementwise_sum_relu(
    activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool
) -> torch.Tensor:
    """ReLU(sum_k f(g^k) A^k), f = ReLU (Layer-CAM) or identity (HiRes-CAM) -> [N,T,h,w]."""
    return _channel_sum_relu(activations, gradients, per_pixel=True, relu_coeffs=relu_gradients)


def gradient_weighted_cam(activations: torch.Tensor, gradients: torch.Tensor, method: str) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) with w = channel_weights(A, G, method), fused when the h*w plane fits
    one tile (<= launch.MAX_FUSED_PLANE pixels); larger planes run the weights and combine kernels."""
    a = _plane_contiguous(activations)
    g = _plane_contiguous(gradients)
    n, t, k, h, w = g.shape
    if h * w > launch.MAX_FUSED_PLANE:
        return weighted_sum_relu(a, channel_weights(a, g, [method])[method])
    _check_image_offsets("activations", a)
    _check_image_offsets("gradients", g)
    out = torch.empty((n, t, h, w), dtype=g.dtype, device=g.device)
    if out.numel() == 0:
        return out
    steps = launch.gradient_weighted_cam(n, t, k, h * w, method, _programs_wanted(g.device))
    return _run_channel_loop(steps, 1, a, g, out)


def _float32_ratio(numerator: int, denominator: int) -> float:
    """in/out as a float32 division, as ATen computes the bilinear scale (not a rounded float64)."""
    return float(np.float32(numerator) / np.float32(denominator))


def upsample_normalize(
    maps: torch.Tensor, size: tuple[int, int], normalize: bool, eps: float, to_uint8: bool
) -> torch.Tensor:
    """maps [N,T,h,w] -> [N,T,H,W] (uint8 when ``to_uint8``): bilinear resize, per-map min-max."""
    n, t, h, w = maps.shape
    out_h, out_w = size
    src = maps.reshape(n * t, h * w)  # a copy only for a non-contiguous map: h*w elements each
    if h * w > 1 and src.stride(1) != 1:
        src = src.contiguous()
    out = torch.empty((n, t, out_h, out_w), dtype=torch.uint8 if to_uint8 else maps.dtype, device=maps.device)
    if out.numel() == 0:
        return out
    if out_h * out_w >= _INT32_LIMIT or h * w >= _INT32_LIMIT:
        raise UnsupportedError(f"size: {out_h}x{out_w} maps exceed what the triton kernel indexes (2**31)")
    resize = (out_h, out_w) != (h, w)
    step = launch.upsample_normalize(
        n * t, out_h, out_w, resize, normalize, to_uint8, _programs_wanted(maps.device)
    )
    _run(
        step,
        maps.device,
        src,
        out,
        h,
        w,
        out_h,
        out_w,
        _float32_ratio(h, out_h),
        _float32_ratio(w, out_w),
        float(eps),
        src.stride(0),
        out_h * out_w,
        step.scalar("ROWS_PER_BAND"),
    )
    return out
