"""One typed configuration for the Python API, the CLI and the service.

Read once, in this order, later sources overriding earlier ones:
defaults < config file (TOML/YAML/JSON) < environment (``CAMSERVE_*``) < explicit overrides (CLI flags).
The resulting object is passed down; the defaults' values come from ``camserve.defaults``.

Next to ``ExplainOptions`` live the validators of what a caller may ask for, one per kind of input
(options, output sizes, targets, methods): the Python API, the CLI and both gRPC front doors call
them, so the same value is refused with the same message everywhere (``field`` names the caller's
own spelling of the field: ``options.smooth_n``, ``method_options.smooth_n``, ``parameters.smooth_n``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from camserve import defaults
from camserve.errors import InvalidArgumentError, UnsupportedError

KernelBackend = Literal["auto", "triton", "torch"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how graphs and CAM maths run."""

    device: str = "auto"  # auto, cpu, cuda or cuda:N (checked by camserve.runtime.resolve_device)
    kernels: KernelBackend = "auto"  # auto: triton on CUDA tensors, torch on the CPU
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    inter_op_threads: int = 0
    max_graph_batch: int = (
        defaults.MAX_GRAPH_BATCH
    )  # Score-CAM / Ablation-CAM / eval split extra runs into batches of this many
    cache_dir: str = "~/.cache/camserve"  # where the embedded default model is built on first use
    allow_tf32: bool = (
        False  # CUDA provider: TF32 convolutions/matmuls, ~1e-3 relative error (docs/kernels.md)
    )


@dataclass(frozen=True)
class ExplainOptions:
    """How maps are produced; defaults follow the papers."""

    output_size: str = defaults.OUTPUT_SIZE  # "input", "feature" or "HxW"
    normalize: bool = True  # per-map min-max; False returns raw ReLU'd maps
    eps: float = 1e-7  # min-max: (m - min) / (max - min); a map with max - min <= eps becomes all zeros
    smooth_n: int = defaults.SMOOTH_N  # Smooth Grad-CAM++ noisy copies
    smooth_sigma: float = (
        defaults.SMOOTH_SIGMA
    )  # noise std as a fraction of the input's value range (max - min)
    smooth_seed: int = 0  # seed of the Smooth Grad-CAM++ noise: the same request gives the same map
    score_top_n: int = 0  # Score-CAM: 0 = all channels, else the N with largest mean activation
    # first principal component of the weighted activations instead of their sum (docs/methods.md)
    eigen_smooth: bool = False
    # mean of the maps of 6 copies: flipped or not x input scaled by AUG_FACTORS (docs/methods.md)
    aug_smooth: bool = False
    topk_predictions: int = defaults.TOPK_PREDICTIONS  # predictions returned with each result


@dataclass(frozen=True)
class ServiceConfig:
    """The gRPC server and its dynamic batcher."""

    host: str = "127.0.0.1"
    port: int = defaults.PORT
    models: str = ""  # a directory of model directories; empty: the embedded default model
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_queue_delay_ms: float = defaults.MAX_QUEUE_DELAY_MS
    max_queue_size: int = defaults.MAX_QUEUE_SIZE
    max_message_bytes: int = defaults.MAX_MESSAGE_BYTES
    # Admission: requests over any of these are refused before any work (docs/service.md, "Limits").
    max_request_images: int = defaults.MAX_REQUEST_IMAGES
    max_targets_per_image: int = defaults.MAX_TARGETS_PER_IMAGE
    max_request_pixels: int = defaults.MAX_REQUEST_PIXELS  # decoded pixels, read from image headers
    max_image_work_bytes: int = defaults.MAX_IMAGE_WORK_BYTES  # working memory of one image in a batch
    max_request_graph_runs: int = defaults.MAX_REQUEST_GRAPH_RUNS
    grace_period_s: float = defaults.GRACE_PERIOD_S
    metrics_port: int = 0  # 0: no Prometheus endpoint
    workers: int = 0  # server processes sharing the port; 0: one per two cores (1 on CUDA)
    # Memory bounds under hostile load (docs/service.md, "Limits"):
    decode_pixel_budget: int = defaults.DECODE_PIXEL_BUDGET  # decoded pixels of all requests at once
    stream_max_unread: int = defaults.STREAM_MAX_UNREAD  # answers a stream holds before it stops reading
    # Connections and HTTP/2, enforced by gRPC core before any call is read (docs/operations.md):
    accept_compressed_requests: bool = defaults.ACCEPT_COMPRESSED_REQUESTS
    max_concurrent_streams: int = defaults.MAX_CONCURRENT_STREAMS  # per connection
    max_connections: int = defaults.MAX_CONNECTIONS
    connection_idle_timeout_s: float = defaults.CONNECTION_IDLE_TIMEOUT_S
    handshake_timeout_s: float = defaults.HANDSHAKE_TIMEOUT_S
    # Transport security (off by default; see docs/operations.md for production):
    tls_cert: str = ""  # PEM server certificate (chain); with tls_key the server speaks TLS only
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mTLS)
    auth_token: str = ""  # bearer token every call must carry (authorization: Bearer <token>)
    auth_token_file: str = ""  # the same, read from a file (preferred: keeps it out of ps and env)


