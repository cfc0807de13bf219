"""weights: the bytes vLLM would load, from a directory or the hub's listing; gated repos refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.errors import HubUnreachable, PreflightError
from orchestrator.core.hfenv import HfEnv
from orchestrator.model.weights import (
    check_access,
    hub_repo,
    hub_weights,
    local_weights,
    snapshot_gap,
    weight_files,
)
from tests.conftest import free_port
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


def at(hub: FakeHub, token: str | None = None, *, offline: bool = False) -> HfEnv:
    """Where the hub is and the token to show it (no token file is read)."""
    return HfEnv(hub_cache=Path("/nonexistent/hub"), endpoint=hub.url, offline=offline, env_token=token)


def test_the_hub_tells_sizes_commit_and_parameters_without_a_download(hub: FakeHub) -> None:
    before = len(hub.requests)  # the session's hub has answered other tests too
    repo = hub_repo(LLAVA_ID, None, at(hub))
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
        hub_repo("nobody/nothing", None, at(hub))
    with pytest.raises(PreflightError, match="the hub has no revision 'v9'"):
        hub_repo(LLAVA_ID, "v9", at(hub))
    with pytest.raises(HubUnreachable, match="HF_HUB_OFFLINE is set") as offline:
        hub_repo(LLAVA_ID, None, at(hub, offline=True))
    assert offline.value.why == "HF_HUB_OFFLINE is set"


def test_a_gated_repo_needs_a_token_it_accepts(hub: FakeHub) -> None:
    repo = hub_repo(GATED, None, at(hub))
    assert repo.gated is True
    with pytest.raises(PreflightError) as caught:
        check_access(repo, at(hub))
    assert str(caught.value) == f"{GATED} is a gated model and no Hugging Face token is set"
    assert caught.value.hint is not None
    assert "HF_TOKEN" in caught.value.hint
    with pytest.raises(PreflightError, match="the hub refuses this token access to it"):
        check_access(repo, at(hub, "wrong-token"))
    check_access(repo, at(hub, "good-token"))
    check_access(hub_repo(LLAVA_ID, None, at(hub)), at(hub))  # not gated: nothing asked


def test_a_hub_that_cannot_be_reached_is_hub_unreachable_not_a_crash() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused
    env = HfEnv(hub_cache=Path("/nonexistent/hub"), endpoint=endpoint)
    with pytest.raises(HubUnreachable) as err:
        hub_repo(LLAVA_ID, None, env)
    assert err.value.why.startswith(f"the hub at {endpoint} cannot be reached (ConnectError: ")
    assert err.value.exit_code == 3
    assert "\n" not in str(err.value)


def snapshot(tmp_path: Path, files: dict[str, bytes]) -> Path:
    """A snapshot folder as the HF cache keeps it: refs/main -> snapshots/<commit>/ (files written)."""
    commit = "c" * 40
    folder = tmp_path / "hub" / "models--org--m" / "snapshots" / commit
    folder.mkdir(parents=True)
    (tmp_path / "hub" / "models--org--m" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--m" / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


INDEX = b'{"metadata": {}, "weight_map": {"a": "model-1-of-2.safetensors", "b": "model-2-of-2.safetensors"}}'


@pytest.mark.parametrize(
    ("files", "gap"),
    [
        ({"config.json": b"{}", "model.safetensors": b"w"}, None),
        ({"config.json": b"{}", "pytorch_model.bin": b"w"}, None),
        ({"model.safetensors": b"w"}, "no config.json"),
        ({"config.json": b"{}", "tokenizer.json": b"{}"}, "no weight files"),
        (
            {"config.json": b"{}", "model.safetensors.index.json": INDEX, "model-1-of-2.safetensors": b"w"},
            "1 of the 2 weight shards in model.safetensors.index.json missing, model-2-of-2.safetensors first",
        ),
        (
            {"config.json": b"{}", "model.safetensors.index.json": INDEX}
            | {"model-1-of-2.safetensors": b"w", "model-2-of-2.safetensors": b"w"},
            None,
        ),
        (
            {"config.json": b"{}", "model.safetensors.index.json": b"[", "x.safetensors": b"w"},
            "model.safetensors.index.json does not parse",
        ),
    ],
)
def test_a_cached_snapshot_is_complete_only_with_its_config_and_every_weight(
    tmp_path: Path, files: dict[str, bytes], gap: str | None
) -> None:
    folder = snapshot(tmp_path, files)
    assert snapshot_gap(folder) == gap
    env = HfEnv(hub_cache=tmp_path / "hub")
    assert env.snapshot("org/m") == folder
    assert env.snapshot("org/m", "c" * 40) == folder
    assert env.snapshot("org/m", "v2") is None
    assert env.snapshot("org/other") is None
