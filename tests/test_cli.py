"""The CLI commands that need no server, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import FAKE, FAKE_PROFILE, mmdemo

HERE = Path(__file__).parent


def test_plan_phi_on_h100(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("plan", "phi-3.5-vision", "--gpu", "H100", "--no-prefetch", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    command = next(line for line in done.stdout.splitlines() if " serve " in line)
    assert command.split()[1:3] == ["serve", "microsoft/Phi-3.5-vision-instruct"]
    assert "--trust-remote-code" in command
    assert "--max-model-len 4096" in command
    assert """--limit-mm-per-prompt '{"image":2}'""" in command
    assert "# demos: text-only, single-image, multi-image" in done.stdout


def test_plan_never_prints_the_token(mmdemo_env: dict[str, str]) -> None:
    env = {**mmdemo_env, "HF_TOKEN": "hf_do_not_print_me"}
    done = mmdemo("plan", "ultravox-0.5-1b", "--gpu", "L4", "--no-prefetch", env=env)
    assert done.returncode == 0, done.stderr
    assert "export HF_TOKEN='${HF_TOKEN}'" in done.stdout
    assert "hf_do_not_print_me" not in done.stdout + done.stderr


def test_list_shows_every_shipped_profile(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("list", env=mmdemo_env)
    assert done.returncode == 0, done.stderr
    for name in ("llava-1.5-7b", "phi-3.5-vision", "ultravox-0.5-1b", "qwen2.5-omni-3b", "cpu-tiny-omni"):
        assert name in done.stdout


def test_validate_all_shipped_ok_and_bad_exit_2(mmdemo_env: dict[str, str]) -> None:
    ok = mmdemo("validate", env=mmdemo_env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("ok ") >= 6
    bad = mmdemo(
        "validate", str(HERE / "profiles" / "bad-unknown-variant.yaml"), str(FAKE_PROFILE), env=mmdemo_env
    )
    assert bad.returncode == 2
    assert "unknown variant 'H10' (did you mean 'H100'?)" in bad.stderr
    assert f"ok    {FAKE_PROFILE}" in bad.stdout


def test_unknown_chat_type_in_only_is_a_usage_error(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("run", str(FAKE_PROFILE), "--only", "single-imge", env=mmdemo_env)
    assert done.returncode == 2
    assert "unknown chat type 'single-imge'" in done.stderr


def test_doctor_without_vllm_still_reports(mmdemo_env: dict[str, str], tmp_path: Path) -> None:
    env = {**mmdemo_env, "MMDEMO_VLLM_BIN": str(tmp_path / "no-vllm")}
    done = mmdemo("doctor", env=env)
    assert done.returncode == 0, done.stderr
    assert "vLLM:" in done.stdout
    assert "not usable" in done.stdout
    assert "cpu-tiny-omni" in done.stdout


def test_doctor_with_the_fake_vllm(mmdemo_env: dict[str, str]) -> None:
    env = {**mmdemo_env, "MMDEMO_VLLM_BIN": str(FAKE)}
    done = mmdemo("doctor", env=env)
    assert done.returncode == 0, done.stderr
    assert "0.32.0" in done.stdout
    assert "GPU:         none found" in done.stdout


def test_help_lists_exit_codes(mmdemo_env: dict[str, str]) -> None:
    done = mmdemo("--help", env=mmdemo_env)
    assert done.returncode == 0
    assert "130  interrupted" in done.stdout


ENTRY = """
import atexit, sys, threading, time
from orchestrator.cli.main import entry
done = []
def late():  # a non-daemon thread still at work when the command returns: joined, as at exit
    time.sleep(0.2)
    done.append(1)
threading.Thread(target=late).start()
atexit.register(lambda: print("exit handler ran, thread done:", bool(done), flush=False))
sys.argv = ["mmdemo", *sys.argv[1:]]
entry()
"""


def test_the_quick_exit_keeps_the_exit_code_the_output_the_threads_and_the_exit_handlers(
    mmdemo_env: dict[str, str],
) -> None:
    listed = subprocess.run(
        [sys.executable, "-c", ENTRY, "list"],
        env=mmdemo_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert "phi-3.5-vision" in listed.stdout
    assert listed.stdout.endswith("exit handler ran, thread done: True\n")  # unflushed print: flushed
    bad = subprocess.run(
        [sys.executable, "-c", ENTRY, "run", "--only", "no-such-chat-type", str(FAKE_PROFILE)],
        env=mmdemo_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "exit handler ran" in bad.stdout
