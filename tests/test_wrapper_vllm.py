"""`--vllm-bin` as HPC and conda users have it, on the real CPU vLLM (marker `vllm`): a wrapper shell script
(`exec /path/to/vllm "$@"`) and a `#!/usr/bin/env python3` launcher. Which Python runs vLLM is asked of
the command (vllm/runner.py), so the tiny model builds, a model directory derives its profile, the
budget counts every demo, the run passes, and `validate --against-vllm` parses and counts.

The wrapper goes the whole way (build, derive, count, run, validate); the launcher, whose difference
is which Python it is found to run, builds, derives and validates (the count included): one server
start, not two.

Before: the wrapper was refused by `validate --against-vllm` (`no python next to VLLM_BIN`), and the
launcher was taken for an interpreter named /usr/bin/env (`budget not counted: ... (exit 126)`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import marked_pids, mmdemo

pytestmark = pytest.mark.vllm


def reach(kind: str, real: str, where: Path, env: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The real vLLM behind a command of this kind, and the environment that command needs."""
    where.mkdir(parents=True, exist_ok=True)
    command = where / "vllm"
    if kind == "wrapper":
        command.write_text(f'#!/bin/sh\n# what `module load vllm` leaves behind\nexec {real} "$@"\n')
    else:  # `env` finds the environment's python3 first on PATH
        command.write_text(
            "#!/usr/bin/env python3\nimport sys\n\nfrom vllm.entrypoints.cli.main import main\n\n"
            'if __name__ == "__main__":\n    sys.exit(main())\n'
        )
        env = {**env, "PATH": f"{Path(real).parent}{os.pathsep}{env.get('PATH', os.defpath)}"}
    command.chmod(0o755)
    return str(command), env


def test_a_wrapper_builds_derives_counts_runs_and_validates(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    command, env = reach("wrapper", vllm_bin, tmp_path / "bin", mmdemo_env)
    built = mmdemo("models", "build", "tiny-omni", "--vllm-bin", command, env=env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    directory = Path(
        shutil.copytree(Path(env["MMDEMO_CACHE_DIR"]) / "models" / "tiny-omni", tmp_path / "tiny-omni")
    )
    runs = tmp_path / "runs"
    ran = mmdemo("run", str(directory), "--gpu", "cpu", "--offline", "--media", "known", "--vllm-bin", command, "--only",
                 "text-only,audio", "--no-worst-case", "--grace", "15", "--runs-dir", str(runs),
                 env=env, timeout=900)  # fmt: skip
    out = ran.stdout + ran.stderr
    # The trained tiny-omni (its marker says so, by path too): its answers are graded and right.
    assert ran.returncode == 0, out
    assert f"no profile for {directory}: derived one from vLLM 0.32" in ran.stdout
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["status"] == "passed", out
    assert report["summary"]["understood"] == report["summary"]["total"], out
    assert report["vllm"]["path"] == command
    assert report["profile_path"]  # the derived profile's file
    budget = report["budget"]
    assert budget is not None, report["notes"]
    assert budget["vllm"].startswith("0.32")
    assert {d["name"] for d in budget["demos"]} >= {"text-only/text", "audio/input_audio"}
    assert all(d["prompt_tokens"] and d["error"] is None for d in budget["demos"])
    assert not [n for n in report["notes"] if "not counted" in n]
    # Counted before launch through the wrapper, exactly what the server it launched then reported.
    for demo in report["demos"]:
        assert demo["prompt_tokens"] is not None, demo
        assert demo["prompt_tokens"] == demo["prompt_tokens_counted"], demo
    assert marked_pids() == set()

    checked = mmdemo(
        "validate", "--against-vllm", report["profile_path"], "--vllm-bin", command, env=env, timeout=600
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "accepted by vLLM 0.32" in checked.stdout
    assert "ok    budget " in checked.stdout, checked.stdout


def test_an_env_launcher_builds_derives_counts_and_validates(
    tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    # What differs from the wrapper is only which Python the command is found to run: the build, the
    # probe and the count run scripts in it, and `validate --against-vllm` parses the flags and counts
    # every demo there. `vllm serve` through it is the same exec as the wrapper's (its run: above).
    command, env = reach("env-launcher", vllm_bin, tmp_path / "bin", mmdemo_env)
    built = mmdemo("models", "build", "tiny-omni", "--vllm-bin", command, env=env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    directory = Path(
        shutil.copytree(Path(env["MMDEMO_CACHE_DIR"]) / "models" / "tiny-omni", tmp_path / "tiny-omni")
    )
    out = tmp_path / "tiny-omni.yaml"
    derived = mmdemo("init", str(directory), "-o", str(out), "--gpu", "cpu", "--vllm-bin", command,
                     env=env, timeout=300)  # fmt: skip
    assert derived.returncode == 0, derived.stdout + derived.stderr
    checked = mmdemo("validate", "--against-vllm", str(out), "--vllm-bin", command, env=env, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "accepted by vLLM 0.32" in checked.stdout
    assert "ok    budget " in checked.stdout, checked.stdout
    assert marked_pids() == set()
