"""One typed configuration for the Python API, the CLI and the service.

Read once, in this order, later sources overriding earlier ones:
defaults < config file (TOML/YAML/JSON) < environment (``CAMSERVE_*``) < explicit overrides (CLI flags).
Nothing else in camserve reads ``os.environ``: the resulting object is passed down.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from camserve.errors import InvalidArgumentError

KernelBackend = Literal["auto", "triton", "torch"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how graphs and CAM maths run."""

    device: Device = "auto"  # auto: CUDA when onnxruntime-gpu and a GPU are present
    kernels: KernelBackend = "auto"  # auto: triton on CUDA tensors, torch on the CPU
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (all cores)
    inter_op_threads: int = 0
    max_graph_batch: int = 64  # Score-CAM / Ablation-CAM / eval split extra runs into batches of this many
    cache_dir: str = "~/.cache/camserve"  # where the embedded default model is built on first use


@dataclass(frozen=True)
class ExplainOptions:
    """How maps are produced; defaults follow the papers."""

    output_size: str = "input"  # "input", "feature" or "HxW"
    normalize: bool = True  # per-map min-max; False returns raw ReLU'd maps
    eps: float = 1e-7  # min-max: (m - min) / (max - min); a map with max - min <= eps becomes all zeros
    smooth_n: int = 8  # Smooth Grad-CAM++ noisy copies
    smooth_sigma: float = 0.15  # noise std as a fraction of the input's value range (max - min)
    smooth_seed: int = 0  # seed of the Smooth Grad-CAM++ noise: the same request gives the same map
    score_top_n: int = 0  # Score-CAM: 0 = all channels, else the N with largest mean activation
    topk_predictions: int = 5  # predictions returned with each result


@dataclass(frozen=True)
class ServiceConfig:
    """The gRPC server and its dynamic batcher."""

    host: str = "127.0.0.1"
    port: int = 50051
    models: str = ""  # a directory of model directories; empty: the embedded default model
    max_batch_size: int = 16
    max_queue_delay_ms: float = 5.0
    max_queue_size: int = 256
    max_message_bytes: int = 64 * 1024 * 1024
    grace_period_s: float = 10.0
    metrics_port: int = 0  # 0: no Prometheus endpoint
    workers: int = 0  # server processes sharing the port; 0: one per two cores (1 on CUDA)
    # Transport security (off by default; see the README's operations section for production):
    tls_cert: str = ""  # PEM server certificate (chain); with tls_key the server speaks TLS only
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed (mTLS)
    auth_token: str = ""  # bearer token every call must carry (authorization: Bearer <token>)
    auth_token_file: str = ""  # the same, read from a file (preferred: keeps it out of ps and env)


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
