# camserve explanation service image.
#   CPU: docker build -t camserve .
#   GPU: docker build -t camserve:gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 .
#   (torch's cu130 wheel and the onnxruntime-gpu wheel camserve installs on Linux x86_64 are both
#   CUDA 13: one CUDA major version, driver R580 or newer on the host; the GPU build ends with
#   `python -m camserve.doctor --build`'s check of that install, see docs/kernels.md)
#   GPU check in the image: docker run --rm --gpus all camserve:gpu python /src/bench/gpu_check.py
# Serves every model directory mounted under /models (see docker-compose.yml); with none mounted,
# set CAMSERVE_SERVICE_MODELS="" to serve the embedded default model, which is exported at build time.
FROM python:3.11-slim

# optional extras, e.g. EXTRAS=ray
ARG EXTRAS=""
# CPU-only torch wheels keep the image small; the GPU build points this at torch's CUDA 13 index
# (cu130), the CUDA major of onnxruntime-gpu 1.28-1.31. Any other index than .../cpu is a GPU build.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CAMSERVE_RUNTIME_CACHE_DIR=/opt/camserve/cache \
    CAMSERVE_SERVICE_HOST=0.0.0.0 \
    CAMSERVE_SERVICE_PORT=50051 \
    CAMSERVE_SERVICE_MODELS=/models \
    HOME=/home/camserve \
    TRITON_CACHE_DIR=/home/camserve/.triton/cache

# Triton builds its kernel launcher with a C compiler and Python.h on first use (the base image has
# Python.h under /usr/local/include): gcc and libc headers in the GPU image only.
RUN case "${TORCH_INDEX_URL}" in */cpu) ;; *) \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/* ;; esac

WORKDIR /src
COPY pyproject.toml README.md ./
COPY camserve camserve
COPY export export
COPY kernels kernels
COPY service service
COPY proto proto
COPY bench bench
# One ONNX Runtime: onnxruntime-gpu on linux/amd64 (it runs CPU sessions too), onnxruntime elsewhere.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".${EXTRAS:+[${EXTRAS}]}" \
    && pip check \
    && case "${TORCH_INDEX_URL}" in */cpu) ;; *) python -m camserve.doctor --build ;; esac \
    && python -c "from camserve.default_model import default_model_dir; default_model_dir('/opt/camserve/cache')" \
    && useradd --system --uid 10001 --create-home --home-dir /home/camserve camserve \
    && mkdir -p /models "${TRITON_CACHE_DIR}" \
    && chown -R camserve /opt/camserve /home/camserve

USER camserve
WORKDIR /home/camserve
EXPOSE 50051
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "camserve.service.healthcheck"]
CMD ["camserve", "serve"]
