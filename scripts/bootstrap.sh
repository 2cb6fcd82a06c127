#!/usr/bin/env bash
# Sets up a fresh checkout: .venv with camserve (editable) and its test tools. Idempotent.
#   --test-tools  also the system tools some tests drive (Debian's docker-compose, nginx, the Go / C++ /
#                 Java client toolchains and Chromium, via apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# One ONNX Runtime (pyproject.toml): on Linux x86_64 the GPU wheel, which writes the same module as the
# CPU wheel. A venv made before holds the CPU one: remove both so the install leaves only the GPU one.
if .venv/bin/python - <<'PYEOF' 2>/dev/null; then
import importlib.metadata, platform, sys
importlib.metadata.version("onnxruntime")  # raises when the CPU wheel is absent
sys.exit(0 if (sys.platform, platform.machine()) == ("linux", "x86_64") else 1)
PYEOF
  .venv/bin/python -m pip uninstall -y -q onnxruntime onnxruntime-gpu
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,ray]'
# tritonserver 2.51 + its python backend for tests/export/test_triton_server.py; --no-deps: the wheel
# pins numpy<2 and protobuf<7 (via tritonclient[grpc]), and camserve uses only its binary (pyproject.toml)
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps 'nvidia-pytriton==0.7.0'
if [ "${1:-}" = "--test-tools" ]; then
  missing=()
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  # tests/clients: the Go, C++ and Java clients' toolchains (offline builds) and Chromium (clients/onnx's page).
  # The Go protobuf 1.5 API is named because golang-google-grpc-dev alone pulls in 1.3, which cannot read
  # protoc-gen-go's stubs.
  for pkg in golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev \
      protobuf-compiler protobuf-compiler-grpc libgrpc++-dev cmake g++ \
      default-jdk-headless libgrpc-java libprotobuf-java protobuf-compiler-grpc-java-plugin libnetty-java \
      libnetty-tcnative-java libnetty-tcnative-jni libperfmark-java libgoogle-gson-java \
      libgeronimo-annotation-1.3-spec-java chromium; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
