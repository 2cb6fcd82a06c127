"""The C++ client (clients/cpp): built with CMake as docs/clients.md says (stubs generated from the
proto at build time, Debian's libgrpc++), its unit checks pass, and its example command and library
example get the same maps and statuses from a live server as the in-process Explainer and the Python
stub."""

from __future__ import annotations

import glob
import shutil
from pathlib import Path

import pytest

from tests.clients import client_helpers as checks

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("cmake", "c++", "protoc", "grpc_cpp_plugin"))
    or not glob.glob("/usr/lib/*/cmake/grpc/gRPCConfig.cmake")
    + glob.glob("/usr/lib/cmake/grpc/gRPCConfig.cmake"),
    reason="the C++ toolchain is not installed (apt-get install cmake g++ libgrpc++-dev protobuf-compiler "
    "protobuf-compiler-grpc; scripts/bootstrap.sh --test-tools does it)",
)


@pytest.fixture(scope="module")
def cpp_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented build (and unit checks), into a folder of this session."""
    build = tmp_path_factory.mktemp("cpp-build")
    seconds = checks.run_documented_build(
        "CAMSERVE_CPP_BUILD set", checks.build_env(CAMSERVE_CPP_BUILD=str(build))
    )
    print(f"cmake build + unit checks: {seconds:.1f} s")
    return build


def test_cpp_unit_checks_pass(cpp_build):
    done = checks.run([cpp_build / "camserve_client_test"])
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_cpp_maps_of_several_images_over_a_stream_equal_the_explainer(
    cpp_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_streamed_maps(
        cpp_build / "camserve-explain", server, explainer, digit_pixels, tmp_path, "pgm"
    )


def test_cpp_uint8_maps_of_one_image_equal_the_explainer(
    cpp_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_uint8_maps(cpp_build / "camserve-explain", server, explainer, digit_pixels, tmp_path)


def test_cpp_client_lists_and_describes_models(cpp_build, server):
    checks.check_model_info(cpp_build / "camserve-explain", server)


def test_cpp_client_reports_an_unknown_model_as_not_found(cpp_build, server, digit_pixels, tmp_path):
    checks.check_unknown_model(cpp_build / "camserve-explain", server, digit_pixels, tmp_path)


def test_cpp_client_reports_a_bad_tensor_with_the_servers_message(cpp_build, server, tmp_path):
    checks.check_bad_tensor(cpp_build / "camserve-explain", server, tmp_path)


def test_cpp_client_speaks_mtls_with_a_token(
    cpp_build, secure_server, certs, token_file, explainer, digit_pixels, tmp_path
):
    cli = cpp_build / "camserve-explain"
    checks.check_tls_and_token(cli, secure_server, certs, token_file, explainer, digit_pixels, tmp_path)


def test_cpp_library_example_is_the_documented_one_and_runs(
    cpp_build, server, explainer, digit_pixels, tmp_path
):
    source = checks.ROOT / "clients" / "cpp" / "example.cc"
    assert checks.documented_block("equals clients/cpp/example.cc") == source.read_text()
    checks.check_example(cpp_build / "example", server, explainer, digit_pixels, tmp_path)


def test_cpp_target_specs_travel_and_come_back_with_kinds_and_scores(
    cpp_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_target_specs(cpp_build / "camserve-explain", server, explainer, digit_pixels, tmp_path)
