"""`mmdemo matrix` with the real CPU vLLM (marker `vllm`): two tiny profiles, one after the other.

Under CI=true a missing backend is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO, marked_pids, mmdemo

pytestmark = pytest.mark.vllm


def test_two_tiny_profiles_on_the_cpu(tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    for name in ("tiny-a", "tiny-b"):  # the one tiny CPU profile, twice under two names
        shutil.copy(REPO / "profiles" / "cpu-tiny-omni.yaml", profiles / f"{name}.yaml")
    env = {**mmdemo_env, "HOME": os.environ.get("HOME", str(tmp_path))}
    done = mmdemo(
        "matrix", str(profiles / "tiny-a.yaml"), str(profiles / "tiny-b.yaml"), "--vllm-bin", vllm_bin,
        "--runs-dir", str(tmp_path / "runs"), "--offline", "--only", "text-only,single-image",
        env=env, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    matrix_dir = next((tmp_path / "runs").glob("*-matrix"))
    record = json.loads((matrix_dir / "matrix.json").read_text())
    assert [(c["profile"], c["gpu_class"], c["status"]) for c in record["cells"]] == [
        ("tiny-a", "cpu", "passed"),
        ("tiny-b", "cpu", "passed"),
    ]
    first, second = record["cells"]
    assert second["started_s"] >= first["ended_s"]  # one at a time on a CPU
    for cell in record["cells"]:
        # text + single-image by url, file, base64; the three again (the processor cache); the worst case
        assert cell["demos_passed"] == cell["demos_total"] == 8
        assert cell["teardown_remaining"] == 0
        assert cell["time_to_ready_s"] > 0
        report = json.loads((matrix_dir / cell["directory"] / "report.json").read_text())
        assert report["vllm"]["version"].endswith("+cpu")
    assert "| tiny-a | [✅ passed, 8/8, ready" in (matrix_dir / "matrix.md").read_text()
    assert not marked_pids()
