"""numpy arrays <-> camserve.v1.Tensor (raw little-endian bytes + shape + dtype). Used by the server and
the Python client."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from camserve.errors import InvalidArgumentError
from camserve.v1 import camserve_pb2 as pb

NUMPY_DTYPES: dict[int, np.dtype] = {
    pb.DATA_TYPE_UNSPECIFIED: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    pb.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    pb.DATA_TYPE_UINT8: np.dtype("u1"),
}
_PROTO_DTYPES: dict[str, pb.DataType] = {
    "float32": pb.DATA_TYPE_FLOAT32,
    "float16": pb.DATA_TYPE_FLOAT16,
    "uint8": pb.DATA_TYPE_UINT8,
}

MAX_TENSOR_DIMS = 8  # no camserve tensor has more; numpy refuses more than 64

#: Names users give for map dtypes (Client, CLI) -> DataType values.
DTYPE_NAMES = tuple(_PROTO_DTYPES)


def dtype_from_name(name: str, field: str = "dtype") -> pb.DataType:
    if name not in _PROTO_DTYPES:
        raise InvalidArgumentError(field, f"{name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return _PROTO_DTYPES[name]


def array_to_tensor(array: np.ndarray) -> pb.Tensor:
    """Encode a float32, float16 or uint8 array (any shape) as a Tensor message."""
    name = array.dtype.name
    if name not in _PROTO_DTYPES:
        raise InvalidArgumentError(
            "tensor", f"dtype {name} cannot be sent; use one of {', '.join(DTYPE_NAMES)}"
        )
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return pb.Tensor(data=data, shape=list(array.shape), dtype=_PROTO_DTYPES[name])


def check_shape(dims: Sequence[int], field: str) -> tuple[int, ...]:
    """A tensor shape from a request (both APIs), before anything is allocated from it."""
    shape = tuple(int(d) for d in dims)
    if len(shape) > MAX_TENSOR_DIMS:
        raise InvalidArgumentError(
            field, f"has {len(shape)} dimensions; camserve tensors have at most {MAX_TENSOR_DIMS}"
        )
    if any(d < 0 for d in shape):
        raise InvalidArgumentError(field, f"dimensions must be >= 0, got {list(shape)}")
    return shape


def tensor_to_array(tensor: pb.Tensor, field: str) -> np.ndarray:
    """Decode a Tensor message; ``field`` names it in errors (``images[2].tensor``)."""
    if tensor.dtype not in NUMPY_DTYPES:
        raise InvalidArgumentError(f"{field}.dtype", f"unknown data type {tensor.dtype}")
    dtype = NUMPY_DTYPES[tensor.dtype]
    shape = check_shape(tensor.shape, f"{field}.shape")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgumentError(
            f"{field}.data",
            f"holds {len(tensor.data)} bytes but shape {list(shape)} of {dtype.name} needs {expected}",
        )
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)
