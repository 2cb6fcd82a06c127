"""Trace a PyTorch function — forward *and* ``torch.autograd.grad`` — to an ONNX file.

``torch.onnx.export(dynamo=True)`` cannot export a module that calls ``autograd.grad`` in its
forward, and the TorchScript exporter cannot take decomposed backward graphs. What works:

1. ``make_fx`` (batch and target sizes symbolic, see ``trace``) traces the whole function, backward
   included, to core aten ops (core-aten and backward decompositions), giving a plain fx graph with
   no autograd in it;
2. ``torch.export`` re-exports that graph with dynamic batch (and target) dimensions;
3. the dynamo ONNX exporter writes it (opset 18).

Some kernels need a nudge before tracing: scaled-dot-product attention is traced with the math
backend (the CPU flash-attention backward has no ONNX translation), and the convolution and the
(adaptive) average-pool backward kernels are decomposed (see ``_decompositions``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch._decomp import core_aten_decompositions, get_decompositions
from torch._dynamo.source import ConstantSource
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

from camserve.errors import ExportError

if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)
OPSET = 18
MAX_BATCH = 4096


def _decompositions() -> dict:
    table = dict(core_aten_decompositions())
    table.update(
        get_decompositions(
            [
                torch.ops.aten._adaptive_avg_pool2d_backward,
                torch.ops.aten.avg_pool2d_backward,
                torch.ops.aten.threshold_backward,
                torch.ops.aten.native_layer_norm_backward,
                torch.ops.aten.native_batch_norm_backward,
                torch.ops.aten.gelu_backward,
                torch.ops.aten.hardswish_backward,
                torch.ops.aten.hardsigmoid_backward,
                torch.ops.aten.silu_backward,
                torch.ops.aten._softmax_backward_data,
                torch.ops.aten.embedding_dense_backward,
            ]
        )
    )
    table[torch.ops.aten.convolution_backward.default] = _convolution_backward
    table[torch.ops.aten._adaptive_avg_pool2d_backward.default] = _adaptive_avg_pool2d_backward
    table[torch.ops.aten.avg_pool2d_backward.default] = _avg_pool2d_backward
    return table


def _convolution_backward(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Sequence[int] | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
    output_mask: Sequence[bool],
) -> tuple[torch.Tensor | None, None, None]:
    """Input gradient of a 2-d convolution as a transposed convolution (ONNX ConvTranspose).

    Only the input gradient is ever asked for: parameters are constants of the exported graphs.
    """
    if transposed or weight.dim() != 4 or output_mask[1] or output_mask[2]:
        return NotImplemented
    grad_input = None
    if output_mask[0]:
        kernel = weight.shape[2:]
        extra = [
            int(inp.shape[2 + i])
            - (
                (int(grad_out.shape[2 + i]) - 1) * stride[i]
                - 2 * padding[i]
                + dilation[i] * (kernel[i] - 1)
                + 1
            )
            for i in range(2)
        ]
        grad_input = torch.ops.aten.convolution.default(
            grad_out, weight, None, stride, padding, dilation, True, extra, groups
        )
    return grad_input, None, None


class _ExportFriendlyOps(TorchFunctionMode):
    """Rewrites, above autograd, the few PyTorch calls whose traced form ONNX cannot express.

    Global average pooling (output 1x1) becomes a plain mean: PyTorch's composite kernel re-strides
    its result to the input's memory format with ``as_strided_`` (Swin's channels-last head), whose
    backward is an ``as_strided_scatter`` with no ONNX translation.

    ``x[slices] = number`` becomes ``x[slices].fill_(number)``: traced as written, the number is a
    0-d tensor constant copied into the view, and the ONNX exporter's ``copy`` drops the broadcast,
    leaving a scalar where a [h, w] block belongs (Swin's shifted-window attention mask).

    ``F.multi_head_attention_forward`` gets contiguous query/key/value: ``nn.MultiheadAttention``
    passes [L, N, E] transposed views, and for a non-contiguous input that requires grad, matmul
    does not fold the in-projection into one matrix product but expands the weight L times and runs
    a bmm (ViT-B/16 at 224²: 197 x 768 x 2304 floats = 1.4 GB per encoder block, materialised by
    ONNX Runtime on every run, and by the exporter's constant folder).
    """

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.__setitem__ and _is_number(args[2]) and _is_basic_index(args[1]):
            args[0][args[1]].fill_(args[2])  # basic indexing gives a view: the fill lands in x
            return None
        if func is torch.nn.functional.multi_head_attention_forward:
            args = _contiguous_qkv(args)
        if func is torch.nn.functional.adaptive_avg_pool2d:
            x, size = args[0], args[1] if len(args) > 1 else kwargs["output_size"]
            if size in (1, (1, 1), [1, 1]):
                return x.mean(dim=(-2, -1), keepdim=True)
        return func(*args, **kwargs)


def _contiguous_qkv(args: tuple) -> tuple:
    """args with query, key and value (the first three) contiguous; a tensor passed twice stays one
    object, so self-attention keeps its packed in-projection."""
    made: dict[int, torch.Tensor] = {}
    qkv = tuple(made.setdefault(id(x), x.contiguous()) for x in args[:3])
    return qkv + tuple(args[3:])


def _is_number(value: object) -> bool:
    return isinstance(value, (bool, int, float))


def _is_basic_index(index: object) -> bool:
    """Indexing that returns a view (slices, integers, None, Ellipsis), not a copy."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(part is None or part is Ellipsis or isinstance(part, (slice, int)) for part in parts)


def _window_matrix(windows: list[tuple[int, int, float]], size_in: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] pooling matrix along one axis: row i averages inputs [start, end) with ``weight``."""
    rows = [[0.0] * size_in for _ in windows]
    for row, (start, end, weight) in zip(rows, windows, strict=True):
        row[start:end] = [weight] * (end - start)
    # built from Python numbers so that tracing records one constant, not the ops that filled it
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def _pool_matrix(size_in: int, size_out: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] averaging matrix of adaptive average pooling along one axis (PyTorch's windows:
    start = floor(i·in/out), end = ceil((i+1)·in/out))."""
    windows = []
    for i in range(size_out):
        start, end = (i * size_in) // size_out, -((-(i + 1) * size_in) // size_out)
        windows.append((start, end, 1.0 / (end - start)))
    return _window_matrix(windows, size_in, like)


def _avg_pool_matrix(
    size_in: int, size_out: int, kernel: int, stride: int, pad: int, divisor: str, like: torch.Tensor
) -> torch.Tensor:
    """[out, in] matrix of ``avg_pool2d`` along one axis, PyTorch's windows and divisors: window i
    spans [i·stride - pad, min(i·stride - pad + kernel, in + pad)), clipped to the input; it divides
    by its ``"padded"`` length (count_include_pad), its ``"clipped"`` length, or not at all
    (``"none"``: a divisor_override is applied once, outside). The 2-d divisor is the product of
    the two axes' divisors, so the pooling is separable."""
    windows = []
    for i in range(size_out):
        start = i * stride - pad
        end = min(start + kernel, size_in + pad)
        padded = end - start
        start, end = max(start, 0), min(end, size_in)
        length = {"padded": padded, "clipped": max(end - start, 1), "none": 1}[divisor]
        windows.append((start, end, 1.0 / length))
    return _window_matrix(windows, size_in, like)


def _adaptive_avg_pool2d_backward(grad_out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """Adaptive average pooling is linear, out = P_h · x · P_wᵀ, so grad_in = P_hᵀ · grad · P_w
    (two MatMuls in ONNX; the aten backward kernel has no ONNX translation)."""
    p_h = _pool_matrix(int(inp.shape[-2]), int(grad_out.shape[-2]), grad_out)
    p_w = _pool_matrix(int(inp.shape[-1]), int(grad_out.shape[-1]), grad_out)
    return torch.matmul(torch.matmul(p_h.t(), grad_out), p_w)


def _avg_pool2d_backward(
    grad_out: torch.Tensor,
    inp: torch.Tensor,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    ceil_mode: bool,
    count_include_pad: bool,
    divisor_override: int | None,
) -> torch.Tensor:
    """Average pooling is linear and separable too (DenseNet's transitions): out = P_h · x · P_wᵀ,
    grad_in = P_hᵀ · grad · P_w, with the windows and divisors of ``_avg_pool_matrix``. Ceil mode
    needs nothing more: its extra windows are in ``grad_out``'s shape."""
    kernel = list(kernel_size) * (2 // len(kernel_size))
    strides = list(stride or kernel_size) * (2 // len(stride or kernel_size))
    pads = list(padding) * (2 // len(padding))
    divisor = "none" if divisor_override else ("padded" if count_include_pad else "clipped")
    p_h, p_w = (
        _avg_pool_matrix(
            int(inp.shape[axis]), int(grad_out.shape[axis]), kernel[i], strides[i], pads[i], divisor, grad_out
        )
        for i, axis in enumerate((-2, -1))
    )
    grad_in = torch.matmul(torch.matmul(p_h.t(), grad_out), p_w)
    return grad_in / float(divisor_override) if divisor_override else grad_in


class _GraphModule(torch.nn.Module):
    """Wraps a traced fx graph so that torch.export sees named tensor inputs."""

    def __init__(self, graph: torch.fx.GraphModule, input_names: Sequence[str]) -> None:
        super().__init__()
        self.graph_module = graph
        self.input_names = list(input_names)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.graph_module(*inputs)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def trace(
    fn: Callable,
    example_inputs: Sequence[torch.Tensor],
    dynamic_axes: Sequence[Collection[int]] | None = None,
) -> torch.fx.GraphModule:
    """Forward + backward of ``fn`` as one aten-level fx graph.

    Only ``dynamic_axes[i]`` of input ``i`` are symbolic (default: axis 0, the batch), each with its
    own symbol; every other size is the example's. Making every size symbolic, as make_fx's symbolic
    mode does, costs minutes of sympy on Swin's window arithmetic and lets equal sizes share a
    symbol (a batch of 2 beside a 2x2 map), which the export cannot use anyway: it fixes them.
    """

    # a plain function: make_fx inspects the signature of what it traces
    def call(*args: torch.Tensor) -> Any:
        return fn(*args)

    axes = dynamic_axes if dynamic_axes is not None else [{0}] * len(example_inputs)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    fake_inputs = [
        fake_mode.from_tensor(
            x,
            source=ConstantSource(f"input{i}"),
            symbolic_context=StatelessSymbolicContext(
                dynamic_sizes=[DimDynamic.DYNAMIC if d in dims else DimDynamic.STATIC for d in range(x.dim())]
            ),
        )
        for i, (x, dims) in enumerate(zip(example_inputs, axes, strict=True))
    ]
    with sdpa_kernel([SDPBackend.MATH]), _ExportFriendlyOps():
        graph = make_fx(
            call,
            decomposition_table=_decompositions(),
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,  # the model's parameters become constants of the graph
        )(*fake_inputs)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def export_onnx(
    fn: Callable,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_dims: dict[str, dict[int, str]],
    path: Path,
) -> None:
    """Trace ``fn`` and write it to ``path`` as ONNX with the given dynamic dimensions.

    ``dynamic_dims`` maps an input name to {axis: dimension name}; equal names share one symbol.
    """
    graph = trace(fn, example_inputs, [set(dynamic_dims.get(name, {})) for name in input_names])
    dims: dict[str, Dim] = {}
    dynamic_shapes = []
    for name in input_names:
        axes = dynamic_dims.get(name, {})
        spec = {}
        for axis, dim_name in axes.items():
            if dim_name not in dims:
                dims[dim_name] = Dim(dim_name, min=1, max=MAX_BATCH)
            spec[axis] = dims[dim_name]
        dynamic_shapes.append(spec)
    module = _GraphModule(graph, input_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(
                module, tuple(example_inputs), dynamic_shapes={"inputs": tuple(dynamic_shapes)}
            )
            onnx_program = torch.onnx.export(
                program,
                tuple(example_inputs),
                input_names=list(input_names),
                output_names=list(output_names),
                opset_version=OPSET,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            raise ExportError(
                f"ONNX export of the {path.stem} graph failed: {type(exc).__name__}: {exc}"
            ) from exc
    if onnx_program is None:  # only when given no model, which never happens here
        raise ExportError(f"ONNX export of the {path.stem} graph returned nothing")
    onnx_program.save(str(path), external_data=False)
