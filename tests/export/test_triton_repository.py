"""Triton model repositories: config.pbtxt parses with Triton's own model_config.proto (tritonclient's
copy) and matches the explain graph's inputs and outputs; model.onnx is the explain graph; the
`camserve export` flags write one after an export or from an existing model directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from onnx import TensorProto, helper

from camserve.cli import main
from camserve.config import CamserveConfig
from camserve.errors import InvalidArgumentError
from camserve.export.triton_repository import triton_config, write_triton_repository
from camserve.modeldir import ModelDirectory

TRITON_TYPES = {TensorProto.FLOAT: "TYPE_FP32", TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def digits() -> ModelDirectory:
    from camserve.default_model import default_model_dir

    return ModelDirectory(default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir))


def parse_config(path: Path):
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def graph_tensors(values) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims with -1 for dynamic) of ONNX graph inputs or outputs."""
    return [
        (
            v.name,
            TRITON_TYPES[v.type.tensor_type.elem_type],
            [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim],
        )
        for v in values
    ]


def compatible(config_dims: list[int], graph_dims: list[int]) -> bool:
    """Triton's rule: a config dim equals the graph's, or one of them is dynamic (-1)."""
    return len(config_dims) == len(graph_dims) and all(
        c == g or c == -1 or g == -1 for c, g in zip(config_dims, graph_dims, strict=True)
    )


def test_the_config_matches_the_explain_graph(digits, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    folder = write_triton_repository(digits, tmp_path / "repo")
    assert folder == tmp_path / "repo" / "digits"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) == [
        "1",
        "1/model.onnx",
        "1/model.py",
        "config.pbtxt",
        "configs",
        "configs/python.pbtxt",
    ]
    assert (folder / "1" / "model.onnx").read_bytes() == digits.graph_path("explain").read_bytes()
    config = parse_config(folder / "config.pbtxt")
    graph = onnx.load(str(folder / "1" / "model.onnx"))
    assert config.name == "digits" and config.platform == "onnxruntime_onnx" and not config.backend
    assert config.max_batch_size == 16
    # Every input and output, in the graph's order, with its type and dims after the batch one.
    for entries, values in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
        expected = graph_tensors(values)
        assert all(dims[0] == -1 for _, _, dims in expected)  # dynamic batch dimension
        got = [(e.name, mc.DataType.Name(e.data_type), list(e.dims)) for e in entries]
        assert [(n, k) for n, k, _ in got] == [(n, k) for n, k, _ in expected]
        for (name, _, dims), (_, _, graph_dims) in zip(got, expected, strict=True):
            assert compatible(dims, graph_dims[1:]), name
    # One target slot (the default): the target dims are fixed, so any two requests batch together.
    assert [(e.name, list(e.dims)) for e in config.input] == [
        ("images", [3, 64, 64]),
        ("targets", [1]),
        ("target_kinds", [1]),
    ]
    assert [(e.name, list(e.dims)) for e in config.output] == [
        ("logits", [10]),
        ("activations", [64, 16, 16]),
        ("gradients", [1, 64, 16, 16]),
        ("target_ids", [1]),
        ("target_scores", [1]),
    ]
    assert not any(e.allow_ragged_batch for e in config.input)
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    (group,) = config.instance_group
    assert group.count == 1 and group.kind == mc.ModelInstanceGroup.KIND_AUTO
    # The python backend's config: the graph's own target dims, and targets batch raggedly.
    python = parse_config(folder / "configs" / "python.pbtxt")
    assert python.name == "digits" and python.backend == "python" and not python.platform
    assert [(e.name, list(e.dims), e.allow_ragged_batch) for e in python.input] == [
        ("images", [3, 64, 64], False),
        ("targets", [-1], True),
        ("target_kinds", [-1], True),
    ]
    assert [(e.name, list(e.dims)) for e in python.output] == [
        ("logits", [10]),
        ("activations", [64, 16, 16]),
        ("gradients", [-1, 64, 16, 16]),
        ("target_ids", [-1]),
        ("target_scores", [-1]),
    ]
    outputs = python.parameters["target_outputs"].string_value
    assert outputs == '["gradients", "target_ids", "target_scores"]'
    assert python.parameters["target_inputs"].string_value == '["target_kinds", "targets"]'
    assert python.dynamic_batching == config.dynamic_batching


