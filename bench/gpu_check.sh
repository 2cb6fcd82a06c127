#!/usr/bin/env bash
# The GPU check in one command on a bare CUDA machine with this repository copied in (Linux x86_64,
# NVIDIA driver R580 or newer, Python 3.11+): a venv, camserve with its ONNX Runtime (onnxruntime-gpu,
# CUDA 13) and PyPI's torch (CUDA 13), then bench/gpu_check.py's table. Arguments go to gpu_check.py.
#   bash bench/gpu_check.sh               # GPU_CHECK_VENV (default .venv-gpu-check) is made if missing
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
venv=${GPU_CHECK_VENV:-.venv-gpu-check}
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e .
"$venv/bin/python" -m camserve.doctor
exec "$venv/bin/python" bench/gpu_check.py --since "$start" "$@"
