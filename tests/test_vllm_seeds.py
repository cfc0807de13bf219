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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.media import known
from orchestrator.model.tiny import BUILDERS as BUILDER_SCRIPTS
from orchestrator.profile.schema import load_profile
from tests.conftest import REPO, marked_pids, mmdemo

# The deliveries of each chat type mmdemo sends (the example client's, plus file:// for images).
DELIVERIES = {
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
    remote_code: tuple[str, ...] = ()  # modules vLLM must load from the model directory (trust_remote_code)

    def __str__(self) -> str:
        return self.profile


SEEDS = [
    Seed("cpu-tiny-llava", "tiny-llava", ("text-only", "single-image", "multi-image")),
    Seed(
        "cpu-tiny-phi3v",
        "tiny-phi3v",
        ("text-only", "single-image", "multi-image"),
        remote_code=("configuration_phi3_v.py", "processing_phi3_v.py"),
    ),
    Seed("cpu-tiny-ultravox", "tiny-ultravox", ("text-only", "audio", "multi-audio")),
    Seed("cpu-tiny-qwen2vl", "tiny-qwen2vl", ("text-only", "single-image", "multi-image", "video")),
]
# Two items of a kind make a longer prompt than one: (the one, the two).
ONE_AND_TWO = {
    "image": ("single-image/base64", "multi-image/url"),
    "audio": ("audio/input_audio", "multi-audio/input_audio"),
}


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
    """Same seed, same bytes; another seed, other weights. Run as the standalone script mmdemo runs.
    A builder that trains is run with --random here (seed 1 would train: up to 80 s); its trained
    weights' determinism is its retrain test's (tests/test_trained_*.py)."""
    script = REPO / "orchestrator" / "tinymodels" / BUILDER_SCRIPTS[seed.model]
    python = Path(vllm_bin).parent / "python"
    random = ["--random"] if "--random" in script.read_text() else []
    built = {}
    for name, number in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / name
        done = subprocess.run(
            [str(python), str(script), "--out", str(out), "--seed", str(number), *random],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        built[name] = digests(out)
    assert built["a"] == built["b"]
    assert json.loads((tmp_path / "c" / "mmdemo-model.json").read_text())["seed"] == 1
    assert built["a"]["model.safetensors"] != built["c"]["model.safetensors"]
    assert not list(tmp_path.glob("*.tmp-*"))  # the temp build dirs were renamed into place


PHI3V_PROBE = """
import json, sys
from PIL import Image
sys.path.insert(0, sys.argv[1])
from processing_phi3_v import hd_size, image_to_crops, num_image_tokens
out = []
for width, height in json.loads(sys.argv[2]):
    for num_crops in (1, 4, 16):
        crops, (h, w) = image_to_crops(Image.new("RGB", (width, height), (9, 99, 199)), num_crops)
        out.append({"size": [width, height], "num_crops": num_crops, "shape": list(crops.shape),
                    "hw": [h, w], "hd_size": list(hd_size(width, height, num_crops)),
                    "tokens": num_image_tokens(width, height, num_crops)})
print(json.dumps(out))
"""


@pytest.mark.vllm
def test_the_phi3v_processor_promises_as_many_tokens_as_vllm_makes_features(
    tmp_path: Path, vllm_bin: str
) -> None:
    """For any image size, calc_num_image_tokens_from_image_size equals what vLLM's phi3v.py embeds."""
    sizes = [[1, 1], [50, 8000], [8000, 50], [640, 480], [480, 640], [336, 336], [337, 335], [2560, 1707]]
    remote = REPO / "orchestrator" / "tinymodels" / "phi3v_remote"
    python = Path(vllm_bin).parent / "python"
    done = subprocess.run(
        [str(python), "-c", PHI3V_PROBE, str(remote), json.dumps(sizes)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cases = json.loads(done.stdout)
    assert len(cases) == len(sizes) * 3
    for case in cases:
        h, w = case["hw"]
        assert (h % 336, w % 336) == (0, 0), case
        h_crop, w_crop = h // 336, w // 336
        assert 1 <= h_crop * w_crop <= case["num_crops"], case
        assert case["shape"] == [case["num_crops"] + 1, 3, 336, 336], case
        assert case["hd_size"] == [w, h], case
        # vLLM's Phi3HDImageEmbedding: 12x(12+1) per crop row with newlines, a separator, the global 12x13
        features = h_crop * 12 * (w_crop * 12 + 1) + 1 + 12 * 13
        assert case["tokens"] == features, case


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

    # where transformers copies remote code it loads: kept out of ~/.cache and inspected below
    modules = tmp_path / "hf-modules"
    env = {**mmdemo_env, "HF_MODULES_CACHE": str(modules)}
    done = mmdemo(
        "run", seed.profile, "--gpu", "cpu", "--vllm-bin", vllm_bin, "--runs-dir", str(tmp_path / "runs"),
        "--offline", "--media", "known", "--grace", "15", env=env, timeout=900,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    assert report["status"] == "passed", out
    assert report["profile"] == seed.profile
    assert report["vllm"]["version"].startswith("0.32")

    expected = {f"{chat}/{delivery}" for chat in seed.chat_types for delivery in DELIVERIES[chat]}
    # the profile's tasks past the chat types (cpu-tiny-llava: the media features uuid, image-embeds)
    tasks = [d for d in report["demos"] if d["task"] is not None]
    chats = [d for d in report["demos"] if d["task"] is None]
    assert {d["task"] for d in tasks} == {t.task.value for t in load_profile(seed.profile).tasks}
    by_name = {d["name"]: d for d in chats if d["kind"] == "demo"}
    assert set(by_name) == expected
    repeats = {d["name"] for d in chats if d["kind"] == "repeat"}
    assert repeats == {f"{name} (repeat)" for name in expected if not name.startswith("text-only/")}
    assert [d["kind"] for d in report["demos"]].count("worst case") == 1
    for demo in tasks:
        assert (demo["status"], demo["http_status"]) == ("passed", 200), demo
    for demo in chats:
        assert demo["status"] == "passed", demo
        assert demo["http_status"] == 200, demo
        assert demo["answer"], demo
        assert demo["completion_tokens"] > 0, demo
        # counted before launch by vLLM's renderer on the same media: exactly what the server used
        assert demo["prompt_tokens_counted"] == demo["prompt_tokens"], demo
    # the media really reached the model: each image, video or audio adds its tokens to the prompt
    text_tokens = by_name["text-only/text"]["prompt_tokens"]
    for name, demo in by_name.items():
        if not name.startswith("text-only/"):
            assert demo["prompt_tokens"] > text_tokens, (name, demo["prompt_tokens"], text_tokens)
    for one, two in ONE_AND_TWO.values():
        if one in by_name and two in by_name:
            assert by_name[one]["prompt_tokens"] < by_name[two]["prompt_tokens"], (one, two)

    # A trained tiny model (its marker says so) is graded: every demo understood but the worst case (no
    # single truth), each answer the trained sentence of the known media it was sent (seed 0); a random
    # one is never graded (tests/test_trained_*.py: each model's answers straight from the server).
    # `--media known`: offline, an example's own image that an earlier test left in the session's cache
    # is sent as it is (its truth unknown: answered), as it would be for a user.
    marker = json.loads((model_dir / "mmdemo-model.json").read_text())
    print(json.dumps({d["name"]: d["answer"] for d in report["demos"]}, indent=1))
    truth = known.known_demos(0)  # spoken cities where espeak-ng is installed, beeps otherwise: as mmdemo
    for demo in report["demos"]:
        if marker.get("weights") != "trained":  # random (said, or an older marker)
            assert demo["verdict"] == "answered", demo
        elif demo["kind"] != "worst case":
            assert demo["verdict"] == "understood", demo
            # "Paris", "pink", "Moscow and Sydney": as trained; a media feature asks of the single image
            right = truth[demo["chat_type"] if demo["task"] is None else "single-image"].answer
            said = f"{right[:1].upper()}{right[1:]}."
            assert demo["answer"] == (f"1: {said} | 2: {said}" if demo["task"] == "uuid" else said), demo

    # the config and processor vLLM used really were the model directory's own code
    loaded = {p.name for p in modules.rglob("*.py")}
    assert set(seed.remote_code) <= loaded, sorted(loaded)

    assert report["teardown"]["remaining"] == 0
    assert report["teardown"]["port_free"] is True
    assert marked_pids() == set()
    print(  # shown with -s / -rP: how long each seed costs in CI
        f"{seed.profile}: build {build_s:.1f} s, ready {report['server']['ready_s']:.1f} s, "
        f"total {time.monotonic() - start:.1f} s"
    )
