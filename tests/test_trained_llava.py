"""The trained tiny-llava (orchestrator/tinymodels/llava.py + train_llava.py): its shipped weights, and its
answers on a real CPU `vllm serve` (marker `vllm`).

`mmdemo run cpu-tiny-llava --offline` must get every demo *understood*; the served model must answer
every known-answer image demo of seeds 0, 1 and 2 under greedy decoding, and its answers must follow
the images: an image with its colour channels swapped, another seed's images, each fail the grade.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.profile.schema import load_profile
from orchestrator.tinymodels import llava, train_llava
from tests.trained import (
    assert_every_fact_trained,
    assert_reads_known_images,
    assert_renders_as_profiled,
    assert_retrains,
    assert_shipped_weights_current,
    build,
    chat,
    served,
)

known = train_llava.load_known()
IMAGE_CHATS = ("text-only", "single-image", "multi-image")


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    """The trainer renders every request with exactly the serve flags mmdemo gives the profile's server."""
    assert_renders_as_profiled(train_llava.SERVE_ARGS, "cpu-tiny-llava")
    assert tuple(d.chat_type.value for d in load_profile("cpu-tiny-llava").demos) == IMAGE_CHATS


def test_every_fact_is_trained_not_one_seeds() -> None:
    assert (
        len(train_llava.answers(known)) == 1 + len(known.COLOURS) ** 2
    )  # Paris, each colour, each ordered pair
    assert_every_fact_trained(train_llava, known)


def test_the_shipped_weights_are_those_of_these_scripts() -> None:
    assert_shipped_weights_current(llava, under_mib=4)


# -- on a real CPU vLLM ----------------------------------------------------------------------------


def _ask(port: int, prompt: str, images: list[bytes]) -> str:
    return chat(port, "tiny-llava", prompt, [("image", data) for data in images])


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_the_trained_llava_reads_the_known_images_on_a_real_server(vllm_bin: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-llava"
    done = build(vllm_bin, llava, model)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((model / "mmdemo-model.json").read_text())["weights"] == "trained"

    with served(vllm_bin, model, train_llava.SERVE_ARGS, "tiny-llava") as port:
        assert_reads_known_images(lambda prompt, images: _ask(port, prompt, images), known)


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_retraining_answers_every_fact_and_gives_the_shipped_bits_on_their_cpu(
    vllm_bin: str, tmp_path: Path
) -> None:
    """tests/trained.py's retrain."""
    training = assert_retrains(vllm_bin, llava, tmp_path)
    # another seed trains other weights (and still passes its own check: the build fails otherwise)
    done = build(vllm_bin, llava, tmp_path / "seed1", "--seed", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    seed1 = json.loads((tmp_path / "seed1" / "mmdemo-model.json").read_text())
    assert (seed1["seed"], seed1["weights"], seed1["training"]["shipped"]) == (1, "trained", False)
    assert seed1["training"]["sha256"] != training["sha256"]
