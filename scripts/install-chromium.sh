#!/usr/bin/env bash
# Install Debian's Chromium for the report's browser tests (tests/test_browser.py).
# Idempotent: returns at once when a Chromium is already there. Needs root (or sudo) and apt.
set -euo pipefail

if [ -n "${MMDEMO_CHROMIUM:-}" ] && [ -x "$MMDEMO_CHROMIUM" ]; then
  echo "chromium: $MMDEMO_CHROMIUM (MMDEMO_CHROMIUM)"
  exit 0
fi
for name in chromium chromium-browser google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "chromium: $(command -v "$name") ($("$name" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium: no apt-get here; install Chromium yourself or set MMDEMO_CHROMIUM" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-chromium: needs root (or sudo) for apt-get" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
echo "chromium: $(command -v chromium) ($(chromium --version 2>/dev/null))"
