"""The watchdog on its own: when mmdemo's pipe closes it ends the group, tagged and reported processes."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestrator.launch import watchdog
from tests.conftest import wait_for

SLEEPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(600)"
)


def sleeper(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A process in its own session that ignores SIGTERM, returned once it does (not before)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER], start_new_session=True, stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    return proc


def start_watchdog(tag: str, pgid: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, watchdog.__file__, tag, str(pgid), "0.2"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def test_pipe_closing_ends_group_tagged_and_reported_processes() -> None:
    tag = os.urandom(6).hex()
    group_leader = sleeper()
    tagged = sleeper(env={**os.environ, watchdog.TAG_VAR: tag})
    reported = sleeper()  # no tag, its own session: only reported
    dog = start_watchdog(tag, group_leader.pid)
    try:
        started = wait_for(lambda: watchdog.start_time(reported.pid), what="the process to show in /proc")
        assert dog.stdin is not None
        dog.stdin.write(f"{reported.pid} {started}\n".encode())
        dog.stdin.close()  # what the kernel does when mmdemo dies, even by SIGKILL
        assert dog.wait(timeout=20) == 0
        for proc in (group_leader, tagged, reported):
            assert proc.wait(timeout=5) == -9  # SIGTERM was ignored: escalated to SIGKILL
    finally:
        for proc in (group_leader, tagged, reported, dog):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_disarm_leaves_everything_alone() -> None:
    tag = os.urandom(6).hex()
    leader = sleeper()
    dog = start_watchdog(tag, leader.pid)
    try:
        assert dog.stdin is not None
        dog.stdin.write(watchdog.DISARM)
        dog.stdin.close()
        assert dog.wait(timeout=10) == 0
        assert leader.poll() is None
    finally:
        leader.kill()
        leader.wait()


def test_a_reused_pid_is_never_taken_for_a_reported_one() -> None:
    proc = sleeper()
    try:
        started = wait_for(lambda: watchdog.start_time(proc.pid), what="start time")
        assert isinstance(started, int)
        assert watchdog.census("no-such-tag", None, {proc.pid: started}) == {proc.pid}
        assert watchdog.census("no-such-tag", None, {proc.pid: started + 1}) == set()
    finally:
        proc.kill()
        proc.wait()
