#!/usr/bin/env bash
# `make install-vllm`: the official vLLM into VENV (default .venv-vllm), for the GPUs of this box.
#
# NVIDIA (or no AMD tool found): vLLM's PyPI wheel, which is the CUDA build.
# AMD (amd-smi or rocm-smi on PATH, or /dev/kfd): PyPI's wheel is CUDA-only and fails on AMD GPUs
# (`libcudart.so: cannot open shared object file`), so this says how to get vLLM on ROCm, from vLLM's
# ROCm install docs (docs/getting_started/installation/gpu.rocm.inc.md), and installs nothing;
# MMDEMO_VLLM_ROCM=wheels installs vLLM's ROCm wheels (Python 3.12 only) with uv instead.
# MMDEMO_PLATFORM=cuda|rocm overrides the detection.
set -euo pipefail

VENV=${1:-.venv-vllm}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROCM_INDEX=https://wheels.vllm.ai/rocm/
ROCM_IMAGE=vllm/vllm-openai-rocm:latest

platform=${MMDEMO_PLATFORM:-}
if [[ -z $platform ]]; then
  if command -v amd-smi >/dev/null 2>&1 || command -v rocm-smi >/dev/null 2>&1 || [[ -e /dev/kfd ]]; then
    platform=rocm
  else
    platform=cuda
  fi
fi

rocm_help() {
  cat <<EOF
[install-vllm] AMD GPU (ROCm) found: PyPI's vllm wheel is the CUDA build and does not run here.
Get vLLM for ROCm one of two ways (vLLM's ROCm install docs):
  1. the official ROCm image, whose entrypoint is \`vllm serve\`:
       docker run --rm --group-add=video --cap-add=SYS_PTRACE --security-opt seccomp=unconfined \\
         --device /dev/kfd --device /dev/dri --ipc=host -p 8000:8000 \\
         -v ~/.cache/huggingface:/root/.cache/huggingface --env HF_TOKEN=\$HF_TOKEN \\
         $ROCM_IMAGE --model MODEL ...
     then run mmdemo's demos against it: mmdemo run PROFILE --base-url http://127.0.0.1:8000/v1
  2. vLLM's ROCm wheels (Python 3.12 only; ROCm 7.x, glibc >= 2.35), into $VENV:
       MMDEMO_VLLM_ROCM=wheels make install-vllm
     which runs: uv venv --python 3.12 $VENV && uv pip install --python $VENV/bin/python 'vllm[audio]' --extra-index-url $ROCM_INDEX
EOF
}

if [[ $platform == rocm ]]; then
  if [[ ${MMDEMO_VLLM_ROCM:-} != wheels ]]; then
    rocm_help
    exit 2
  fi
  # shellcheck source=scripts/pyinstall.sh
  source "$here/pyinstall.sh"
  if ! pyi_find_uv; then
    echo "[install-vllm] vLLM's ROCm wheels need uv (pip mixes the ROCm index with PyPI's CUDA wheel)" >&2
    exit 2
  fi
  "$PYI_UV" venv --quiet --allow-existing --python 3.12 "$VENV"
  # uv's default index strategy asks the extra index first, so the ROCm wheel wins over PyPI's.
  "$PYI_UV" pip install --python "$VENV/bin/python" 'vllm[audio]' --extra-index-url "$ROCM_INDEX"
  "$VENV/bin/python" -c "import importlib.metadata as m; print('[install-vllm] vLLM', m.version('vllm'), 'for ROCm')"
  exit 0
fi

# shellcheck source=scripts/pyinstall.sh
source "$here/pyinstall.sh"
pyi_init
pyi_venv "$VENV"
pyi_install "$VENV/bin/python" "vllm[audio]"
