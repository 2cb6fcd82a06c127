"""The Go client (clients/go): built offline as docs/clients.md says (GOPATH mode on Debian's Go
packages), its checked-in stubs are fresh, and its example command and library example get the same
maps and statuses from a live server as the in-process Explainer and the Python stub."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.clients import client_helpers as checks

GOCODE = Path("/usr/share/gocode/src")
STUBS = checks.ROOT / "clients" / "go" / "camservev1"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None
    or shutil.which("protoc") is None
    or not (GOCODE / "google.golang.org" / "grpc").is_dir()
    or not (GOCODE / "google.golang.org" / "protobuf").is_dir(),
    reason="the Go toolchain is not installed (apt-get install golang-go golang-google-grpc-dev "
    "golang-google-protobuf-dev protobuf-compiler; scripts/bootstrap.sh --test-tools does it)",
)


@pytest.fixture(scope="module")
def go_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documented build, into a folder of this session; its unit tests (go test) run in it."""
    shim = (GOCODE / "github.com" / "golang" / "protobuf" / "go.mod").read_text()
    assert "google.golang.org/protobuf" in shim, (
        "github.com/golang/protobuf is the 1.3 API, which cannot read protoc-gen-go's stubs: "
        "apt-get install golang-github-golang-protobuf-1-5-dev"
    )
    build = tmp_path_factory.mktemp("go-build")
    env = checks.build_env(CAMSERVE_GO_BUILD=str(build))
    if "HOME" not in env and "GOCACHE" not in env:  # go needs a cache folder
        env["GOCACHE"] = str(build / "cache")
    seconds = checks.run_documented_build("CAMSERVE_GO_BUILD set", env)
    print(f"go build + go test: {seconds:.1f} s")
    return build


def test_checked_in_go_stubs_match_a_fresh_generation(go_build: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(checks.ROOT / "clients" / "go" / "gen.sh"), str(tmp_path)],
        env=checks.build_env(CAMSERVE_GO_BUILD=str(go_build)),
        capture_output=True,
        text=True,
        timeout=checks.BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted((tmp_path / "camservev1").iterdir())
    assert [p.name for p in fresh] == ["camserve.pb.go", "camserve_grpc.pb.go"]
    assert sorted(p.name for p in STUBS.iterdir()) == [p.name for p in fresh]
    for new in fresh:
        assert (STUBS / new.name).read_text() == new.read_text(), (
            f"clients/go/camservev1/{new.name} is stale: run `bash clients/go/gen.sh` and commit the result"
        )


def test_go_stubs_name_the_proto_go_package() -> None:
    proto = (checks.ROOT / "proto" / "camserve" / "v1" / "camserve.proto").read_text()
    assert 'option go_package = "github.com/camserve/camserve/clients/go/camservev1;camservev1";' in proto
    assert "package camservev1\n" in (STUBS / "camserve.pb.go").read_text()


def test_go_maps_of_several_images_over_a_stream_equal_the_explainer(
    go_build, server, explainer, digit_pixels, tmp_path
):
    checks.check_streamed_maps(
        go_build / "bin" / "camserve-explain", server, explainer, digit_pixels, tmp_path, "png"
    )


def test_go_uint8_maps_of_one_image_equal_the_explainer(go_build, server, explainer, digit_pixels, tmp_path):
    checks.check_uint8_maps(go_build / "bin" / "camserve-explain", server, explainer, digit_pixels, tmp_path)


def test_go_client_lists_and_describes_models(go_build, server):
    checks.check_model_info(go_build / "bin" / "camserve-explain", server)


def test_go_client_reports_an_unknown_model_as_not_found(go_build, server, digit_pixels, tmp_path):
    checks.check_unknown_model(go_build / "bin" / "camserve-explain", server, digit_pixels, tmp_path)


def test_go_client_reports_a_bad_tensor_with_the_servers_message(go_build, server, tmp_path):
    checks.check_bad_tensor(go_build / "bin" / "camserve-explain", server, tmp_path)


def test_go_client_speaks_mtls_with_a_token(
    go_build, secure_server, certs, token_file, explainer, digit_pixels, tmp_path
):
    cli = go_build / "bin" / "camserve-explain"
    checks.check_tls_and_token(cli, secure_server, certs, token_file, explainer, digit_pixels, tmp_path)


def test_go_library_example_is_the_documented_one_and_runs(
    go_build, server, explainer, digit_pixels, tmp_path
):
    source = checks.ROOT / "clients" / "go" / "example" / "main.go"
    assert checks.documented_block("equals clients/go/example/main.go") == source.read_text()
    checks.check_example(go_build / "bin" / "example", server, explainer, digit_pixels, tmp_path)


def test_go_target_specs_travel_and_come_back_with_kinds_and_scores(
    go_build, server, explainer, digit_pixels, tmp_path
):
    cli = go_build / "bin" / "camserve-explain"
    checks.check_target_specs(cli, server, explainer, digit_pixels, tmp_path)
