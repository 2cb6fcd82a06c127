"""32 concurrent clients against one server: every client gets the answer for its own image (no
mixing between coalesced requests), and the server really coalesces them (batch sizes > 1)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from camserve.v1 import camserve_pb2 as pb
from camserve.v1 import camserve_pb2_grpc as pb_grpc
from camserve.wire import tensor_to_array
from tests.service.service_helpers import MODEL, png_bytes

CLIENTS = 32
REQUESTS_PER_CLIENT = 3
METHODS = ["gradcam", "layercam"]
# Batched and single runs may sum in another order; mixed-up answers differ by far more than this.
ATOL = 1e-4


def test_32_concurrent_clients_get_their_own_answers_from_coalesced_batches(server, explainer, digit_pixels):
    images = digit_pixels[:CLIENTS]
    targets = [[-1] if i % 2 else [i % 10, -2] for i in range(CLIENTS)]
    expected = [explainer.explain([images[i]], methods=METHODS, targets=[targets[i]]) for i in range(CLIENTS)]

    def client(i: int) -> list[pb.ExplainResponse]:
        with grpc.insecure_channel(server.address) as channel:
            explain = pb_grpc.ExplainServiceStub(channel).Explain
            request = pb.ExplainRequest(
                id=f"client{i}",
                model=MODEL,
                methods=METHODS,
                images=[pb.Image(encoded=png_bytes(images[i]), targets=targets[i])],
            )
            return [explain(request, timeout=120) for _ in range(REQUESTS_PER_CLIENT)]

    first_line = len(server.request_lines())
    with ThreadPoolExecutor(CLIENTS) as pool:
        answers = list(pool.map(client, range(CLIENTS)))

    for i, replies in enumerate(answers):
        reference = expected[i]
        for reply in replies:
            assert reply.id == f"client{i}"
            (image,) = reply.images
            assert list(image.target_ids) == reference.target_ids[0].tolist(), f"client {i}"
            assert [p.class_id for p in image.predictions] == [p.class_id for p in reference.predictions[0]]
            np.testing.assert_allclose(
                tensor_to_array(image.logits, "logits"), reference.logits[0], atol=ATOL
            )
            for entry in image.maps:
                got = tensor_to_array(entry.data, "map")
                np.testing.assert_allclose(
                    got, reference.maps[entry.method][0, entry.target_index], atol=ATOL, err_msg=f"client {i}"
                )
    lines = server.request_lines()[first_line:]
    mine = [line for line in lines if re.search(r"id=client\d+ ", line)]
    assert len(mine) == CLIENTS * REQUESTS_PER_CLIENT and all("status=OK" in line for line in mine)
    batch_sizes = [int(re.search(r"batch_size=(\d+)", line).group(1)) for line in mine]
    assert max(batch_sizes) > 1, batch_sizes
    assert max(batch_sizes) <= 16  # max_batch_size
