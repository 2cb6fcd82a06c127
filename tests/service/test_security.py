"""TLS, mTLS and the bearer token: one server with all three (certificates made at test time) refuses
plaintext clients, clients without a certificate from its CA and calls without the right token, and
serves the right ones (camserve.Client, tritonclient, the health check). Model names never reach the
file system: traversal attempts through either API are NOT_FOUND. Configuration mistakes are refused
before the server starts."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from camserve.client import Client, ServerError
from camserve.config import ServiceConfig
from camserve.errors import InvalidArgumentError, NotFoundError
from camserve.service.security import BearerTokenInterceptor, load_token
from camserve.service.server import check_service_config
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import open_channel
from tests.service.certs import Certs, make_certs
from tests.service.service_helpers import MODEL, ServerProcess, png_bytes, secure_serve_argv, serve_argv

TOKEN = "s3cret-Token_0123456789"
WAIT_S = 60.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def secure_server(
    models_root: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """TLS with required client certificates (mTLS) and a bearer token read from a file."""
    directory = tmp_path_factory.mktemp("secure")
    token_file = directory / "token.txt"
    token_file.write_text(TOKEN + "\n")
    process = ServerProcess(secure_serve_argv(models_root, certs, token_file), directory / "serve.log")
    yield process
    process.stop()


def mtls_channel(server: ServerProcess, certs: Certs) -> grpc.Channel:
    return open_channel(
        server.address, ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key
    )


def list_models(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> pb.ListModelsResponse:
    return pb_grpc.ExplainServiceStub(channel).ListModels(
        pb.ListModelsRequest(), timeout=10, metadata=metadata
    )


def test_the_server_says_it_serves_tls_with_client_certificates_and_a_token(secure_server):
    assert "tls=mtls auth=bearer-token" in secure_server.log()


def test_a_plaintext_client_is_refused(secure_server):
    with grpc.insecure_channel(secure_server.address) as channel, pytest.raises(grpc.RpcError) as caught:
        list_models(channel, (("authorization", f"Bearer {TOKEN}"),))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("identity", ["none", "rogue"])
def test_a_tls_client_without_a_certificate_from_the_ca_is_refused(secure_server, certs, identity):
    files = {} if identity == "none" else {"cert_file": certs.rogue_cert, "key_file": certs.rogue_key}
    with open_channel(secure_server.address, ca_file=certs.ca, **files) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list_models(channel, (("authorization", f"Bearer {TOKEN}"),))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_server_refuses_it(secure_server, certs):
    # The system's roots do not include the test CA: the client, not the server, ends the handshake.
    with open_channel(
        secure_server.address, cert_file=certs.client_cert, key_file=certs.client_key
    ) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list_models(channel, (("authorization", f"Bearer {TOKEN}"),))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((), "missing `authorization: Bearer <token>` metadata"),
        ((("authorization", "Bearer wrong-token"),), "the bearer token is not valid"),
        ((("authorization", f"Basic {TOKEN}"),), "the bearer token is not valid"),
        ((("authorization", f"Bearer {TOKEN}x"),), "the bearer token is not valid"),
    ],
    ids=["none", "wrong", "not-bearer", "longer"],
)
def test_a_missing_or_wrong_token_is_unauthenticated_on_both_apis(secure_server, certs, metadata, message):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    with mtls_channel(secure_server, certs) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list_models(channel, metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert caught.value.details() == message
        # A streaming call is refused the same way.
        stream = pb_grpc.ExplainServiceStub(channel).ExplainStream(iter([]), timeout=10, metadata=metadata)
        with pytest.raises(grpc.RpcError) as caught:
            list(stream)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client = triton.InferenceServerClient(
        secure_server.address,
        ssl=True,
        root_certificates=str(certs.ca),
        private_key=str(certs.client_key),
        certificate_chain=str(certs.client_cert),
    )
    with client, pytest.raises(InferenceServerException) as caught:
        client.is_server_ready(headers=dict(metadata))
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"


def test_the_right_token_over_mtls_is_served_by_both_apis(secure_server, certs, explainer, digit_pixels):
    import tritonclient.grpc as triton

    pixels = digit_pixels[:2]
    expected = explainer.explain(list(pixels), methods=["gradcam"], targets=[[-1], [3]])
    with Client(
        secure_server.address,
        ca_file=certs.ca,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
        token=TOKEN,
    ) as client:
        result = client.explain(list(pixels), methods=["gradcam"], targets=[[-1], [3]])
    np.testing.assert_allclose(result.maps["gradcam"], expected.maps["gradcam"], atol=1e-4)
    client = triton.InferenceServerClient(
        secure_server.address,
        ssl=True,
        root_certificates=str(certs.ca),
        private_key=str(certs.client_key),
        certificate_chain=str(certs.client_cert),
    )
    with client:
        headers = {"authorization": f"Bearer {TOKEN}"}
        assert client.is_model_ready(MODEL, headers=headers)
        images = triton.InferInput("PIXELS", list(pixels.shape), "UINT8")
        images.set_data_from_numpy(pixels)
        answer = client.infer(MODEL, [images], headers=headers, parameters={"methods": "gradcam"})
    np.testing.assert_allclose(
        answer.as_numpy("SALIENCY_GRADCAM")[0, 0], expected.maps["gradcam"][0, 0], atol=1e-4
    )


def test_health_needs_no_token_and_the_health_check_speaks_tls(secure_server, certs):
    with mtls_channel(secure_server, certs) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=MODEL), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    argv = [sys.executable, "-m", "camserve.service.healthcheck", "--address", secure_server.address]
    tls = [
        "--tls-ca",
        str(certs.ca),
        "--tls-cert",
        str(certs.client_cert),
        "--tls-key",
        str(certs.client_key),
    ]
    done = subprocess.run(argv + tls, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip().endswith("SERVING"), done.stdout + done.stderr
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stdout


def test_client_tls_options_are_checked(certs):
    with pytest.raises(InvalidArgumentError, match="cert_file: a client certificate needs its key"):
        Client("127.0.0.1:1", cert_file=certs.client_cert)
    with pytest.raises(NotFoundError, match="ca_file: no such file"):
        Client("127.0.0.1:1", ca_file=certs.ca.with_name("missing.pem"))
    with pytest.raises(InvalidArgumentError, match="server_name: only used with TLS"):
        Client("127.0.0.1:1", server_name="localhost")


# -- model names never reach the file system ---------------------------------------------------


TRAVERSALS = ["../digits", "..", ".", "digits/../digits", "/etc", "./digits", "%2e%2e/digits", "digits\x00"]


def test_model_names_cannot_traverse_paths_on_either_api(server, models_root, digit_pixels):
    import tritonclient.grpc as triton
    from tritonclient.utils import InferenceServerException

    # A real directory beside the served one, reachable only by path: never served.
    assert (models_root / MODEL / "manifest.json").is_file()
    image = pb.Image(encoded=png_bytes(digit_pixels[0]))
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExplainServiceStub(channel)
        for name in TRAVERSALS:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Explain(pb.ExplainRequest(model=name, images=[image]), timeout=WAIT_S)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, name
            assert "is not served here (served: digits)" in caught.value.details()
    pixels = triton.InferInput("PIXELS", [1, 64, 64, 3], "UINT8")
    pixels.set_data_from_numpy(digit_pixels[:1])
    with triton.InferenceServerClient(server.address) as client:
        for name in TRAVERSALS:
            assert not client.is_model_ready(name)
            for call in (lambda n: client.get_model_metadata(n), lambda n: client.infer(n, [pixels])):
                with pytest.raises(InferenceServerException) as caught:
                    call(name)
                assert caught.value.status() == "StatusCode.NOT_FOUND", name
        with pytest.raises(InferenceServerException, match="has no version '../1'"):
            client.infer(MODEL, [pixels], model_version="../1")


# -- configuration -----------------------------------------------------------------------------


def test_security_settings_are_checked_before_the_server_starts(certs, tmp_path):
    def check(**settings: str) -> None:
        check_service_config(ServiceConfig(**settings))

    with pytest.raises(InvalidArgumentError, match="service.tls_key: tls_cert and tls_key go together"):
        check(tls_cert=str(certs.server_cert))
    with pytest.raises(InvalidArgumentError, match="service.tls_cert: tls_cert and tls_key go together"):
        check(tls_key=str(certs.server_key))
    with pytest.raises(InvalidArgumentError, match="service.tls_client_ca: client certificates"):
        check(tls_client_ca=str(certs.ca))
    with pytest.raises(NotFoundError, match="service.tls_key: no such file"):
        check(tls_cert=str(certs.server_cert), tls_key=str(tmp_path / "missing.key"))
    with pytest.raises(InvalidArgumentError, match="service.auth_token: set auth_token or auth_token_file"):
        check(auth_token="a", auth_token_file=str(tmp_path / "t"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(InvalidArgumentError, match="service.auth_token_file: the token must be non-empty"):
        check(auth_token_file=str(empty))
    with pytest.raises(InvalidArgumentError, match="service.auth_token: the token must be non-empty"):
        check(auth_token="two words")
    check(tls_cert=str(certs.server_cert), tls_key=str(certs.server_key), tls_client_ca=str(certs.ca))
    assert load_token(ServiceConfig()) is None
    assert load_token(ServiceConfig(auth_token=" abc ")) == "abc"


def test_a_bad_security_setting_stops_serve_with_the_setting_named(models_root, tmp_path):
    done = subprocess.run(
        serve_argv(
            models_root, "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path / "k")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "service.tls_cert: no such file" in done.stderr


@pytest.mark.parametrize(
    ("metadata", "refusal"),
    [
        ((("authorization", "Bearer abc"),), None),
        ((("Authorization", "bearer abc"),), None),
        ((("authorization", b"Bearer abc"),), None),
        ((), "missing"),
        ((("x-token", "abc"),), "missing"),
        ((("authorization", "Bearer ab"),), "invalid"),
        ((("authorization", "abc"),), "invalid"),
        ((("authorization", "Bearer abc"), ("authorization", "Bearer abc")), "invalid"),
    ],
)
def test_the_token_check_reads_one_bearer_authorization_header(metadata, refusal):
    assert BearerTokenInterceptor("abc")._refusal(metadata) == refusal


def test_serve_warns_when_it_listens_beyond_loopback_without_tls_or_a_token(caplog):
    from camserve.service.security import warn_if_exposed

    with caplog.at_level("WARNING", logger="camserve.service.security"):
        warn_if_exposed(ServiceConfig(host="127.0.0.1"))
        assert caplog.text == ""
        warn_if_exposed(ServiceConfig(host="0.0.0.0"))
    assert "without TLS" in caplog.text and "without authentication" in caplog.text


def test_server_error_carries_the_unauthenticated_code(secure_server, certs):
    with Client(
        secure_server.address,
        ca_file=certs.ca,
        cert_file=certs.client_cert,
        key_file=certs.client_key,
        token="bad",
    ) as client:
        with pytest.raises(ServerError, match="UNAUTHENTICATED: the bearer token is not valid") as caught:
            client.list_models()
    assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_cli_explain_with_server_speaks_mtls_and_sends_the_token(
    secure_server, certs, explainer, digit_pixels, tmp_path
):
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digit_pixels[9]))
    token_file = tmp_path / "token.txt"
    token_file.write_text(TOKEN + "\n")
    argv = [sys.executable, "-m", "camserve.cli", "explain", "--server", secure_server.address]
    argv += ["--model", MODEL, "--method", "gradcam", "--target", "-1", "--ca-file", str(certs.ca)]
    argv += ["--client-cert", str(certs.client_cert), "--client-key", str(certs.client_key)]
    env = {k: v for k, v in os.environ.items() if k != "CAMSERVE_AUTH_TOKEN"}
    out = tmp_path / "remote.npz"
    done = subprocess.run(
        argv + ["--token-file", str(token_file), "--out", str(out), str(image)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = explainer.explain([str(image)], methods=["gradcam"], targets=[[-1]]).arrays()
    np.testing.assert_allclose(np.load(out)["gradcam"], expected["gradcam"], atol=1e-4)
    # the same call without the token: one clear line, exit status 2
    refused = subprocess.run(argv + [str(image)], capture_output=True, text=True, timeout=120, env=env)
    assert refused.returncode == 2
    assert "UNAUTHENTICATED" in refused.stderr and "Traceback" not in refused.stderr
