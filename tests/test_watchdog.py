"""The watchdog on its own: when mmdemo's pipe closes it ends the group, tagged and reported processes."""

from __future__ import annotations

import os
import subprocess
import sys

from orchestrator import watchdog
from tests.conftest import wait_for

SLEEPER = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
]


def start_watchdog(tag: str, pgid: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, watchdog.__file__, tag, str(pgid), "0.2"],
        stdin=subprocess.PIPE,
        start_new_session=True,
    )


def test_pipe_closing_ends_group_tagged_and_reported_processes() -> None:
    tag = os.urandom(6).hex()
    group_leader = subprocess.Popen(SLEEPER, start_new_session=True)
    tagged = subprocess.Popen(SLEEPER, start_new_session=True, env={**os.environ, watchdog.TAG_VAR: tag})
    reported = subprocess.Popen(SLEEPER, start_new_session=True)  # no tag, its own session: only reported
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
    leader = subprocess.Popen(SLEEPER, start_new_session=True)
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
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        started = wait_for(lambda: watchdog.start_time(proc.pid), what="start time")
        assert isinstance(started, int)
        assert watchdog.census("no-such-tag", None, {proc.pid: started}) == {proc.pid}
        assert watchdog.census("no-such-tag", None, {proc.pid: started + 1}) == set()
    finally:
        proc.kill()
        proc.wait()
