"""The Open Inference Protocol (inference.GRPCInferenceService) on the shared server, driven by the real
tritonclient package: readiness, metadata and configuration, ModelInfer with preprocessed FP32 images
or raw UINT8 pixels (answers equal the in-process Explainer's), output selection, the stream, bad
requests (each a clear status naming the field), and batches shared with camserve.v1 requests.

This process imports tritonclient's ``inference`` stubs, never camserve's (see camserve.inference)."""

from __future__ import annotations

import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from camserve.v1 import camserve_pb2 as pb
from tests.service.service_helpers import (
    MODEL,
    png_bytes,
    slow_request,
    slow_runs,
    stub,
    wait_for_log,
    wait_until_slow_run_starts,
)

ATOL = 1e-4  # batched and single runs may sum in another order
WAIT_S = 60.0


def infer_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.fixture()
def client(server):
    with triton.InferenceServerClient(server.address) as client:
        yield client


def test_readiness_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "2") and not client.is_model_ready("nope")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "camserve" and metadata["version"] == "0.1.0"
    assert metadata["extensions"] == ["model_configuration", "parameters"]


def test_model_metadata_lists_the_inputs_and_a_saliency_output_per_method(client, explainer):
    metadata = client.get_model_metadata(MODEL, as_json=True)
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"] and metadata["platform"] == "camserve"
    inputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]}
    assert inputs == {
        "IMAGES": ("FP32", [-1, 3, 64, 64]),
        "PIXELS": ("UINT8", [-1, -1, -1, 3]),
        "TARGETS": ("INT64", [-1, -1]),
        "TARGET_KINDS": ("INT64", [-1, -1]),  # a classifier's targets carry no TARGET_DATA
    }
    outputs = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["outputs"]}
    expected = {
        "LOGITS": ("FP32", [-1, 10]),
        "TARGET_IDS": ("INT64", [-1, -1]),
        "TARGET_SCORES": ("FP32", [-1, -1]),
    }
    expected |= {f"SALIENCY_{m.upper()}": ("FP32", [-1, -1, -1, -1]) for m in explainer.supported_methods}
    assert outputs == expected


def test_model_config_parses_as_tritons_and_describes_the_batcher(client):
    # tritonclient decodes the answer with Triton's full model_config.proto.
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL and config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    assert list(config.dynamic_batching.preferred_batch_size) == [16]
    assert [(i.name, list(i.dims), i.optional) for i in config.input] == [
        ("IMAGES", [3, 64, 64], True),
        ("PIXELS", [-1, -1, 3], True),
        ("TARGETS", [-1], True),
        ("TARGET_KINDS", [-1], True),
    ]
    assert config.output[0].name == "LOGITS" and list(config.output[0].dims) == [10]
    parameters = {name: p.string_value for name, p in config.parameters.items()}
    assert parameters == {
        "output_kind": "classification",
        "target_kinds": "logit=0,probability=1,sigmoid=2",
        "target_data_length": "0",
    }
    assert config.instance_group[0].count == 1


def test_reflection_lists_the_inference_service(server):
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"inference.GRPCInferenceService", "camserve.v1.ExplainService"} <= services


def test_fp32_images_with_targets_give_the_explainers_maps(client, explainer, digit_pixels):
    pixels = digit_pixels[:3]
    images = explainer.preprocess(list(pixels)).numpy()
    targets = np.array([[-1, 4], [2, -2], [-3, 9]], dtype=np.int64)
    expected = explainer.explain(images, methods=["gradcam", "gradcam++"], targets=targets.tolist())
    answer = client.infer(
        MODEL,
        [infer_input("IMAGES", images, "FP32"), infer_input("TARGETS", targets, "INT64")],
        request_id="fp32",
        parameters={"methods": "gradcam,gradcam++"},
    )
    response = answer.get_response()
    assert response.id == "fp32" and response.model_name == MODEL and response.model_version == "1"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("LOGITS", "FP32", [3, 10]),
        ("TARGET_IDS", "INT64", [3, 2]),
        ("TARGET_SCORES", "FP32", [3, 2]),
        ("SALIENCY_GRADCAM", "FP32", [3, 2, 64, 64]),
        ("SALIENCY_GRADCAM++", "FP32", [3, 2, 64, 64]),
    ]
    assert len(response.raw_output_contents) == 5
    np.testing.assert_allclose(answer.as_numpy("LOGITS"), expected.logits, atol=ATOL)
    np.testing.assert_array_equal(answer.as_numpy("TARGET_IDS"), expected.target_ids)
    # logit targets: the scores are the resolved classes' logits
    picked = np.take_along_axis(expected.logits, expected.target_ids, axis=1)
    np.testing.assert_allclose(answer.as_numpy("TARGET_SCORES"), picked, rtol=0, atol=ATOL)
    np.testing.assert_allclose(answer.as_numpy("SALIENCY_GRADCAM"), expected.maps["gradcam"], atol=ATOL)
    np.testing.assert_allclose(answer.as_numpy("SALIENCY_GRADCAM++"), expected.maps["gradcam++"], atol=ATOL)