def test_target_slots_and_the_ensemble(digits, tmp_path):
    from tritonclient.grpc import model_config_pb2 as mc

    write_triton_repository(digits, tmp_path, ensemble=True, target_slots=4, instance_count=2)
    config = parse_config(tmp_path / "digits" / "config.pbtxt")
    assert list(config.input[1].dims) == [4] and list(config.output[2].dims) == [4, 64, 16, 16]
    assert config.instance_group[0].count == 2
    preprocess = parse_config(tmp_path / "digits_preprocess" / "config.pbtxt")
    assert preprocess.backend == "python" and preprocess.max_batch_size == 16
    assert [
        (e.name, mc.DataType.Name(e.data_type), list(e.dims), e.allow_ragged_batch) for e in preprocess.input
    ] == [("encoded", "TYPE_UINT8", [-1], True)]
    assert [(e.name, list(e.dims)) for e in preprocess.output] == [("images", [3, 64, 64])]
    assert {k: v.string_value for k, v in preprocess.parameters.items()} == {
        "size": "64,64",
        "mean": "0.24,0.24,0.24",
        "std": "0.17,0.17,0.17",
    }
    assert (tmp_path / "digits_preprocess" / "1" / "model.py").is_file()
    for variant, model in (("config.pbtxt", config), ("configs/python.pbtxt", None)):
        ensemble = parse_config(tmp_path / "digits_encoded" / variant)
        model = model or parse_config(tmp_path / "digits" / "configs" / "python.pbtxt")
        assert ensemble.platform == "ensemble" and ensemble.max_batch_size == model.max_batch_size
        assert [e.name for e in ensemble.input] == ["encoded", "targets", "target_kinds"]
        # The ensemble's tensors are the composing models' own: same names, types and dims.
        assert list(ensemble.input[1].dims) == list(model.input[1].dims)
        assert [(e.name, e.data_type, list(e.dims)) for e in ensemble.output] == [
            (e.name, e.data_type, list(e.dims)) for e in model.output
        ]
        first, second = ensemble.ensemble_scheduling.step
        assert first.model_name == "digits_preprocess" and dict(first.output_map) == {"images": "images"}
        assert second.model_name == "digits"
        assert dict(second.input_map) == {
            "images": "images",
            "targets": "targets",
            "target_kinds": "target_kinds",
        }
        assert dict(second.output_map) == {e.name: e.name for e in model.output}
    with pytest.raises(InvalidArgumentError, match="exists; pass --force"):
        write_triton_repository(digits, tmp_path, ensemble=True)


def test_the_model_in_the_repository_runs_a_batch_with_the_configured_shapes(digits, tmp_path):
    import onnxruntime as ort

    folder = write_triton_repository(
        digits, tmp_path, name="cams", max_batch_size=4, instance_kind="KIND_CPU"
    )
    config = parse_config(folder / "config.pbtxt")
    assert config.name == "cams" and config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = config.max_batch_size
    feeds = {
        "images": np.zeros((batch, *config.input[0].dims), np.float32),
        "targets": np.full((batch, *config.input[1].dims), -1, np.int64),
        "target_kinds": np.zeros((batch, *config.input[2].dims), np.int64),
    }
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    for entry in config.output:
        shape = outputs[entry.name].shape
        assert shape[0] == batch
        assert all(d == -1 or d == s for d, s in zip(entry.dims, shape[1:], strict=True)), entry.name


def test_a_graph_without_a_dynamic_batch_dimension_is_not_batched():
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", 8])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, "h", 8])]
    graph = helper.make_model(
        helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", inputs, outputs)
    )
    config = triton_config(graph, "fixed")
    assert config.max_batch_size == 0 and config.preferred_batch_sizes == ()
    assert config.inputs[0].dims == (1, 3, -1, 8)
    text = config.to_pbtxt()
    assert "dynamic_batching" not in text
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(parsed.input[0].dims) == [1, 3, -1, 8] and parsed.max_batch_size == 0


