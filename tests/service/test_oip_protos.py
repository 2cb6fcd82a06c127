"""camserve's Open Inference Protocol stubs: checked in fresh from scripts/gen_protos.py, importable as
camserve.inference, and wire-compatible with the spec as tritonclient carries it (same package, service,
message names, field numbers, types and enum values for everything camserve declares).

camserve's ``inference`` stubs are never imported into this process (tritonclient's are, and both
register the same names in protobuf's default pool): they are read into a private descriptor pool, or
imported in a child process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

ROOT = Path(__file__).resolve().parents[2]
STUB_DIR = ROOT / "proto" / "camserve" / "inference"
PROTO = "camserve/inference/grpc_service.proto"


def test_checked_in_inference_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted((tmp_path / "camserve" / "inference").glob("*_pb2*.py*"))
    names = ["grpc_service_pb2.py", "grpc_service_pb2.pyi", "grpc_service_pb2_grpc.py"]
    assert [p.name for p in fresh] == names
    assert sorted(p.name for p in STUB_DIR.glob("*_pb2*.py*")) == names
    for new in fresh:
        old = STUB_DIR / new.name
        assert old.read_text() == new.read_text(), (
            f"{old.relative_to(ROOT)} is stale: run `python scripts/gen_protos.py` and commit the result"
        )


def test_stubs_import_as_camserve_inference_and_the_server_module_does_not_load_them() -> None:
    code = (
        "import sys\n"
        "import camserve.service.server\n"
        "assert 'camserve.inference.grpc_service_pb2' not in sys.modules\n"
        "from camserve.inference import grpc_service_pb2 as m, grpc_service_pb2_grpc as g\n"
        "assert g.camserve_dot_inference_dot_grpc__service__pb2 is m\n"
        "service = m.DESCRIPTOR.services_by_name['GRPCInferenceService']\n"
        "print(m.__file__, m.DESCRIPTOR.package, service.full_name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    path, package, service = done.stdout.split()
    assert Path(path).resolve().parent == STUB_DIR
    assert (package, service) == ("inference", "inference.GRPCInferenceService")


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pool.DescriptorPool:
    """camserve's grpc_service.proto compiled into a private pool."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("descriptors") / "set.pb"
    status = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"--descriptor_set_out={out}", PROTO])
    assert status == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return pool


def _field_signature(field: FieldDescriptor) -> tuple:
    target = field.message_type or field.enum_type
    return (field.number, field.type, field.is_repeated, target.full_name if target else None)


def _compare_message(mine: Descriptor, theirs: Descriptor) -> None:
    for field in mine.fields:
        assert field.name in theirs.fields_by_name, f"{mine.full_name}.{field.name} is not in the spec"
        spec = theirs.fields_by_name[field.name]
        assert _field_signature(field) == _field_signature(spec), f"{mine.full_name}.{field.name}"
        if field.containing_oneof is not None:
            assert spec.containing_oneof is not None
            assert field.containing_oneof.name == spec.containing_oneof.name
    for nested in mine.nested_types:
        _compare_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in mine.enum_types:
        _compare_enum(enum, theirs.enum_types_by_name[enum.name])


def _compare_enum(mine: EnumDescriptor, theirs: EnumDescriptor) -> None:
    assert {v.name: v.number for v in mine.values}.items() <= {
        v.name: v.number for v in theirs.values
    }.items()


def test_every_declared_name_and_number_is_the_specs(ours: descriptor_pool.DescriptorPool) -> None:
    from tritonclient.grpc import model_config_pb2, service_pb2  # Triton's copy of the spec

    spec = descriptor_pool.Default()
    mine = ours.FindFileByName(PROTO)
    assert mine.package == "inference"
    assert service_pb2.DESCRIPTOR.package == model_config_pb2.DESCRIPTOR.package == "inference"
    for name, message in mine.message_types_by_name.items():
        _compare_message(message, spec.FindMessageTypeByName(f"inference.{name}"))
    for name, enum in mine.enum_types_by_name.items():
        _compare_enum(enum, spec.FindEnumTypeByName(f"inference.{name}"))
    service = mine.services_by_name["GRPCInferenceService"]
    spec_service = spec.FindServiceByName("inference.GRPCInferenceService")
    for method in service.methods:
        theirs = spec_service.methods_by_name[method.name]
        assert method.input_type.full_name == theirs.input_type.full_name, method.name
        assert method.output_type.full_name == theirs.output_type.full_name, method.name
        assert (method.client_streaming, method.server_streaming) == (
            theirs.client_streaming,
            theirs.server_streaming,
        ), method.name
    assert [m.name for m in service.methods] == [
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
    ]
    # The fields the protocol's core relies on.
    request = mine.message_types_by_name["ModelInferRequest"]
    assert request.fields_by_name["raw_input_contents"].number == 7
    assert mine.message_types_by_name["ModelInferResponse"].fields_by_name["raw_output_contents"].number == 6
