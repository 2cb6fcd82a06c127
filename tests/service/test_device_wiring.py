"""The service's device wiring: warm-up before SERVING, uint8 maps quantised by the numpy rule, bit
for bit, and 'cuda:N' accepted wherever a device is named."""

from __future__ import annotations

import argparse
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from camserve import cli
from camserve.commands import serve as serve_command
from camserve.config import CamserveConfig
from camserve.errors import InvalidArgumentError
from camserve.runtime import check_device, device_kind
from camserve.service.batch_runner import maps_as
from camserve.service.models import ModelRegistry, discover_models
from camserve.service.workers import default_workers
from tests.service.service_helpers import MODEL, ServerProcess


def _numpy_rule(maps: np.ndarray) -> np.ndarray:
    """What both front doors answer: numpy's rule, written out."""
    return np.rint(np.clip(maps, 0.0, 1.0) * 255.0).astype(np.uint8)


def _edge_values() -> np.ndarray:
    """0, 1, values out of range, and for every k the float32 values whose product with 255 is
    exactly k + 0.5 (ties) and their neighbours."""
    edges = [0.0, 1.0, -0.25, 1.75, np.nextafter(np.float32(1), np.float32(0))]
    for k in range(255):
        m = np.float32((k + 0.5) / 255)
        edges += [m, np.nextafter(m, np.float32(0)), np.nextafter(m, np.float32(1))]
    return np.asarray(edges, dtype=np.float32)


def test_uint8_maps_equal_the_numpy_rule_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    edges = _edge_values()
    maps = rng.random((3, 2, 37, 41), dtype=np.float32)
    maps.reshape(-1)[: edges.size] = edges
    ties = [m for m in edges if float(m * np.float32(255)) % 1 == 0.5]
    assert len(ties) >= 255  # every k + 0.5 is represented, so the rounding rule is exercised
    expected = _numpy_rule(maps)
    got = maps_as(maps, np.dtype("u1"))  # OIP: images stacked
    assert got.dtype == np.uint8 and got.shape == maps.shape
    np.testing.assert_array_equal(got, expected)
    one_image = maps_as(maps[0], np.dtype("u1"))  # camserve.v1
    np.testing.assert_array_equal(one_image, expected[0])
    # ties go to the even neighbour, as np.rint: k + 0.5 -> k for even k, k + 1 for odd k
    got_ties = maps_as(np.asarray(ties).reshape(1, 1, 1, -1), np.dtype("u1")).reshape(-1)
    halves = [m * 255 - 0.5 for m in np.asarray(ties, dtype=np.float32)]
    assert got_ties.tolist() == [int(k) + int(k) % 2 for k in halves]


def test_float_maps_reach_the_host_unchanged_or_as_float16() -> None:
    maps = torch.rand(2, 5, 7).numpy()
    np.testing.assert_array_equal(maps_as(maps, np.dtype("<f4")), maps)
    half = maps_as(maps, np.dtype("<f2"))
    assert half.dtype == np.float16
    np.testing.assert_array_equal(half, maps.astype(np.float16))


def test_each_model_is_warmed_up_once_before_the_registry_is_ready(models_root: Path, caplog) -> None:
    config = CamserveConfig.load(env={})
    with caplog.at_level(logging.INFO, logger="camserve.service.models"):
        registry = ModelRegistry.load(discover_models(models_root), config)
    lines = [r.getMessage() for r in caplog.records if "warmed up" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"model {MODEL} warmed up on cpu")
    # the sessions exist before any request: the first one pays for none of them
    runner = registry.get(MODEL).explainer.runner
    assert {"explain", "head"} <= set(runner._sessions)


def test_the_server_reports_serving_only_after_the_warm_up(server: ServerProcess) -> None:
    log = server.log()
    warmed = [m.start() for m in re.finditer(rf"model {MODEL} warmed up on cpu in [\d.]+ s", log)]
    listening = log.index("camserve listening on")  # logged once health says SERVING
    assert len(warmed) == 1 and warmed[0] < listening


@pytest.mark.parametrize(
    ("device", "kind"),
    [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:0", "cuda"), ("cuda:12", "cuda")],
)
def test_device_settings_are_checked_once_and_cuda_n_is_cuda(device: str, kind: str) -> None:
    assert check_device(device) == device and device_kind(device) == kind


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "CUDA", "cuda:1 ", "gpu:0", ""])
def test_bad_device_settings_are_refused_by_name(device: str) -> None:
    with pytest.raises(
        InvalidArgumentError, match=r"^runtime\.device: .* is not one of 'auto', 'cpu', 'cuda', 'cuda:N'"
    ):
        check_device(device)


def test_serve_accepts_cuda_n(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--device", "cuda:1"])
    config = serve_command.config_from_args(args)
    assert config.runtime.device == "cuda:1"
    assert default_workers(config) == 1  # one worker feeds a GPU, whatever its index


def test_serve_refuses_a_bad_device_in_one_line_with_status_2(capsys, monkeypatch) -> None:
    monkeypatch.setattr(ModelRegistry, "load", classmethod(lambda cls, dirs, config: pytest.fail("loaded")))
    assert cli.main(["serve", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "camserve serve: error: runtime.device: 'tpu' is not one of 'auto', 'cpu', 'cuda', 'cuda:N'\n"
    )


def test_oip_model_config_reports_a_gpu_for_cuda_n() -> None:
    # a subprocess: camserve.inference's stubs cannot share a process with tritonclient's (test_oip)
    code = (
        "from camserve.inference import grpc_service_pb2 as ip\n"
        "from camserve.service.oip import instance_kind\n"
        "print([ip.ModelInstanceGroup.Kind.Name(instance_kind(d)) for d in "
        "('auto', 'cpu', 'cuda', 'cuda:0', 'cuda:1')])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(["KIND_AUTO", "KIND_CPU", "KIND_GPU", "KIND_GPU", "KIND_GPU"])
