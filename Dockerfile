# camserve explanation service image.
#   CPU: docker build -t camserve .
#   GPU: docker build -t camserve:gpu --build-arg EXTRAS=gpu --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   (torch's cu128 wheel and onnxruntime-gpu's PyPI wheel are both CUDA 12: one CUDA major version;
#   the build ends with `python -m camserve.runtime`'s check of that install, see docs/kernels.md)
# Serves every model directory mounted under /models (see docker-compose.yml); with none mounted,
# set CAMSERVE_SERVICE_MODELS="" to serve the embedded default model, which is exported at build time.
FROM python:3.11-slim

ARG EXTRAS=""
# CPU-only torch wheels keep the image small; the GPU build points this at a CUDA wheel index.
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

# Triton builds its kernel launcher with a C compiler on first use (the Python headers are in the
# base image): gcc and libc headers in the GPU image only.
RUN case ",${EXTRAS}," in *,gpu,*) \
      apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/* ;; esac

WORKDIR /src
COPY pyproject.toml README.md ./
COPY camserve camserve
COPY export export
COPY kernels kernels
COPY service service
COPY proto proto
# onnxruntime (a base dependency) and onnxruntime-gpu (the gpu extra) install the same
# `onnxruntime` module; in the GPU image the CPU wheel is removed and the GPU wheel's files restored.
RUN pip install --extra-index-url "${TORCH_INDEX_URL}" ".${EXTRAS:+[${EXTRAS}]}" \
    && case ",${EXTRAS}," in *,gpu,*) \
         pip uninstall -y onnxruntime \
         && pip install --force-reinstall --no-deps "onnxruntime-gpu>=1.20" \
         && python -m camserve.runtime --build ;; esac \
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
