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
import yaml

from orchestrator.profile.expect import grade
from orchestrator.profile.schema import load_profile
from orchestrator.tinymodels import llava, train_llava
from tests.conftest import REPO
from tests.trained import (
    assert_retrains,
    assert_shipped_weights_current,
    build,
    chat,
    served,
    swapped_channels,
)

known = train_llava.load_known()
IMAGE_CHATS = ("text-only", "single-image", "multi-image")


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    serve = yaml.safe_load((REPO / "profiles" / "cpu-tiny-llava.yaml").read_text())["serve"]
    assert serve["limit_mm_per_prompt"] == train_llava.LIMITS
    assert serve["max_model_len"] == train_llava.MAX_MODEL_LEN
    assert serve["dtype"] == "float32"
    assert not {"mm_processor_kwargs", "media_io_kwargs", "chat_template"} & set(serve)
    assert tuple(d.chat_type.value for d in load_profile("cpu-tiny-llava").demos) == IMAGE_CHATS


def test_every_fact_is_trained_not_one_seeds() -> None:
    examples = train_llava.answers(known)
    assert len(examples) == 1 + len(known.COLOURS) ** 2  # Paris, each colour, each ordered pair
    for seed in range(10):
        for chat_type in IMAGE_CHATS:
            demo = known.known_demos(seed, speech=False)[chat_type]
            colours = tuple(m.fact["colour"] for m in demo.media)
            (example,) = [
                e for e in examples if e.chat_type == chat_type and train_llava.colours(e) == colours
            ]
            assert example.prompt == demo.prompt
            assert grade(example.answer, demo.expect, demo.reject, demo.ignore, whole=True) == ((), ())


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

    answers: dict[tuple[int, str], str] = {}
    failures = []
    with served(vllm_bin, model, train_llava.SERVE_ARGS, "tiny-llava") as port:
        for seed in (0, 1, 2):
            for chat_type in IMAGE_CHATS:
                demo = known.known_demos(seed, speech=False)[chat_type]
                answer = _ask(port, demo.prompt, [m.render() for m in demo.media])
                answers[seed, chat_type] = answer
                missing, named = grade(answer, demo.expect, demo.reject, demo.ignore, whole=True)
                if missing or named:
                    failures.append(
                        f"seed {seed} {chat_type}: {answer!r} missing {missing}, distractors {named}"
                    )

        # The answers follow the images, not the prompt: each altered medium fails the grade of the
        # truth it was made from. Seeds 1 and 2 share no colour of an image demo (known.known_demos).
        demos, other = known.known_demos(1, speech=False), known.known_demos(2, speech=False)
        red = known.KnownDemo("single-image", known.PROMPTS["single-image"], (), ("red",), ())
        altered = {
            "red image, channels swapped": (
                red,
                _ask(port, red.prompt, [swapped_channels(known.image_jpeg("red"))]),
            )
        }
        for chat_type in ("single-image", "multi-image"):
            theirs = [m.render() for m in other[chat_type].media]
            altered[f"seed 1 {chat_type} given seed 2's images"] = (
                demos[chat_type],
                _ask(port, demos[chat_type].prompt, theirs),
            )
        a, b = (m.render() for m in demos["multi-image"].media)
        swapped_order = _ask(port, demos["multi-image"].prompt, [b, a])

    print(json.dumps({f"{seed} {chat_type}": a for (seed, chat_type), a in answers.items()}, indent=1))
    print(json.dumps({name: answer for name, (_, answer) in altered.items()}, indent=1))
    assert not failures, "\n".join(failures)
    for name, (demo, answer) in altered.items():
        assert grade(answer, demo.expect, demo.reject, demo.ignore, whole=True) != ((), ()), (name, answer)
    for chat_type in ("single-image", "multi-image"):
        assert answers[1, chat_type] != answers[2, chat_type]
    # two images in the other order: the same colours, named in the other order
    first, second = (m.fact["colour"] for m in demos["multi-image"].media)
    assert swapped_order == f"{second.capitalize()} and {first}.", swapped_order


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
