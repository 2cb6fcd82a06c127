"""What a camserve client and the server both speak: the gRPC channel's credentials, the bearer
token, and numpy arrays <-> ``camserve.v1.Tensor``.

It lives in the core so that a client (``camserve.Client``, the load generator, ``camserve explain
--server``) never imports the server (``camserve.service``); the server imports it too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.v1 import camserve_pb2 as pb

AUTH_METADATA_KEY = "authorization"
BEARER = "bearer "


# -- tokens ---------------------------------------------------------------------------------------


def read_file(path: str, setting: str) -> bytes:
    """The file's bytes; errors name ``setting`` (e.g. "service.tls_key")."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise NotFoundError(f"{setting}: no such file: {file}")
    try:
        return file.read_bytes()
    except OSError as exc:
        raise InvalidArgumentError(setting, f"cannot read {file} ({exc})") from None


def read_token_file(path: str, setting: str) -> str:
    """The bearer token in the file at ``path`` (surrounding whitespace dropped); errors name ``setting``."""
    return check_token(read_file(path, setting).decode("utf-8", "replace").strip(), setting)


def check_token(token: str, setting: str) -> str:
    """``token`` if it can travel in an ``authorization: Bearer`` header, else an error naming ``setting``."""
    if not token or any(c.isspace() for c in token):
        raise InvalidArgumentError(setting, "the token must be non-empty, without whitespace")
    if not (token.isascii() and token.isprintable()):
        # A header value travels as bytes: gRPC would take only its Latin-1 form, which no client sends.
        bad = next(c for c in token if not (c.isascii() and c.isprintable()))
        raise InvalidArgumentError(setting, f"the token must be printable ASCII, got {ascii(bad)}")
    return token


# -- channels -------------------------------------------------------------------------------------


def channel_credentials(
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> grpc.ChannelCredentials:
    """Client TLS credentials: ``ca_file`` verifies the server (None: the system's roots); ``cert_file``
    and ``key_file`` are the client's own certificate for mTLS."""
    if (cert_file is None) != (key_file is None):
        raise InvalidArgumentError("cert_file", "a client certificate needs its key: pass both or neither")

    def read(path: str | os.PathLike[str] | None, name: str) -> bytes | None:
        if path is None:
            return None
        file = Path(path).expanduser()
        if not file.is_file():
            raise NotFoundError(f"{name}: no such file: {file}")
        return file.read_bytes()

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca_file, "ca_file"),
        private_key=read(key_file, "key_file"),
        certificate_chain=read(cert_file, "cert_file"),
    )


def open_channel(
    address: str,
    *,
    tls: bool = False,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    server_name: str | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.Channel:
    """A blocking channel to a camserve server: TLS when ``tls`` or any certificate file is given.

    ``server_name`` overrides the name the server's certificate is checked against (when the address
    is an IP or an alias the certificate does not list).
    """
    options = list(options)
    if not (tls or ca_file or cert_file or key_file):
        if server_name:
            raise InvalidArgumentError("server_name", "only used with TLS")
        return grpc.insecure_channel(address, options=options)
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, channel_credentials(ca_file, cert_file, key_file), options=options)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty without one)."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),) if token else ()


# -- tensors --------------------------------------------------------------------------------------

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
#: Elements a shape may describe, a zero dimension counted as one: a tensor with data is far smaller
#: (its bytes fit in a gRPC message, < 2 GiB), and an empty one like [2**62, 0] would overflow numpy.
MAX_TENSOR_ELEMENTS = 2**31 - 1
#: Largest magnitude of a preprocessed input value. Normalised pixels stay within about ±10; finite
#: values near float32's limit (3e38) overflow the model's first sums and come back as NaN maps.
MAX_INPUT_MAGNITUDE = 1e6

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
    if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_ELEMENTS:
        raise InvalidArgumentError(
            field, f"{list(shape)} is too big: at most {MAX_TENSOR_ELEMENTS} elements (a 0 counted as 1)"
        )
    return shape


def check_input_values(images: np.ndarray, field: str) -> None:
    """Preprocessed float images [N, ...] (both APIs): every value finite and within
    ±MAX_INPUT_MAGNITUDE, else InvalidArgumentError naming ``field`` and the first bad image."""
    flat = np.abs(images.reshape(images.shape[0], -1))
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise InvalidArgumentError(field, f"image {int(np.argmin(finite))} has NaN or infinite values")
    largest = flat.max(axis=1, initial=0.0)
    if (largest > MAX_INPUT_MAGNITUDE).any():
        bad = int(np.argmax(largest > MAX_INPUT_MAGNITUDE))
        raise InvalidArgumentError(
            field,
            f"image {bad} has values up to {float(largest[bad]):.3g}; preprocessed inputs must be within "
            f"±{MAX_INPUT_MAGNITUDE:g} (larger ones overflow the model to NaN)",
        )


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
