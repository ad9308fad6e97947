#!/usr/bin/env bash
# Set up and run the main job: answer a question about a text with the offline default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
longctx generate --chat --max-new-tokens 48 \
  --system "Answer the question using only the given text." \
  --prompt "Text: The Eiffel Tower was completed in 1889. Question: When was the tower completed?"
