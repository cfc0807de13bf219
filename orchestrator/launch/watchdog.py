"""The guard that ends the server tree if mmdemo itself dies, and the process census both share.

mmdemo starts this file as a separate process in its own session, holding the read end of a pipe.
If mmdemo exits without disarming it (even by SIGKILL, when the kernel closes the pipe), the
watchdog signals the server's process group and every process carrying the run's environment tag,
escalating to SIGKILL. PR_SET_PDEATHSIG alone is not enough: it reaches only the API server, and
vLLM's EngineCore would be orphaned still holding the GPU.

A server in a container is no descendant of mmdemo at all: its processes belong to the runtime
(docker's daemon, podman's conmon), and killing the `docker run` client leaves it running. So the
run's containers are found through the runtime by their label, stopped with the same grace, killed,
and removed, by mmdemo's teardown and by this watchdog alike (`end_containers`).

Stdlib only, so it starts fast; Linux /proc is the source of truth (vLLM runs on Linux).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

TAG_VAR = "MMDEMO_RUN_TAG"
DISARM = b"disarm\n"
POLL_S = 0.02


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[3])


def _pids() -> Iterable[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_pids(pgid: int) -> set[int]:
    """Live processes in the process group `pgid`, or in the session it leads.

    The server is started as a session leader, so its pid is both its group and its session:
    a child that moves to a new group (setpgid) is still in the session; orphans keep both.
    """
    found = set()
    for pid in _pids():
        stat = _stat(pid)
        if stat is not None and pgid in (stat[2], stat[3]) and stat[0] not in ("Z", "X"):
            found.add(pid)
    return found


def tagged_pids(tag: str) -> set[int]:
    """Live processes whose environment carries MMDEMO_RUN_TAG=tag, wherever they moved to.

    A process that renames itself with setproctitle (vLLM's VLLM::EngineCore and VLLM::Worker do)
    overwrites the memory /proc/PID/environ shows, so the tag finds only the others; the session
    and the supervisor's record of descendants cover those.
    """
    return pids_with_env(TAG_VAR, tag)


def pids_with_env(name: str, value: str) -> set[int]:
    """Live processes (not this one) whose environment at exec held name=value."""
    needle = f"{name}={value}".encode()
    me = os.getpid()
    found = set()
    for pid in _pids():
        if pid == me:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(pid):
            found.add(pid)
    return found


def start_time(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(raw[raw.rfind(b")") + 2 :].split()[19])


def census(tag: str, pgid: int | None, known: dict[int, int] | None = None) -> set[int]:
    """Every live process of the run: the server's group and session, tagged escapees, and the
    descendants recorded earlier (pid -> start time, so a reused pid is never taken for one)."""
    pids = tagged_pids(tag)
    if pgid is not None:
        pids |= group_pids(pgid)
    for pid, started in (known or {}).items():
        if start_time(pid) == started and alive(pid):
            pids.add(pid)
    pids.discard(os.getpid())
    return pids


def signal_all(pids: Iterable[int], pgid: int | None, sig: int) -> None:
    """Send `sig` to the group and to each pid; processes already gone are fine."""
    pids = list(pids)
    # Signal the group only while one of ours is in it: a group id can be reused once it is empty.
    if pgid is not None and any((stat := _stat(pid)) is not None and stat[2] == pgid for pid in pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class Ending:
    """How end_tree went: the signals it sent, every process it signalled, and any survivors."""

    signals: list[str] = field(default_factory=list)
    signalled: set[int] = field(default_factory=set)
    survivors: set[int] = field(default_factory=set)


def end_tree(
    tag: str,
    pgid: int | None,
    grace_s: float,
    known: dict[int, int] | None = None,
    *,
    kill_wait_s: float = 10.0,
    hurry: Callable[[], bool] = lambda: False,
    reap: Callable[[], object] = lambda: None,
) -> Ending:
    """TERM, wait up to grace_s (or until hurry()), KILL, sweep until nothing is left.

    `reap` is called on every pass so a parent can collect its own exited child (a zombie
    counts as gone, but only once reaped does its pid stop being ours).
    """
    ending = Ending()
    pids = census(tag, pgid, known)
    if not pids:
        return ending
    ending.signalled |= pids
    signal_all(pids, pgid, signal.SIGTERM)
    ending.signals.append("SIGTERM")
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline and not hurry():
        reap()
        time.sleep(POLL_S)
        pids = census(tag, pgid, known)
        ending.signalled |= pids
    deadline = time.monotonic() + kill_wait_s
    if pids:
        ending.signals.append("SIGKILL")
    while pids and time.monotonic() < deadline:
        signal_all(pids, pgid, signal.SIGKILL)
        reap()
        time.sleep(POLL_S)
        pids = census(tag, pgid, known)
    ending.survivors = pids
    return ending


# -- containers ------------------------------------------------------------------------------------

RUNTIME_TIMEOUT_S = 30.0  # one runtime command (ps, kill, rm); `stop` gets the grace on top


@dataclass(frozen=True)
class Container:
    """A run's container as its runtime knows it: the runtime's command, the name, the label that finds it."""

    runtime: str  # the absolute path of `docker` or `podman`
    name: str
    label: str  # KEY=VALUE, carried by every container of the run


@dataclass
class ContainerEnding:
    """How end_containers went: the runtime commands it ran, the containers found, those left after."""

    steps: list[str] = field(default_factory=list)
    found: int = 0
    left: int = 0


def _runtime(
    argv: list[str], timeout_s: float = RUNTIME_TIMEOUT_S
) -> subprocess.CompletedProcess[str] | None:
    """Run one runtime command quietly; None when it cannot be run or does not answer in time."""
    try:
        return subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def container_ids(runtime: str, label: str, *, running_only: bool = False) -> list[str]:
    """The containers (running or not, unless running_only) carrying `label`, as the runtime lists them."""
    argv = [runtime, "ps", "-q", "--no-trunc", "--filter", f"label={label}"]
    done = _runtime(argv if running_only else [*argv[:2], "-a", *argv[2:]])
    return done.stdout.split() if done is not None and done.returncode == 0 else []


def container_pid(runtime: str, name: str) -> int | None:
    """The host pid of a running container's first process (its init), None when it is not running."""
    done = _runtime([runtime, "inspect", "--format", "{{.State.Pid}}", name], timeout_s=10.0)
    text = done.stdout.strip() if done is not None and done.returncode == 0 else ""
    return int(text) if text.isdigit() and int(text) > 0 else None


def end_containers(
    runtime: str, label: str, grace_s: float, *, hurry: Callable[[], bool] = lambda: False
) -> ContainerEnding:
    """Stop every container carrying `label` (SIGTERM, grace_s, SIGKILL: the runtime's `stop`), kill any
    still running, remove them all; then count what is left (0 unless the runtime failed)."""
    ending = ContainerEnding()
    ids = container_ids(runtime, label)
    ending.found = len(ids)
    if ids:
        running = container_ids(runtime, label, running_only=True)
        if running:
            grace = max(0, math.ceil(grace_s))  # the runtimes take whole seconds
            ending.steps.append(f"stop -t {grace}")
            stopped = _stop(runtime, running, grace, hurry)
            if not stopped or container_ids(runtime, label, running_only=True):
                ending.steps.append("kill")
                _runtime([runtime, "kill", *running])
        ending.steps.append("rm -f")
        _runtime([runtime, "rm", "-f", *ids])
    ending.left = len(container_ids(runtime, label))
    return ending


def _stop(runtime: str, ids: list[str], grace: int, hurry: Callable[[], bool]) -> bool:
    """`RUNTIME stop -t GRACE IDS`; False when hurried or when the runtime does not return (then it is
    killed, and the caller kills the containers)."""
    try:
        stop = subprocess.Popen(
            [runtime, "stop", "-t", str(grace), *ids],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return False
    deadline = time.monotonic() + grace + RUNTIME_TIMEOUT_S
    while stop.poll() is None:
        if hurry() or time.monotonic() >= deadline:
            stop.kill()
            stop.wait()
            return False
        time.sleep(POLL_S)
    return True


def main(argv: list[str]) -> int:
    """`watchdog.py TAG PGID GRACE_S [RUNTIME LABEL]`: wait for stdin to close; unless disarmed, end the
    run's containers (those carrying LABEL, through RUNTIME) and then the tree.

    Lines "PID STARTTIME" on stdin add descendants mmdemo has seen to the processes to end.
    """
    tag, pgid, grace_s = argv[0], int(argv[1]), float(argv[2])
    runtime, label = (argv[3], argv[4]) if len(argv) >= 5 else (None, None)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        # Only the pipe closing, or a disarm, ends the watch; a terminal's signals must not.
        signal.signal(sig, signal.SIG_IGN)
    received = b""
    while chunk := os.read(sys.stdin.fileno(), 4096):
        received += chunk
        if DISARM in received:
            return 0
    known = {}
    for line in received.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            known[int(parts[0])] = int(parts[1])
    left = end_containers(runtime, label, grace_s).left if runtime and label else 0
    survivors = end_tree(tag, pgid, grace_s, known).survivors
    if runtime and label:  # a container the client was still creating when it died
        left = end_containers(runtime, label, 0).left
    return 1 if survivors or left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
