"""The derivation on the real CPU vLLM (marker `vllm`): probe, derive, init, validate and run each tiny model.

Each tiny model directory is probed by vLLM's own code and derived with no profile: the chat types
equal the shipped tiny profile's, and the file `mmdemo init` writes passes `validate --against-vllm`
and runs on a real `vllm serve` with every demo passing and nothing left. A text-only model derives
text-only, an unknown architecture and remote code without --trust-remote-code are refused in one
line, and llava-1.5-7b through the loopback hub derives what its shipped profile says for H100 and L4.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.core.tasks import MEDIA_FEATURES
from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.model.autoprofile import DeriveRequest, derive_for, probe_request
from orchestrator.model.derive import DeriveOptions, derive
from orchestrator.model.ref import HubModel, LocalModel, parse_ref
from orchestrator.model.weights import local_weights
from orchestrator.profile.schema import ChatType, load_profile
from orchestrator.vllm.probe import ModelFacts, probe
from tests.conftest import marked_pids, mmdemo
from tests.fake_hub import FakeHub
from tests.hub_models import LLAVA_ID, llava_repo

HERE = Path(__file__).parent
pytestmark = pytest.mark.vllm


CHAT = ("chat", "responses")


@dataclass(frozen=True)
class Tiny:
    model: str
    profile: str | None  # the shipped profile whose chat types and tasks the derivation must equal
    trust_remote_code: bool = False
    tasks: tuple[str, ...] = CHAT  # what the probe must say the model serves
    runner: str = "generate"

    def __str__(self) -> str:
        return self.model


TINY = [
    Tiny("tiny-omni", "cpu-tiny-omni"),
    Tiny("tiny-llava", "cpu-tiny-llava"),
    Tiny("tiny-qwen2vl", "cpu-tiny-qwen2vl"),
    Tiny("tiny-ultravox", "cpu-tiny-ultravox", trust_remote_code=True),
    Tiny("tiny-phi3v", "cpu-tiny-phi3v", trust_remote_code=True),
    Tiny("tiny-whisper", "cpu-tiny-whisper", tasks=("transcription", "translation")),
    Tiny("tiny-clip", "cpu-tiny-clip", tasks=("embedding", "score", "rerank"), runner="pooling"),
]


Build = Callable[[str], Path]


@pytest.fixture(autouse=True)
def built(mmdemo_env: dict[str, str], vllm_bin: str) -> Build:
    """Build a tiny model into the session's isolated cache (once) and return its directory.

    Autouse: every test here probes into that cache (MMDEMO_CACHE_DIR), never ~/.cache/mmdemo.
    """

    def build(name: str) -> Path:
        done = mmdemo("models", "build", name, "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return Path(mmdemo_env["MMDEMO_CACHE_DIR"]) / "models" / name

    return build


def facts_of(directory: Path, vllm_bin: str, trust_remote_code: bool = False) -> ModelFacts:
    request = DeriveRequest(trust_remote_code=trust_remote_code, vllm_bin=vllm_bin)
    return probe(probe_request(str(directory), request))


@pytest.mark.parametrize("tiny", [*TINY, Tiny("tiny-text", None)], ids=str)
def test_a_tiny_model_derives_its_shipped_profiles_chat_types(
    tiny: Tiny, built: Build, vllm_bin: str
) -> None:
    directory = built(tiny.model)
    start = time.monotonic()
    facts = facts_of(directory, vllm_bin, tiny.trust_remote_code)
    cold = time.monotonic() - start
    start = time.monotonic()
    assert facts_of(directory, vllm_bin, tiny.trust_remote_code) == facts
    cached = time.monotonic() - start
    assert facts.error is None, facts.error
    assert facts.vllm.startswith("0.32")
    # What vLLM's model class serves: a chat model no transcription, Whisper no chat, CLIP pooling.
    assert (facts.tasks, facts.runner, facts.convert) == (tiny.tasks, tiny.runner, "none")
    options = DeriveOptions(random_weights=True, trust_remote_code=tiny.trust_remote_code)
    derived = derive(facts, local_weights(directory), [], options)
    if tiny.profile is None:  # the text-only model
        assert derived.profile.chat_types == (ChatType.TEXT,)
        assert any("text-only" in note for note in derived.notes)
    else:
        shipped = load_profile(tiny.profile)
        assert derived.profile.chat_types == shipped.chat_types
        # the chat API's media features (uuid, image-embeds) are a profile's choice, never derived
        assert derived.profile.tasks == tuple(t for t in shipped.tasks if t.task not in MEDIA_FEATURES)
        assert (derived.profile.serve.runner == "pooling") == (shipped.serve.runner == "pooling")
    speech = {"transcription", "translation"} & {t.task.value for t in derived.profile.tasks}
    if "chat" in tiny.tasks:
        assert not speech  # a chat model derives no transcription
    else:
        assert derived.profile.chat_types == ()  # Whisper and CLIP derive no chat type
    # the facts the fast tests derive from are what this vLLM says
    canned = ModelFacts.model_validate_json((HERE / "models" / "facts" / f"{tiny.model}.json").read_text())
    for key in (
        "architectures",
        "modalities",
        "demo_tokens",
        "video_tokens",
        "max_model_len",
        "needs_remote_code",
        "tasks",
        "runner",
        "convert",
    ):
        assert getattr(facts, key) == getattr(canned, key), key
    assert cached < 1.0
    print(f"{tiny.model}: probe {cold:.1f} s cold ({facts.timings}), {cached * 1000:.0f} ms cached")


def test_an_architecture_vllm_does_not_know_is_refused_in_one_line(vllm_bin: str) -> None:
    unknown = HERE / "models" / "unknown-arch"
    facts = facts_of(unknown, vllm_bin)
    assert facts.error_kind == "unsupported-architecture"
    with pytest.raises(PreflightError) as caught:
        derive(facts, local_weights(unknown), [])
    assert str(caught.value) == (
        f"{unknown}: vLLM {facts.vllm} does not support the architecture NoSuchModelForCausalLM"
    )


@pytest.mark.parametrize("name", ["tiny-phi3v", "tiny-ultravox"])
def test_remote_code_is_refused_without_trust_remote_code(name: str, built: Build, vllm_bin: str) -> None:
    directory = built(name)
    ref = parse_ref(str(directory))
    assert isinstance(ref, LocalModel)
    with pytest.raises(PreflightError) as caught:
        derive_for(ref, [], DeriveRequest(vllm_bin=vllm_bin))
    message = str(caught.value)
    assert message.startswith(f"{directory} needs to run its own code (")
    assert message.endswith("); pass --trust-remote-code to allow it")
    assert "processor_config.json: AutoProcessor" in message


@pytest.mark.parametrize("tiny", TINY, ids=str)
def test_a_tiny_model_run_by_path_derives_its_profile_and_every_demo_passes(
    tiny: Tiny, built: Build, tmp_path: Path, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    # A copy: no profile names it (the cache's own directory is the shipped cpu-tiny-* profile's model).
    directory = Path(shutil.copytree(built(tiny.model), tmp_path / tiny.model))
    out = tmp_path / f"{tiny.model}.yaml"
    trust = ["--trust-remote-code"] if tiny.trust_remote_code else []
    done = mmdemo("init", str(directory), "-o", str(out), "--gpu", "cpu", "--vllm-bin", vllm_bin, *trust,
                  env=mmdemo_env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# from " in out.read_text()
    # (`validate --against-vllm` of a derived profile: tests/test_wrapper_vllm.py; here the run below
    # is vLLM's own check of the derived flags, and its count the budget's)
    # The model directory itself where a profile is expected: derived, said in one line, and run.
    ran = mmdemo("run", str(directory), "--gpu", "cpu", "--offline", "--vllm-bin", vllm_bin, *trust,
                 "--runs-dir", str(tmp_path / "runs"), env=mmdemo_env, timeout=900)  # fmt: skip
    assert f"no profile for {directory}: derived one from vLLM 0.32" in ran.stdout
    report = json.loads(next((tmp_path / "runs").glob("*/report.json")).read_text())
    if tiny.model == "tiny-omni":
        # Trained on video sampled at its profile's 4 fps (serve.media_io_kwargs), which nothing in the model
        # directory says: by path, vLLM samples every frame, and the model reads the motion wrong. The
        # verdict catches exactly that: every other demo understood, each video demo failed with its words.
        assert ran.returncode == 1, ran.stdout + ran.stderr
        wrong = [d for d in report["demos"] if d["status"] != "passed"]
        assert wrong, report["demos"]
        assert {d["chat_type"] for d in wrong} == {"video"}, wrong
        assert all(d["missing"] and d["answer"] in d["error"] for d in wrong), wrong
    else:
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert report["status"] == "passed"
    assert report["derivation"]["values"]  # which value came from where
    # It ran exactly what `mmdemo init` wrote: the derived file the report names is init's file.
    assert Path(report["profile_path"]).read_text() == out.read_text()
    assert tiny.profile is not None
    profile = load_profile(tiny.profile)
    derived_tasks = [t.task.value for t in profile.tasks if t.task not in MEDIA_FEATURES]  # never derived
    demos = [d for d in report["demos"] if d["kind"] == "demo"]
    assert {d["chat_type"] for d in demos if not d["task"]} == {c.value for c in profile.chat_types}
    assert {d["task"] for d in demos if d["task"]} == set(derived_tasks)
    misread = {"video"} if tiny.model == "tiny-omni" else set()  # see above
    assert all(d["status"] == "passed" for d in report["demos"] if d["chat_type"] not in misread)
    for demo in (d for d in report["demos"] if d["task"]):  # random weights: the answer's shape only
        assert demo["verdict"] == "answered", demo
        assert demo["checks"], demo
        assert all(c["shape_only"] and c["passed"] for c in demo["checks"]), demo
    capabilities = report["capabilities"]
    assert capabilities["tasks"]["served"] == [t for t in tiny.tasks if t != "chat"]
    assert capabilities["tasks"]["run"] == derived_tasks
    assert report["teardown"]["remaining"] == 0
    assert marked_pids() == set()


@pytest.fixture
def llava_hub(session_hub: FakeHub) -> Iterator[FakeHub]:
    """llava-hf/llava-1.5-7b-hf on the session's loopback hub (weights listed, never served), and a gated copy."""
    session_hub.repos[LLAVA_ID] = llava_repo()
    session_hub.repos["gated-org/llava"] = llava_repo("gated-org/llava", gated=True)
    yield session_hub
    for name in (LLAVA_ID, "gated-org/llava"):
        session_hub.repos.pop(name, None)


