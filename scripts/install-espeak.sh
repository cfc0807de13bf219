#!/usr/bin/env bash
# Install Debian's eSpeak NG: the spoken words of the known-answer audio demos
# (orchestrator/media/known.py). Idempotent: returns at once when espeak-ng is already there.
# Needs root (or sudo) and apt. Without it the audio demos fall back to a tone fact.
set -euo pipefail

if command -v espeak-ng >/dev/null 2>&1; then
  echo "espeak-ng: $(command -v espeak-ng) ($(espeak-ng --version 2>/dev/null | head -n 1 || echo 'version unknown'))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-espeak: no apt-get here; install eSpeak NG yourself (the audio demos fall back to tones)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-espeak: needs root (or sudo) for apt-get (the audio demos fall back to tones)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends espeak-ng
echo "espeak-ng: $(command -v espeak-ng) ($(espeak-ng --version 2>/dev/null | head -n 1))"
