"""The known-answer media (orchestrator/media/known.py): deterministic bytes, facts chosen by the
seed, media any decoder reads and whose content is the fact, and the espeak-missing path."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from orchestrator.media import known
from orchestrator.profile.expect import check_expect
from tests.conftest import missing

KNOWN_PY = Path(known.__file__)
MEDIA_CHAT_TYPES = ("single-image", "multi-image", "video", "audio", "multi-audio")


def need_espeak() -> None:
    if known.espeak_missing():
        missing("espeak-ng is not installed (make install-espeak)")


def passes(answer: str, demo: known.KnownDemo) -> bool:
    """The grading rule the known demos are built for: every group found, no distractor."""
    return not check_expect(answer, demo.expect)[1] and not check_expect(answer, demo.reject)[0]


# -- the contract the tiny-model trainer relies on ---------------------------------------------------


def test_contract_names() -> None:
    assert known.DEFAULT_SEED == 0
    assert set(known.COLOURS) == set(known.COLOUR_RGB)
    assert len(known.COLOURS) >= 8
    assert known.DIRECTIONS == ("left", "right", "up", "down")
    assert len(set(known.SPOKEN)) == len(known.SPOKEN) >= 8
    assert set(known.PROMPTS) == {"text-only", *MEDIA_CHAT_TYPES}
    assert known.PROMPTS["text-only"] == "What's the capital of France?"
    rgb = list(known.COLOUR_RGB.values())
    for i, a in enumerate(rgb):  # visually distinct, and none is the background
        assert sum(abs(x - y) for x, y in zip(a, known.BACKGROUND_RGB, strict=True)) > 150
        for b in rgb[i + 1 :]:
            assert sum(abs(x - y) for x, y in zip(a, b, strict=True)) > 100


def test_standalone_import_by_path() -> None:
    """The trainer loads known.py by path in vLLM's Python: it must import nothing of mmdemo."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('known', {str(KNOWN_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['known'] = m\n"
        "spec.loader.exec_module(m)\n"
        "d = m.known_demos(1, speech=False)\n"
        "assert d['single-image'].media[0].render()[:2] == b'\\xff\\xd8'\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('orchestrator', 'tests'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-I", "-c", code], check=True, cwd="/")


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_demos_are_consistent(seed: int) -> None:
    demos = known.known_demos(seed, speech=False)
    assert set(demos) == set(known.PROMPTS)
    for chat_type, demo in demos.items():
        assert demo.chat_type == chat_type
        assert demo.expect
        assert demo.reject
        assert passes(demo.answer, demo), (chat_type, demo.answer)
        # Naming every distractor as well fails: a list of every colour must not pass.
        assert not passes(demo.answer + " " + " ".join(demo.reject), demo)
        assert not passes("", demo)
        assert demo.facts == tuple(m.fact for m in demo.media)
        for medium in demo.media:
            assert medium.key.startswith(f"known-v{known.GENERATOR_VERSION}-{medium.kind}-")
            assert all(v in medium.key for v in medium.fact.values())
    assert len(demos["multi-image"].media) == 2
    assert demos["multi-image"].media[0].fact != demos["multi-image"].media[1].fact
    assert len(demos["multi-audio"].media) == 2
    assert demos["multi-audio"].media[0].fact != demos["multi-audio"].media[1].fact
    assert set(demos["video"].media[0].fact) == {"colour", "direction"}


def test_every_wrong_single_answer_fails() -> None:
    demo = known.known_demos(3, speech=True)
    truth = demo["single-image"].media[0].fact["colour"]
    for colour in known.COLOURS:
        assert passes(f"The shape is {colour}.", demo["single-image"]) is (colour == truth)
    video = demo["video"]
    colour, direction = video.media[0].fact["colour"], video.media[0].fact["direction"]
    for d in known.DIRECTIONS:
        assert passes(f"{colour.title()}, moving {d}.", video) is (d == direction)
    word = demo["audio"].media[0].fact["word"]
    for w in known.SPOKEN:
        assert passes(f"{w.title()}.", demo["audio"]) is (w == word)
    assert not passes("The capital of France is Paris, not London.", demo["text-only"])
    assert passes("The capital of France is Paris.", demo["text-only"])


