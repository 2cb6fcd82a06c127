"""What the Go, C++ and Java client tests share: the build commands of docs/clients.md (run as documented),
and checks of an example command (`camserve-explain`, the same flags in both languages) against a live
server and the in-process Explainer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

from camserve.methods.target_kinds import Target
from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from tests.service.certs import Certs
from tests.service.service_helpers import MODEL, ServerProcess, png_bytes

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "clients.md"
BUILD_TIMEOUT_S = 900  # a cold C++ build on a busy 2-core machine
RUN_TIMEOUT_S = 120
METHODS = ("gradcam", "gradcam++")
TARGETS = (-1, 3)
BAD_TENSOR_BYTES = 400  # a [3, 64, 64] float32 image needs 49152


def documented_block(marker: str) -> str:
    """The body of the first fenced code block after the line of docs/clients.md containing ``marker``."""
    text = DOCS.read_text()
    start = text.index(marker)
    match = re.compile(r"```[a-z]*\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no code block after {marker!r} in {DOCS}"
    return match.group(1)


def run_documented_build(marker: str, env: dict[str, str]) -> float:
    """Runs the documented build commands with bash from the repository root; returns the seconds taken."""
    begin = time.monotonic()
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", documented_block(marker)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return time.monotonic() - begin


def build_env(**changes: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(changes)
    return env


def run(argv: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT, env=env
    )


def write_images(pixels: np.ndarray, directory: Path) -> list[Path]:
    paths = []
    for n, image in enumerate(pixels):
        path = directory / f"digit{n}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths


def explain_flags() -> list[str]:
    flags = []
    for method in METHODS:
        flags += ["--method", method]
    for target in TARGETS:
        flags += ["--target", str(target)]
    return flags


def server_status(address: str, request: pb.ExplainRequest) -> tuple[grpc.StatusCode, str]:
    """The status the server answers ``request`` with (Python stub), to compare another client's with."""
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=60)
        except grpc.RpcError as error:
            return error.code(), error.details()
    raise AssertionError("the request was expected to fail")


def check_json_maps(json_path: Path, explainer, images: list[Path], dtype: str = "float32") -> None:
    """The maps, targets, predictions and logits of the command's JSON equal the Explainer's."""
    results = json.loads(json_path.read_text())
    expected = explainer.explain([str(p) for p in images], methods=list(METHODS), targets=[list(TARGETS)])
    assert [r["image"] for r in results] == [p.stem for p in images]
    for n, result in enumerate(results):
        assert result["model"] == MODEL
        assert result["target_ids"] == expected.target_ids[n].tolist()
        assert [p["class_id"] for p in result["predictions"]] == [p.class_id for p in expected.predictions[n]]
        np.testing.assert_allclose(result["logits"], expected.logits[n], rtol=0, atol=1e-5)
        assert [(m["target_index"], m["method"]) for m in result["maps"]] == [
            (t, method) for t in range(len(TARGETS)) for method in METHODS
        ]
        for entry in result["maps"]:
            assert entry["shape"] == [64, 64] and entry["dtype"] == dtype
            assert entry["class_id"] == expected.target_ids[n][entry["target_index"]]
            values = np.asarray(entry["data"], np.float32).reshape(entry["shape"])
            reference = expected.maps[entry["method"]][n, entry["target_index"]]
            if dtype == "uint8":  # round(255 * v): within one step of 1/255
                np.testing.assert_allclose(values / 255.0, reference, rtol=0, atol=1 / 255 + 1e-6)
            else:
                np.testing.assert_allclose(values, reference, rtol=0, atol=1e-6, err_msg=entry["method"])


def check_written_maps(out_dir: Path, explainer, images: list[Path], extension: str) -> None:
    """The map images hold round(255 * map) of the Explainer's maps (one step of tolerance)."""
    expected = explainer.explain([str(p) for p in images], methods=list(METHODS), targets=[list(TARGETS)])
    written = sorted(p.name for p in out_dir.iterdir())
    names = [f"{p.stem}_{m}_t{t}.{extension}" for p in images for m in METHODS for t in range(len(TARGETS))]
    assert written == sorted(names)
    for n, path in enumerate(images):
        for method in METHODS:
            for t in range(len(TARGETS)):
                with Image.open(out_dir / f"{path.stem}_{method}_t{t}.{extension}") as image:
                    assert image.mode == "L" and image.size == (64, 64)
                    pixels = np.asarray(image, np.float64)
                reference = np.round(255.0 * expected.maps[method][n, t])
                np.testing.assert_allclose(pixels, reference, rtol=0, atol=1)


