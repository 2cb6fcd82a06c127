"""Property-based fuzzing (hypothesis) of both request decoders: camserve.v1 ExplainRequest
(``service.codec.decode_request``) and the Open Inference Protocol's ModelInferRequest
(``service.oip_codec.decode_infer_request``), in process through their public entry points (the OIP one
in a subprocess: see camserve.inference) and as bytes to a live server. Whatever the message, the answer
is OK or a client-error status (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND, UNIMPLEMENTED): never
another exception, never UNKNOWN or INTERNAL. Example counts stay modest for CI time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2 as triton_ip

from camserve.config import CamserveConfig
from tests.service.fuzz_strategies import (
    ANSWERS,
    IN_PROCESS,
    LIVE,
    assert_client_error_or_ok,
    decode_fully,
    explain_requests,
    infer_requests,
    mutated,
)
from tests.service.hostile_helpers import raw_unary
from tests.service.service_helpers import MODEL

ROOT = Path(__file__).resolve().parents[2]
CALL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def served(models_root: Path):
    from camserve.service.models import ModelRegistry, discover_models

    config = CamserveConfig.load(env={})
    registry = ModelRegistry.load(discover_models(models_root), config)
    return registry.get(MODEL), config


@IN_PROCESS
@given(request=explain_requests())
def test_the_explain_decoder_answers_any_request_with_a_client_error_or_ok(served, request):
    from camserve.service.codec import decode_request

    assert_client_error_or_ok(lambda: decode_fully(decode_request, request, *served))


def test_the_infer_decoder_answers_any_request_with_a_client_error_or_ok():
    """Runs ``fuzz_infer_decoder.py`` in a subprocess: the decoder needs camserve's ``inference`` stubs,
    which cannot share a process with tritonclient's."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/service/fuzz_infer_decoder.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 passed" in run.stdout


def status_of(channel: grpc.Channel, method: str, payload: bytes) -> grpc.StatusCode:
    try:
        raw_unary(channel, method, payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@LIVE
@given(
    explain=st.one_of(explain_requests().map(lambda r: r.SerializeToString()), mutated(explain_requests())),
    infer=st.one_of(
        infer_requests(triton_ip).map(lambda r: r.SerializeToString()), mutated(infer_requests(triton_ip))
    ),
    noise=st.binary(max_size=64),
)
def test_a_live_server_answers_any_bytes_with_a_client_error_or_ok(server, explain, infer, noise):
    with grpc.insecure_channel(server.address) as channel:
        for method, payload in (
            ("/camserve.v1.ExplainService/Explain", explain),
            ("/inference.GRPCInferenceService/ModelInfer", infer),
            ("/camserve.v1.ExplainService/Explain", noise),
            ("/inference.GRPCInferenceService/ModelInfer", noise),
        ):
            code = status_of(channel, method, payload)
            assert code in ANSWERS, (method, code, payload[:200])


def test_the_live_server_logged_no_traceback(server):
    """Runs after the live fuzzing (same module): nothing reached the INTERNAL path."""
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log