def test_bad_settings_are_refused_and_nothing_is_half_written(digits, tmp_path):
    with pytest.raises(InvalidArgumentError, match="preferred_batch_sizes: must be in 1..4"):
        write_triton_repository(digits, tmp_path, max_batch_size=4, preferred_batch_sizes=[8])
    with pytest.raises(InvalidArgumentError, match="name: '../x'"):
        write_triton_repository(digits, tmp_path, name="../x")
    with pytest.raises(InvalidArgumentError, match="instance_kind"):
        write_triton_repository(digits, tmp_path, instance_kind="KIND_TPU")
    assert list(tmp_path.iterdir()) == []
    write_triton_repository(digits, tmp_path)
    with pytest.raises(InvalidArgumentError, match="exists; pass --force"):
        write_triton_repository(digits, tmp_path)
    write_triton_repository(digits, tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_cli_writes_a_repository_from_an_existing_model_directory(digits, tmp_path, capsys):
    out = tmp_path / "repo"
    code = main(["export", "--from-model", str(digits.path), "--triton-repository", str(out)])
    assert code == 0, capsys.readouterr().err
    assert parse_config(out / "digits" / "config.pbtxt").max_batch_size == 16
    assert main(["export", "--from-model", str(digits.path)]) == 2
    assert "--from-model: only used with --maps and/or --triton-repository" in capsys.readouterr().err
    argv = ["export", "--from-model", str(digits.path), "--triton-repository", str(out), "--random-weights"]
    assert main(argv) == 2
    assert "--weights, --random-weights and --out do not apply" in capsys.readouterr().err


def test_cli_export_with_a_triton_repository_writes_both(tmp_path, capsys):
    model, repo = tmp_path / "tiny", tmp_path / "repo"
    argv = ["export", "--module", "tests.export.nets:build_tiny", "--layer", "features", "--random-weights"]
    argv += ["--input-size", "3x16x16", "--out", str(model), "--triton-repository", str(repo)]
    argv += ["--triton-max-batch-size", "8"]
    assert main(argv) == 0, capsys.readouterr().err
    config = parse_config(repo / "tiny" / "config.pbtxt")
    assert config.max_batch_size == 8
    assert [e.name for e in config.input] == ["images", "targets", "target_kinds"]
    assert list(config.input[0].dims) == [3, 16, 16]
    explain = ModelDirectory(model).graph_path("explain")
    assert (repo / "tiny" / "1" / "model.onnx").read_bytes() == explain.read_bytes()
    # An existing repository entry is refused before anything is exported.
    again = [*argv[:-6], "--out", str(tmp_path / "other"), "--name", "tiny", "--triton-repository", str(repo)]
    assert main(again) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()


def test_cli_export_still_needs_weights_and_out(tmp_path, capsys):
    base = ["export", "--module", "tests.export.nets:build_tiny", "--layer", "features"]
    assert main([*base, "--out", str(tmp_path / "m")]) == 2
    assert "--weights: one of --weights FILE or --random-weights is required" in capsys.readouterr().err
    assert main([*base, "--random-weights"]) == 2
    assert "--out: the output model directory is required" in capsys.readouterr().err


def test_the_repository_serves_the_maps_graph_when_there_is_one(digits, tmp_path):
    from camserve.export.maps import MapsOptions, add_maps_graph

    copy = tmp_path / "digits"
    shutil.copytree(digits.path, copy)
    model = add_maps_graph(copy, MapsOptions(methods=("gradcam", "layercam")))
    folder = write_triton_repository(model, tmp_path / "repo", target_slots=2)
    assert (folder / "1" / "model.onnx").read_bytes() == model.graph_path("maps").read_bytes()
    graph = onnx.load(str(folder / "1" / "model.onnx"))
    config = parse_config(folder / "config.pbtxt")
    python = parse_config(folder / "configs" / "python.pbtxt")
    for parsed in (config, python):
        for entries, values in ((parsed.input, graph.graph.input), (parsed.output, graph.graph.output)):
            expected = graph_tensors(values)
            assert [e.name for e in entries] == [name for name, _, _ in expected]
            for entry, (name, _, dims) in zip(entries, expected, strict=True):
                assert compatible(list(entry.dims), dims[1:]), name
    # onnxruntime backend: two target slots on targets and every per-target output.
    assert [(e.name, list(e.dims)) for e in config.output] == [
        ("logits", [10]),
        ("target_ids", [2]),
        ("maps_gradcam", [2, 64, 64]),
        ("maps_layercam", [2, 64, 64]),
    ]
    assert [list(e.dims) for e in python.output] == [[10], [-1], [-1, 64, 64], [-1, 64, 64]]
    outputs = python.parameters["target_outputs"].string_value
    assert outputs == '["maps_gradcam", "maps_layercam", "target_ids"]'


class _FakeBackend:
    """The few names of ``triton_python_backend_utils`` that model.py uses, on numpy arrays (the
    real module exists only inside Triton's python backend)."""

    class Tensor:
        def __init__(self, name: str, array: np.ndarray) -> None:
            self.name, self.array = name, array

        @classmethod
        def from_dlpack(cls, name: str, capsule) -> _FakeBackend.Tensor:
            class Holder:  # np.from_dlpack takes an object with __dlpack__, not a bare capsule
                def __dlpack__(self, **_kw):
                    return capsule

                def __dlpack_device__(self):
                    return (1, 0)  # kDLCPU

            return cls(name, np.from_dlpack(Holder()).copy())

    class InferenceResponse:
        def __init__(self, output_tensors=None, error=None) -> None:
            self.tensors = {t.name: t.array for t in output_tensors or []}
            self.error = error

    class TritonError(Exception):
        pass

    @staticmethod
    def get_input_tensor_by_name(request, name: str) -> np.ndarray | None:
        return request.inputs.get(name)


class _Request:
    def __init__(self, **inputs: np.ndarray) -> None:
        self.inputs = inputs

    def requested_output_names(self) -> list[str]:
        return []


def test_the_python_backend_pads_every_target_input(tmp_path, monkeypatch):
    """Two requests of a dense model with 1 and 3 region targets (masks in target_data) share one
    run of model.py: each answer equals its request run alone by ONNX Runtime."""
    import importlib.util
    import json as json_module
    import sys

    import onnxruntime as ort
    import torch

    from camserve.export import export_model
    from tests.export.nets import TinySegmenter

    torch.manual_seed(5)
    model_dir = export_model(
        TinySegmenter().eval(),
        "body",
        (3, 8, 8),
        tmp_path / "seg",
        name="seg",
        architecture="test",
        mean=[0.0] * 3,
        std=[1.0] * 3,
        output="out",
        graphs=("explain",),
    )
    folder = write_triton_repository(model_dir, tmp_path / "repo")
    python = parse_config(folder / "configs" / "python.pbtxt")
    ragged = [(e.name, list(e.dims)) for e in python.input if e.allow_ragged_batch]
    assert ragged == [("targets", [-1]), ("target_kinds", [-1]), ("target_data", [-1, 64])]
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _FakeBackend)
    spec = importlib.util.spec_from_file_location("seg_model_py", folder / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    parameters = {key: {"string_value": value.string_value} for key, value in python.parameters.items()}
    backend = module.TritonPythonModel()
    backend.initialize(
        {
            "model_config": json_module.dumps({"parameters": parameters}),
            "model_repository": str(folder),
            "model_version": "1",
            "model_instance_kind": "CPU",
        }
    )
    rng = np.random.default_rng(6)
    requests = []
    for count in (1, 3):
        requests.append(
            _Request(
                images=rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
                targets=np.array([[2, -1, 0][:count]], np.int64),
                target_kinds=np.array([[3, 4, 3][:count]], np.int64),  # region, predicted_region, region
                target_data=(rng.random((1, count, 64)) < 0.5).astype(np.float32),
            )
        )
    answers = backend.execute(requests)
    session = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for request, answer in zip(requests, answers, strict=True):
        assert answer.error is None
        alone = dict(zip(names, session.run(None, request.inputs), strict=True))
        assert answer.tensors.keys() == alone.keys()
        for name, value in alone.items():
            np.testing.assert_allclose(answer.tensors[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert answers[1].tensors["gradients"].shape[1] == 3 and answers[0].tensors["target_scores"].shape == (
        1,
        1,
    )
