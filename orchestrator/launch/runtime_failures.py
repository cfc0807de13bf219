"""The container runtime's own failures: `podman run` / `docker run` that never started the container.

When runc or crun cannot create the container, `podman run` exits 126 (docker 125-127) before vLLM
runs a line; its reason is the runtime's last line in the server log. Each known reason here becomes
a diagnosis with what to do, e.g. the RLIMIT_NOFILE refusal inside an unprivileged container (this
project's CI), which `make install-podman` answers with .containers/containers.conf for CONTAINERS_CONF.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from orchestrator.vllm.logscan import Diagnosis

# Where `make install-podman` (scripts/install-podman.sh) writes podman's configuration for this machine.
PROJECT_CONF = Path(__file__).resolve().parents[2] / ".containers" / "containers.conf"

_RLIMIT = re.compile(
    r"error setting rlimits?|setting rlimits? for ready process|setrlimit `?RLIMIT_\w+`?", re.IGNORECASE
)
_HYBRID = re.compile(r"cgroups in hybrid mode not supported", re.IGNORECASE)
_DOCKER = re.compile(r"^docker: |Error response from daemon", re.IGNORECASE)


def diagnose_runtime(
    lines: Iterable[str], environ: Mapping[str, str], conf: Path = PROJECT_CONF
) -> Diagnosis | None:
    """The runtime's own failure in a log's lines, with the fix for this machine; None when none is known."""
    text = list(lines)
    docker = any(_DOCKER.search(line) for line in text)
    if any(_RLIMIT.search(line) for line in text):
        message = (
            "the container runtime cannot set the container's open-files limit (RLIMIT_NOFILE): its default "
            "ulimits exceed what this machine allows"
        )
        if docker:
            return Diagnosis(
                message, "lower the daemon's default-ulimits (nofile) in /etc/docker/daemon.json"
            )
        return Diagnosis(message, _conf_hint(environ, conf, "default_ulimits = []"))
    if any(_HYBRID.search(line) for line in text):
        return Diagnosis(
            "crun cannot run containers on this machine's hybrid cgroups",
            _conf_hint(environ, conf, 'runtime = "runc"'),
        )
    return None


def _conf_hint(environ: Mapping[str, str], conf: Path, setting: str) -> str:
    """Where podman's configuration should come from: the one `make install-podman` wrote, by CONTAINERS_CONF."""
    current = environ.get("CONTAINERS_CONF")
    if current:
        return (
            f"CONTAINERS_CONF={current} is set but does not fix it: it needs `{setting}` "
            f"(as in the one `make install-podman` writes, {conf})"
        )
    if conf.is_file():
        return (
            f"CONTAINERS_CONF must point at the configuration `make install-podman` wrote: "
            f"export CONTAINERS_CONF={conf}"
        )
    return (
        f"run `make install-podman`: it writes {conf} ({setting}) where this machine needs it; "
        "then export CONTAINERS_CONF=<that file>"
    )
