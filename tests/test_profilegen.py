"""profilegen: a derivation as commented YAML that parses back into an equal Profile."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.model.derive import Derivation, DeriveOptions, derive
from orchestrator.model.profilegen import flow, to_yaml
from orchestrator.model.weights import Weights
from orchestrator.profile.schema import parse_profile_file, parse_profile_text
from orchestrator.vllm.probe import ModelFacts

FACTS = Path(__file__).parent / "models" / "facts"


def derivation(name: str, gpus: str = "", **options: object) -> Derivation:
    facts = ModelFacts.model_validate_json((FACTS / f"{name}.json").read_text())
    if name == "tiny-qwen2vl":  # a video that needs fewer frames: media_io_kwargs in the file
        facts = facts.model_copy(update={"video_tokens": {32: 19_000, 16: 9_600}, "max_model_len": 32768})
    found = [g for c in gpus.split(",") if c for g in gpus_of_class(c)]
    return derive(facts, Weights(14_000_000_000, ("w",), "sizes"), found, DeriveOptions(name=name, **options))  # type: ignore[arg-type]


CASES = {
    "tiny cpu": lambda: derivation("tiny-omni", random_weights=True, served_model_name="tiny-omni"),
    "remote code": lambda: derivation("tiny-phi3v", random_weights=True, trust_remote_code=True),
    "text only": lambda: derivation("tiny-text", random_weights=True),
    "fewer frames": lambda: derivation("tiny-qwen2vl", random_weights=True),
    "gpus, gated, revision": lambda: derivation("llava-1.5-7b-hf", "H100,L4,T4", gated=True, revision="v1.0"),
    "a real model on cpu": lambda: derivation("llava-1.5-7b-hf"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_yaml_parses_back_into_the_same_profile(case: str, tmp_path: Path) -> None:
    derived = CASES[case]()
    text = to_yaml(derived)
    again = parse_profile_text(text, "derived.yaml", default_name=derived.profile.name)
    assert again == derived.profile.model_copy(update={"path": "derived.yaml"})
    path = tmp_path / f"{derived.profile.name}.yaml"
    path.write_text(text)
    assert parse_profile_file(path).model_copy(update={"path": None}) == derived.profile


@pytest.mark.parametrize("case", CASES)
def test_each_derived_value_is_followed_by_where_it_came_from(case: str) -> None:
    derived = CASES[case]()
    text = to_yaml(derived)
    assert text.count("  # from ") == len(derived.provenance)
    for line in text.splitlines():
        assert len(line) <= 110 or "# from " in line, line  # only a comment may run long


def test_a_shown_variant_and_its_comment() -> None:
    text = to_yaml(derivation("llava-1.5-7b-hf", "L4"))
    assert "\n  L4:  # from 13.0 GiB weights + 1.0 GiB KV cache (2048 tokens)" in text
    assert "\n    requires: {gpu_memory_gib: 20.5, gpu_count: 1}\n" in text
    assert "\n  limit_mm_per_prompt: {image: 2}  # from the most of each modality" in text


@pytest.mark.parametrize(
    ("value", "shown"),
    [("0.32", "'0.32'"), ("0.32.0", "0.32.0"), ("${HF_TOKEN}", "${HF_TOKEN}"), ("a: b", "'a: b'"),
     ("0", "'0'"), (True, "true"), ({"image": 2}, "{image: 2}"), (["--revision", "x"], "[--revision, x]")],
)  # fmt: skip
def test_a_value_is_quoted_where_yaml_would_read_it_otherwise(value: object, shown: str) -> None:
    assert flow(value) == shown
