#!/usr/bin/env bash
# Install Debian's podman for the container tests (marker `container`), and the configuration this
# machine needs, only where it needs one.
#
#   usage: scripts/install-podman.sh [CONF]     (default: .containers/containers.conf)
#
# Idempotent. podman (and runc) come from apt when missing; needs root (or sudo) for that. Then a
# probe container runs with what mmdemo uses (--init, a loopback port, slirp4netns reaching the
# host's loopback, a read-only bind mount), first with podman's own configuration. Only when that
# fails is CONF written ([engine] runtime = "runc": crun fails on hybrid cgroups; [containers]
# default_ulimits = []: else runc fails on setrlimit RLIMIT_NOFILE, as in a container like this CI
# machine's) and the probe run again with CONTAINERS_CONF=CONF. Nothing under /etc is touched.
# The Makefile points CONTAINERS_CONF at CONF when the file exists; remove it to go back.
set -euo pipefail

CONF=${1:-.containers/containers.conf}
PROBE=localhost/mmdemo/probe:latest
log() { echo "[install-podman] $*"; }
die() { echo "[install-podman] ERROR: $*" >&2; exit 1; }

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "no podman here and no apt-get: install podman and runc yourself"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "needs root (or sudo) for apt-get"
    SUDO="sudo"
  fi
  export DEBIAN_FRONTEND=noninteractive
  log "installing podman and runc with apt-get"
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends podman runc slirp4netns catatonit uidmap
fi

WORK=$(mktemp -d)
cleanup() {
  rm -rf "$WORK"
  podman rmi -f "$PROBE" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mkdir -p "$WORK/root/usr" "$WORK/root/etc" "$WORK/root/proc" "$WORK/root/sys" "$WORK/root/dev"
for d in bin lib lib64 sbin; do if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$WORK/root/$d"; fi; done
# Importing an image needs no runtime: the one probe image serves both tries.
tar -C "$WORK/root" -c . | podman import - "$PROBE" >/dev/null 2>"$WORK/import.log" ||
  { cat "$WORK/import.log" >&2; die "podman import of a probe image failed"; }

# True when podman (with the configuration in $1, or its own when empty) runs the probe container.
probe() {
  ( if [ -n "$1" ]; then export CONTAINERS_CONF=$1; else unset CONTAINERS_CONF; fi
    podman run --rm --init --network slirp4netns:allow_host_loopback=true -p 127.0.0.1::8000 \
      -v /usr:/usr:ro "$PROBE" /usr/bin/true ) >"$WORK/probe.log" 2>&1
}

if probe ""; then
  log "podman $(podman --version | awk '{print $3}') runs containers with its own configuration"
  if [ -f "$CONF" ]; then
    rm -f "$CONF"
    log "removed $CONF: no longer needed"
  fi
  exit 0
fi
log "podman's own configuration fails here: $(tail -n 1 "$WORK/probe.log")"
mkdir -p "$(dirname "$CONF")"
cat > "$CONF" <<'EOF'
# Written by scripts/install-podman.sh because podman's own configuration failed a probe container
# on this machine. Used through CONTAINERS_CONF (the Makefile sets it while this file exists).
[containers]
# runc and crun fail on `setrlimit RLIMIT_NOFILE` when the default ulimits exceed this host's limit.
default_ulimits = []

[engine]
# crun fails here with "cgroups in hybrid mode not supported".
runtime = "runc"
EOF
CONF=$(cd "$(dirname "$CONF")" && pwd)/$(basename "$CONF")
if ! probe "$CONF"; then
  cat "$WORK/probe.log" >&2
  die "podman fails a probe container even with $CONF"
fi
log "podman $(podman --version | awk '{print $3}') runs containers with $CONF: export CONTAINERS_CONF=$CONF"