def test_a_hub_model_derives_what_its_shipped_profile_says_on_h100_and_l4(
    llava_hub: FakeHub, vllm_bin: str, mmdemo_env: dict[str, str], tmp_path: Path
) -> None:
    shipped = load_profile("llava-1.5-7b")
    ref = HubModel(LLAVA_ID, LLAVA_ID)
    for gpu_class in ("H100", "L4"):
        derived = derive_for(ref, gpus_of_class(gpu_class), DeriveRequest(vllm_bin=vllm_bin, cpu=False))
        mine, theirs = derived.profile.resolve(gpu_class), shipped.resolve(gpu_class)
        assert mine.requires.gpu_count == theirs.requires.gpu_count == 1
        assert theirs.requires.gpu_memory_gib is not None
        assert mine.requires.gpu_memory_gib == pytest.approx(theirs.requires.gpu_memory_gib, rel=0.1)
        assert set(shipped.chat_types) <= set(derived.profile.chat_types)
        assert derived.facts.demo_tokens == {"image": 576}  # (336 / 14)^2, from vLLM's own processor
    for shard in llava_repo().sizes:
        assert not llava_hub.downloads(shard)
    out = tmp_path / "llava.yaml"
    done = mmdemo("init", LLAVA_ID, "--gpu", "H100,L4", "-o", str(out), "--vllm-bin", vllm_bin,
                  env=mmdemo_env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    checked = mmdemo(
        "validate", "--against-vllm", str(out), "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert load_profile(str(out)).model_copy(update={"path": None}).variants.keys() == {"H100", "L4"}
    # `plan` takes the hub id where a profile goes: at a revision no profile pins, it derives one;
    # without, the shipped profile of the model wins and says so.
    derived = mmdemo("plan", f"{LLAVA_ID}@main", "--gpu", "H100", "--vllm-bin", vllm_bin,
                     env=mmdemo_env, timeout=300)  # fmt: skip
    assert derived.returncode == 0, derived.stdout + derived.stderr
    assert f"# no profile for {LLAVA_ID}: derived one from vLLM 0.32" in derived.stdout
    assert "--max-model-len 2048" in derived.stdout
    shipped_plan = mmdemo(
        "plan", LLAVA_ID, "--gpu", "l4", "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=300
    )
    assert shipped_plan.returncode == 0, shipped_plan.stdout + shipped_plan.stderr
    assert "# using the shipped profile 'llava-1.5-7b'" in shipped_plan.stdout


def test_a_gated_hub_model_without_a_token_is_refused_before_the_probe(
    llava_hub: FakeHub, mmdemo_env: dict[str, str], vllm_bin: str
) -> None:
    done = mmdemo(
        "init", "gated-org/llava", "--gpu", "H100", "--vllm-bin", vllm_bin, env=mmdemo_env, timeout=120
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "gated-org/llava is a gated model and no Hugging Face token is set" in done.stderr
    assert not [r for r in llava_hub.downloads("config.json") if "/gated-org/" in r.path]
