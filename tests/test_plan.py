"""`mmdemo plan` shows what `run` with the same options launches: it goes through the session's own steps
(prepare, plan, check), takes every option `run` takes, redacts the API key, and refuses what run refuses."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests.conftest import FAKE, FAKE_PROFILE, mmdemo

HERE = Path(__file__).parent


def plan(env: dict[str, str], *extra: str) -> tuple[int, str, str]:
    done = mmdemo("plan", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--gpu", "cpu", *extra, env=env)
    return done.returncode, done.stdout, done.stderr


def command_line(out: str) -> str:
    return next(line for line in out.splitlines() if " serve " in line and not line.startswith("#"))


def test_plan_picks_a_free_port_as_run_does_and_says_so(mmdemo_env: dict[str, str]) -> None:
    code, out, err = plan(mmdemo_env)
    assert code == 0, err
    port = re.search(r"--port (\d+)", command_line(out))
    assert port is not None
    assert port.group(1) != "8000"  # run never defaults to 8000: it picks a free port
    assert f"# port {port.group(1)}: free now; `run` picks a free one again" in out
    assert "# checks: variant, gpus, vllm, environment, port, model, disk (passed)" in out
    assert "# vLLM 0.32.0: " in out


def test_plan_port_pins_the_port(mmdemo_env: dict[str, str]) -> None:
    code, out, err = plan(mmdemo_env, "--port", "8123")
    assert code == 0, err
    assert "--port 8123" in command_line(out)
    assert "free now" not in out


def test_plan_takes_quick_start_dummy_weights_and_redacts_the_api_key(mmdemo_env: dict[str, str]) -> None:
    key = "sk-plan-test-key-0123456789"
    code, out, err = plan(mmdemo_env, "--quick-start", "--dummy-weights", "--api-key", key)
    assert code == 0, err
    line = command_line(out)
    assert "--load-format dummy" in line
    assert "--optimization-level 0" in line
    assert "--max-num-seqs 16" in line
    assert "# --quick-start added " in out
    assert "export VLLM_API_KEY=***  # the key given with --api-key" in out
    assert key not in out + err


def test_plan_with_an_image_shows_the_container_run_line(mmdemo_env: dict[str, str], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "podman"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_runtime.py"}" podman "$@"\n')
    shim.chmod(0o755)
    env = {
        **mmdemo_env,
        "PATH": f"{bin_dir}:{mmdemo_env['PATH']}",
        "FAKE_RUNTIME_STATE": str(tmp_path / "state"),
        "FAKE_RUNTIME_RECORD": str(tmp_path / "record.jsonl"),
        "HF_TOKEN": "hf_plan_secret_never_shown",
    }
    key = "sk-plan-image-key-0123456789"
    done = mmdemo(
        "plan", str(FAKE_PROFILE), "--gpu", "cpu", "--image", "vllm/vllm-openai:v0.11.0",
        "--container-runtime", "podman", "--api-key", key, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    line = next(line for line in done.stdout.splitlines() if " run " in line and not line.startswith("#"))
    assert line.startswith(f"{shim} run --name mmdemo-")
    assert "-e VLLM_API_KEY" in line  # by name: its value never in an argv
    assert "vllm/vllm-openai:v0.11.0 fake/omni" in line
    assert "# vLLM: the image's, vllm/vllm-openai:v0.11.0 (podman)" in done.stdout
    assert (
        "# budget: `run` counts each demo's tokens with the vLLM in vllm/vllm-openai:v0.11.0 (a container, no network)"
        in done.stdout
    )
    assert key not in done.stdout + done.stderr
    assert "hf_plan_secret_never_shown" not in done.stdout + done.stderr
    record = tmp_path / "record.jsonl"
    runs = [json.loads(line)["argv"] for line in record.read_text().splitlines()] if record.exists() else []
    assert not [argv for argv in runs if any(a.startswith("mmdemo.run=") for a in argv)]  # no server started


def test_a_variant_that_cannot_run_on_the_gpu_named_is_exit_2_with_its_reason(
    mmdemo_env: dict[str, str],
) -> None:
    done = mmdemo("plan", "llava-1.5-7b", "--gpu", "t4", env=mmdemo_env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""  # no command for a launch that cannot happen
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: profile 'llava-1.5-7b' cannot run on T4: 16 GB cannot hold")


def test_validate_takes_a_profile_name(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("validate", "cpu-tiny-omni", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok    cpu-tiny-omni"