@pytest.mark.parametrize("speech", [True, False])
def test_seeds_one_and_two_differ(speech: bool) -> None:
    one, two = known.known_demos(1, speech=speech), known.known_demos(2, speech=speech)
    for chat_type in MEDIA_CHAT_TYPES:
        assert one[chat_type].facts != two[chat_type].facts, chat_type
        assert one[chat_type].expect != two[chat_type].expect, chat_type
    assert known.known_demos(1, speech=speech) == one  # the same seed, the same facts


def test_speech_follows_espeak(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MMDEMO_ESPEAK", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    reason = known.espeak_missing()
    assert reason
    assert "\n" not in reason
    assert "espeak-ng" in reason
    demos = known.known_demos(1)
    assert "beeps" in demos["audio"].media[0].fact
    assert demos["audio"].prompt == known.TONE_PROMPTS["audio"]
    with pytest.raises(known.KnownMediaUnavailable, match="espeak-ng is not installed") as e:
        known.audio_wav("tokyo")
    assert "\n" not in str(e.value)


def test_espeak_failing_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "espeak-ng"
    fake.write_text("#!/bin/sh\necho 'no voice here' >&2\necho 'Error: voice not found' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MMDEMO_ESPEAK", str(fake))
    with pytest.raises(known.KnownMediaUnavailable) as e:
        known.audio_wav("tokyo")
    assert str(e.value) == "espeak-ng failed (exit 1): Error: voice not found"


# -- the bytes ---------------------------------------------------------------------------------------


def test_bytes_are_deterministic() -> None:
    media = [m for d in known.known_demos(0, speech=False).values() for m in d.media]
    if not known.espeak_missing():
        media += [m for d in known.known_demos(0, speech=True).values() for m in d.media]
    for medium in media:
        assert medium.render() == medium.render(), medium.key
    assert known.image_jpeg("red", word="tokyo") == known.image_jpeg("red", word="tokyo")
    assert known.image_jpeg("red", word="tokyo") != known.image_jpeg("red")


def test_bytes_are_the_same_in_another_process() -> None:
    """The trainer renders in vLLM's Python; a fresh interpreter gives the same bytes."""
    code = (
        "import hashlib, importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('known', {str(KNOWN_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); sys.modules['known'] = m\n"
        "spec.loader.exec_module(m)\n"
        "print(hashlib.sha256(m.video_mp4('red', 'left') + m.image_jpeg('blue')"
        " + m.tone_wav(3)).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True, text=True)
    here = known.video_mp4("red", "left") + known.image_jpeg("blue") + known.tone_wav(3)
    assert out.stdout.strip() == hashlib.sha256(here).hexdigest()


@pytest.mark.parametrize("colour", known.COLOURS)
def test_image_shows_its_colour(colour: str) -> None:
    data = known.image_jpeg(colour)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    assert image.size == (448, 448)
    assert image.mode == "RGB"
    pixels = np.asarray(image).astype(int)
    centre, corner = pixels[224, 224], pixels[4, 4]
    assert np.abs(centre - known.COLOUR_RGB[colour]).max() <= 8
    assert np.abs(corner - known.BACKGROUND_RGB).max() <= 8
    # The colour is the nearest named colour to what a decoder sees.
    nearest = min(known.COLOURS, key=lambda c: np.abs(centre - known.COLOUR_RGB[c]).sum())
    assert nearest == colour


def _centres(data: bytes) -> list[tuple[float, float]]:
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    centres = []
    for frame in frames:
        ys, xs = np.nonzero(np.abs(frame - known.BACKGROUND_RGB).sum(axis=-1) > 60)
        centres.append((float(xs.mean()), float(ys.mean())))
    return centres


@pytest.mark.parametrize("direction", known.DIRECTIONS)
def test_video_moves_in_its_direction(direction: str) -> None:
    data = known.video_mp4("green", direction)
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (224, 224)
        assert stream.average_rate == 8
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 16
    centres = _centres(data)
    (x0, y0), (x1, y1) = centres[0], centres[-1]
    dx, dy = x1 - x0, y1 - y0
    moved = {"right": dx > 100, "left": dx < -100, "down": dy > 100, "up": dy < -100}
    assert [d for d, yes in moved.items() if yes] == [direction]
    # The shape's colour survives the encoding.
    frame = frames[0].astype(int)
    ys, xs = np.nonzero(np.abs(frame - known.BACKGROUND_RGB).sum(axis=-1) > 60)
    inside = frame[int(ys.mean()), int(xs.mean())]
    assert np.abs(inside - known.COLOUR_RGB["green"]).max() <= 12


def _wav(data: bytes) -> tuple[int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


@pytest.mark.parametrize("beeps", known.BEEP_COUNTS)
def test_tone_counts_its_beeps(beeps: int) -> None:
    rate, pcm = _wav(known.tone_wav(beeps))
    assert rate == 16000
    loud = np.abs(pcm.astype(float)) > 3000
    # Beeps are runs of loud 10 ms windows.
    windows = loud[: len(loud) // 160 * 160].reshape(-1, 160).any(axis=1)
    starts = int(np.sum(windows[1:] & ~windows[:-1]) + windows[0])
    assert starts == beeps


def test_speech_is_16k_mono_and_distinct() -> None:
    need_espeak()
    clips = {word: known.audio_wav(word) for word in known.SPOKEN}
    for word, data in clips.items():
        rate, pcm = _wav(data)
        assert rate == 16000
        seconds = len(pcm) / rate
        assert 0.7 < seconds < 3.0, (word, seconds)
        assert np.abs(pcm).max() > 16000  # not silence: the peak is normalised
        assert np.abs(pcm[: rate // 5]).max() == 0  # the leading silence
    assert len(set(clips.values())) == len(clips)
    assert known.audio_wav("tokyo") == clips["tokyo"]
    assert known.audio_wav("tokyo", rate=22050) != clips["tokyo"]


def test_medium_render_follows_its_fact() -> None:
    assert known.Medium("image", {"colour": "red"}).render() == known.image_jpeg("red")
    video = known.Medium("video", {"direction": "up", "colour": "blue"})
    assert video.key == f"known-v{known.GENERATOR_VERSION}-video-colour-blue-direction-up"
    assert video.suffix == ".mp4"
    assert video.render() == known.video_mp4("blue", "up")
    tone = known.Medium("audio", {"beeps": "4"})
    assert tone.suffix == ".wav"
    assert tone.render() == known.tone_wav(4)
    assert tone.describe() == "4 beeps"
    with pytest.raises(ValueError, match="unknown medium kind"):
        known.Medium("pdf", {})
    with pytest.raises(ValueError, match="unknown colour"):
        known.image_jpeg("teal")
    with pytest.raises(ValueError, match="unknown direction"):
        known.video_mp4("red", "sideways")


# The requests a run sends per chat type: its deliveries, and each media one repeated.
REQUESTS = {"text-only": 1, "single-image": 6, "multi-image": 2, "video": 4, "audio": 6, "multi-audio": 2}


@pytest.mark.parametrize("speech", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_random_model_passes_a_whole_run_with_a_tiny_chance(seed: int, speech: bool) -> None:
    """docs/verdicts.md's figures: every request of a run understood by chance, < 1/1000."""
    demos = known.known_demos(seed, speech=speech)
    guesser = vocabulary = 1.0
    for chat_type, demo in demos.items():
        assert 0 < known.chance_answer_set(demo) <= 1 / 4
        guesser *= known.chance_answer_set(demo) ** REQUESTS[chat_type]
        vocabulary *= known.chance_vocabulary(demo, 32000) ** REQUESTS[chat_type]
        # A two-fact demo is far harder to pass by chance than a one-fact one.
        if len(demo.expect) == 2:
            assert known.chance_vocabulary(demo, 32000) < 5e-3
    assert guesser < 1e-3
    assert vocabulary < 1e-3
