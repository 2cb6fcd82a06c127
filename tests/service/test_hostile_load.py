"""Heavy-but-valid requests against a real server, with the server's memory (RSS) and CPU time read
from /proc: concurrent big images decode within the pixel budget, work stops once a deadline passes
(while decoding and between graph runs), and a stream (either API) whose answers are never read stops
being read.
After each, the server is SERVING and a normal request succeeds."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as ip  # not camserve.inference: see its docstring

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import tensor_to_array
from tests.service.hostile_helpers import MIB, PeakRss, cpu_seconds, raw_stream, zero_png
from tests.service.service_helpers import MODEL, ServerProcess, environ, png_bytes, serve_argv, slow_request

BUDGET_PIXELS = 4_000_000  # the test server's decode budget: one 2000x2000 image at a time
SIDE = 2000  # big test images: 4M pixels each, ~80 MB while decoding (20 B/pixel)
STREAM_MAX_UNREAD = 4
TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def load_server(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = environ(
        CAMSERVE_SERVICE_DECODE_PIXEL_BUDGET=str(BUDGET_PIXELS),
        CAMSERVE_SERVICE_STREAM_MAX_UNREAD=str(STREAM_MAX_UNREAD),
    )
    directory = tmp_path_factory.mktemp("hostile-load")
    process = ServerProcess(serve_argv(models_root), directory / "serve.log", env=env)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return zero_png(SIDE, SIDE)


def assert_healthy(server: ServerProcess, pixels: np.ndarray) -> None:
    assert server.health() == "SERVING"
    with grpc.insecure_channel(server.address) as channel:
        request = pb.ExplainRequest(id="after", model=MODEL, images=[pb.Image(encoded=png_bytes(pixels))])
        reply = pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=TIMEOUT_S)
    maps = tensor_to_array(reply.images[0].maps[0].data, "map")
    assert maps.shape == (64, 64) and maps.max() == pytest.approx(1.0)


def explain(address: str, request: pb.ExplainRequest, timeout: float = TIMEOUT_S) -> pb.ExplainResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.ExplainServiceStub(channel).Explain(request, timeout=timeout)


def test_concurrent_big_images_decode_within_the_pixel_budget(load_server, big_png, digit_pixels):
    requests = [
        pb.ExplainRequest(id=f"big{i}", model=MODEL, images=[pb.Image(encoded=big_png)]) for i in range(6)
    ]
    explain(load_server.address, requests[0])  # warm: pools and caches that fill once
    with PeakRss(load_server.proc.pid) as rss, ThreadPoolExecutor(len(requests)) as pool:
        replies = list(pool.map(lambda r: explain(load_server.address, r), requests))
    assert [r.id for r in replies] == [r.id for r in requests]
    for reply in replies:  # an all-black image still gets its map
        assert tensor_to_array(reply.images[0].maps[0].data, "map").shape == (64, 64)
    # Six decodes of 4M pixels at once would take ~6 x 80 MB; the budget lets one run at a time.
    assert rss.growth < 250 * MIB, f"RSS grew {rss.growth / MIB:.0f} MiB"
    assert_healthy(load_server, digit_pixels[0])


def test_an_image_over_the_budget_is_refused_before_decoding(load_server, digit_pixels):
    huge = zero_png(2001, 2000)
    with pytest.raises(grpc.RpcError) as caught:
        explain(load_server.address, pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=huge)]))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "images[0].encoded" in caught.value.details()
    assert "4002000 pixels" in caught.value.details() and "decode_pixel_budget" in caught.value.details()
    assert_healthy(load_server, digit_pixels[0])


def cpu_after_deadline(server: ServerProcess, request: pb.ExplainRequest, deadline_s: float) -> float:
    """CPU seconds the server spends in the 3 s after the client got DEADLINE_EXCEEDED."""
    with pytest.raises(grpc.RpcError) as caught:
        explain(server.address, request, timeout=deadline_s)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    before = cpu_seconds(server.proc.pid)
    time.sleep(3.0)
    return cpu_seconds(server.proc.pid) - before


def test_decoding_stops_when_the_deadline_passes(load_server, big_png, digit_pixels):
    request = pb.ExplainRequest(id="ten-big", model=MODEL, images=[pb.Image(encoded=big_png)] * 10)
    # Ten decodes take several CPU seconds; after the deadline at most the one in progress finishes.
    spent = cpu_after_deadline(load_server, request, 0.5)
    assert spent < 1.0, f"{spent:.2f} CPU s after the deadline"
    assert_healthy(load_server, digit_pixels[0])


def test_graph_runs_stop_when_the_deadline_passes(load_server, digit_pixels):
    before = load_server.log().count("stopped: nobody waits for it any more")
    request = slow_request(digit_pixels, "slow-deadline", count=8)
    # The deadline must pass while graph runs remain (the stop check runs before each): on an idle
    # host this batch's graph runs took under a second, and its CPU-only maths do not check.
    spent = cpu_after_deadline(load_server, request, 0.3)
    assert spent < 1.0, f"{spent:.2f} CPU s after the deadline"
    assert load_server.log().count("stopped: nobody waits for it any more") == before + 1
    assert_healthy(load_server, digit_pixels[0])


def test_a_stream_that_is_never_read_stops_being_read(load_server, digit_pixels):
    image = pb.Image(encoded=png_bytes(digit_pixels[0]))
    sent: list[str] = []

    def requests() -> Iterator[pb.ExplainRequest]:
        for i in range(20):
            sent.append(f"unread{i}")
            yield pb.ExplainRequest(
                id=f"unread{i}",
                model=MODEL,
                images=[image],
                output=pb.OutputOptions(size=pb.OUTPUT_SIZE_CUSTOM, height=2000, width=2000),
            )

    def answered() -> int:
        return len(re.findall(r"explain id=unread\d+ .*status=OK", load_server.log()))

    options = [("grpc.max_receive_message_length", 64 * MIB)]
    with grpc.insecure_channel(load_server.address, options) as channel, PeakRss(load_server.proc.pid) as rss:
        stream = pb_grpc.ExplainServiceStub(channel).ExplainStream(requests(), timeout=TIMEOUT_S)
        # Each answer is a 16 MB map; nobody reads them. The server computes a few, then stops reading.
        deadline = time.monotonic() + 60.0
        while answered() < STREAM_MAX_UNREAD and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
        held = answered()
        first = next(stream)  # reading resumes the stream
        assert first.id.startswith("unread") and not first.HasField("error")
        stream.cancel()
    # One answer may be in gRPC's hands beyond the limit.
    assert STREAM_MAX_UNREAD <= held <= STREAM_MAX_UNREAD + 1, held
    assert rss.growth < 400 * MIB, f"RSS grew {rss.growth / MIB:.0f} MiB"
    assert_healthy(load_server, digit_pixels[0])


def test_a_model_stream_infer_that_is_never_read_stops_being_read(load_server, digit_pixels):
    """The same backpressure on the Open Inference Protocol's stream (raw messages: tritonclient's
    stream API always reads)."""

    def request(i: int) -> bytes:
        message = ip.ModelInferRequest(
            model_name=MODEL, id=f"oipunread{i}", raw_input_contents=[digit_pixels[0].tobytes()]
        )
        message.inputs.add(name="PIXELS", datatype="UINT8", shape=[1, 64, 64, 3])
        message.parameters["output_size"].string_param = "2000x2000"
        return message.SerializeToString()

    def answered() -> int:
        return len(re.findall(r"infer id=oipunread\d+ .*status=OK", load_server.log()))

    options = [("grpc.max_receive_message_length", 64 * MIB)]
    with grpc.insecure_channel(load_server.address, options) as channel:
        stream = raw_stream(
            channel,
            "/inference.GRPCInferenceService/ModelStreamInfer",
            [request(i) for i in range(20)],
            timeout=TIMEOUT_S,
        )
        deadline = time.monotonic() + 60.0
        while answered() < STREAM_MAX_UNREAD and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)
        held = answered()
        first = ip.ModelStreamInferResponse.FromString(next(stream))
        assert first.error_message == "" and first.infer_response.id.startswith("oipunread")
        stream.cancel()
    assert STREAM_MAX_UNREAD <= held <= STREAM_MAX_UNREAD + 1, held
    assert_healthy(load_server, digit_pixels[0])
