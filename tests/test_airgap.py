"""An air-gapped box: the hub takes no connection. A hub id whose snapshot is complete in the HF cache plans,
derives, writes its profile and runs (the fake `vllm serve`, the stand-in probe) with no request to the hub;
a hub id not in the cache is one line, exit 3, naming the cache searched and how to fill it.

In-process (`cli.main`), so that the stand-in model probe (the `fake_probe` fixture) answers for vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.profile.schema import parse_profile_file
from tests.conftest import FAKE
from tests.fake_hub import RefusingHub, refusing
from tests.hub_models import cache_snapshot, llava_snapshot_files

REPO_ID = "airgap-org/tiny-llava"


@dataclass(frozen=True)
class Box:
    hub: RefusingHub  # every connection dropped, and counted
    hub_cache: Path
    snapshot: Path  # REPO_ID's, complete
    offline: bool  # HF_HUB_OFFLINE=1; else the hub is only out of reach


@pytest.fixture(params=[True, False], ids=["HF_HUB_OFFLINE", "no-route"])
def box(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_probe: Path
) -> Iterator[Box]:
    hub_cache = tmp_path / "hf-hub"
    snapshot = cache_snapshot(hub_cache, REPO_ID, llava_snapshot_files())
    with refusing() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
        monkeypatch.delenv("HF_HOME", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        if request.param:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield Box(hub, hub_cache, snapshot, request.param)


def why(box: Box) -> str:
    return "HF_HUB_OFFLINE is set" if box.offline else f"the hub at {box.hub.url} cannot be reached ("


def asked_the_hub(box: Box) -> bool:
    """Whether anything knocked at the hub: never with HF_HUB_OFFLINE; without it, the one failed try."""
    return box.hub.connections > 0


def test_plan_of_a_cached_hub_id_derives_from_the_files_on_disk(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", REPO_ID, "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert f"# no profile for {REPO_ID}: derived one from vLLM 0.32.0's facts" in out
    assert f"serve {REPO_ID} " in out  # vLLM loads the hub id from the same cache
    assert asked_the_hub(box) is not box.offline


def test_init_writes_the_profile_of_a_cached_hub_id(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.yaml"
    assert main(["init", REPO_ID, "--gpu", "H100", "-o", str(out)]) == 0
    profile = parse_profile_file(out)
    assert profile.model == REPO_ID
    assert "H100" in profile.variants
    text = " ".join(
        out.read_text().replace("#", " ").replace("note:", " ").split()
    )  # the comments, unwrapped
    assert (
        f"1 weight file(s) in {box.snapshot}" in text
    )  # sizes from the files on disk, not the hub's listing
    assert why(box) in text  # the note says the hub was not asked, and why
    assert asked_the_hub(box) is not box.offline


def test_run_of_a_cached_hub_id_passes_against_the_fake_server(
    box: Box, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    argv = ["run", REPO_ID, "--vllm-bin", str(FAKE), "--gpu", "cpu", "--offline", "--only", "text-only"]
    code = main([*argv, "--runs-dir", str(runs), "--grace", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    report = json.loads(next(runs.glob("*/report.json")).read_text())
    assert report["model"] == REPO_ID
    assert report["download"]["path"] == str(box.snapshot)  # the cache's snapshot, nothing downloaded
    assert (report["download"]["bytes_downloaded"], report["download"]["hf_cache"]) == (0, str(box.hub_cache))
    assert any(why(box) in note for note in report["derivation"]["notes"])
    assert asked_the_hub(box) is not box.offline


@pytest.mark.parametrize("command", ["plan", "init", "run"])
def test_a_hub_id_not_in_the_cache_is_one_line_exit_3(
    box: Box, command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ["--runs-dir", str(tmp_path / "runs"), "--vllm-bin", str(FAKE)] if command == "run" else []
    assert main([command, "airgap-org/absent", "--gpu", "H100", *extra]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: airgap-org/absent is not in the HF cache {box.hub_cache} and {why(box)}")
    assert "run `hf download airgap-org/absent`" in err
    assert f"copy its models--airgap-org--absent folder into {box.hub_cache}" in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory


def test_an_incomplete_cached_snapshot_says_what_it_lacks(
    box: Box, capsys: pytest.CaptureFixture[str]
) -> None:
    (box.snapshot / "model.safetensors").unlink()  # e.g. what a download of the small files alone leaves
    assert main(["plan", REPO_ID, "--gpu", "H100"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {REPO_ID} is incomplete in the HF cache {box.hub_cache} (no weight files) and "
    )
    assert err.count("\n") == 1
