#!/usr/bin/env bash
# `make install`: mmdemo (editable) and its dev tools into VENV, with uv when it
# can be had (pip otherwise); see scripts/pyinstall.sh.
#
#   usage: scripts/install-venv.sh [VENV] [SPEC]   (defaults: .venv, -e .[dev])
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
SPEC=${2:-.[dev]}
source scripts/pyinstall.sh
pyi_init
echo "[install] $VENV: mmdemo $SPEC with $(pyi_tool)"
pyi_venv "$VENV"
pyi_install "$VENV/bin/python" --compile -e "$SPEC"
# --compile covers site-packages, not the editable source: compile it too, or every `mmdemo` start
# recompiles it where PYTHONDONTWRITEBYTECODE is set (~0.1 s a run on this machine).
"$VENV/bin/python" -m compileall -q orchestrator >/dev/null || true
