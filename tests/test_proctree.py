"""The process tree on its own: the watchdog it starts carries the run's grace, and end() ends it all."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from orchestrator.launch import watchdog
from orchestrator.launch.proctree import ProcessTree
from tests.conftest import wait_for, watchdog_argv

SLEEPER = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(600)"
)


def leader(tree: ProcessTree) -> subprocess.Popen[bytes]:
    """A tagged session leader that ignores SIGTERM, returned once it does (not before)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SLEEPER],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env={**os.environ, **tree.env},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    proc.stdout.close()
    return proc


def test_the_watchdog_is_started_with_the_runs_grace() -> None:
    tree = ProcessTree(grace_s=7.25)
    proc = leader(tree)
    tree.adopt(proc)
    tree.start()
    try:
        # Until the forked watchdog has exec'd, /proc shows the parent's command line: poll for it.
        argv = wait_for(lambda: watchdog_argv(tree.tag), what="the watchdog to show in /proc")
        assert isinstance(argv, list)
        assert argv[-3:] == [tree.tag, str(proc.pid), "7.25"]
    finally:
        tree.hurry()
        teardown = tree.end(port_free=lambda: True)
    assert teardown.signals == ("SIGTERM", "SIGKILL")
    assert teardown.remaining == 0
    assert teardown.returncode == -9


def test_a_dead_supervisor_is_ended_by_the_watchdog_after_the_runs_grace_not_a_fixed_one() -> None:
    tree = ProcessTree(grace_s=0.3)
    proc = leader(tree)
    tree.adopt(proc)
    tree.start()
    try:
        dog = tree._watchdog
        assert dog is not None
        assert dog.stdin is not None
        closed = time.monotonic()
        dog.stdin.close()  # what the kernel does when mmdemo dies, even by SIGKILL
        assert proc.wait(timeout=20) == -9  # SIGTERM ignored: escalated once the grace ran out
        # The old fixed 3 s would make this at least 3 s; the run's 0.3 s leaves a wide margin.
        assert time.monotonic() - closed < 2.5
        assert dog.wait(timeout=20) == 0
    finally:
        teardown = tree.end(port_free=lambda: True)
    assert teardown.remaining == 0


def test_end_is_idempotent_and_waits_for_the_port() -> None:
    tree = ProcessTree(grace_s=5.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
        env={**os.environ, **tree.env},
    )
    tree.adopt(proc)
    tree.start()
    polls = {"n": 0}

    def port_free() -> bool:
        polls["n"] += 1
        return polls["n"] >= 3  # the port is released a few polls after the process ended

    first = tree.end(port_free=port_free)
    assert first.signals == ("SIGTERM",)
    assert first.processes_signalled == 1
    assert first.port_free is True
    assert polls["n"] == 3
    assert tree.end(port_free=lambda: False) is first
    assert tree.census() == set()


def test_a_tree_never_started_ends_as_nothing() -> None:
    teardown = ProcessTree(grace_s=1.0).end(port_free=lambda: False)
    assert teardown.processes_signalled == 0
    assert teardown.signals == ()
    assert teardown.returncode is None


def test_descendants_are_tracked_and_reported_to_the_watchdog() -> None:
    tree = ProcessTree(grace_s=1.0)
    # A leader whose child leaves the session: only the record of descendants still links it.
    untagged = f"{{k: v for k, v in os.environ.items() if k != {watchdog.TAG_VAR!r}}}"
    code = (
        "import os, subprocess, sys, time\n"
        "cmd = [sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(600)']\n"
        f"child = subprocess.Popen(cmd, env={untagged})\n"
        "print(child.pid, flush=True); time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        start_new_session=True,
        stdout=subprocess.PIPE,
        env={**os.environ, **tree.env},
    )
    tree.adopt(proc)
    tree.start()
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        proc.stdout.close()
        wait_for(lambda: child in tree.census(), what="the tracker to record the child")
    finally:
        teardown = tree.end(port_free=lambda: True)
    assert teardown.processes_signalled == 2
    assert teardown.remaining == 0
    assert not watchdog.alive(child)


def test_an_adopted_tree_is_ended_even_before_it_is_guarded() -> None:
    # A Ctrl-C right after the launch, before the watchdog starts, must still end the server.
    tree = ProcessTree(grace_s=0.2)
    proc = leader(tree)
    tree.adopt(proc)
    teardown = tree.end(port_free=lambda: True)
    assert teardown.signals == ("SIGTERM", "SIGKILL")
    assert teardown.remaining == 0
    assert proc.returncode == -9
