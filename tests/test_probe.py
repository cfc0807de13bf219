"""probe: the model probe's subprocess, its typed answer and its cache (a stand-in script, no vLLM)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.background import background
from orchestrator.core.errors import PreflightError
from orchestrator.vllm.probe import ModelFacts, ProbeRequest, probe
from orchestrator.vllm.runner import VllmInfo


def request(model: object, **changes: Any) -> ProbeRequest:
    """A probe of `model` run by this interpreter, as if by vLLM 0.32.0+cpu."""
    version = changes.pop("vllm_version", "0.32.0+cpu")
    return ProbeRequest(str(model), VllmInfo("/x/vllm", version, python=sys.executable), **changes)


def count(runs: Path) -> int:
    return len(runs.read_text().splitlines())


@pytest.fixture
def runs(fake_probe: Path) -> Path:
    return fake_probe


@pytest.fixture
def model(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text('{"architectures": ["LlavaForConditionalGeneration"]}')
    (directory / "model.safetensors").write_bytes(b"weights")
    return directory


def test_a_second_probe_pays_nothing(runs: Path, model: Path, tmp_path: Path) -> None:
    asked = request(str(model))
    first = probe(asked)
    assert isinstance(first, ModelFacts)
    assert first.video_tokens == {8: 64}
    assert probe(asked) == first
    assert count(runs) == 1
    assert len(list((tmp_path / "cache" / "probes").glob("*.json"))) == 1


def test_the_cache_key_is_the_files_the_version_and_the_options(
    runs: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe(request(str(model)))
    (model / "model.safetensors").write_bytes(b"other weights")  # weights do not change the facts
    probe(request(str(model)))
    assert count(runs) == 1
    (model / "config.json").write_text('{"architectures": ["Other"]}')
    probe(request(str(model)))
    assert count(runs) == 2
    probe(request(str(model), trust_remote_code=True))
    assert count(runs) == 3
    probe(request("org/name", commit="a" * 40))
    probe(request("org/name", commit="b" * 40))  # the repo moved on: probe again
    assert count(runs) == 5
    probe(request(str(model), vllm_version="0.33.0"))
    assert count(runs) == 6
    probe(request(str(model), use_cache=False))
    assert count(runs) == 7


@pytest.mark.parametrize(("mode", "cached"), [("unsupported", True), ("config-error", False)])
def test_only_refusals_that_depend_on_the_files_are_cached(
    mode: str, cached: bool, runs: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROBE_MODE", mode)
    assert probe(request(str(model))).error is not None
    probe(request(str(model)))
    assert count(runs) == (1 if cached else 2)


def test_an_answer_that_is_not_facts_is_one_line_with_the_last_words(
    runs: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_PROBE_MODE", "garbage")
    with pytest.raises(PreflightError) as caught:
        probe(request(str(model)))
    assert str(caught.value) == (
        "vLLM's model probe (fake_model_facts.py) failed (exit 1): RuntimeError: vLLM exploded"
    )
    assert caught.value.hint is not None


def test_a_probe_past_its_timeout_is_ended_with_its_children(
    runs: Path, model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The census (conftest) fails the test if the sleeping grandchild outlives it."""
    monkeypatch.setenv("FAKE_PROBE_MODE", "hang")
    with pytest.raises(PreflightError, match="did not answer within 2 s"):
        probe(request(str(model), timeout_s=2))


def test_the_probe_runs_in_the_background(runs: Path, model: Path) -> None:
    future = background(probe, request(str(model)))
    assert future.result(timeout=60).model == str(model)
