"""The CAM maths, dispatched to a backend: fused Triton kernels or the torch reference.

Every function takes ``backend`` (``CamserveConfig.runtime.kernels``; env ``CAMSERVE_KERNELS``):

* ``"auto"``: the Triton kernels for CUDA tensors (when triton is installed), the torch reference
  for CPU tensors;
* ``"triton"``: the kernels in ``kernels/triton_cam.py``. On CPU tensors they run under the Triton
  interpreter, which needs ``TRITON_INTERPRET=1`` in the environment before camserve's kernels are
  first used (Triton reads it when the kernel module is imported; set it before starting the
  process); otherwise an UnsupportedError says so;
* ``"torch"``: ``kernels/reference.py``, any device. The reference defines the numbers; the kernels
  match it to 1e-5.

Inputs are checked here, for both backends, and bad ones raise InvalidArgumentError naming the
argument. Importing this package does not import triton: that happens on the first Triton call.
Shapes: A activations [N,K,h,w]; G gradients [N,T,K,h,w]; w channel weights [N,T,K]; maps [N,T,h,w].
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import math
import numbers
from collections.abc import Sequence
from types import ModuleType
from typing import Literal, cast

import torch

from camserve.errors import InvalidArgumentError, UnsupportedError

from . import reference
from .reference import WEIGHT_METHODS, WeightMethod

__all__ = [
    "BACKENDS",
    "WEIGHT_METHODS",
    "channel_weights",
    "channel_weights_for_methods",
    "elementwise_sum_relu",
    "gradient_weighted_cam",
    "quantize_uint8",
    "resolve_backend",
    "upsample_normalize",
    "weighted_sum_relu",
]

BACKENDS: tuple[str, ...] = ("auto", "triton", "torch")
# What the Triton kernels load; they compute in float32 either way.
TRITON_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)

_log = logging.getLogger(__name__)


@functools.cache
def triton_installed() -> bool:
    """Whether the triton package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


@functools.cache
def _warn_auto_without_triton() -> None:
    _log.warning("kernels 'auto' on CUDA tensors: triton is not installed, using the torch reference")


