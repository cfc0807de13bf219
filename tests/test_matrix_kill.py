"""The kill matrix for `mmdemo matrix`: a signal to mmdemo while a cell loads or serves leaves nothing.

The cells run in threads, where the run's own SignalGuard cannot install handlers: the matrix's main
thread takes the signal, and every running cell's server is torn down from there.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from tests.conftest import FAKE, marked_pids, signal_mmdemo, wait_for

PROFILES = Path(__file__).parent / "profiles" / "matrix"
STATES = {
    "loading": ({"NEVER_READY": "1", "WORKERS": "2", "ESCAPE": "1"}, "MARKER_FILE"),
    "serving": ({"LATENCY": "60", "WORKERS": "1"}, "REQUEST_FILE"),
}


@pytest.mark.parametrize("state", list(STATES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_nothing_survives_a_matrix_run(
    tmp_path: Path, mmdemo_env: dict[str, str], state: str, sig: signal.Signals
) -> None:
    switches, trigger = STATES[state]
    env = {**mmdemo_env, **{f"FAKE_VLLM_{k}": v for k, v in switches.items()}}
    env[f"FAKE_VLLM_{trigger}"] = str(tmp_path / "trigger")
    args = ["matrix", str(PROFILES / "fake-a.yaml"), str(PROFILES / "cpu-only.yaml"), "--vllm-bin", str(FAKE)]
    args += ["--runs-dir", str(tmp_path / "runs"), "--grace", "2", "--timeout", "60", "--offline"]
    code = signal_mmdemo(args, env, tmp_path / "out.txt", (tmp_path / "trigger").exists, sig)
    output = (tmp_path / "out.txt").read_text()
    assert code == (-9 if sig is signal.SIGKILL else 130), output
    wait_for(lambda: not marked_pids(), timeout_s=10, what="every process of the matrix to be gone")
    if sig is not signal.SIGKILL:
        matrix_dir = next((tmp_path / "runs").glob("*-matrix"))
        record = json.loads((matrix_dir / "matrix.json").read_text())
        assert record["status"] == "interrupted"
        first, second = record["cells"]
        assert first["status"] == "interrupted"
        assert first["teardown_remaining"] == 0
        assert second == {**second, "status": "interrupted", "reason": f"not started: {sig.name}"}
        report = json.loads((matrix_dir / first["directory"] / "report.json").read_text())
        assert report["status"] == "interrupted"