def test_issue_24_methods_over_oip_give_the_explainers_maps(client, explainer, digit_pixels):
    """A method that runs another explain graph (finercam) and one that runs masked forward images
    (iscam) answer through the Open Inference Protocol as in process."""
    images = explainer.preprocess(list(digit_pixels[:2])).numpy()
    targets = np.array([[-1], [3]], dtype=np.int64)
    methods = ["finercam", "iscam"]
    expected = explainer.explain(images, methods=methods, targets=targets.tolist())
    answer = client.infer(
        MODEL,
        [infer_input("IMAGES", images, "FP32"), infer_input("TARGETS", targets, "INT64")],
        parameters={"methods": ",".join(methods)},
    )
    for method in methods:
        got = answer.as_numpy(f"SALIENCY_{method.upper()}")
        np.testing.assert_allclose(got, expected.maps[method], atol=ATOL, err_msg=method)


def test_uint8_pixels_are_preprocessed_by_the_server_like_the_explainer_does(client, explainer, digit_pixels):
    pixels = digit_pixels[3:5]
    expected = explainer.explain(list(pixels), methods=["gradcam"])
    answer = client.infer(MODEL, [infer_input("PIXELS", pixels, "UINT8")])
    assert [o.name for o in answer.get_response().outputs] == [
        "LOGITS",
        "TARGET_IDS",
        "TARGET_SCORES",
        "SALIENCY_GRADCAM",
    ]
    np.testing.assert_allclose(answer.as_numpy("LOGITS"), expected.logits, atol=ATOL)
    np.testing.assert_array_equal(answer.as_numpy("TARGET_IDS"), expected.target_ids)
    np.testing.assert_allclose(answer.as_numpy("SALIENCY_GRADCAM"), expected.maps["gradcam"], atol=ATOL)


def test_requested_outputs_choose_methods_order_datatype_and_size(client, explainer, digit_pixels):
    from camserve.config import ExplainOptions

    pixels = digit_pixels[5:7]
    options = ExplainOptions(output_size="feature")
    expected = explainer.explain(list(pixels), methods=["layercam", "xgradcam"], options=options)
    outputs = [triton.InferRequestedOutput(n) for n in ("SALIENCY_LAYERCAM", "LOGITS", "SALIENCY_XGRADCAM")]
    answer = client.infer(
        MODEL,
        [infer_input("PIXELS", pixels, "UINT8")],
        outputs=outputs,
        parameters={"saliency_datatype": "UINT8", "output_size": "feature"},
    )
    response = answer.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("SALIENCY_LAYERCAM", "UINT8", [2, 1, 16, 16]),
        ("LOGITS", "FP32", [2, 10]),
        ("SALIENCY_XGRADCAM", "UINT8", [2, 1, 16, 16]),
    ]
    for method in ("layercam", "xgradcam"):
        got = answer.as_numpy(f"SALIENCY_{method.upper()}").astype(np.int16)
        want = np.rint(expected.maps[method] * 255).astype(np.int16)
        assert np.abs(got - want).max() <= 1, method