def check_streamed_maps(
    cli: Path, server: ServerProcess, explainer, pixels, tmp_path: Path, ext: str
) -> None:
    """Several images (one ExplainStream) in float32: JSON values and written map images."""
    images = write_images(pixels[:3], tmp_path)
    out_dir, json_path = tmp_path / "maps", tmp_path / "maps.json"
    argv: list[str | Path] = [
        cli,
        "--server",
        server.address,
        "--model",
        MODEL,
        *explain_flags(),
        "--json",
        json_path,
    ]
    done = run([*argv, "--out-dir", out_dir, "--format", ext, *images])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("predicted") == 3
    check_json_maps(json_path, explainer, images)
    check_written_maps(out_dir, explainer, images, ext)


def check_uint8_maps(cli: Path, server: ServerProcess, explainer, pixels, tmp_path: Path) -> None:
    """One image (one Explain call), uint8 maps, the model found with ListModels (no --model)."""
    images = write_images(pixels[5:6], tmp_path)
    json_path = tmp_path / "maps.json"
    argv: list[str | Path] = [
        cli,
        "--server",
        server.address,
        *explain_flags(),
        "--dtype",
        "uint8",
        "--json",
        json_path,
    ]
    done = run([*argv, *images])
    assert done.returncode == 0, done.stderr
    check_json_maps(json_path, explainer, images, dtype="uint8")


def check_model_info(cli: Path, server: ServerProcess) -> None:
    """--list-models (ListModels) and --info (GetModel) print what the Python stub gets, as JSON."""
    with grpc.insecure_channel(server.address) as channel:
        info = pb_grpc.ExplainServiceStub(channel).GetModel(pb.GetModelRequest(name=MODEL), timeout=30)
    listed = run([cli, "--server", server.address, "--list-models"])
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout)["models"]] == [MODEL]
    described = run([cli, "--server", server.address, "--model", MODEL, "--info"])
    assert described.returncode == 0, described.stderr
    model = json.loads(described.stdout)
    assert model["input_size"] == list(info.input_size) == [3, 64, 64]
    assert model["supported_methods"] == list(info.supported_methods)
    assert model["class_names"] == list(info.class_names)
    np.testing.assert_allclose(model["mean"], info.mean)


def check_unknown_model(cli: Path, server: ServerProcess, pixels, tmp_path: Path) -> None:
    images = write_images(pixels[:1], tmp_path)
    request = pb.ExplainRequest(
        model="nope", methods=["gradcam"], images=[pb.Image(encoded=images[0].read_bytes())]
    )
    code, message = server_status(server.address, request)
    assert code == grpc.StatusCode.NOT_FOUND
    done = run([cli, "--server", server.address, "--model", "nope", *images])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"camserve-explain: error: NOT_FOUND: {message}"


