"""Processes the benchmark starts: each in its own group, ended in a finally block, and a final sweep.

Everything started during a benchmark inherits MARK in its environment, so a sweep at the end finds
(and kills) any process that outlived its scenario, wherever it moved to.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from orchestrator.launch.watchdog import pids_with_env

MARK = "MMDEMO_BENCH_SESSION"


@contextlib.contextmanager
def marked() -> Iterator[str]:
    """Put a fresh MARK into os.environ (every child inherits it); restore the old value after."""
    session = uuid.uuid4().hex
    previous = os.environ.get(MARK)
    os.environ[MARK] = session
    try:
        yield session
    finally:
        if previous is None:
            os.environ.pop(MARK, None)
        else:
            os.environ[MARK] = previous


def marked_pids(session: str) -> set[int]:
    """Live processes (not zombies) whose environment carries MARK=session."""
    return pids_with_env(MARK, session)


def sweep(session: str, wait_s: float = 5.0) -> list[str]:
    """Kill whatever the benchmark left running; returns their command lines (it should be none)."""
    deadline = time.monotonic() + wait_s  # processes ended a moment ago may still be reaped by init
    while (left := marked_pids(session)) and time.monotonic() < deadline:
        time.sleep(0.05)
    names = []
    for pid in left:
        with contextlib.suppress(OSError):
            names.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return names


def end_group(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM the process's group, SIGKILL what is left after grace_s, and reap the leader."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    # Members of the group may outlive its leader: the group goes whatever the leader did.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def spawned(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    stdout: int | None = subprocess.DEVNULL,
    cwd: Path | None = None,
    grace_s: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Popen in a new session; on the way out its whole group is ended, however the block ended."""
    proc = subprocess.Popen(
        list(argv),
        env=dict(env) if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout == subprocess.PIPE else subprocess.DEVNULL,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        end_group(proc, grace_s)
        if proc.stdout is not None:
            proc.stdout.close()


def timed_run(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    cwd: Path | None = None,
    timeout_s: float = 120.0,
) -> tuple[float, int, str]:
    """Run a command to completion in its own group: (wall seconds, exit code, output)."""
    t0 = time.monotonic()
    with spawned(argv, env, stdout=subprocess.PIPE, cwd=cwd) as proc:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{' '.join(argv)} ran longer than {timeout_s:g} s") from None
        wall = time.monotonic() - t0
    return wall, proc.returncode, out.decode(errors="replace")
