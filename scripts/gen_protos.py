#!/usr/bin/env python
"""Generate the Python gRPC stubs for proto/camserve/v1/*.proto and proto/camserve/inference/*.proto
(checked in next to the .proto files).

    python scripts/gen_protos.py               # regenerate into proto/camserve/{v1,inference}/
    python scripts/gen_protos.py --out DIR     # write DIR/camserve/{v1,inference}/*_pb2*.py(i) instead
                                               # (staleness test)

The stubs import each other as ``camserve.v1.<name>_pb2`` and ``camserve.inference.<name>_pb2``, which
is where pyproject.toml maps proto/camserve/v1/ and proto/camserve/inference/ (the Open Inference
Protocol, proto package ``inference``). Regenerate with the grpcio-tools version pinned in the ``dev``
extra: the generated files name it, and tests/service/test_protos.py fails when the checked-in ones differ.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent.parent / "proto"
PACKAGE_DIRS = (Path("camserve") / "v1", Path("camserve") / "inference")


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    """The .proto files, relative to ``root`` (protoc derives import paths from these)."""
    return sorted(p.relative_to(root) for d in PACKAGE_DIRS for p in (root / d).glob("*.proto"))


def generate(out: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc on every .proto file; returns the files written under ``out``."""
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    files = proto_files(root)
    if not files:
        raise SystemExit(f"no .proto files under {', '.join(str(root / d) for d in PACKAGE_DIRS)}")
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    argv = [
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(str(f) for f in files),
    ]
    status = protoc.main(argv)
    if status != 0:
        raise SystemExit(f"protoc failed with status {status}")
    return sorted(p for d in PACKAGE_DIRS for p in (out / d).glob("*_pb2*.py*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="output root (default: proto/)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
