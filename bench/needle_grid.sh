#!/usr/bin/env bash
# The needle grid reported in docs/needle.md (2026-12-03), in priority order, on one thread (the
# other core ran the QA evaluation). Resumable: trials already in docs/needle_results.jsonl are
# skipped. About 2 hours on one AVX2 core; stop it any time and run `python -m bench.needle report`.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .venv/bin/activate
export PYTHONPATH=$PWD OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
run() { python -m bench.needle run --dtype float32 "$@"; }
run --methods rope --lengths 8192 --depths 0.9 0.5 0.1
run --methods rope --lengths 16384 --depths 0.5
run --methods dca_s4 --lengths 16384 --depths 0.5
run --methods yarn --lengths 8192 --depths 0.9 0.5 0.1
run --methods dca --lengths 8192 --depths 0.5
run --methods dca_s4_notemp --lengths 16384 --depths 0.5
run --methods yarn --lengths 16384 --depths 0.5
run --methods dca --lengths 16384 --depths 0.5
python -m bench.needle report
