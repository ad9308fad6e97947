#!/usr/bin/env bash
# GPU checks for a lent CUDA machine (an H200 is the target). About 3-6 minutes:
#   1. the attention-backend parity tests on CUDA in bf16 (sdpa, and flash when flash-attn imports)
#      plus the DCA and YaRN tests (CPU reference paths, a few seconds);
#   2. flash against sdpa on Qwen2-7B attention shapes, and a DCA prefill of as many tokens as
#      fit (131072 aimed) on a random Qwen2-7B-shaped model: peak memory and tokens/s.
# Numbers go to $OUT (when the runner sets it) or bench/out. Nothing is downloaded.
# Usage: bash bench/gpu_check.sh [--tokens N] [extra bench/gpu_check.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/out}"
mkdir -p "$OUT_DIR"
PYTHON="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  PYTHON=.venv/bin/python
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

{
  echo "== environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  "$PYTHON" -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>&1 | tail -1
} 2>&1 | tee "$OUT_DIR/gpu_check_env.txt"

status=0
echo "== parity tests on CUDA (bf16)"
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  timeout 300 "$PYTHON" -m pytest -q -p no:cacheprovider tests/model_core/test_attention_backends.py \
    tests/model_core/test_dca.py 2>&1 | tee "$OUT_DIR/gpu_check_tests.txt" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "pytest is not installed here: skipping the test files (gpu_check.py still compares backends)"
fi

echo "== backends and DCA prefill"
timeout 420 "$PYTHON" bench/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/gpu_check_run.txt" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
echo "== done (status $status); numbers in $OUT_DIR/gpu_check.json"
exit $status