def check_bad_tensor(cli: Path, server: ServerProcess, tmp_path: Path) -> None:
    """A preprocessed tensor whose bytes do not fit its shape: INVALID_ARGUMENT with the server's message."""
    raw = tmp_path / "bad.f32"
    raw.write_bytes(np.arange(BAD_TENSOR_BYTES // 4, dtype="<f4").tobytes())
    tensor = pb.Tensor(data=raw.read_bytes(), shape=[3, 64, 64], dtype=pb.DATA_TYPE_FLOAT32)
    request = pb.ExplainRequest(model=MODEL, methods=["gradcam"], images=[pb.Image(tensor=tensor)])
    code, message = server_status(server.address, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "holds 400 bytes" in message
    done = run([cli, "--server", server.address, "--model", MODEL, "--tensor", raw, "--shape", "3,64,64"])
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"camserve-explain: error: INVALID_ARGUMENT: {message}"


def tls_flags(certs: Certs) -> list[str | Path]:
    return ["--ca-file", certs.ca, "--client-cert", certs.client_cert, "--client-key", certs.client_key]


def check_tls_and_token(
    cli: Path, server: ServerProcess, certs: Certs, token_file: Path, explainer, pixels, tmp_path: Path
) -> None:
    """mTLS + the right token: the maps; without a token or with a wrong one: UNAUTHENTICATED."""
    images = write_images(pixels[7:8], tmp_path)
    json_path = tmp_path / "maps.json"
    argv = [cli, "--server", server.address, *tls_flags(certs), *explain_flags()]
    done = run([*argv, "--token-file", token_file, "--json", json_path, *images])
    assert done.returncode == 0, done.stderr
    check_json_maps(json_path, explainer, images)

    missing = run([*argv, *images])
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1] == (
        "camserve-explain: error: UNAUTHENTICATED: missing `authorization: Bearer <token>` metadata"
    )
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("not-the-token\n")
    refused = run([*argv, "--token-file", wrong, *images])
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("UNAUTHENTICATED: the bearer token is not valid")


def check_example(example: Path, server: ServerProcess, explainer, pixels, tmp_path: Path) -> None:
    """The library example of docs/clients.md prints the best class and where its Grad-CAM map peaks."""
    images = write_images(pixels[2:3], tmp_path)
    done = run([example, server.address, images[0]], env=build_env(CAMSERVE_TOKEN=""))
    assert done.returncode == 0, done.stderr
    expected = explainer.explain([str(images[0])], methods=["gradcam"], targets=[[-1]])
    row, column = np.unravel_index(np.argmax(expected.maps["gradcam"][0, 0]), (64, 64))
    target = expected.target_ids[0, 0]
    assert done.stdout.strip() == f"class {target}: gradcam map [64 64] peaks at row {row}, column {column}"


def check_target_specs(cli: Path, server: ServerProcess, explainer, pixels, tmp_path: Path) -> None:
    """--target-spec (a camserve.v1.Target as protobuf JSON) travels: the JSON's target kinds, ids,
    scores and maps equal the Explainer's for the same typed target; a kind the model does not take is
    the server's INVALID_ARGUMENT; --target with --target-spec and a spec that is not a Target are usage
    errors (exit status 2)."""
    images = write_images(pixels[6:7], tmp_path)
    json_path = tmp_path / "maps.json"
    spec = '{"kind": "TARGET_KIND_PROBABILITY", "class_id": 3}'
    done = run([cli, "--server", server.address, "--target-spec", spec, "--json", json_path, *images])
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(json_path.read_text())
    target = Target(kind="probability", class_id=3)
    expected = explainer.explain([str(images[0])], methods=["gradcam"], targets=[[target]])
    assert result["target_kinds"] == ["probability"] and result["target_ids"] == [3]
    np.testing.assert_allclose(result["target_scores"], expected.target_scores[0], rtol=1e-5)
    logits = np.asarray(result["logits"], np.float64)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(result["target_scores"], [softmax[3]], rtol=1e-5)
    values = np.asarray(result["maps"][0]["data"], np.float32).reshape(64, 64)
    np.testing.assert_allclose(values, expected.maps["gradcam"][0, 0], rtol=0, atol=1e-6)

    region = pb.Target(kind=pb.TARGET_KIND_REGION)
    request = pb.ExplainRequest(
        model=MODEL,
        methods=["gradcam"],
        images=[pb.Image(encoded=images[0].read_bytes(), target_specs=[region])],
    )
    code, message = server_status(server.address, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "images[0].target_specs[0].kind" in message
    bad = run([cli, "--server", server.address, "--target-spec", '{"kind": "TARGET_KIND_REGION"}', *images])
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == f"camserve-explain: error: INVALID_ARGUMENT: {message}"

    both = run([cli, "--server", server.address, "--target", "3", "--target-spec", spec, *images])
    assert both.returncode == 2 and "target-spec, not both" in both.stderr.strip().splitlines()[-1]
    typo = run([cli, "--server", server.address, "--target-spec", '{"kind": "TARGET_KIND_NOPE"}', *images])
    assert typo.returncode == 2
    assert re.match(r"camserve-explain: error: --?target-spec \{", typo.stderr.strip().splitlines()[-1])
