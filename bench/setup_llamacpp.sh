#!/usr/bin/env bash
# Build llama-cpp-python from its sdist into bench/.venv-llamacpp (the anchor of bench/decode.py).
# AMX stays off: some CPUs here list AMX but the kernel does not grant the tile state (ldtilecfg faults).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv-llamacpp"
python3 -m venv "$venv"
"$venv/bin/pip" install --upgrade pip >/dev/null
# GGML_NATIVE=OFF and the instruction sets this CPU lists, AMX never (see above); only the
# library: no multimodal tools, tests or examples (halves the build on 2 cores).
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
isa="-DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)"
isa+=" -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16)"
echo "llama.cpp ISA: $isa"
CMAKE_ARGS="-DGGML_NATIVE=OFF $isa -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=2 "$venv/bin/pip" install --no-cache-dir --force-reinstall --no-deps --no-binary llama-cpp-python llama-cpp-python
"$venv/bin/pip" install -q llama-cpp-python  # its pure-Python dependencies, from the wheel just built
"$venv/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
