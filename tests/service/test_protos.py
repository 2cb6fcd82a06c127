"""The checked-in Python stubs are what scripts/gen_protos.py generates from the .proto files, and they
import as camserve.v1.*."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUB_DIR = ROOT / "proto" / "camserve" / "v1"


def test_checked_in_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    fresh = sorted((tmp_path / "camserve" / "v1").glob("*_pb2*.py*"))
    assert [p.name for p in fresh] == ["camserve_pb2.py", "camserve_pb2.pyi", "camserve_pb2_grpc.py"]
    checked_in = sorted(STUB_DIR.glob("*_pb2*.py*"))
    assert [p.name for p in checked_in] == [p.name for p in fresh], (
        "stub files differ from a fresh generation"
    )
    for new in fresh:
        old = STUB_DIR / new.name
        assert old.read_text() == new.read_text(), (
            f"{old.relative_to(ROOT)} is stale: run `python scripts/gen_protos.py` and commit the result"
        )


def test_stubs_import_through_the_camserve_v1_package() -> None:
    from camserve.v1 import camserve_pb2, camserve_pb2_grpc

    assert camserve_pb2_grpc.camserve_dot_v1_dot_camserve__pb2 is camserve_pb2
    assert Path(camserve_pb2.__file__).resolve().parent == STUB_DIR
    assert camserve_pb2.DESCRIPTOR.package == "camserve.v1"
    service = camserve_pb2.DESCRIPTOR.services_by_name["ExplainService"]
    assert [m.name for m in service.methods] == ["Explain", "ExplainStream", "ListModels", "GetModel"]


@pytest.mark.parametrize("module", ["camserve.v1.camserve_pb2", "camserve.v1.camserve_pb2_grpc"])
def test_generated_modules_are_found_where_pyproject_maps_camserve_v1(module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).resolve().parent == STUB_DIR
