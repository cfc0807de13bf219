"""Rendering a profile into `vllm serve` argv and env: a pure function, tested by table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.launch.command import Redactor, build_plan, expand_env, render_flag, serve_args
from orchestrator.profile.schema import ServeSettings, parse_profile_file, parse_profile_text

REPO = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("name", "value", "argv"),
    [
        ("max_model_len", 4096, ["--max-model-len", "4096"]),
        ("trust_remote_code", True, ["--trust-remote-code"]),
        ("enforce_eager", False, ["--no-enforce-eager"]),
        ("limit_mm_per_prompt", {"image": 2}, ["--limit-mm-per-prompt", '{"image":2}']),
        (
            "media_io_kwargs",
            {"video": {"num_frames": 32}},
            ["--media-io-kwargs", '{"video":{"num_frames":32}}'],
        ),
        ("gpu_memory_utilization", 0.9, ["--gpu-memory-utilization", "0.9"]),
        ("kv_cache_memory_bytes", "256M", ["--kv-cache-memory-bytes", "256M"]),
        ("dtype", "bfloat16", ["--dtype", "bfloat16"]),
    ],
)
def test_render_flag(name: str, value: Any, argv: list[str]) -> None:
    assert render_flag(name, value) == argv


def test_serve_args_skip_unset_and_append_extra_args_last() -> None:
    serve = ServeSettings(max_model_len=2048, extra_args=("--seed", "7"))
    assert serve_args(serve) == ["--max-model-len", "2048", "--seed", "7"]
    assert serve_args(ServeSettings()) == []


def test_phi_plan_on_h100() -> None:
    profile = parse_profile_file(REPO / "profiles" / "phi-3.5-vision.yaml")
    plan = build_plan(profile.resolve("H100"), port=8123)
    assert plan.argv[:3] == ("vllm", "serve", "microsoft/Phi-3.5-vision-instruct")
    assert "--trust-remote-code" in plan.argv
    line = plan.shell()
    assert "--max-model-len 4096" in line
    assert """--limit-mm-per-prompt '{"image":2}'""" in line
    assert "--runner generate" in line
    assert line.endswith("--host 127.0.0.1 --port 8123")


def test_plan_host_media_dir_bin_and_served_name() -> None:
    profile = parse_profile_file(REPO / "profiles" / "cpu-tiny-omni.yaml")
    plan = build_plan(
        profile.resolve("cpu"), vllm_bin="/x/vllm", host="0.0.0.0", port=9, media_dir="/cache/assets"
    )
    argv = list(plan.argv)
    assert argv[0] == "/x/vllm"
    assert argv[2].endswith("models/tiny-omni")
    assert argv[argv.index("--served-model-name") + 1] == "tiny-omni"
    assert argv[argv.index("--allowed-local-media-path") + 1] == "/cache/assets"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "--api-key" not in argv  # the key travels in VLLM_API_KEY, out of `ps`
    assert plan.served_model_name == "tiny-omni"


def test_env_references_are_resolved_but_never_displayed() -> None:
    profile = parse_profile_text(
        "model: a/b\nenv:\n  HF_TOKEN: ${HF_TOKEN}\n  VLLM_X: '1'\n  MY_API_KEY: literal-secret\n"
        "variants: {cpu: {}}\ndemos: [text-only]\n",
        "p.yaml",
        "p",
    )
    plan = build_plan(profile.resolve("cpu"), user_env={"HF_TOKEN": "hf_supersecret"})
    assert plan.env == {"HF_TOKEN": "hf_supersecret", "VLLM_X": "1", "MY_API_KEY": "literal-secret"}
    assert plan.display_env == {"HF_TOKEN": "${HF_TOKEN}", "VLLM_X": "1", "MY_API_KEY": "***"}
    assert "hf_supersecret" not in plan.shell_with_env()
    assert "literal-secret" not in plan.shell_with_env()
    assert set(plan.secrets) == {"hf_supersecret", "literal-secret"}
    assert plan.missing_env == ()


def test_missing_env_reference_is_reported_not_passed_empty() -> None:
    values, display, missing, _ = expand_env({"HF_TOKEN": "${HF_TOKEN}"}, {})
    assert values == {}
    assert display == {}
    assert missing == ["HF_TOKEN"]


def test_redactor_replaces_every_secret_everywhere() -> None:
    redact = Redactor(["sk-abcdef", "hf_token_value", "ab"])
    text = "key sk-abcdef and hf_token_value; ab stays (too short to be a secret)"
    assert redact(text) == "key *** and ***; ab stays (too short to be a secret)"
    assert redact.data({"a": ["sk-abcdef"], "b": 3}) == {"a": ["***"], "b": 3}
