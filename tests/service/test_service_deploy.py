"""docker-compose.yml is valid, and the command line and health check of its CPU service work: the
service's own command and environment (with the models directory and port pointed at this test's)
run as a local process and the compose health check command reports it healthy."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from camserve.client import Client
from camserve.errors import InvalidArgumentError
from tests.service.service_helpers import MODEL, ServerProcess

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose is not installed (Debian: apt-get install docker-compose)",
)
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"], ["--profile", "scale"]])
def test_docker_compose_config_is_valid(profile):
    done = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), *profile, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_the_gpu_variant_is_behind_the_gpu_profile_and_reserves_a_gpu():
    gpu = compose()["services"]["camserve-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["environment"]["CAMSERVE_DEVICE"] == "cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert "profiles" not in compose()["services"]["camserve"]


def test_the_gpu_image_pairs_torch_and_onnxruntime_on_one_cuda_major_and_ships_the_gpu_check():
    import re
    import tomllib

    from packaging.requirements import Requirement

    # onnxruntime-gpu 1.28-1.31 are CUDA 13 builds; torch must come from its CUDA 13 index
    deps = [
        Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    (gpu_ort,) = [d for d in deps if d.name == "onnxruntime-gpu"]
    assert gpu_ort.specifier.contains("1.28.0") and gpu_ort.specifier.contains("1.31.1")
    assert not gpu_ort.specifier.contains("1.27.0") and not gpu_ort.specifier.contains("1.32.0")
    linux = {"sys_platform": "linux", "platform_machine": "x86_64"}
    assert gpu_ort.marker is not None and gpu_ort.marker.evaluate(linux)
    (cpu_ort,) = [d for d in deps if d.name == "onnxruntime"]
    assert cpu_ort.marker is not None and not cpu_ort.marker.evaluate(linux)  # never both
    for other in ({"sys_platform": "linux", "platform_machine": "aarch64"}, {"sys_platform": "darwin"}):
        env = {"platform_machine": "arm64", **other}
        assert cpu_ort.marker.evaluate(env) and not gpu_ort.marker.evaluate(env)
    args = compose()["services"]["camserve-gpu"]["build"]["args"]
    assert args["TORCH_INDEX_URL"].endswith("/whl/cu130")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "/whl/cu130" in dockerfile and not re.search(r"cu12\d|CUDA 12", dockerfile)
    assert "COPY bench bench" in dockerfile and "gcc" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "bench" not in ignored and "bench/" not in ignored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def local_argv(argv: list[str]) -> list[str]:
    """A container command as a local one: the executables of this virtual environment."""
    executable = {"python": sys.executable, "camserve": str(Path(sys.executable).with_name("camserve"))}
    return [executable.get(argv[0], argv[0]), *argv[1:]]


def test_the_compose_command_serves_and_the_compose_health_check_passes(models_root, tmp_path):
    # Two models in the mounted directory: both are served, each under its directory's name.
    mounted = tmp_path / "models"
    for name in (MODEL, "digits-copy"):
        shutil.copytree(models_root / MODEL, mounted / name)
    service = compose()["services"]["camserve"]
    assert service["volumes"][0].endswith(":/models:ro")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMSERVE_")}
    env.update({name: str(value) for name, value in service["environment"].items()})
    assert env["CAMSERVE_SERVICE_MODELS"] == "/models" and env["CAMSERVE_SERVICE_HOST"] == "0.0.0.0"
    # Only what a container gets from outside changes: the mounted models, the port, loopback only.
    env.update(
        CAMSERVE_SERVICE_MODELS=str(mounted),
        CAMSERVE_SERVICE_PORT=str(free_port()),
        CAMSERVE_SERVICE_HOST="127.0.0.1",
    )
    server = ServerProcess(local_argv(service["command"]), tmp_path / "serve.log", env=env)
    try:
        assert server.port == int(env["CAMSERVE_SERVICE_PORT"])
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        check = subprocess.run(local_argv(test[1:]), env=env, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip().endswith("SERVING")
        assert server.health(MODEL) == "SERVING" and server.health("digits-copy") == "SERVING"
        with Client(server.address) as client:
            assert sorted(m.name for m in client.list_models()) == ["digits", "digits-copy"]
            with pytest.raises(InvalidArgumentError, match="serves several models"):
                client.explain(np.zeros((64, 64, 3), np.uint8))
            result = client.explain(np.zeros((64, 64, 3), np.uint8), methods=["gradcam"], model="digits-copy")
        assert result.model_name == "digits-copy"
    finally:
        server.stop()
    stopped = subprocess.run(local_argv(test[1:]), env=env, capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 1 and "UNAVAILABLE" in stopped.stdout
