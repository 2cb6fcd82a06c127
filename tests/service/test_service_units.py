"""Service pieces that need no server: model discovery (no path traversal), error -> status mapping,
image decoding limits, the health check's address and the serve command's configuration."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import logging
import re
from pathlib import Path

import grpc
import pytest
from PIL import Image

from camserve.commands import serve as serve_command
from camserve.config import ServiceConfig
from camserve.errors import (
    CamserveError,
    ExportError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnsupportedError,
)
from camserve.service.errors import DeadlineExceededError, UnavailableError, status_for
from camserve.service.healthcheck import local_address
from camserve.service.models import ModelRegistry, decode_image, discover_models
from camserve.service.server import check_service_config


def fake_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def test_discover_models_serves_directories_with_a_manifest_under_their_names(tmp_path):
    root = tmp_path / "models"
    fake_model(root / "digits")
    fake_model(root / "resnet50.v2")
    (root / "notes").mkdir()
    (root / "README.txt").write_text("not a model")
    assert discover_models(root) == {
        "digits": (root / "digits").resolve(),
        "resnet50.v2": (root / "resnet50.v2").resolve(),
    }


def test_discover_models_skips_links_that_leave_the_root_and_odd_names(tmp_path, caplog):
    root = tmp_path / "models"
    fake_model(root / "inside")
    outside = fake_model(tmp_path / "elsewhere")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "alias").symlink_to(root / "inside", target_is_directory=True)  # stays inside: served
    fake_model(root / "has space")
    with caplog.at_level(logging.WARNING):
        found = discover_models(root)
    assert sorted(found) == ["alias", "inside"]
    assert "outside" in caplog.text and "escape" in caplog.text and "has space" in caplog.text


def test_discover_models_of_a_model_directory_serves_it_alone(tmp_path):
    model = fake_model(tmp_path / "digits")
    assert discover_models(model) == {"digits": model.resolve()}


def test_discover_models_without_models_or_root_is_not_found(tmp_path):
    with pytest.raises(NotFoundError, match="no model directories"):
        discover_models(tmp_path)
    with pytest.raises(NotFoundError, match="is not a directory"):
        discover_models(tmp_path / "missing")


def test_registry_lookups_never_touch_the_file_system():
    registry = ModelRegistry({})
    with pytest.raises(InvalidArgumentError, match="model: required"):
        registry.get("")
    with pytest.raises(NotFoundError, match=r"'\.\./\.\./etc' is not served here"):
        registry.get("../../etc")


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgumentError("images[0]", "bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFoundError("no model"), grpc.StatusCode.NOT_FOUND),
        (UnsupportedError("no method"), grpc.StatusCode.UNIMPLEMENTED),
        (ResourceExhaustedError("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (ExportError("old"), grpc.StatusCode.FAILED_PRECONDITION),
        (DeadlineExceededError("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (UnavailableError("stopping"), grpc.StatusCode.UNAVAILABLE),
        (CamserveError("other"), grpc.StatusCode.INTERNAL),
        (asyncio.CancelledError(), grpc.StatusCode.CANCELLED),
    ],
)
def test_camserve_errors_map_to_their_status_code_with_their_message(error, code):
    got, message = status_for(error)
    assert got == code
    if isinstance(error, CamserveError):
        assert message == str(error)


def test_unexpected_exceptions_become_internal_and_are_logged_with_their_traceback(caplog):
    with caplog.at_level(logging.ERROR, logger="camserve.service.errors"):
        code, message = status_for(ZeroDivisionError("boom"))
    assert code == grpc.StatusCode.INTERNAL and "ZeroDivisionError" in message
    assert caplog.records[0].exc_info is not None


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decode_image_converts_to_rgb_and_names_the_field_when_it_fails():
    assert decode_image(png(5, 4), "images[0].encoded").mode == "RGB"
    with pytest.raises(InvalidArgumentError, match=r"images\[3\]\.encoded: not an image in an accepted"):
        decode_image(b"\x00\x01garbage", "images[3].encoded")
    with pytest.raises(InvalidArgumentError, match=r"images\[2\]\.encoded: GIF images are not accepted"):
        decode_image(b"GIF89a-truncated", "images[2].encoded")
    with pytest.raises(InvalidArgumentError, match=r"images\[1\]\.encoded: the image cannot be decoded"):
        decode_image(png(64, 64)[:60], "images[1].encoded")


def test_decode_image_refuses_huge_images_before_decoding_them():
    with pytest.raises(InvalidArgumentError, match="at most 50000000 pixels"):
        decode_image(png(10_000, 6_000), "images[0].encoded")  # a small file of 60M pixels


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("0.0.0.0", "127.0.0.1:7000"),
        ("::", "[::1]:7000"),
        ("10.1.2.3", "10.1.2.3:7000"),
        ("127.0.0.1", "127.0.0.1:7000"),
    ],
)
def test_the_health_check_reaches_a_wildcard_listener_through_loopback(host, address):
    assert local_address(ServiceConfig(host=host, port=7000)) == address


def test_serve_flags_override_the_configuration_and_unset_flags_keep_it(tmp_path, monkeypatch):
    config_file = tmp_path / "camserve.toml"
    config_file.write_text('[service]\nport = 6000\nmax_batch_size = 4\n[runtime]\nkernels = "torch"\n')
    monkeypatch.setenv("CAMSERVE_SERVICE_MAX_QUEUE_SIZE", "9")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    serve_command.register(parser.add_subparsers())
    args = parser.parse_args(
        ["--config", str(config_file), "serve", "--port", "7000", "--max-queue-delay-ms", "2.5"]
    )
    config = serve_command.config_from_args(args)
    assert config.service.port == 7000 and config.service.max_queue_delay_ms == 2.5
    assert config.service.max_batch_size == 4 and config.service.max_queue_size == 9
    assert config.runtime.kernels == "torch"


def test_serve_intra_op_threads_is_also_the_torch_thread_budget(monkeypatch):
    import torch

    seen: dict[str, int] = {}

    async def fake_serve(config, models) -> None:  # the server itself is tested elsewhere
        seen["torch_threads"] = torch.get_num_threads()
        seen["ort_threads"] = config.runtime.intra_op_threads

    monkeypatch.setattr("camserve.service.server.serve", fake_serve)
    monkeypatch.setattr(ModelRegistry, "load", classmethod(lambda cls, dirs, config: None))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    serve_command.register(parser.add_subparsers())
    before = torch.get_num_threads()
    budget = before + 1  # differs from torch's current setting, whatever the machine
    try:
        args = parser.parse_args(["serve", "--intra-op-threads", str(budget)])
        assert serve_command.run(args) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == {"torch_threads": budget, "ort_threads": budget}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": 70000}, "service.port: must be in 0..65535"),
        ({"metrics_port": -1}, "service.metrics_port: must be in 0..65535"),
        ({"max_message_bytes": 10}, "service.max_message_bytes: must be at least 1024"),
        ({"grace_period_s": -1.0}, "service.grace_period_s: must be >= 0"),
        ({"grace_period_s": float("nan")}, "service.grace_period_s: must be >= 0"),
        ({"max_queue_delay_ms": -1.0}, "service.max_queue_delay_ms: must be >= 0"),
        ({"workers": -1}, "service.workers: must be >= 0, got -1"),
        ({"max_batch_size": 0}, "service.max_batch_size: must be >= 1, got 0"),
        ({"max_queue_size": 0}, "service.max_queue_size: must be >= 1, got 0"),
        ({"max_request_graph_runs": 0}, "service.max_request_graph_runs: must be >= 1, got 0"),
        ({"decode_pixel_budget": 0}, "service.decode_pixel_budget: must be >= 1, got 0"),
        ({"stream_max_unread": 0}, "service.stream_max_unread: must be >= 1, got 0"),
        (
            {"auth_token": "a", "auth_token_file": "b"},
            "service.auth_token: set auth_token or auth_token_file",
        ),
    ],
)
def test_service_settings_the_server_cannot_use_are_refused_by_name(change, message):
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        check_service_config(dataclasses.replace(ServiceConfig(), **change))
