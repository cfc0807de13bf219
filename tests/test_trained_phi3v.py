"""The trained tiny-phi3v (orchestrator/tinymodels/phi3v.py + train_phi3v.py): its shipped weights, and its
answers on a real CPU `vllm serve` (marker `vllm`).

`mmdemo run cpu-tiny-phi3v --offline --media known` gets every demo *understood* (tests/test_vllm_seeds.py,
one server start per shipped tiny profile); here the served model must answer every known-answer image
demo of seeds 0, 1 and 2 under greedy decoding, and its answers must follow the images: an image with
its colour channels swapped, another seed's images, each fail the grade. Its CLIP tower is vLLM's
hard-coded ViT-L width left at its seeded random weights (train_phi3v.py). Another seed, another random
tower, trains too (seed 1: all 65 facts right, in the fresh-clone CI run of 2026-12-08; 2 min, since left out:
tests/test_trained_llava.py trains another seed of the shared recipe).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.profile.schema import load_profile
from orchestrator.tinymodels import phi3v, train_phi3v
from tests.trained import (
    assert_every_fact_trained,
    assert_reads_known_images,
    assert_renders_as_profiled,
    assert_retrains,
    assert_shipped_weights_current,
    build,
    chat,
    compare_bits,
    served,
)

known = train_phi3v.load_known()
IMAGE_CHATS = ("text-only", "single-image", "multi-image")


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    """The trainer renders every request with exactly the serve flags mmdemo gives the profile's server."""
    assert_renders_as_profiled(train_phi3v.SERVE_ARGS, "cpu-tiny-phi3v")
    assert tuple(d.chat_type.value for d in load_profile("cpu-tiny-phi3v").demos) == IMAGE_CHATS


def test_the_profile_declares_the_trained_truth_of_the_text() -> None:
    demos = {d.chat_type.value: d for d in load_profile("cpu-tiny-phi3v").demos}
    assert demos["text-only"].expect == ("paris",)
    assert all(d.max_completion_tokens == known.KNOWN_MAX_TOKENS for d in demos.values())


def test_every_fact_is_trained_not_one_seeds() -> None:
    assert (
        len(train_phi3v.answers(known)) == 1 + len(known.COLOURS) ** 2
    )  # Paris, each colour, each ordered pair
    assert_every_fact_trained(train_phi3v, known)


def test_the_shipped_weights_are_those_of_these_scripts() -> None:
    """Packing: only what training changed (the CLIP tower and the vocabulary's filler rows are
    regenerated from the seed by a build), ~2 MB of the model's ~73 MB."""
    assert_shipped_weights_current(phi3v, under_mib=4)
    info = json.loads(phi3v.TRAINED.shipped_info_path.read_text())
    assert info["examples"] == len(train_phi3v.answers(known))
    assert info["margin"] > 1.0  # every trained token's logit leads the next best: room for vLLM's kernels
    assert info["timings"]["total_s"] < 180  # the training budget: 3 minutes on 2 CPU cores


# -- on a real CPU vLLM ----------------------------------------------------------------------------


def _ask(port: int, prompt: str, images: list[bytes]) -> str:
    return chat(port, "tiny-phi3v", prompt, [("image", data) for data in images])


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_the_trained_phi3v_reads_the_known_images_on_a_real_server(vllm_bin: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-phi3v"
    done = build(vllm_bin, phi3v, model)
    assert done.returncode == 0, done.stdout + done.stderr
    marker = json.loads((model / "mmdemo-model.json").read_text())
    assert (marker["weights"], marker["training"]["shipped"]) == ("trained", True)

    with served(vllm_bin, model, train_phi3v.SERVE_ARGS, "tiny-phi3v") as port:
        assert_reads_known_images(lambda prompt, images: _ask(port, prompt, images), known)


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_retraining_answers_every_fact_and_gives_the_shipped_bits_on_their_cpu(
    vllm_bin: str, tmp_path: Path
) -> None:
    """tests/trained.py's retrain (its packed weights' sha256); where the bits compare, the whole
    model.safetensors too: the shipped packing put back on the seeded weights is the trained model.
    Another seed's training: see the module's docstring."""
    info = json.loads(phi3v.TRAINED.shipped_info_path.read_text())
    training = assert_retrains(vllm_bin, phi3v, tmp_path)
    if compare_bits(info, training) is None:
        assert training["model_sha256"] == info["model_sha256"]
