"""autoprofile.resolve: the profile named, else the profile of that model, else a derived one (stand-in probe)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError, ProfileError
from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.model.autoprofile import DeriveRequest, resolve
from tests.fake_hub import FakeHub
from tests.hub_models import LLAVA_ID, llava_repo


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A local model directory the stand-in probe describes as a Llava with random weights."""
    directory = tmp_path / "models" / "my-llava"
    directory.mkdir(parents=True)
    (directory / "config.json").write_text("{}")
    (directory / "model.safetensors").write_bytes(b"w" * 4096)
    (directory / "mmdemo-model.json").write_text("{}")
    return directory


def runs(counter: Path) -> int:
    return len(counter.read_text().splitlines())


def test_a_profile_name_is_loaded_as_it_is(fake_probe: Path) -> None:
    resolved = resolve("cpu-tiny-omni", [])
    assert (resolved.profile.name, resolved.line, resolved.derivation) == (
        "cpu-tiny-omni",
        "profile cpu-tiny-omni",
        None,
    )
    assert runs(fake_probe) == 0


def test_the_profile_of_the_model_wins_and_says_so(fake_probe: Path) -> None:
    resolved = resolve("mmdemo:tiny-llava", [])  # needs no built model: only the path is compared
    assert resolved.profile.name == "cpu-tiny-llava"
    assert resolved.match is not None
    assert resolved.line.startswith("using the shipped profile 'cpu-tiny-llava'")
    assert runs(fake_probe) == 0


def test_a_model_without_a_profile_is_derived_once(fake_probe: Path, model: Path) -> None:
    resolved = resolve(str(model), [])
    assert resolved.derivation is not None
    assert resolved.profile.model == str(model)
    assert resolved.profile.served_model_name == "my-llava"
    assert [c.value for c in resolved.profile.chat_types] == ["text-only", "single-image", "multi-image"]
    assert list(resolved.profile.variants) == ["cpu"]
    assert all(not d.expect for d in resolved.profile.demos)  # mmdemo's marker: random weights
    assert resolved.line.startswith(f"no profile for {model}: derived one from vLLM 0.32.0's facts")
    resolve(str(model), [])
    assert runs(fake_probe) == 1


def test_a_hub_model_is_sized_for_the_gpus_found(fake_probe: Path, session_hub: FakeHub) -> None:
    session_hub.repos["someone/llava-copy"] = llava_repo("someone/llava-copy")
    try:
        resolved = resolve("someone/llava-copy", gpus_of_class("L4"), DeriveRequest(cpu=False))
    finally:
        session_hub.repos.pop("someone/llava-copy")
    assert list(resolved.profile.variants) == ["L4"]
    assert resolved.profile.demos[0].expect == ("Paris",)  # real weights: expected words
    assert resolved.derivation is not None
    assert resolved.derivation.weights is not None
    assert resolved.derivation.weights.bytes == sum(llava_repo().sizes.values())


def test_refusals_come_before_the_probe(fake_probe: Path, tmp_path: Path, session_hub: FakeHub) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProfileError, match="neither a profile file nor a model directory"):
        resolve(str(tmp_path / "empty"), [])
    with pytest.raises(PreflightError, match="no such profile, and no model 'nobody/nothing' on the hub"):
        resolve("nobody/nothing", [])
    session_hub.repos[LLAVA_ID + "-gated"] = llava_repo(LLAVA_ID + "-gated", gated=True)
    try:
        with pytest.raises(PreflightError, match="is a gated model and no Hugging Face token is set"):
            resolve(LLAVA_ID + "-gated", [], DeriveRequest(env={"HF_ENDPOINT": session_hub.url}))
    finally:
        session_hub.repos.pop(LLAVA_ID + "-gated")
    assert runs(fake_probe) == 0


def test_no_gpu_and_no_cpu_variant_is_a_refusal(fake_probe: Path, model: Path) -> None:
    with pytest.raises(PreflightError, match="no GPU of a known class was found and no cpu variant"):
        resolve(str(model), [], DeriveRequest(cpu=False))


def test_a_derived_profile_is_saved_as_init_writes_it_and_runs_from_that_file(
    fake_probe: Path, model: Path
) -> None:
    from orchestrator.model.profilegen import to_yaml
    from orchestrator.profile.schema import parse_profile_file

    resolved = resolve(str(model), [])
    assert resolved.derivation is not None
    assert resolved.profile.path is not None
    saved = Path(resolved.profile.path)
    assert saved.read_text() == to_yaml(resolved.derivation)  # what `mmdemo init` would print
    assert "# from " in saved.read_text()
    assert parse_profile_file(saved) == resolved.profile  # a run of it is a run of that file
    assert resolved.profile.name == "my-llava"


def test_a_launched_run_of_a_model_records_the_derivation(fake_probe: Path, model: Path) -> None:
    from orchestrator.core.options import Options
    from orchestrator.session.targets import Launched

    prepared = Launched(Options(profile=str(model), gpu="cpu")).prepare("2026-12-01T00:00:00+00:00")
    record = prepared.record
    assert record.profile == "my-llava"
    assert record.profile_source is not None
    assert record.profile_source.startswith(f"no profile for {model}: derived one")
    assert record.derivation is not None
    assert record.derivation.values["serve.max_model_len"]  # which value came from where
    assert record.profile_path == prepared.spec.resolved.profile.path
    prepared.spec.version.cancel()