# -- validators: one per kind of input ---------------------------------------------------------------

OutputSize = str | tuple[int, int]  # "input", "feature" or (H, W)
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
#: Wire spelling of each ExplainOptions field, for callers whose fields are named ``options.<name>``.
OPTION_FIELDS: dict[str, str] = {f.name: f"options.{f.name}" for f in fields(ExplainOptions)}


def parse_output_size(text: object, field: str = "options.output_size") -> OutputSize:
    """ "input" / "feature" as they are; "HxW" (spaces and ``X`` allowed: " 224 X 224 ") -> (H, W)
    with each side in 1..MAX_OUTPUT_SIDE. The one parser of output sizes."""
    if text in ("input", "feature"):
        return str(text)
    match = _SIZE.match(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgumentError(
            field, f"expected 'input', 'feature' or 'HxW' (e.g. '224x224'), got {clip(repr(text))}"
        )
    height, width = int(match.group(1)), int(match.group(2))
    return check_output_side(height, field, "height"), check_output_side(width, field, "width")


def resolve_output_size(
    text: object,
    input_size: tuple[int, int],
    feature_size: tuple[int, int],
    field: str = "options.output_size",
) -> tuple[int, int]:
    """The (H, W) an output size means for a model: "input" -> ``input_size``, "feature" ->
    ``feature_size`` (the target layer's h x w), "HxW" -> (H, W) as :func:`parse_output_size` reads it."""
    size = parse_output_size(text, field)
    if size == "input":
        return input_size
    if size == "feature":
        return feature_size
    assert isinstance(size, tuple)
    return size


def check_output_side(value: int, field: str, side: str = "") -> int:
    """One side of an "HxW" output size: 1..MAX_OUTPUT_SIDE."""
    if not 1 <= value <= defaults.MAX_OUTPUT_SIDE:
        what = f"{side} must be" if side else "must be"
        raise InvalidArgumentError(field, f"{what} in 1..{defaults.MAX_OUTPUT_SIDE}, got {value}")
    return value


def format_output_size(size: OutputSize) -> str:
    """The canonical ExplainOptions.output_size of a parsed size: "input", "feature" or "HxW"."""
    return size if isinstance(size, str) else f"{size[0]}x{size[1]}"


def check_options(
    options: ExplainOptions, field_names: Mapping[str, str] = OPTION_FIELDS, num_classes: int | None = None
) -> ExplainOptions:
    """``options`` with a canonical output size, or InvalidArgumentError naming the field (spelled as
    ``field_names`` says) of the first value no method could honour. ``num_classes``: also bound
    ``topk_predictions`` by the model's classes (the service; the Python API clips instead)."""
    names = {**OPTION_FIELDS, **field_names}
    size = format_output_size(parse_output_size(options.output_size, names["output_size"]))
    for flag in ("normalize", "eigen_smooth", "aug_smooth"):
        if not isinstance(getattr(options, flag), bool):
            raise InvalidArgumentError(names[flag], f"expected true or false, got {getattr(options, flag)!r}")
    _check_number(options.eps, names["eps"], ">= 0", lambda v: v >= 0)
    _check_int(options.smooth_n, names["smooth_n"], 1, defaults.MAX_SMOOTH_N)
    _check_number(options.smooth_sigma, names["smooth_sigma"], ">= 0", lambda v: v >= 0)
    _check_int(options.smooth_seed, names["smooth_seed"], -(2**63), 2**63 - 1)
    _check_int(options.score_top_n, names["score_top_n"], 0, None, " (0: all channels)")
    _check_int(options.topk_predictions, names["topk_predictions"], 1, num_classes)
    return options if size == options.output_size else dataclasses.replace(options, output_size=size)


@dataclass(frozen=True)
class OverlayStyle:
    """How a map is drawn over its image (CLI figures, the Python API, the service's overlay PNGs):
    ``image_weight`` x image + (1 - ``image_weight``) x the map in ``colormap``."""

    colormap: str = defaults.OVERLAY_COLORMAP  # one of defaults.OVERLAY_COLORMAPS
    image_weight: float = defaults.OVERLAY_IMAGE_WEIGHT  # in [0, 1]


def check_overlay_style(
    colormap: object, image_weight: object, fields: tuple[str, str] = ("colormap", "image_weight")
) -> OverlayStyle:
    """An OverlayStyle, or InvalidArgumentError naming the field (``fields``: the caller's spelling of
    the colour map's and the weight's)."""
    if colormap not in defaults.OVERLAY_COLORMAPS:
        raise InvalidArgumentError(
            fields[0],
            f"unknown colour map {clip(repr(colormap))} (known: {', '.join(defaults.OVERLAY_COLORMAPS)})",
        )
    _check_number(image_weight, fields[1], "in [0, 1]", lambda v: 0 <= v <= 1)
    assert isinstance(colormap, str) and isinstance(image_weight, int | float)
    return OverlayStyle(colormap, float(image_weight))


def _check_int(value: object, field: str, low: int, high: int | None, note: str = "") -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgumentError(field, f"expected an integer, got {value!r}")
    if high is None and value < low:
        raise InvalidArgumentError(field, f"must be >= {low}{note}, got {value}")
    if high is not None and not low <= value <= high:
        raise InvalidArgumentError(field, f"must be in {low}..{high}{note}, got {value}")


def _check_number(value: object, field: str, rule: str, ok: Callable[[float], bool]) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidArgumentError(field, f"expected a number, got {value!r}")
    if not (math.isfinite(value) and ok(value)):
        raise InvalidArgumentError(field, f"must be finite and {rule}, got {value}")


def check_targets(targets: Sequence[int], num_classes: int, field: str) -> tuple[int, ...]:
    """One image's targets: class ids 0..C-1, or -k for its k-th best class; none: (-1,) (the
    prediction). The error names the entry: ``images[0].targets[3]``."""
    if not len(targets):
        return (-1,)
    return tuple(check_target(target, num_classes, f"{field}[{t}]") for t, target in enumerate(targets))


def check_target(target: int, num_classes: int, field: str) -> int:
    """One target: a class id in [0, C-1], or -k for the k-th best class, k in [1, C]."""
    if isinstance(target, bool) or not -num_classes <= target < num_classes:
        raise InvalidArgumentError(
            field,
            f"class {target} is out of range: the model has {num_classes} classes, so a target is a class "
            f"id in [0, {num_classes - 1}] or -k for the k-th best class, k in [1, {num_classes}]",
        )
    return int(target)


def check_methods(
    named: Sequence[tuple[str, str]],
    supported: Sequence[str],
    model: str,
    why: Callable[[str], str | None] | None = None,
) -> tuple[str, ...]:
    """(field, method name) pairs -> the methods in order, duplicates dropped; none:
    ``defaults.DEFAULT_METHODS``. A name the model cannot run is UnsupportedError naming its field,
    with ``why(name)`` when the caller knows the reason."""
    methods: list[str] = []
    for field_name, name in named:
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(field_name, f"expected a method name, got {clip(repr(name))}")
        if name not in supported:
            reason = why(name) if why is not None else None
            raise UnsupportedError(
                f"{field_name}: {clip(repr(name))} "
                + (
                    f"cannot run on model {clip(repr(model))}: {reason}"
                    if reason
                    else f"is not supported by model {clip(repr(model))}"
                )
                + f" (supported: {', '.join(supported)})"
            )
        if name not in methods:
            methods.append(name)
    return tuple(methods) or defaults.DEFAULT_METHODS


def clip(text: str, limit: int = defaults.MAX_ECHO_CHARS) -> str:
    """``text`` cut to ``limit`` characters (saying how much was cut), for echoing client strings in
    messages and logs."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text) - limit} more characters)"


def check_service_config(service: ServiceConfig) -> None:
    """The one check of the [service] settings' values: InvalidArgumentError naming the first setting the
    server cannot run with. The files they name (certificates, token file) are read, and refused by
    name, by ``camserve.service.security.check_security_files``."""
    for name in ("port", "metrics_port"):
        value = getattr(service, name)
        if not 0 <= value <= 65535:
            raise InvalidArgumentError(f"service.{name}", f"must be in 0..65535, got {value}")
    if service.max_message_bytes < 1024:
        raise InvalidArgumentError(
            "service.max_message_bytes", f"must be at least 1024, got {service.max_message_bytes}"
        )
    for name in ("grace_period_s", "max_queue_delay_ms", "workers"):
        value = getattr(service, name)
        if not value >= 0:  # NaN too
            raise InvalidArgumentError(f"service.{name}", f"must be >= 0, got {value}")
    for name in (
        "max_batch_size",
        "max_queue_size",
        "max_request_images",
        "max_targets_per_image",
        "max_request_pixels",
        "max_image_work_bytes",
        "max_request_graph_runs",
        "decode_pixel_budget",
        "stream_max_unread",
        "max_concurrent_streams",
        "max_connections",
    ):
        value = getattr(service, name)
        if value < 1:
            raise InvalidArgumentError(f"service.{name}", f"must be >= 1, got {value}")
    for name in ("connection_idle_timeout_s", "handshake_timeout_s"):
        value = getattr(service, name)
        if not 0.001 <= value <= 2**31 / 1000:  # gRPC core takes whole milliseconds in an int
            raise InvalidArgumentError(f"service.{name}", f"must be in 0.001..{2**31 // 1000}, got {value}")
    if bool(service.tls_cert) != bool(service.tls_key):
        missing = "tls_key" if service.tls_cert else "tls_cert"
        raise InvalidArgumentError(f"service.{missing}", "tls_cert and tls_key go together; set both")
    if service.tls_client_ca and not service.tls_cert:
        raise InvalidArgumentError(
            "service.tls_client_ca", "client certificates (mTLS) need TLS: set tls_cert and tls_key too"
        )
    if service.auth_token and service.auth_token_file:
        raise InvalidArgumentError("service.auth_token", "set auth_token or auth_token_file, not both")


@dataclass(frozen=True)
class CamserveConfig:
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    explain: ExplainOptions = field(default_factory=ExplainOptions)
    service: ServiceConfig = field(default_factory=ServiceConfig)

    def replace(self, **sections: dict[str, Any]) -> CamserveConfig:
        """A copy with some fields changed: ``cfg.replace(runtime={"kernels": "torch"})``."""
        return _merge(self, sections, source="override")

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> CamserveConfig:
        """Defaults, then the file at ``path``, then ``env`` (``CAMSERVE_<SECTION>_<FIELD>``, plus the
        short ``CAMSERVE_KERNELS`` and ``CAMSERVE_DEVICE``), then ``overrides``."""
        cfg = cls()
        if path is not None:
            cfg = _merge(cfg, _read_file(Path(path)), source=str(path))
        cfg = _merge(cfg, _from_env(os.environ if env is None else env), source="environment")
        if overrides:
            cfg = _merge(cfg, overrides, source="override")
        return cfg


_SHORT_ENV = {"CAMSERVE_KERNELS": ("runtime", "kernels"), "CAMSERVE_DEVICE": ("runtime", "device")}


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidArgumentError("config", f"no such file: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        return tomllib.loads(text)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(text) or {}
    if path.suffix == ".json":
        return json.loads(text)
    raise InvalidArgumentError("config", f"{path}: expected a .toml, .yaml or .json file")


def _from_env(env: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    sections = {f.name: f.type for f in fields(CamserveConfig)}
    for key, value in env.items():
        if key in _SHORT_ENV:
            section, name = _SHORT_ENV[key]
            out.setdefault(section, {})[name] = value
            continue
        if not key.startswith("CAMSERVE_"):
            continue
        rest = key[len("CAMSERVE_") :].lower()
        for section in sections:
            if rest.startswith(section + "_"):
                out.setdefault(section, {})[rest[len(section) + 1 :]] = value
    return out


def _merge(cfg: CamserveConfig, data: dict[str, Any], source: str) -> CamserveConfig:
    changes: dict[str, Any] = {}
    for section_name, values in data.items():
        if not hasattr(cfg, section_name) or section_name not in {f.name for f in fields(cfg)}:
            known = ", ".join(f.name for f in fields(cfg))
            raise InvalidArgumentError(source, f"unknown config section {section_name!r} (known: {known})")
        section = getattr(cfg, section_name)
        hints = get_type_hints(type(section))
        updates = {}
        for name, value in (values or {}).items():
            if name not in hints:
                known = ", ".join(hints)
                raise InvalidArgumentError(
                    f"{section_name}.{name}", f"unknown setting in {source} (known: {known})"
                )
            updates[name] = _coerce(f"{section_name}.{name}", hints[name], value)
        changes[section_name] = dataclasses.replace(section, **updates)
    return dataclasses.replace(cfg, **changes)


def _coerce(name: str, hint: Any, value: Any) -> Any:
    if get_origin(hint) is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise InvalidArgumentError(name, f"{value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return hint(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(name, f"expected {hint.__name__}, got {value!r}") from None
