# Sourced by the install scripts: create venvs and install into them with uv,
# falling back to pip when uv cannot be had.
#
#   pyi_init                  find or bootstrap uv; read pip's configuration
#   pyi_find_uv               only find or bootstrap uv (into PYI_UV); false when it cannot be had
#   pyi_venv VENV             create VENV (unless it has a python already)
#   pyi_install PY ARGS...    install into the venv of interpreter PY
#   pyi_uninstall PY PKGS...  uninstall from it
#   pyi_tool                  "uv X.Y.Z" or "pip" (for log lines)
#
# env: PYTHON (default python3); MMDEMO_NO_UV=1 forces pip; MMDEMO_UV_HOME is
# where uv is bootstrapped when it is not on PATH (default ~/.cache/mmdemo/uv).
#
# uv does not read pip's configuration, so the find-links directories and
# index URLs pip is configured with (pip.conf or PIP_* variables, both as
# `pip config list` shows them) are passed to uv explicitly.  With more than
# one index, uv's default "first index that has the package" would pin e.g.
# numpy to whatever an extra index holds; pip picks the best version across
# all of them, and so does uv with --index-strategy unsafe-best-match (always
# passed, so uv resolves as the pip fallback would, extra indexes given by the
# caller included).

PYTHON=${PYTHON:-python3}
PYI_UV=""
PYI_UV_ARGS=()
PYI_PIP_CONFIG=""

_pyi_log() { echo "[pyinstall] $*" >&2; }

# uv on PATH, else one bootstrapped earlier, else bootstrap it now into its own
# small venv under the user's cache: shared by every clone, works where the
# system Python refuses `pip install --user` (PEP 668), touches no site-packages.
pyi_find_uv() {
  [[ ${MMDEMO_NO_UV:-0} == 1 ]] && return 1
  local home=${MMDEMO_UV_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdemo/uv}
  if command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1; then
    PYI_UV=$(command -v uv)
  elif [[ -x "$home/bin/uv" ]]; then
    PYI_UV="$home/bin/uv"
  else
    _pyi_log "uv not found; installing it from PyPI into $home"
    if "$PYTHON" -m venv "$home" >/dev/null 2>&1 &&
       "$home/bin/python" -m pip install --quiet --disable-pip-version-check uv >/dev/null 2>&1 &&
       [[ -x "$home/bin/uv" ]]; then
      PYI_UV="$home/bin/uv"
    else
      _pyi_log "could not install uv; falling back to pip"
      return 1
    fi
  fi
}

# Values of pip configuration keys ending in $1 (e.g. ".find-links"), one per line, from
# `pip config list` as read once into PYI_PIP_CONFIG (each pip start costs ~0.4 s).
_pyi_pip_config() {
  printf '%s\n' "$PYI_PIP_CONFIG" | while IFS= read -r line; do
    local key=${line%%=*} val=${line#*=}
    [[ $key == *"$1" ]] || continue
    val=${val#\'} val=${val%\'}
    for v in $val; do echo "$v"; done
  done | awk '!seen[$0]++'
}

_pyi_uv_args() {
  PYI_UV_ARGS=()
  PYI_PIP_CONFIG=$("$PYTHON" -m pip config list 2>/dev/null || true)
  local v
  while IFS= read -r v; do [[ -n $v ]] && PYI_UV_ARGS+=(--find-links "$v"); done < <(_pyi_pip_config .find-links)
  # pip merges every index's files for a version and takes the most specific wheel; uv
  # takes the version's files from the first index listing it.  So pip's primary index
  # goes first (here: PyPI's manylinux soundfile, not an extra index's pure-Python one
  # that lacks libsndfile), then pip's extra indexes in pip's order.
  local primary extras
  primary=$(_pyi_pip_config .index-url | head -n1)
  extras=$(_pyi_pip_config .extra-index-url)
  primary=${primary:-https://pypi.org/simple}
  PYI_UV_ARGS+=(--index-url "$primary")
  if [[ -n $extras ]]; then
    PYI_UV_ARGS+=(--extra-index-url "$primary")
    while IFS= read -r v; do PYI_UV_ARGS+=(--extra-index-url "$v"); done <<<"$extras"
  fi
  local cert
  cert=$(_pyi_pip_config .cert | head -n1)
  if [[ -n $cert && -z ${SSL_CERT_FILE:-} ]]; then export SSL_CERT_FILE=$cert; fi
  return 0
}

pyi_init() {
  if pyi_find_uv; then _pyi_uv_args; else PYI_UV=""; fi
}

pyi_tool() { if [[ -n $PYI_UV ]]; then "$PYI_UV" --version; else echo pip; fi; }

pyi_venv() {
  [[ -x "$1/bin/python" ]] && return 0
  if [[ -n $PYI_UV ]]; then
    "$PYI_UV" venv --quiet --python "$PYTHON" "$1"
  else
    "$PYTHON" -m venv "$1"
  fi
}

# ARGS are pip's: options both accept (--no-deps, --dry-run, --extra-index-url X, -e),
# --force-reinstall (uv: --reinstall) and --compile (uv: --compile-bytecode).  pip
# always compiles; uv compiles only when asked, and where PYTHONDONTWRITEBYTECODE is
# set (as on this machine) an uncompiled vLLM recompiles its imports in every process.
pyi_install() {
  local py=$1; shift
  if [[ -n $PYI_UV ]]; then
    local args=() a
    for a in "$@"; do
      case $a in --force-reinstall) a=--reinstall ;; --compile) a=--compile-bytecode ;; esac
      args+=("$a")
    done
    set -- "${args[@]}"
    "$PYI_UV" pip install --quiet --python "$py" --index-strategy unsafe-best-match "${PYI_UV_ARGS[@]}" "$@"
  else
    "$py" -m pip install --quiet --disable-pip-version-check --progress-bar off "$@"
  fi
}

pyi_uninstall() {
  local py=$1; shift
  if [[ -n $PYI_UV ]]; then
    "$PYI_UV" pip uninstall --quiet --python "$py" "$@"
  else
    "$py" -m pip uninstall --quiet --disable-pip-version-check -y "$@"
  fi
}
