#!/usr/bin/env bash
# Build llama-cpp-python from its sdist into bench/.venv-llamacpp (the anchor of bench/decode.py).
# AMX stays off: this CPU lists AMX but the kernel does not grant the tile state (ldtilecfg faults).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llamacpp"
python3 -m venv "$venv"
"$venv/bin/pip" install --upgrade pip >/dev/null
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
  nice -n 10 "$venv/bin/pip" install --no-cache-dir --no-binary llama-cpp-python llama-cpp-python
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
