"""weights: the bytes vLLM would load, from a directory or the hub's listing; gated repos refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.model.weights import check_access, hub_repo, hub_weights, local_weights, weight_files
from tests.fake_hub import FakeHub
from tests.hub_models import LLAVA_ID, LLAVA_PARAMETERS, LLAVA_SHARDS, llava_repo

GATED = "gated-org/llava-gated"


@pytest.mark.parametrize(
    ("listing", "chosen"),
    [
        ({"model.safetensors": 5, "config.json": 1}, {"model.safetensors"}),
        ({"model-1.safetensors": 5, "model-2.safetensors": 5, "pytorch_model.bin": 10}, {"model-1.safetensors", "model-2.safetensors"}),
        ({"consolidated.safetensors": 9, "model-1.safetensors": 5}, {"model-1.safetensors"}),
        ({"consolidated.safetensors": 9}, {"consolidated.safetensors"}),
        ({"pytorch_model-1.bin": 5, "training_args.bin": 1, "optimizer.pt": 9}, {"pytorch_model-1.bin"}),
        ({"onnx/model.safetensors": 5, "model.bin": 3}, {"model.bin"}),
        ({"config.json": 1}, set()),
    ],
)  # fmt: skip
def test_the_files_vllm_loads(listing: dict[str, int], chosen: set[str]) -> None:
    assert set(weight_files(listing)) == chosen


def test_a_local_directory(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    (tmp_path / "config.json").write_text("{}")
    weights = local_weights(tmp_path)
    assert (weights.bytes, weights.files) == (1000, ("model.safetensors",))
    assert str(tmp_path) in weights.source


@pytest.fixture
def hub(session_hub: FakeHub) -> Iterator[FakeHub]:
    """The session hub with llava-1.5-7b's files (weights listed, never served) and a gated copy."""
    session_hub.repos[LLAVA_ID] = llava_repo()
    session_hub.repos[GATED] = llava_repo(GATED, gated=True, tokens=frozenset({"good-token"}))
    yield session_hub
    for repo_id in (LLAVA_ID, GATED):
        session_hub.repos.pop(repo_id, None)


def at(hub: FakeHub, token: str | None = None) -> dict[str, Any]:
    """Where the hub is and the token to show it."""
    return {"endpoint": hub.url, "token": token}


def test_the_hub_tells_sizes_commit_and_parameters_without_a_download(hub: FakeHub) -> None:
    before = len(hub.requests)  # the session's hub has answered other tests too
    repo = hub_repo(LLAVA_ID, None, **at(hub))
    assert repo.sha == hub.repos[LLAVA_ID].sha
    assert repo.gated is False
    weights = hub_weights(repo)
    assert weights.bytes == sum(LLAVA_SHARDS.values())
    assert weights.files == tuple(sorted(LLAVA_SHARDS))
    assert dict(weights.parameters) == LLAVA_PARAMETERS
    assert f"@{repo.sha[:12]}" in weights.source
    assert all(not hub.downloads(name) for name in LLAVA_SHARDS)
    assert [r.path for r in hub.requests[before:]] == [f"/api/models/{LLAVA_ID}"]  # one request


def test_a_missing_repo_or_revision_is_one_line(hub: FakeHub) -> None:
    with pytest.raises(PreflightError, match="no model 'nobody/nothing' on the hub"):
        hub_repo("nobody/nothing", None, **at(hub))
    with pytest.raises(PreflightError, match="the hub has no revision 'v9'"):
        hub_repo(LLAVA_ID, "v9", **at(hub))
    with pytest.raises(PreflightError, match="HF_HUB_OFFLINE is set"):
        hub_repo(LLAVA_ID, None, **at(hub), offline=True)


def test_a_gated_repo_needs_a_token_it_accepts(hub: FakeHub) -> None:
    repo = hub_repo(GATED, None, **at(hub))
    assert repo.gated is True
    with pytest.raises(PreflightError) as caught:
        check_access(repo, **at(hub))
    assert str(caught.value) == f"{GATED} is a gated model and no Hugging Face token is set"
    assert caught.value.hint is not None
    assert "HF_TOKEN" in caught.value.hint
    with pytest.raises(PreflightError, match="the hub refuses this token access to it"):
        check_access(repo, **at(hub, "wrong-token"))
    check_access(repo, **at(hub, "good-token"))
    check_access(hub_repo(LLAVA_ID, None, **at(hub)), **at(hub))  # not gated: nothing asked
