"""Admission by cost against a real server: requests that cannot fit are refused before any work with
RESOURCE_EXHAUSTED naming the limit and the request's figure; the server's memory stays where it was
and the next normal request is answered. Each of these requests took gigabytes before admission."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from camserve.service.admission import admit, request_cost
from camserve.v1 import camserve_pb2 as pb
from tests.service.service_helpers import MODEL, ServerProcess, png_bytes, serve_argv, stub

RSS_GROWTH_LIMIT_MB = 150  # far below what any of these requests would take (1-9 GB)


def rss_mb(server: ServerProcess) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def explain(server: ServerProcess, request: pb.ExplainRequest) -> pb.ExplainResponse:
    channel, client = stub(server.address)
    with channel:
        return client.Explain(request, timeout=120)


def refusal(server: ServerProcess, request: pb.ExplainRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        explain(server, request)
    return caught.value


def normal_request(pixels: np.ndarray) -> pb.ExplainRequest:
    return pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=png_bytes(pixels))])


def heavy_requests(digit_pixels: np.ndarray) -> dict[str, tuple[pb.ExplainRequest, str]]:
    """The issue's requests: (request, what its refusal must say)."""
    one = png_bytes(digit_pixels[0])
    return {
        "100 000 targets": (
            pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=one, targets=[-1] * 100_000)]),
            "its targets of one image is 100000, over service.max_targets_per_image = 256",
        ),
        "8192x8192 maps, 10 targets": (
            pb.ExplainRequest(
                model=MODEL,
                images=[pb.Image(encoded=one, targets=list(range(10)))],
                output=pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=8192, width=8192),
            ),
            "over service.max_image_work_bytes = 268435456 bytes (256.0 MiB)",
        ),
        "4096x4096 map, 1 target": (
            pb.ExplainRequest(
                model=MODEL,
                images=[pb.Image(encoded=one)],
                output=pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=4096, width=4096),
            ),
            # 4096 x 4096 float32 = 64 MiB, plus the rest of the answer
            "over service.max_message_bytes = 67108864 bytes (64.0 MiB)",
        ),
        "smooth_n=256 x 16 images x 10 targets": (
            pb.ExplainRequest(
                model=MODEL,
                methods=["smoothgradcam++"],
                images=[pb.Image(encoded=png_bytes(p), targets=list(range(10))) for p in digit_pixels[:16]],
                method_options=pb.MethodOptions(smooth_n=256),
            ),
            "its working memory of one image is",
        ),
    }


def test_requests_that_cannot_fit_are_refused_before_any_work(server, digit_pixels):
    explain(server, normal_request(digit_pixels[1]))  # warm: the baseline includes a served request
    before = rss_mb(server)
    for name, (request, says) in heavy_requests(digit_pixels).items():
        error = refusal(server, request)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{name}: {error.details()}"
        assert "refused before any work" in error.details() and says in error.details(), name
        assert rss_mb(server) - before < RSS_GROWTH_LIMIT_MB, name
    answer = explain(server, normal_request(digit_pixels[2]))
    assert len(answer.images) == 1 and answer.images[0].maps[0].method == "gradcam"
    lines = [line for line in server.request_lines() if "RESOURCE_EXHAUSTED" in line]
    assert len(lines) >= 4 and all("refused before any work" in line for line in lines)


def test_the_limits_are_settings(models_root, tmp_path, digit_pixels):
    """A tighter [service] limit from the environment refuses what the default allows."""
    from tests.service.service_helpers import environ

    server = ServerProcess(
        serve_argv(models_root),
        tmp_path / "serve.log",
        env=environ(CAMSERVE_SERVICE_MAX_REQUEST_IMAGES="2", CAMSERVE_SERVICE_MAX_REQUEST_PIXELS="9000"),
    )
    try:
        three = pb.ExplainRequest(
            model=MODEL, images=[pb.Image(encoded=png_bytes(p)) for p in digit_pixels[:3]]
        )
        error = refusal(server, three)
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "its images is 3, over service.max_request_images = 2" in error.details()
        big = np.zeros((100, 100, 3), np.uint8)  # 10 000 decoded pixels, read from the PNG header
        error = refusal(server, normal_request(big))
        assert "its decoded pixels is 10000, over service.max_request_pixels = 9000" in error.details()
        assert len(explain(server, normal_request(digit_pixels[0])).images) == 1
    finally:
        server.stop()


def test_cost_of_the_issue_s_requests(explainer):
    """The figures admission compares, from the request alone (default model: 3x64x64 input,
    64x16x16 target layer, 10 classes)."""
    from camserve.config import ExplainOptions, ServiceConfig
    from camserve.errors import ResourceExhaustedError
    from camserve.service.admission import AnswerShape

    manifest = explainer.manifest
    gradcam = AnswerShape(("gradcam",), 4)
    small = request_cost([1], 4096, ["gradcam"], ExplainOptions(), gradcam, manifest)
    layer, image = 64 * 16 * 16, 3 * 64 * 64
    assert small.work_bytes == 4 * (image + layer + 2 * layer + 2 * image // 3)
    assert small.graph_runs == 1 and small.images == 1 and small.targets == 1
    admit(small, ServiceConfig())

    smooth = ExplainOptions(smooth_n=256)
    heavy = request_cost(
        [10] * 16, 16 * 4096, ["smoothgradcam++"], smooth, AnswerShape(("smoothgradcam++",), 4), manifest
    )
    assert heavy.work_bytes == 4 * (
        257 * (image + layer + 2 * 10 * layer) + 2 * 256 * 10 * layer + 2 * 10 * 4096
    )
    assert heavy.graph_runs == 16 * 257
    with pytest.raises(ResourceExhaustedError, match="service.max_image_work_bytes"):
        admit(heavy, ServiceConfig())

    scorecam = request_cost(
        [1], 0, ["scorecam", "ablationcam"], ExplainOptions(score_top_n=8), gradcam, manifest
    )
    assert scorecam.graph_runs == 1 + 8 + 64  # explain + 8 masked images + 64 head runs
    # issue 24: SS-CAM and IS-CAM each run smooth_n x K masked images (not shared with Score-CAM's),
    # Finer-CAM one more explain run per image
    sampled = request_cost(
        [1] * 2, 0, ["sscam", "iscam", "scorecam", "finercam"], ExplainOptions(smooth_n=3), gradcam, manifest
    )
    assert sampled.graph_runs == 2 * (1 + 3 * 64 + 3 * 64 + 64 + 1)


def test_finer_cam_s_comparison_gradients_count_in_the_working_memory(explainer):
    """Finer-CAM holds the gradients of its 3 comparison classes per target beyond the explain run's:
    2 x T x 3 x K·h·w more bytes of work (default model: 64x16x16 layer), x6 with aug_smooth."""
    from camserve.config import ExplainOptions
    from camserve.service.admission import AnswerShape

    manifest = explainer.manifest
    layer = 64 * 16 * 16
    plain = request_cost([4], 0, ["gradcam"], ExplainOptions(), AnswerShape(("gradcam",), 4), manifest)
    finer = request_cost([4], 0, ["finercam"], ExplainOptions(), AnswerShape(("finercam",), 4), manifest)
    assert finer.work_bytes - plain.work_bytes == 4 * 2 * 4 * 3 * layer
    both = request_cost(
        [4], 0, ["gradcam", "finercam"], ExplainOptions(), AnswerShape(("gradcam", "finercam"), 4), manifest
    )
    assert both.work_bytes - plain.work_bytes == 4 * (2 * 4 * 3 * layer + 2 * 4 * 4096)  # + its maps
