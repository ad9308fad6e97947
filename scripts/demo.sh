#!/usr/bin/env bash
# Set up and run the main job on this machine: start the service (Redis if none answers, a worker
# and the API), ingest real documents (the license texts under /usr/share/common-licenses), ask a
# question and print the answer with its citations; then stop what it started.
#   PORT=8000 (default) · LONGCTX_MODEL_PATH=/models/Qwen2-7B-Instruct for a real Qwen2 checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
port=${PORT:-8000}
export LONGCTX_DATA_DIR=${LONGCTX_DATA_DIR:-$PWD/data/demo}
log=$(mktemp)
longctx up --port "$port" >"$log" 2>&1 &
up=$!
trap 'kill -INT $up 2>/dev/null; wait $up 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "ready at" "$log" && break
  kill -0 $up 2>/dev/null || { cat "$log"; echo "the service did not start" >&2; exit 1; }
  sleep 0.5
done
grep -m1 "ready at" "$log"
longctx demo --url "http://127.0.0.1:$port" "$@"
