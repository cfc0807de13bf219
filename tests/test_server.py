"""The supervised server against the fake `vllm serve`: readiness, teardown, escalation, sweeps."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from orchestrator.core.errors import ServerError
from orchestrator.launch import watchdog
from orchestrator.launch.ports import port_is_free
from orchestrator.launch.server import Server
from tests.conftest import fake_plan, server_for, wait_for, watchdog_argv


def test_ready_then_clean_teardown(tmp_path: Path) -> None:
    server = server_for(tmp_path, workers="2")
    with server:
        ready = server.wait_ready(10)
        assert ready.models == ("fake-omni",)
        wait_for((tmp_path / "marker").exists, what="workers spawned")
        assert len(server.census()) == 3  # API server, EngineCore, one TP worker
        status = server.request("/v1/models", 2)
        assert status is not None
        assert status[0] == 200
    teardown = server.stop()
    assert teardown.signals == ("SIGTERM",)
    assert teardown.remaining == 0
    assert teardown.processes_signalled == 3
    assert teardown.port_free
    assert teardown.gpu_released is None  # no NVML on a CPU run
    assert server.census() == set()


def test_api_key_is_required_and_never_on_the_command_line(tmp_path: Path) -> None:
    with server_for(tmp_path) as server:
        server.wait_ready(10)
        assert server.api_key not in " ".join(server.plan.argv)
        cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert server.api_key.encode() not in cmdline
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        assert f"VLLM_API_KEY={server.api_key}".encode() in environ
        key, server.api_key = server.api_key, "wrong"
        answer = server.request("/v1/models", 2)
        server.api_key = key
        assert answer is not None
        assert answer[0] == 401


def test_sigterm_ignoring_server_is_escalated_to_sigkill(tmp_path: Path) -> None:
    server = server_for(tmp_path, grace_s=0.5, ignore_sigterm="1", workers="2", worker_ignore_sigterm="1")
    with server:
        server.wait_ready(10)
        wait_for((tmp_path / "marker").exists, what="handlers installed")
    teardown = server.stop()
    assert teardown.signals == ("SIGTERM", "SIGKILL")
    assert teardown.remaining == 0
    assert 0.5 <= teardown.duration_s < 5.0
    assert teardown.returncode == -9


def test_escaped_worker_is_swept_by_its_tag(tmp_path: Path) -> None:
    server = server_for(tmp_path, grace_s=1.0, escape="1", workers="1")
    with server:
        server.wait_ready(10)
        # The escapee calls setsid() itself, a moment after it is spawned.
        escaped = wait_for(
            lambda: server.census() - watchdog.group_pids(server.pid or 0), what="a worker to leave the group"
        )
        assert isinstance(escaped, set)
        assert len(escaped) == 1
    teardown = server.stop()
    assert teardown.escaped == 1
    assert teardown.remaining == 0
    assert not any(watchdog.alive(pid) for pid in escaped)


def test_hurry_skips_the_grace_period(tmp_path: Path) -> None:
    server = server_for(tmp_path, grace_s=60.0, ignore_sigterm="1")
    server.start()
    try:
        server.wait_ready(10)
        wait_for((tmp_path / "marker").exists, what="handlers installed")
        threading.Timer(0.2, server.hurry).start()
    finally:
        teardown = server.stop()
    assert teardown.signals == ("SIGTERM", "SIGKILL")
    assert teardown.duration_s < 5.0


def test_teardown_waits_for_the_gpu_to_release_killed_pids(tmp_path: Path) -> None:
    holding: list[set[int]] = []
    calls = {"n": 0}

    def fake_nvml() -> set[int] | None:
        calls["n"] += 1
        # The driver keeps listing the server's PID for a few polls after it exited.
        return holding[0] if calls["n"] < 5 and holding else set()

    server = Server(fake_plan(tmp_path), log_path=tmp_path / "server.log", gpu_pids=fake_nvml)
    with server:
        server.wait_ready(10)
        holding.append({server.pid or 0})
    teardown = server.stop()
    assert teardown.gpu_released is True
    assert calls["n"] >= 5


def test_crash_before_ready_carries_evidence(tmp_path: Path) -> None:
    server = server_for(
        tmp_path,
        crash_after="0.1",
        exit_code="7",
        crash_log="torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    with server, pytest.raises(ServerError) as info:
        server.wait_ready(10)
    error = info.value
    assert error.returncode == 7
    assert error.diagnosis == "CUDA out of memory"
    assert any("Tried to allocate" in line for line in error.log_tail)
    assert error.argv[1:3] == ["serve", "fake/omni"]
    assert str(error) == "vllm serve exited before it was ready: exited with code 7 (CUDA out of memory)"


def test_never_ready_times_out(tmp_path: Path) -> None:
    with server_for(tmp_path, never_ready="1", grace_s=1.0) as server, pytest.raises(ServerError) as info:
        server.wait_ready(0.5)
    assert "was not ready within 0.5 s (last phase: " in str(info.value)
    assert info.value.timeout_s == 0.5
    assert server.stop().remaining == 0


def test_models_listed_late_delays_readiness(tmp_path: Path) -> None:
    with server_for(tmp_path, models_delay="0.5") as server:
        ready = server.wait_ready(10)
        assert ready.models == ("fake-omni",)
        assert ready.elapsed_s >= 0.5


def test_port_is_free_after_teardown(tmp_path: Path) -> None:
    server = server_for(tmp_path)
    with server:
        server.wait_ready(10)
        assert not port_is_free("127.0.0.1", server.port)
    assert port_is_free("127.0.0.1", server.port)


def test_escaped_worker_without_the_tag_is_found_as_a_recorded_descendant(tmp_path: Path) -> None:
    # vLLM's renamed workers show no environment in /proc; only the record of descendants finds one
    # that also left the session.
    server = server_for(tmp_path, grace_s=1.0, escape="untagged")
    with server:
        server.wait_ready(10)
        escaped = wait_for(
            lambda: (
                {p for p in server.census() if not watchdog.tagged_pids(server.tag) & {p}}
                - watchdog.group_pids(server.pid or 0)
            ),
            what="an untagged worker to leave the session",
        )
        assert isinstance(escaped, set)
        assert len(escaped) == 1
    teardown = server.stop()
    assert teardown.remaining == 0
    assert not any(watchdog.alive(pid) for pid in escaped)


def test_the_watchdog_gets_the_same_grace_as_the_server(tmp_path: Path) -> None:
    # vLLM's engine needs ~5 s after SIGTERM: a watchdog with a shorter grace would orphan workers.
    with server_for(tmp_path, grace_s=4.5) as server:
        argv = wait_for(lambda: watchdog_argv(server.tag), what="the watchdog to show in /proc")
        assert isinstance(argv, list)
        assert argv[-3:] == [server.tag, str(server.pid), "4.5"]


# -- between fork and exec, nothing: no Python runs in the child -------------------------------------

PDEATHSIG = """
import ctypes, sys
value = ctypes.c_int(-1)
ctypes.CDLL(None).prctl(2, ctypes.byref(value), 0, 0, 0)  # PR_GET_PDEATHSIG
open(sys.argv[1], "w").write(str(value.value))
"""


class _WritesItsPidWhenCollected:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __del__(self) -> None:
        with self.path.open("a") as out:
            out.write(f"{os.getpid()}\n")


def test_no_python_runs_in_the_server_between_fork_and_exec(tmp_path: Path) -> None:
    # A preexec_fn made the child run Python's after-fork clean-up, which destroys the other threads'
    # thread-locals in the child: PyAV's reformatter held in one hung it there (and Popen, and the CI
    # run) on a condition variable. Here a thread-local's destructor notes which process ran it.
    collected = tmp_path / "collected"
    holding = threading.Event()
    release = threading.Event()

    def hold_a_thread_local() -> None:
        local = threading.local()
        local.value = _WritesItsPidWhenCollected(collected)
        holding.set()
        release.wait(30)

    holder = threading.Thread(target=hold_a_thread_local)
    holder.start()
    holding.wait(10)
    try:
        with server_for(tmp_path) as server:
            server.wait_ready(10)
    finally:
        release.set()
        holder.join()
    assert collected.read_text().split() == [str(os.getpid())]  # ours, at the thread's end: no child's


def test_the_api_server_dies_with_mmdemo_by_pdeathsig(tmp_path: Path) -> None:
    answer = tmp_path / "pdeathsig"
    plan = dataclasses.replace(fake_plan(tmp_path), argv=(sys.executable, "-c", PDEATHSIG, str(answer)))
    server = Server(plan, log_path=tmp_path / "server.log", grace_s=1.0)
    with server:
        wait_for(answer.exists, what="the child's PR_GET_PDEATHSIG")
    assert answer.read_text() == str(int(signal.SIGKILL))
    assert server.plan.argv[0] == sys.executable  # the record and the log show the command, not setpriv


def test_a_command_that_is_not_there_is_one_line_naming_it(tmp_path: Path) -> None:
    plan = dataclasses.replace(fake_plan(tmp_path), argv=(str(tmp_path / "no-vllm"), "serve", "x"))
    with pytest.raises(ServerError, match=r"^could not start '.*no-vllm': No such file or directory$"):
        Server(plan, log_path=tmp_path / "server.log").start()
