"""The Java client (clients/java): built with javac on Debian's grpc-java jars as docs/clients.md says
(stubs generated from the proto at build time), its unit checks pass, and its example command and
library example get the same maps and statuses from a live server as the in-process Explainer and the
Python stub."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.clients import client_helpers as checks

JARS = Path("/usr/share/java")

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("javac", "java", "protoc", "grpc_java_plugin"))
    or not (JARS / "grpc-netty.jar").is_file()
    or not (JARS / "netty-codec-http2.jar").is_file()
    or not (JARS / "netty-tcnative.jar").is_file(),
    reason="the Java toolchain is not installed (apt-get install default-jdk-headless libgrpc-java "
    "libprotobuf-java protobuf-compiler-grpc-java-plugin libnetty-java libnetty-tcnative-java "
    "libnetty-tcnative-jni libperfmark-java libgoogle-gson-java libgeronimo-annotation-1.3-spec-java; "
    "scripts/bootstrap.sh --test-tools does it)",
)


@pytest.fixture(scope="module")
def java_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented build (and unit checks), into a folder of this session."""
    build = tmp_path_factory.mktemp("java-build")
    env = checks.build_env(CAMSERVE_JAVA_BUILD=str(build))
    seconds = checks.run_documented_build("CAMSERVE_JAVA_BUILD set", env)
    print(f"javac build + unit checks: {seconds:.1f} s")
    return build


def test_java_maps_of_several_images_over_a_stream_equal_the_explainer(
    java_build, server, explainer, digit_pixels, tmp_path
):
    cli = java_build / "camserve-explain"
    checks.check_streamed_maps(cli, server, explainer, digit_pixels, tmp_path, "png")


def test_java_uint8_maps_of_one_image_equal_the_explainer(
    java_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_uint8_maps(java_build / "camserve-explain", server, explainer, digit_pixels, tmp_path)


def test_java_client_lists_and_describes_models(java_build, server):
    checks.check_model_info(java_build / "camserve-explain", server)


def test_java_client_reports_an_unknown_model_as_not_found(java_build, server, digit_pixels, tmp_path):
    checks.check_unknown_model(java_build / "camserve-explain", server, digit_pixels, tmp_path)


def test_java_client_reports_a_bad_tensor_with_the_servers_message(java_build, server, tmp_path):
    checks.check_bad_tensor(java_build / "camserve-explain", server, tmp_path)


def test_java_client_speaks_mtls_with_a_token(
    java_build, secure_server, certs, token_file, explainer, digit_pixels, tmp_path
):
    cli = java_build / "camserve-explain"
    checks.check_tls_and_token(cli, secure_server, certs, token_file, explainer, digit_pixels, tmp_path)


def test_java_library_example_is_the_documented_one_and_runs(
    java_build, server, explainer, digit_pixels, tmp_path
):
    source = checks.ROOT / "clients" / "java" / "src" / "dev" / "camserve" / "client" / "Example.java"
    assert (
        checks.documented_block("equals clients/java/src/dev/camserve/client/Example.java")
        == source.read_text()
    )
    checks.check_example(java_build / "example", server, explainer, digit_pixels, tmp_path)


def test_java_target_specs_travel_and_come_back_with_kinds_and_scores(
    java_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_target_specs(java_build / "camserve-explain", server, explainer, digit_pixels, tmp_path)
