"""The trained tiny-qwen2vl (orchestrator/tinymodels/qwen2vl.py + train_qwen2vl.py): its shipped weights,
and its answers on a real CPU `vllm serve` (marker `vllm`).

The served model must answer every known-answer image and video demo of seeds 0, 1 and 2 under greedy
decoding, and its answers must follow the media: an image with its colour channels swapped, another
seed's media, a video with its frames reversed, each fail the grade. `mmdemo run cpu-tiny-qwen2vl
--offline` (every demo but the worst case understood, with the trained sentence) is
tests/test_vllm_seeds.py's run of the profile: one server start per shipped tiny profile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.profile.expect import grade
from orchestrator.profile.schema import load_profile
from orchestrator.tinymodels import qwen2vl, train_qwen2vl
from tests.trained import (
    assert_every_fact_trained,
    assert_renders_as_profiled,
    assert_retrains,
    assert_shipped_weights_current,
    build,
    chat,
    reversed_mp4,
    served,
    swapped_channels,
)

known = train_qwen2vl.load_known()
CHATS = ("text-only", "single-image", "multi-image", "video")
MEDIA_CHATS = CHATS[1:]


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    """The trainer renders every request with exactly the serve flags mmdemo gives the profile's server."""
    assert_renders_as_profiled(train_qwen2vl.SERVE_ARGS, "cpu-tiny-qwen2vl")
    assert tuple(d.chat_type.value for d in load_profile("cpu-tiny-qwen2vl").demos) == CHATS


def test_every_fact_is_trained_not_one_seeds() -> None:
    # Paris, each colour, each ordered pair, each colour x direction
    assert len(train_qwen2vl.answers(known)) == 1 + len(known.COLOURS) ** 2 + len(known.COLOURS) * len(
        known.DIRECTIONS
    )
    assert_every_fact_trained(train_qwen2vl, known)


def test_the_shipped_weights_are_those_of_these_scripts() -> None:
    assert_shipped_weights_current(qwen2vl, under_mib=4)


# -- on a real CPU vLLM ----------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_the_trained_qwen2vl_reads_the_known_media_on_a_real_server(vllm_bin: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-qwen2vl"
    done = build(vllm_bin, qwen2vl, model)
    assert done.returncode == 0, done.stdout + done.stderr
    marker = json.loads((model / "mmdemo-model.json").read_text())
    assert (marker["weights"], marker["training"]["shipped"]) == ("trained", True), marker

    answers: dict[tuple[int, str], str] = {}
    failures = []
    with served(vllm_bin, model, train_qwen2vl.SERVE_ARGS, "tiny-qwen2vl") as port:
        for seed in (0, 1, 2):
            for chat_type in CHATS:
                demo = known.known_demos(seed, speech=False)[chat_type]
                answer = chat(port, "tiny-qwen2vl", demo.prompt, [(m.kind, m.render()) for m in demo.media])
                answers[seed, chat_type] = answer
                missing, named = grade(answer, demo.expect, demo.reject, demo.ignore, whole=True)
                if missing or named:
                    failures.append(
                        f"seed {seed} {chat_type}: {answer!r} missing {missing}, distractors {named}"
                    )

        # The answers follow the media, not the prompt: each altered medium fails the grade of the
        # truth it was made from. Seeds 1 and 2 share no fact of a media demo (known.known_demos).
        demos, other = known.known_demos(1, speech=False), known.known_demos(2, speech=False)
        red = known.KnownDemo("single-image", known.PROMPTS["single-image"], (), ("red",), ())
        video = demos["video"]
        fact = video.media[0].fact
        backwards = chat(
            port, "tiny-qwen2vl", video.prompt, [("video", reversed_mp4(fact["colour"], fact["direction"]))]
        )
        altered = {
            "red image, channels swapped": (
                red,
                chat(
                    port, "tiny-qwen2vl", red.prompt, [("image", swapped_channels(known.image_jpeg("red")))]
                ),
            ),
            "seed 1 video, frames reversed": (video, backwards),
        }
        for chat_type in MEDIA_CHATS:
            theirs = [(m.kind, m.render()) for m in other[chat_type].media]
            altered[f"seed 1 {chat_type} given seed 2's media"] = (
                demos[chat_type],
                chat(port, "tiny-qwen2vl", demos[chat_type].prompt, theirs),
            )

    print(json.dumps({f"{seed} {chat_type}": a for (seed, chat_type), a in answers.items()}, indent=1))
    print(json.dumps({name: answer for name, (_, answer) in altered.items()}, indent=1))
    assert not failures, "\n".join(failures)
    for name, (demo, answer) in altered.items():
        assert grade(answer, demo.expect, demo.reject, demo.ignore, whole=True) != ((), ()), (name, answer)
    assert fact["direction"] not in backwards.casefold(), backwards
    for chat_type in MEDIA_CHATS:
        assert answers[1, chat_type] != answers[2, chat_type]


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_retraining_answers_every_fact_and_gives_the_shipped_bits_on_their_cpu(
    vllm_bin: str, tmp_path: Path
) -> None:
    """tests/trained.py's retrain. Another seed trains in tests/test_trained_llava.py only (the cheapest
    model; the recipe, trainkit.py, is shared): test_vllm_seeds.py builds seed 1 with --random."""
    assert_retrains(vllm_bin, qwen2vl, tmp_path, timeout=540)