def test_eigen_and_aug_smooth_parameters_give_the_explainers_maps(client, explainer, digit_pixels):
    from camserve.config import ExplainOptions

    pixels = digit_pixels[8:10]
    expected = explainer.explain(
        list(pixels), methods=["gradcam"], options=ExplainOptions(eigen_smooth=True, aug_smooth=True)
    )
    answer = client.infer(
        MODEL, [infer_input("PIXELS", pixels, "UINT8")], parameters={"eigen_smooth": True, "aug_smooth": True}
    )
    np.testing.assert_allclose(answer.as_numpy("SALIENCY_GRADCAM"), expected.maps["gradcam"], atol=ATOL)


def test_typed_contents_are_read_like_raw_contents(server, explainer, digit_pixels):
    # tritonclient always sends raw_input_contents; this request uses InferTensorContents instead.
    images = explainer.preprocess([digit_pixels[7]]).numpy()
    request = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
    request.parameters["methods"].string_param = "gradcam"
    request.inputs.add(name="IMAGES", datatype="FP32", shape=[1, 3, 64, 64]).contents.fp32_contents.extend(
        images.ravel().tolist()
    )
    request.inputs.add(name="TARGETS", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(6)
    with grpc.insecure_channel(server.address) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=WAIT_S)
    assert [o.name for o in response.outputs] == ["LOGITS", "TARGET_IDS", "TARGET_SCORES", "SALIENCY_GRADCAM"]
    maps = np.frombuffer(response.raw_output_contents[3], "<f4").reshape(1, 1, 64, 64)
    expected = explainer.explain(images, methods=["gradcam"], targets=[[6]])
    np.testing.assert_allclose(maps, expected.maps["gradcam"], atol=ATOL)


def test_stream_answers_every_request_and_reports_failures_inline(client, explainer, digit_pixels):
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(3):
            client.async_stream_infer(
                MODEL, [infer_input("PIXELS", digit_pixels[i : i + 1], "UINT8")], request_id=f"s{i}"
            )
        client.async_stream_infer(
            MODEL, [infer_input("TARGETS", np.zeros((1, 1), np.int64), "INT64")], request_id="bad"
        )
        received = [answers.get(timeout=WAIT_S) for _ in range(4)]
    finally:
        client.stop_stream()
    errors = [error for _, error in received if error is not None]
    assert len(errors) == 1 and "INVALID_ARGUMENT: inputs: give exactly one of IMAGES" in str(errors[0])
    results = {result.get_response().id: result for result, error in received if error is None}
    assert sorted(results) == ["s0", "s1", "s2"]
    for i in range(3):
        expected = explainer.explain([digit_pixels[i]], methods=["gradcam"])
        np.testing.assert_allclose(
            results[f"s{i}"].as_numpy("SALIENCY_GRADCAM"), expected.maps["gradcam"], atol=ATOL
        )


