"""modelref: a profile, a model directory or a hub id; and the profile of a model, which wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import ProfileError
from orchestrator.model.ref import HubModel, LocalModel, ProfileRef, matching_profile, parse_ref

REPO = Path(__file__).parent.parent


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated cache with a built-looking tiny-llava (a config.json is all a model dir needs here)."""
    monkeypatch.setenv("MMDEMO_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "cache" / "models" / "tiny-llava"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    return tmp_path / "cache"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu-tiny-omni", ProfileRef("cpu-tiny-omni")),
        ("profiles/llava-1.5-7b.yaml", ProfileRef("profiles/llava-1.5-7b.yaml")),
        ("missing.yml", ProfileRef("missing.yml")),
        ("Qwen/Qwen2.5-VL-7B-Instruct", HubModel("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")),
        ("llava-hf/llava-1.5-7b-hf@a1b2c3", HubModel("llava-hf/llava-1.5-7b-hf@a1b2c3", "llava-hf/llava-1.5-7b-hf", "a1b2c3")),
        ("org/name@refs/pr/1", HubModel("org/name@refs/pr/1", "org/name", "refs/pr/1")),
        ("./relative/not-there", ProfileRef("./relative/not-there")),
        ("a/b/c", ProfileRef("a/b/c")),
    ],
)  # fmt: skip
def test_what_was_typed(text: str, expected: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert parse_ref(text) == expected


def test_a_model_directory_and_a_built_tiny_model_are_local_models(cache: Path, tmp_path: Path) -> None:
    model = cache / "models" / "tiny-llava"
    link = tmp_path / "link"
    link.symlink_to(model)
    for text in (str(model), str(link), "mmdemo:tiny-llava"):
        ref = parse_ref(text)
        assert isinstance(ref, LocalModel)
        assert ref.path == model.resolve()
        assert ref.name == "tiny-llava"


def test_a_directory_without_config_is_neither(tmp_path: Path) -> None:
    with pytest.raises(
        ProfileError, match=r"a directory with no config\.json: neither a profile file nor a model"
    ):
        parse_ref(str(tmp_path))


def test_the_shipped_profile_of_a_model_wins(cache: Path) -> None:
    local = matching_profile(parse_ref(str(cache / "models" / "tiny-llava")))  # type: ignore[arg-type]
    assert local is not None
    assert (local.name, local.shipped) == ("cpu-tiny-llava", True)
    assert local.line.startswith("using the shipped profile 'cpu-tiny-llava' (")
    hub = matching_profile(HubModel("LLaVA-hf/llava-1.5-7B-hf", "LLaVA-hf/llava-1.5-7B-hf"))
    assert hub is not None
    assert hub.name == "llava-1.5-7b"


def test_a_user_profile_comes_first_and_a_revision_matches_none(cache: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    text = (REPO / "profiles" / "llava-1.5-7b.yaml").read_text()
    (mine / "my-llava.yaml").write_text(text)
    found = matching_profile(HubModel("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-7b-hf"), str(mine))
    assert found is not None
    assert (found.name, found.shipped) == ("my-llava", False)
    assert matching_profile(HubModel("x", "llava-hf/llava-1.5-7b-hf", "main"), str(mine)) is None
    assert matching_profile(HubModel("x", "nobody/nothing")) is None