def resolve_backend(backend: str, device: torch.device) -> Literal["triton", "torch"]:
    """The backend that runs tensors on ``device`` when ``backend`` is asked for."""
    if backend not in BACKENDS:
        raise InvalidArgumentError("runtime.kernels", f"{backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type != "cuda":
            return "torch"
        if not triton_installed():
            _warn_auto_without_triton()
            return "torch"
        return "triton"
    return "triton" if backend == "triton" else "torch"


def _triton_kernels(device: torch.device) -> ModuleType:
    """``kernels.triton_cam``, imported on first use, after checking it can run on ``device``."""
    if not triton_installed():
        raise UnsupportedError(
            "runtime.kernels: 'triton' needs the triton package (it comes with torch's CUDA wheels on "
            "Linux); install it or use 'torch'"
        )
    if device.type not in ("cuda", "cpu"):
        raise UnsupportedError(f"runtime.kernels: 'triton' runs on CUDA (or CPU) tensors, not {device.type}")
    module = importlib.import_module("camserve.kernels.triton_cam")
    if device.type == "cuda" and module.INTERPRETED:
        raise UnsupportedError(
            f"runtime.kernels: TRITON_INTERPRET=1 is set, so the Triton kernels run in the interpreter, "
            f"which would copy the {device} tensors through numpy on the host: unset TRITON_INTERPRET "
            "for GPU runs (Triton reads it when camserve's kernels are first imported), or use 'torch'"
        )
    if device.type == "cpu" and not module.INTERPRETED:
        raise UnsupportedError(
            "runtime.kernels: 'triton' on CPU tensors runs the Triton interpreter, which is off: set "
            "TRITON_INTERPRET=1 in the environment before starting the process (Triton reads it when "
            "camserve's kernels are first imported), or use 'auto'/'torch' (CAMSERVE_KERNELS)"
        )
    return module


# --------------------------------------------------------------------------------------------------
# Argument checks (both backends)


def _check_tensor(name: str, x: object, ndim: int, layout: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgumentError(name, f"expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.dim() != ndim:
        raise InvalidArgumentError(name, f"expected {layout} ({ndim}-D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InvalidArgumentError(name, f"expected a floating-point tensor, got {x.dtype}")
    return x


def _check_activations(activations: object) -> torch.Tensor:
    a = _check_tensor("activations", activations, 4, "[N,K,h,w]")
    if a.shape[-2] * a.shape[-1] == 0:
        raise InvalidArgumentError("activations", f"empty spatial grid: shape {tuple(a.shape)}")
    return a


def _check_same(name: str, x: torch.Tensor, a: torch.Tensor) -> None:
    if x.device != a.device:
        raise InvalidArgumentError(name, f"on {x.device}, but activations are on {a.device}")
    if x.dtype != a.dtype:
        raise InvalidArgumentError(name, f"dtype {x.dtype} differs from the activations' {a.dtype}")


def _check_gradients(gradients: object, a: torch.Tensor) -> torch.Tensor:
    g = _check_tensor("gradients", gradients, 5, "[N,T,K,h,w]")
    n, k, h, w = a.shape
    if g.shape[0] != n or tuple(g.shape[2:]) != (k, h, w):
        raise InvalidArgumentError(
            "gradients",
            f"shape {tuple(g.shape)} does not match activations {tuple(a.shape)}: "
            f"expected [{n},T,{k},{h},{w}]",
        )
    _check_same("gradients", g, a)
    return g


def _check_method(method: object) -> WeightMethod:
    if method not in WEIGHT_METHODS:
        raise InvalidArgumentError("method", f"{method!r} is not one of {', '.join(WEIGHT_METHODS)}")
    return cast(WeightMethod, method)


def _check_triton_dtype(name: str, x: torch.Tensor) -> None:
    if x.dtype not in TRITON_DTYPES:
        raise UnsupportedError(
            f"{name}: dtype {x.dtype} is not supported by the triton kernels (float32, float16, bfloat16); "
            "use runtime.kernels 'torch'"
        )


def _check_size(size: object) -> tuple[int, int] | None:
    if size is None:
        return None
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) > 0 for v in size)
    ):
        raise InvalidArgumentError("size", f"expected None or (height, width) of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


# --------------------------------------------------------------------------------------------------
# The operations


def channel_weights(
    activations: torch.Tensor, gradients: torch.Tensor, method: WeightMethod, backend: str = "auto"
) -> torch.Tensor:
    """Per-channel weights [N,T,K] of ``method``; see ``kernels.reference.channel_weights``."""
    return channel_weights_for_methods(activations, gradients, [method], backend)[method]


def channel_weights_for_methods(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    methods: Sequence[WeightMethod],
    backend: str = "auto",
) -> dict[str, torch.Tensor]:
    """Weights [N,T,K] of several methods; the Triton backend computes them all in one pass over A and G."""
    a = _check_activations(activations)
    g = _check_gradients(gradients, a)
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise InvalidArgumentError("methods", f"expected a non-empty list of {', '.join(WEIGHT_METHODS)}")
    names = list(dict.fromkeys(_check_method(m) for m in methods))
    if resolve_backend(backend, a.device) == "torch":
        return {m: reference.channel_weights(a, g, m) for m in names}
    _check_triton_dtype("activations", a)
    return _triton_kernels(a.device).channel_weights(a, g, names)


def weighted_sum_relu(
    activations: torch.Tensor, weights: torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) -> [N,T,h,w]; see ``kernels.reference.weighted_sum_relu``."""
    a = _check_activations(activations)
    w = _check_tensor("weights", weights, 3, "[N,T,K]")
    if w.shape[0] != a.shape[0] or w.shape[2] != a.shape[1]:
        raise InvalidArgumentError(
            "weights",
            f"shape {tuple(w.shape)} does not match activations {tuple(a.shape)}: "
            f"expected [{a.shape[0]},T,{a.shape[1]}]",
        )
    _check_same("weights", w, a)
    if resolve_backend(backend, a.device) == "torch":
        return reference.weighted_sum_relu(a, w)
    _check_triton_dtype("activations", a)
    return _triton_kernels(a.device).weighted_sum_relu(a, w)


def elementwise_sum_relu(
    activations: torch.Tensor, gradients: torch.Tensor, relu_gradients: bool, backend: str = "auto"
) -> torch.Tensor:
    """ReLU(sum_k f(g^k) A^k) -> [N,T,h,w] (Layer-CAM: f = ReLU; HiRes-CAM: f = identity)."""
    a = _check_activations(activations)
    g = _check_gradients(gradients, a)
    if resolve_backend(backend, a.device) == "torch":
        return reference.elementwise_sum_relu(a, g, bool(relu_gradients))
    _check_triton_dtype("activations", a)
    return _triton_kernels(a.device).elementwise_sum_relu(a, g, bool(relu_gradients))


def gradient_weighted_cam(
    activations: torch.Tensor, gradients: torch.Tensor, method: WeightMethod, backend: str = "auto"
) -> torch.Tensor:
    """ReLU(sum_k w_k A^k) with w = channel_weights(A, G, method) -> [N,T,h,w]; the Triton backend
    fuses both steps (the weights never reach memory). See ``kernels.reference.gradient_weighted_cam``."""
    a = _check_activations(activations)
    g = _check_gradients(gradients, a)
    name = _check_method(method)
    if resolve_backend(backend, a.device) == "torch":
        return reference.gradient_weighted_cam(a, g, name)
    _check_triton_dtype("activations", a)
    return _triton_kernels(a.device).gradient_weighted_cam(a, g, name)


def upsample_normalize(
    maps: torch.Tensor,
    size: tuple[int, int] | None,
    normalize: bool = True,
    eps: float = 1e-7,
    to_uint8: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Bilinear resize (half-pixel centres) then per-map min-max; see ``kernels.reference``.

    The Triton kernel does both in one launch (uint8 quantisation included) and keeps a constant
    map exactly constant, so its normalised map is all zeros whatever the resize.
    """
    m = _check_tensor("maps", maps, 4, "[N,T,h,w]")
    if m.shape[-2] * m.shape[-1] == 0:
        raise InvalidArgumentError("maps", f"empty spatial grid: shape {tuple(m.shape)}")
    out_size = _check_size(size)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise InvalidArgumentError("eps", f"expected a finite number >= 0, got {eps!r}")
    if to_uint8 and not normalize:
        raise InvalidArgumentError(
            "to_uint8", "uint8 output needs normalised maps (normalize=True); see quantize_uint8"
        )
    if resolve_backend(backend, m.device) == "torch":
        return reference.upsample_normalize(m, out_size, bool(normalize), float(eps), bool(to_uint8))
    target = out_size if out_size is not None else (int(m.shape[-2]), int(m.shape[-1]))
    if target == tuple(m.shape[-2:]) and not normalize:
        return m  # nothing to do, as in the reference
    _check_triton_dtype("maps", m)
    kernels = _triton_kernels(m.device)
    return kernels.upsample_normalize(m, target, bool(normalize), float(eps), bool(to_uint8))


def quantize_uint8(maps: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Normalised maps [N,T,H,W] (values in [0, 1]) -> uint8 round(255 * clip(m, 0, 1)) on their device.

    For maps that are already normalised and resized (the float maps an explain run returns): the
    front doors call it before copying maps to the host, so a quarter of the bytes cross the bus.
    The Triton backend runs the fused resize/normalise kernel with only its quantisation step.
    """
    m = _check_tensor("maps", maps, 4, "[N,T,H,W]")
    if resolve_backend(backend, m.device) == "torch":
        return reference.quantize_uint8(m)
    _check_triton_dtype("maps", m)
    size = (int(m.shape[-2]), int(m.shape[-1]))
    return _triton_kernels(m.device).upsample_normalize(m, size, False, 0.0, True)