def bad_requests(pixels: np.ndarray) -> list[tuple[str, service_pb2.ModelInferRequest, grpc.StatusCode, str]]:
    """(name, request, expected status, text the message must contain)."""
    invalid, unimplemented = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED

    def request(
        *inputs: tuple[str, str, list[int], bytes], **params: object
    ) -> service_pb2.ModelInferRequest:
        message = service_pb2.ModelInferRequest(model_name=MODEL)
        for name, datatype, shape, data in inputs:
            message.inputs.add(name=name, datatype=datatype, shape=shape)
            message.raw_input_contents.append(data)
        for key, value in params.items():
            field = {str: "string_param", bool: "bool_param", int: "int64_param", float: "double_param"}
            setattr(message.parameters[key], field[type(value)], value)
        return message

    px = ("PIXELS", "UINT8", [1, 64, 64, 3], pixels[:1].tobytes())
    targets = np.array([[-1, 10]], np.int64)
    fp32 = ("IMAGES", "FP32", [1, 3, 32, 32], np.zeros((1, 3, 32, 32), "<f4").tobytes())
    nan = np.zeros((2, 3, 64, 64), "<f4")
    nan[1, 0, 0, 0] = np.nan
    unknown_output = request(px)
    unknown_output.outputs.add(name="HEATMAP")
    twice = request(px)
    twice.outputs.extend([service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="LOGITS")] * 2)
    classification = request(px)
    classification.outputs.add(name="LOGITS").parameters["classification"].int64_param = 3
    extra_raw = request(px)
    extra_raw.raw_input_contents.append(b"")
    mixed = request(px)
    mixed.inputs[0].contents.uint_contents.append(1)
    wrong_version = request(px)
    wrong_version.model_version = "7"
    return [
        ("no image input", request(), invalid, "inputs: give exactly one of IMAGES"),
        (
            "both image inputs",
            request(px, ("IMAGES", "FP32", [1, 3, 64, 64], bytes(49152))),
            invalid,
            "exactly one",
        ),
        (
            "unknown input",
            request(("IMAGE", "FP32", [1], b"\0" * 4)),
            invalid,
            "inputs[0] (IMAGE): unknown input",
        ),
        ("input twice", request(px, px), invalid, "inputs[1] (PIXELS): PIXELS is given twice"),
        (
            "datatype",
            request(("PIXELS", "FP64", [1], b"\0" * 8)),
            invalid,
            "inputs[0] (PIXELS).datatype: 'FP64'",
        ),
        ("pixels as fp32", request(("PIXELS", "FP32", [1], b"\0" * 4)), invalid, "PIXELS are UINT8"),
        (
            "negative dim",
            request(("PIXELS", "UINT8", [1, -64, 64, 3], b"")),
            invalid,
            "dimensions must be >= 0",
        ),
        (
            "raw size",
            request(("PIXELS", "UINT8", [1, 64, 64, 3], b"\0" * 10)),
            invalid,
            "holds 10 bytes but UINT8",
        ),
        (
            "pixels shape",
            request(("PIXELS", "UINT8", [64, 64, 3], bytes(12288))),
            invalid,
            "expected [N, H, W, 3]",
        ),
        ("image size", request(fp32), invalid, "inputs[0] (IMAGES).shape: expected [N, 3, 64, 64]"),
        ("nan", request(("IMAGES", "FP32", [2, 3, 64, 64], nan.tobytes())), invalid, "image 1 has NaN"),
        (
            "target range",
            request(px, ("TARGETS", "INT64", [1, 2], targets.tobytes())),
            invalid,
            "inputs[1] (TARGETS)[0][1]: class 10 is out of range",
        ),
        (
            "targets rows",
            request(px, ("TARGETS", "INT64", [2, 1], np.zeros(2, "<i8").tobytes())),
            invalid,
            "inputs[1] (TARGETS).shape: expected [1, T]",
        ),
        ("raw count", extra_raw, invalid, "raw_input_contents: has 2 entries for 1 inputs"),
        ("raw and contents", mixed, invalid, "inputs[0] (PIXELS).contents: set either raw_input_contents"),
        ("unknown output", unknown_output, invalid, "outputs[0]: unknown output 'HEATMAP'"),
        ("output twice", twice, invalid, "outputs[1]: 'LOGITS' is requested twice"),
        (
            "output parameters",
            classification,
            unimplemented,
            "outputs[0] (LOGITS).parameters: classification",
        ),
        (
            "unsupported method",
            request(px, methods="gradcam,magic"),
            unimplemented,
            "parameters.methods[1]: 'magic' is not supported",
        ),
        ("unknown parameter", request(px, colour="red"), invalid, "parameters.colour: unknown parameter"),
        ("parameter type", request(px, smooth_n="many"), invalid, "parameters.smooth_n: expected an integer"),
        ("smooth_n", request(px, smooth_n=10**6), invalid, "parameters.smooth_n: must be in 1..256"),
        ("aug_smooth", request(px, aug_smooth=3), invalid, "parameters.aug_smooth: expected"),
        (
            "output size",
            request(px, output_size="9x0"),
            invalid,
            "parameters.output_size: width must be in 1..8192, got 0",
        ),
        (
            "raw uint8",
            request(px, normalize=False, saliency_datatype="UINT8"),
            invalid,
            "UINT8 maps need normalize",
        ),
        (
            "sequence",
            request(px, sequence_id=1),
            unimplemented,
            "parameters.sequence_id: camserve models are stateless",
        ),
        ("timeout", request(px, timeout=-5), invalid, "parameters.timeout: must be > 0"),
        ("version", wrong_version, grpc.StatusCode.NOT_FOUND, "model 'digits' has no version '7'"),
    ]


