"""The weight prefetch inside `mmdemo run`: downloaded before launch, recorded, not repeated, skippable."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FAKE, FAKE_PROFILE, mmdemo
from tests.fake_hub import FakeHub, FakeRepo, serve

FILES = {
    "config.json": b'{"architectures": ["TinyForCausalLM"]}',
    "model.safetensors": bytes(range(256)) * 64,
}


def hub_profile(tmp_path: Path) -> Path:
    text = FAKE_PROFILE.read_text().replace("model: fake/omni", "model: org/tiny")
    path = tmp_path / "hub-omni.yaml"
    path.write_text(text)
    return path


def run(tmp_path: Path, env: dict[str, str], profile: Path, *extra: str) -> dict:
    done = mmdemo(
        "run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"), "--offline",
        "--only", "text-only", "--grace", "2", *extra, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    newest = sorted((tmp_path / "runs").glob("*/report.json"))[-1]
    return json.loads(newest.read_text())


def test_a_hub_model_is_prefetched_once_and_recorded(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    profile = hub_profile(tmp_path)
    with serve(FakeHub({"org/tiny": FakeRepo("org/tiny", dict(FILES))})) as hub:
        env = {**mmdemo_env, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
        env.pop("HF_HUB_OFFLINE", None)
        env.pop("HF_TOKEN", None)
        first = run(tmp_path, env, profile)
        total = sum(len(b) for b in FILES.values())
        assert first["download"]["repo"] == "org/tiny"
        assert first["download"]["bytes_total"] == total
        assert first["download"]["bytes_downloaded"] == total
        events = [e["event"] for e in first["timeline"]]
        assert events.index("weights ready") < events.index("launch")
        downloads = sum(1 for r in hub.requests if "/resolve/" in r.path and r.method == "GET")
        second = run(tmp_path, env, profile)
        assert second["download"]["bytes_downloaded"] == 0
        assert sum(1 for r in hub.requests if "/resolve/" in r.path and r.method == "GET") == downloads
        skipped = run(tmp_path, env, profile, "--no-prefetch")
        assert skipped["download"] is None
