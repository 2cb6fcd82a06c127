"""The API of a real `camserve serve` process: results equal the in-process Explainer's, output options,
raw tensors, streams, model metadata, health and reflection, and `camserve explain --server`."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from PIL import Image

from camserve.client import Client
from camserve.v1 import camserve_pb2 as pb
from camserve.wire import array_to_tensor, tensor_to_array
from tests.service.service_helpers import MODEL, png_bytes, slow_request, stub

TOLERANCE = 1e-6


def assert_same_result(remote, local, maps_atol: float = TOLERANCE) -> None:
    assert sorted(remote.maps) == sorted(local.maps)
    for method in local.maps:
        assert remote.maps[method].dtype == np.float32
        assert remote.maps[method].shape == local.maps[method].shape, method
        np.testing.assert_allclose(
            remote.maps[method], local.maps[method], rtol=0, atol=maps_atol, err_msg=method
        )
    assert sorted(remote.rgb) == sorted(local.rgb)
    for method in local.rgb:
        np.testing.assert_allclose(
            remote.rgb[method], local.rgb[method], rtol=0, atol=TOLERANCE, err_msg=method
        )
    np.testing.assert_allclose(remote.logits, local.logits, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(remote.probabilities, local.probabilities, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(remote.target_ids, local.target_ids)
    assert remote.predictions == local.predictions
    np.testing.assert_array_equal(remote.images, local.images)
    assert remote.model_name == MODEL


@pytest.mark.parametrize(
    "methods",
    [
        ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam"],
        ["scorecam", "ablationcam", "guidedbackprop", "guidedgradcam"],
        # issue 24's methods: the ones that run more graphs (finercam, sscam, iscam) among them
        ["eigengradcam", "kpcacam", "fem", "gradcamelementwise", "shapleycam", "finercam", "refinecam"],
        ["sscam", "iscam", "fullgrad"],  # fullgrad: its own graph, fullgradient
    ],
)
def test_explain_over_grpc_equals_the_in_process_explainer(server, explainer, digit_pixels, methods):
    images = list(digit_pixels[:3])
    targets = [[-1, 3]]
    with Client(server.address) as client:
        remote = client.explain(images, methods=methods, targets=targets)
    local = explainer.explain(images, methods=methods, targets=targets)
    assert remote.maps[methods[0]].shape == (3, 2, 64, 64)
    assert_same_result(remote, local)


def test_smooth_gradcam_plus_plus_equals_the_in_process_answer_for_each_image(
    server, explainer, digit_pixels
):
    # The noise is drawn per explain call, so the server runs each image alone and the reference does too.
    options = dataclasses.replace(explainer.config.explain, smooth_n=4, smooth_seed=11)
    with Client(server.address) as client:
        remote = client.explain(list(digit_pixels[:2]), methods=["smoothgradcam++"], options=options)
    for n in range(2):
        local = explainer.explain([digit_pixels[n]], methods=["smoothgradcam++"], options=options)
        np.testing.assert_allclose(
            remote.maps["smoothgradcam++"][n], local.maps["smoothgradcam++"][0], atol=TOLERANCE
        )


def test_preprocessed_tensors_give_the_same_answer_as_encoded_images(
    server, explainer, digit_pixels, tmp_path
):
    tensors = explainer.preprocess(list(digit_pixels[:2]))
    np.save(tmp_path / "batch.npy", tensors.numpy())
    with Client(server.address) as client:
        from_png = client.explain(list(digit_pixels[:2]), methods=["gradcam"], targets=[[-1], [4]])
        for images in (
            tensors,
            tensors.numpy(),
            [tensors[0], tensors[1].numpy()],
            str(tmp_path / "batch.npy"),
        ):
            from_tensors = client.explain(images, methods=["gradcam"], targets=[[-1], [4]])
            assert_same_result(from_tensors, from_png)


def test_files_in_formats_a_server_refuses_are_sent_as_their_pixels(server, digit_pixels, tmp_path):
    """Servers decode only PNG, JPEG and WebP; the client reads a BMP or TIFF file itself (the
    caller's own file) and sends its pixels, so the answer is the one for the same pixels as PNG."""
    paths = []
    for fmt in ("BMP", "TIFF"):
        paths.append(tmp_path / f"digit.{fmt.lower()}")
        Image.fromarray(digit_pixels[3]).save(paths[-1], format=fmt)
    with Client(server.address) as client:
        expected = client.explain([digit_pixels[3]], methods=["gradcam"])
        for path in paths:
            assert_same_result(client.explain(str(path), methods=["gradcam"]), expected, maps_atol=0)
    channel, explain = stub(server.address)
    request = pb.ExplainRequest(model=MODEL, images=[pb.Image(encoded=paths[0].read_bytes())])
    with channel, pytest.raises(grpc.RpcError) as caught:
        explain.Explain(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[0].encoded: BMP images are not accepted" in caught.value.details()


@pytest.mark.parametrize(
    ("output_size", "shape"), [("feature", None), ("32x48", (32, 48)), ("input", (64, 64))]
)
@pytest.mark.parametrize("normalize", [True, False])
def test_output_size_and_normalisation_follow_the_options(
    server, explainer, digit_pixels, output_size, shape, normalize
):
    options = dataclasses.replace(
        explainer.config.explain, output_size=output_size, normalize=normalize, topk_predictions=3
    )
    with Client(server.address) as client:
        remote = client.explain([digit_pixels[5]], methods=["gradcam++"], options=options)
    local = explainer.explain([digit_pixels[5]], methods=["gradcam++"], options=options)
    expected = tuple(explainer.manifest.activation_shape[1:]) if shape is None else shape
    assert remote.maps["gradcam++"].shape == (1, 1, *expected)
    assert len(remote.predictions[0]) == 3
    assert_same_result(remote, local)


def explain_one(address: str, output: pb.OutputOptions, pixels: np.ndarray) -> pb.ExplainResponse:
    channel, explain_stub = stub(address)
    with channel:
        request = pb.ExplainRequest(
            model=MODEL, methods=["gradcam"], images=[pb.Image(encoded=png_bytes(pixels))], output=output
        )
        return explain_stub.Explain(request, timeout=30)


def test_maps_come_as_float16_or_uint8_bytes_and_overlays_as_png(server, explainer, digit_pixels):
    reference = explainer.explain([digit_pixels[1]], methods=["gradcam"]).maps["gradcam"][0, 0]
    half = explain_one(server.address, pb.OutputOptions(dtype=pb.DATA_TYPE_FLOAT16), digit_pixels[1])
    data = half.images[0].maps[0].data
    assert data.dtype == pb.DATA_TYPE_FLOAT16 and len(data.data) == 64 * 64 * 2
    np.testing.assert_allclose(tensor_to_array(data, "map"), reference, atol=1e-3)

    eight = explain_one(
        server.address, pb.OutputOptions(dtype=pb.DATA_TYPE_UINT8, overlay_png=True), digit_pixels[1]
    )
    entry = eight.images[0].maps[0]
    assert entry.data.dtype == pb.DATA_TYPE_UINT8 and list(entry.data.shape) == [64, 64]
    np.testing.assert_array_equal(
        tensor_to_array(entry.data, "map"), np.rint(reference * 255).astype(np.uint8)
    )
    overlay = Image.open(io.BytesIO(entry.overlay_png))
    assert overlay.format == "PNG" and overlay.size == (64, 64) and overlay.mode == "RGB"


def test_each_image_of_a_request_gets_its_own_targets(server, explainer, digit_pixels):
    channel, explain_stub = stub(server.address)
    with channel:
        request = pb.ExplainRequest(
            model=MODEL,
            methods=["gradcam", "layercam"],
            images=[
                pb.Image(encoded=png_bytes(digit_pixels[0]), targets=[2]),
                pb.Image(encoded=png_bytes(digit_pixels[1]), targets=[-1, -2, 7]),
                pb.Image(encoded=png_bytes(digit_pixels[2])),
            ],
        )
        reply = explain_stub.Explain(request, timeout=30)
    assert [len(image.target_ids) for image in reply.images] == [1, 3, 1]
    assert reply.images[0].target_ids == [2]
    second = explainer.explain([digit_pixels[1]], methods=["gradcam", "layercam"], targets=[[-1, -2, 7]])
    assert list(reply.images[1].target_ids) == second.target_ids[0].tolist()
    maps = reply.images[1].maps
    assert [(m.target_index, m.method) for m in maps] == [
        (t, method) for t in range(3) for method in ("gradcam", "layercam")
    ]
    for entry in maps:
        expected = second.maps[entry.method][0, entry.target_index]
        np.testing.assert_allclose(tensor_to_array(entry.data, "map"), expected, atol=TOLERANCE)
        assert entry.class_id == second.target_ids[0, entry.target_index]


def test_stream_answers_carry_request_ids_in_completion_order_and_errors_inline(server, digit_pixels):
    channel, explain_stub = stub(server.address)
    good = pb.ExplainRequest(id="good", model=MODEL, methods=["gradcam"])
    good.images.add(encoded=png_bytes(digit_pixels[3]))
    slow = slow_request(digit_pixels, "slow", count=1)
    requests = [slow, pb.ExplainRequest(id="bad", model="no-such-model"), good]
    with channel:
        replies = list(explain_stub.ExplainStream(iter(requests), timeout=60))
    assert sorted(r.id for r in replies) == ["bad", "good", "slow"]
    assert replies[0].id == "bad"  # failed at once, while the slow request still ran
    bad = replies[0]
    assert bad.error.code == grpc.StatusCode.NOT_FOUND.value[0] and "no-such-model" in bad.error.message
    for reply in replies[1:]:
        assert reply.error.code == 0 and reply.images, reply.id
    assert len(next(r for r in replies if r.id == "slow").images) == 1


def test_list_and_get_model_describe_the_served_model(server, explainer):
    with Client(server.address) as client:
        (listed,) = client.list_models()
        info = client.model_info(MODEL)
    manifest = explainer.manifest
    assert listed == info
    assert info.name == MODEL and info.target_layer == manifest.target_layer
    assert list(info.input_size) == manifest.input_size
    np.testing.assert_allclose(info.mean, manifest.mean, rtol=1e-6)
    np.testing.assert_allclose(info.std, manifest.std, rtol=1e-6)
    assert info.num_classes == len(info.class_names) == manifest.num_classes
    assert list(info.supported_methods) == explainer.supported_methods
    assert list(info.activation_shape) == manifest.activation_shape
    assert info.max_batch_size == 16


def test_get_model_of_an_unknown_name_is_not_found(server):
    channel, explain_stub = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as caught:
        explain_stub.GetModel(pb.GetModelRequest(name="../etc"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "'../etc' is not served here (served: digits)" in caught.value.details()


def test_health_reports_every_model_and_the_whole_server(server):
    assert server.health("") == "SERVING"
    assert server.health(MODEL) == "SERVING"
    assert server.health("camserve.v1.ExplainService") == "SERVING"


def test_reflection_lists_the_services(server):
    with grpc.insecure_channel(server.address) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"camserve.v1.ExplainService", "grpc.health.v1.Health"} <= services


def test_cli_explain_with_server_writes_what_the_explainer_computes(
    server, explainer, digit_pixels, tmp_path: Path
):
    image = tmp_path / "digit.png"
    image.write_bytes(png_bytes(digit_pixels[9]))
    out = tmp_path / "remote.npz"
    argv = [sys.executable, "-m", "camserve.cli", "explain", "--server", server.address, "--model", MODEL]
    argv += ["--method", "gradcam", "--method", "scorecam", "--target", "-1", "--target", "2"]
    argv += ["--out", str(out), str(image)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("digit: predicted")
    written = dict(np.load(out))
    expected = explainer.explain([str(image)], methods=["gradcam", "scorecam"], targets=[[-1, 2]]).arrays()
    assert sorted(written) == sorted(expected)
    for key, value in expected.items():
        if value.dtype.kind == "f":
            np.testing.assert_allclose(written[key], value, rtol=0, atol=TOLERANCE, err_msg=key)
        else:
            np.testing.assert_array_equal(written[key], value, err_msg=key)


def test_cli_explain_with_an_unreachable_server_fails_with_a_clear_message(tmp_path: Path):
    argv = [sys.executable, "-m", "camserve.cli", "explain", "--server", "127.0.0.1:1", "--model", MODEL]
    done = subprocess.run(argv + ["x.png"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "UNAVAILABLE" in done.stderr and "Traceback" not in done.stderr


def test_array_tensor_round_trip_is_little_endian_and_exact():
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    tensor = array_to_tensor(values)
    assert tensor.data == values.astype("<f4").tobytes() and list(tensor.shape) == [3, 4]
    np.testing.assert_array_equal(tensor_to_array(tensor, "t"), values)
    big_endian = values.astype(">f4")
    np.testing.assert_array_equal(tensor_to_array(array_to_tensor(big_endian), "t"), values)


def test_eigen_and_aug_smooth_over_grpc_equal_the_in_process_explainer(server, explainer, digit_pixels):
    options = dataclasses.replace(explainer.config.explain, eigen_smooth=True, aug_smooth=True)
    images, methods = list(digit_pixels[:2]), ["gradcam", "layercam", "guidedbackprop"]
    with Client(server.address) as client:
        remote = client.explain(images, methods=methods, targets=[[-1, 2]], options=options)
    local = explainer.explain(images, methods=methods, targets=[[-1, 2]], options=options)
    assert_same_result(remote, local, maps_atol=1e-5)
    plain = explainer.explain(images, methods=methods, targets=[[-1, 2]])
    assert np.abs(local.maps["gradcam"] - plain.maps["gradcam"]).max() > 0.05  # the options did act
    np.testing.assert_array_equal(local.maps["guidedbackprop"], plain.maps["guidedbackprop"])  # ignored


def test_overlays_follow_the_colour_map_and_image_weight(server, explainer, digit_pixels):
    from camserve.config import OverlayStyle
    from camserve.visualize import blend_heatmap

    output = pb.OutputOptions(overlay_png=True, overlay_colormap="viridis", overlay_image_weight=0.25)
    entry = explain_one(server.address, output, digit_pixels[1]).images[0].maps[0]
    local = explainer.explain([digit_pixels[1]], methods=["gradcam"])
    expected = blend_heatmap(
        local.pixels()[0], local.maps["gradcam"][0, 0], True, OverlayStyle("viridis", 0.25)
    )
    drawn = np.asarray(Image.open(io.BytesIO(entry.overlay_png)), np.float32) / 255
    np.testing.assert_allclose(drawn, expected, atol=1 / 255 + 1e-6)
    with pytest.raises(grpc.RpcError) as error:
        explain_one(
            server.address, pb.OutputOptions(overlay_png=True, overlay_colormap="nope"), digit_pixels[1]
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output.overlay_colormap" in error.value.details()


def test_logit_only_methods_with_other_target_kinds_are_refused_before_batching(server, digit_pixels):
    """camserve.v1 and the Python client: one status, naming the method and the kind."""
    image = pb.Image(
        encoded=png_bytes(digit_pixels[0]),
        target_specs=[pb.Target(kind=pb.TARGET_KIND_PROBABILITY, class_id=2)],
    )
    request = pb.ExplainRequest(model=MODEL, methods=["gradcam", "scorecam"], images=[image])
    channel, client = stub(server.address)
    with channel, pytest.raises(grpc.RpcError) as info:
        client.Explain(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert info.value.details().startswith("methods: 'scorecam' explain class logits only")
    assert "these targets are of kind probability" in info.value.details()
