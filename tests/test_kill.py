"""The kill matrix: SIGINT, SIGTERM or SIGKILL to mmdemo while the server loads, is ready, or serves.

Whatever happens to mmdemo, afterwards no process it started is alive: the server, its workers, an
escapee of the process group, and mmdemo's own watchdog.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAKE, FAKE_PROFILE, marked_pids, signal_mmdemo, wait_for

STATES = {
    # state: (command, switches, the file whose appearance means "we are there")
    "loading": ("run", {"NEVER_READY": "1", "WORKERS": "2", "ESCAPE": "1"}, "MARKER_FILE"),
    "ready": ("serve", {"WORKERS": "2"}, "READY_FILE"),
    "serving": ("run", {"LATENCY": "60", "WORKERS": "1"}, "REQUEST_FILE"),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_nothing_survives(
    tmp_path: Path, mmdemo_env: dict[str, str], state: str, sig: signal.Signals
) -> None:
    command, switches, trigger = STATES[state]
    env = {**mmdemo_env, **{f"FAKE_VLLM_{k}": v for k, v in switches.items()}}
    env[f"FAKE_VLLM_{trigger}"] = str(tmp_path / "trigger")
    args = [command, str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs")]
    args += ["--grace", "2", "--timeout", "60"]
    args += ["--offline", "--only", "text-only"] if command == "run" else []
    code = signal_mmdemo(args, env, tmp_path / "out.txt", (tmp_path / "trigger").exists, sig)
    output = (tmp_path / "out.txt").read_text()
    # `serve` runs until a signal: SIGINT/SIGTERM are its normal stop, not an interruption.
    expected = -9 if sig is signal.SIGKILL else (0 if command == "serve" else 130)
    assert code == expected, output
    # The census: within a few seconds nothing carrying this test session's mark is left.
    wait_for(lambda: not marked_pids(), timeout_s=10, what="every process of the run to be gone")
    if sig is not signal.SIGKILL:
        report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
        assert report["status"] == "interrupted"
        assert report["teardown"]["remaining"] == 0
    if command == "run" and sig is not signal.SIGKILL:  # while loading and while serving: the same words
        assert f"interrupted by {sig.name}" in output
        assert report["error"]["message"] == f"interrupted by {sig.name}"
    if state == "serving" and sig is not signal.SIGKILL:  # the request in flight is counted, not lost
        assert report["summary"]["interrupted"] == 1, report["summary"]


def test_the_census_sees_what_tests_start() -> None:
    # Guards the guard: a census that finds nothing would make every check above vacuous.
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        wait_for(lambda: proc.pid in marked_pids(), what="the child to carry the test mark")
    finally:
        proc.kill()
        proc.wait()


def test_nohup_keeps_sighup_ignored(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    # `nohup mmdemo run ...`: a SIGHUP when the terminal goes away must not end the run.
    env = {**mmdemo_env, "FAKE_VLLM_LATENCY": "0.5", "FAKE_VLLM_REQUEST_FILE": str(tmp_path / "trigger")}
    args = ["run", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs")]
    args += ["--offline", "--only", "text-only"]
    out = tmp_path / "out.txt"
    code = signal_mmdemo(args, env, out, (tmp_path / "trigger").exists, signal.SIGHUP, prefix=("nohup",))
    assert code == 0, out.read_text()