def test_bad_requests_get_a_status_naming_what_was_wrong(server, digit_pixels):
    with grpc.insecure_channel(server.address) as channel:
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        for name, request, code, message in bad_requests(digit_pixels):
            with pytest.raises(grpc.RpcError) as caught:
                infer(request, timeout=WAIT_S)
            assert caught.value.code() == code, f"{name}: {caught.value.details()}"
            assert message in caught.value.details(), f"{name}: {caught.value.details()}"
    assert any("infer id=" in line and "status=INVALID_ARGUMENT" in line for line in server.request_lines())


def test_inference_and_explain_requests_share_one_batch(server, digit_pixels):
    """While a slow camserve.v1 request holds the model, one Grad-CAM request of each API queues; both
    then run in the same batch of two."""
    channel, explain_stub = stub(server.address)
    with channel, ThreadPoolExecutor(3) as pool, triton.InferenceServerClient(server.address) as client:
        runs = slow_runs(server)
        slow = pool.submit(explain_stub.Explain, slow_request(digit_pixels, "hold", count=1), timeout=WAIT_S)
        wait_until_slow_run_starts(server, runs)
        explain = pool.submit(
            explain_stub.Explain,
            pb.ExplainRequest(
                id="shared-v1",
                model=MODEL,
                methods=["gradcam"],
                images=[pb.Image(encoded=png_bytes(digit_pixels[8]))],
            ),
            timeout=WAIT_S,
        )
        infer = pool.submit(
            client.infer,
            MODEL,
            [infer_input("PIXELS", digit_pixels[9:10], "UINT8")],
            request_id="shared-oip",
            parameters={"methods": "gradcam"},
        )
        assert infer.result(WAIT_S).as_numpy("SALIENCY_GRADCAM").shape == (1, 1, 64, 64)
        assert len(explain.result(WAIT_S).images) == 1
        slow.result(WAIT_S)
    assert "batch_size=2 " in wait_for_log(server, "infer id=shared-oip ")
    assert "batch_size=2 " in wait_for_log(server, "explain id=shared-v1 ")


def test_concurrent_tritonclient_clients_get_their_own_answers(server, explainer, digit_pixels):
    clients, rounds = 8, 3
    images = digit_pixels[10 : 10 + clients]
    expected = [
        explainer.explain([images[i]], methods=["gradcam"], targets=[[i % 10]]) for i in range(clients)
    ]
    start = threading.Barrier(clients)

    def run(i: int) -> list[np.ndarray]:
        with triton.InferenceServerClient(server.address) as client:
            inputs = [
                infer_input("PIXELS", images[i : i + 1], "UINT8"),
                infer_input("TARGETS", np.array([[i % 10]], np.int64), "INT64"),
            ]
            start.wait(WAIT_S)
            return [
                client.infer(MODEL, inputs, request_id=f"many{i}").as_numpy("SALIENCY_GRADCAM")
                for _ in range(rounds)
            ]

    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(run, range(clients)))
    for i, maps in enumerate(answers):
        for got in maps:
            np.testing.assert_allclose(got, expected[i].maps["gradcam"], atol=ATOL, err_msg=f"client {i}")
    lines = [line for line in server.request_lines() if re.search(r"infer id=many\d+ ", line)]
    assert len(lines) == clients * rounds and all("status=OK" in line for line in lines)
    assert max(int(re.search(r"batch_size=(\d+)", line).group(1)) for line in lines) > 1


def test_a_deadline_shorter_than_the_queue_wait_fails_with_deadline_exceeded(server, digit_pixels):
    channel, explain_stub = stub(server.address)
    with channel, ThreadPoolExecutor(1) as pool, triton.InferenceServerClient(server.address) as client:
        runs = slow_runs(server)
        slow = pool.submit(explain_stub.Explain, slow_request(digit_pixels, "hold2", count=1), timeout=WAIT_S)
        wait_until_slow_run_starts(server, runs)
        with pytest.raises(InferenceServerException) as caught:
            # "timeout" is Triton's request parameter (microseconds): 50 ms, while the slow run takes seconds.
            client.infer(MODEL, [infer_input("PIXELS", digit_pixels[:1], "UINT8")], timeout=50_000)
        slow.result(WAIT_S)
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "deadline passed" in caught.value.message()
