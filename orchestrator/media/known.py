"""Media with a known truth: generated, deterministic images, videos and audio whose content is
a fact the demo's prompt asks about, and the words a right answer must (and must not) contain.

Standalone on purpose: this module imports only the standard library, numpy, PIL and PyAV (and
runs `espeak-ng` as a subprocess), never anything of mmdemo, because the tiny-model trainer
(orchestrator/tinymodels/) loads it by file path inside vLLM's own Python.

The same input always gives the same bytes: fixed sizes, a fixed JPEG quality and subsampling,
one encoder thread and bit-exact container flags for the video, fixed espeak-ng voice, speed and
pitch for the speech (the bytes then depend only on the installed espeak-ng's version).

    demos = known_demos(seed=0)
    demo = demos["single-image"]
    demo.prompt                  # "What colour is the shape? Answer in one word."
    demo.media[0].fact           # {"colour": "red"}
    demo.media[0].render()       # JPEG bytes
    demo.expect, demo.reject     # ("red",), ("green", "blue", ...)

Expected words follow the profiles' `expect:` syntax: each group is alternatives separated by
`|`, a group matches when one of its words starts a word of the answer, case-insensitively.
`reject` lists distractors in the same syntax: the answer must contain none of them.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


# Bumped whenever a generator's output changes: it is part of every medium's cache key.
GENERATOR_VERSION = 1
DEFAULT_SEED = 0

# Named colours, far apart in RGB and each with one common English name.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (250, 220, 20),
    "orange": (250, 120, 0),
    "purple": (130, 40, 190),
    "pink": (250, 120, 200),
    "brown": (110, 60, 20),
}
COLOURS: tuple[str, ...] = tuple(COLOUR_RGB)
# The words that also name a colour: each colour's group of alternatives in `expect`.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "orange": ("orange",),
    "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
    "brown": ("brown",),
}
BACKGROUND_RGB = (128, 128, 128)  # neutral grey: none of the colours
TEXT_RGB = (255, 255, 255)

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("left",),
    "right": ("right",),
    "up": ("up",),
    "down": ("down",),
}

# Spoken words: city names that sound unlike one another (and unlike the text-only answers).
SPOKEN: tuple[str, ...] = ("tokyo", "cairo", "sydney", "moscow", "dublin", "chicago", "oslo", "lima")

# The tone fallback (no espeak-ng): a count of beeps.
BEEP_COUNTS: tuple[int, ...] = (2, 3, 4, 5)
NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

CAPITAL = "paris"
CAPITAL_DISTRACTORS: tuple[str, ...] = ("london", "berlin", "rome", "madrid", "lyon", "marseille")

PROMPTS: dict[str, str] = {
    "text-only": "What's the capital of France?",
    "single-image": "What colour is the shape? Answer in one word.",
    "multi-image": "What colours are the shapes in these two images? Answer with the two colours.",
    "video": (
        "What colour is the moving shape, and which way does it move: left, right, up or down?"
        " Answer with the colour and the direction."
    ),
    "audio": "Which city is named in this audio? Answer in one word.",
    "multi-audio": "Which cities are named in these two audios? Answer with the two names.",
}
# The audio prompts when the audio is a tone fact (espeak-ng missing).
TONE_PROMPTS: dict[str, str] = {
    "audio": "How many beeps are in this audio? Answer with a number.",
    "multi-audio": "How many beeps are in each of these two audios? Answer with the two numbers.",
}
CHAT_TYPES: tuple[str, ...] = tuple(PROMPTS)

SUFFIXES: dict[str, str] = {"image": ".jpg", "video": ".mp4", "audio": ".wav"}
JPEG_QUALITY = 90
ESPEAK_VOICE = "en-us"
ESPEAK_SPEED = 140  # words per minute
ESPEAK_PITCH = 50
ESPEAK_AMPLITUDE = 150
SPEECH_RATE = 16000
# What a known demo asks for: a short answer, so a long ramble cannot collect the words.
KNOWN_MAX_TOKENS = 16
# Where a moving shape starts names the opposite direction ("from right to left"): not graded.
ORIGIN_PHRASES: tuple[str, ...] = tuple(
    f"from {the}{side}" for side in ("left", "right", "top", "bottom", "up", "down") for the in ("the ", "")
)


class KnownMediaUnavailable(RuntimeError):
    """A known medium cannot be generated here (espeak-ng missing or failing); str() is one line."""


@dataclass(frozen=True)
class Medium:
    """One generated medium and the fact it shows: render() gives its bytes, always the same."""

    kind: str  # "image" | "video" | "audio"
    # {"colour": "red"}, {"colour": "red", "direction": "left"}, {"word": "tokyo"}, {"beeps": "3"}
    fact: Mapping[str, str]

    def __post_init__(self) -> None:
        if self.kind not in SUFFIXES:
            raise ValueError(f"unknown medium kind {self.kind!r}: one of {', '.join(SUFFIXES)}")
        object.__setattr__(self, "fact", dict(sorted(self.fact.items())))

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted(self.fact.items()))))

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.kind]

    @property
    def key(self) -> str:
        """A stable cache name naming the fact, e.g. 'known-v1-video-colour-red-direction-left'."""
        parts = "-".join(f"{k}-{v}" for k, v in sorted(self.fact.items()))
        return f"known-v{GENERATOR_VERSION}-{self.kind}-{parts}"

    @property
    def filename(self) -> str:
        return self.key + self.suffix

    @property
    def mime(self) -> str:
        return {"image": "image/jpeg", "video": "video/mp4", "audio": "audio/wav"}[self.kind]

    def describe(self) -> str:
        """The truth in words, e.g. 'a red shape moving left', 'the spoken word "tokyo"'."""
        fact = self.fact
        if self.kind == "image":
            return f"a {fact['colour']} shape"
        if self.kind == "video":
            return f"a {fact['colour']} shape moving {fact['direction']}"
        if "word" in fact:
            return f'the spoken word "{fact["word"]}"'
        return f"{fact['beeps']} beeps"

    def render(self) -> bytes:
        fact = self.fact
        if self.kind == "image":
            return image_jpeg(fact["colour"], word=fact.get("text"))
        if self.kind == "video":
            return video_mp4(fact["colour"], fact["direction"])
        if "word" in fact:
            return audio_wav(fact["word"])
        return tone_wav(int(fact["beeps"]))


@dataclass(frozen=True)
class KnownDemo:
    """One chat type's known-answer demo: its prompt, its media, and what a right answer says."""

    chat_type: str
    prompt: str
    media: tuple[Medium, ...]
    expect: tuple[str, ...]  # word groups, '|' between alternatives: every group must match
    reject: tuple[str, ...]  # distractors, same syntax: none may match
    answer: str = ""  # a short right answer (what the tiny models are trained to say)
    ignore: tuple[str, ...] = ()  # phrases removed from the answer before grading (a video's origin)
    facts: tuple[Mapping[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", tuple(dict(m.fact) for m in self.media))

    def __hash__(self) -> int:
        return hash((self.chat_type, self.prompt, self.media, self.expect, self.reject))


# -- the demos -------------------------------------------------------------------------------------


def espeak_missing() -> str | None:
    """None when espeak-ng is here, else one line saying why the audio falls back to tones."""
    if _espeak() is None:
        return "espeak-ng is not installed (make install-espeak): the audio demos count beeps instead of naming a spoken city"
    return None


def _group(words: tuple[str, ...]) -> str:
    return "|".join(words)


def _colour_reject(*true: str) -> tuple[str, ...]:
    return tuple(_group(COLOUR_WORDS[c]) for c in COLOURS if c not in true)


def _number_group(n: int) -> str:
    return f"{NUMBER_WORDS[n]}|{n}"


def known_demos(seed: int = DEFAULT_SEED, *, speech: bool | None = None) -> dict[str, KnownDemo]:
    """One known-answer demo per chat type, the facts chosen by `seed`.

    `speech`: spoken words (True) or the beep-count fallback (False) for the audio demos; None
    (default) speaks when espeak-ng is installed. Seeds 1 and 2 give different facts for every
    media demo (checked by the tests; other pairs of seeds may share some).
    """
    if speech is None:
        speech = espeak_missing() is None
    rng = random.Random(seed)
    c1, c2, c3, c4 = rng.sample(COLOURS, 4)  # four different colours: no medium stands in for another
    direction = rng.choice(DIRECTIONS)
    w1, w2, w3 = rng.sample(SPOKEN, 3)
    n1, n2, n3 = rng.sample(BEEP_COUNTS, 3)
    demos: dict[str, KnownDemo] = {}
    demos["text-only"] = KnownDemo(
        "text-only",
        PROMPTS["text-only"],
        (),
        expect=(CAPITAL,),
        reject=CAPITAL_DISTRACTORS,
        answer="Paris",
    )
    image = Medium("image", {"colour": c1})
    demos["single-image"] = KnownDemo(
        "single-image",
        PROMPTS["single-image"],
        (image,),
        expect=(_group(COLOUR_WORDS[c1]),),
        reject=_colour_reject(c1),
        answer=c1,
    )
    a, b = Medium("image", {"colour": c2}), Medium("image", {"colour": c3})
    demos["multi-image"] = KnownDemo(
        "multi-image",
        PROMPTS["multi-image"],
        (a, b),
        expect=(_group(COLOUR_WORDS[c2]), _group(COLOUR_WORDS[c3])),
        reject=_colour_reject(c2, c3),
        answer=f"{c2} and {c3}",
    )
    video = Medium("video", {"colour": c4, "direction": direction})
    demos["video"] = KnownDemo(
        "video",
        PROMPTS["video"],
        (video,),
        expect=(_group(COLOUR_WORDS[c4]), _group(DIRECTION_WORDS[direction])),
        reject=_colour_reject(c4) + tuple(_group(DIRECTION_WORDS[d]) for d in DIRECTIONS if d != direction),
        answer=f"{c4}, {direction}",
        ignore=ORIGIN_PHRASES,
    )
    if speech:
        demos["audio"] = KnownDemo(
            "audio",
            PROMPTS["audio"],
            (Medium("audio", {"word": w1}),),
            expect=(w1,),
            reject=tuple(w for w in SPOKEN if w != w1),
            answer=w1.capitalize(),
        )
        demos["multi-audio"] = KnownDemo(
            "multi-audio",
            PROMPTS["multi-audio"],
            (Medium("audio", {"word": w2}), Medium("audio", {"word": w3})),
            expect=(w2, w3),
            reject=tuple(w for w in SPOKEN if w not in (w2, w3)),
            answer=f"{w2.capitalize()} and {w3.capitalize()}",
        )
    else:
        demos["audio"] = KnownDemo(
            "audio",
            TONE_PROMPTS["audio"],
            (Medium("audio", {"beeps": str(n1)}),),
            expect=(_number_group(n1),),
            reject=tuple(_number_group(n) for n in NUMBER_WORDS if n != n1),
            answer=str(n1),
        )
        demos["multi-audio"] = KnownDemo(
            "multi-audio",
            TONE_PROMPTS["multi-audio"],
            (Medium("audio", {"beeps": str(n2)}), Medium("audio", {"beeps": str(n3)})),
            expect=(_number_group(n2), _number_group(n3)),
            reject=tuple(_number_group(n) for n in NUMBER_WORDS if n not in (n2, n3)),
            answer=f"{n2} and {n3}",
        )
    return demos


# -- the generators --------------------------------------------------------------------------------


def _rgb(colour: str) -> tuple[int, int, int]:
    try:
        return COLOUR_RGB[colour]
    except KeyError:
        raise ValueError(f"unknown colour {colour!r}: one of {', '.join(COLOURS)}") from None


def image_jpeg(colour: str, *, word: str | None = None, size: int = 448) -> bytes:
    """A large filled circle of `colour` on a neutral grey background, as a JPEG.

    `word`: a large rendered word across the circle (for real models, which can read it).
    """
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND_RGB)
    draw = ImageDraw.Draw(image)
    margin = size // 8
    draw.ellipse((margin, margin, size - margin, size - margin), fill=_rgb(colour))
    if word:
        from PIL import ImageFont

        font = ImageFont.load_default(size=max(12, size // 8))
        draw.text((size // 2, size // 2), word.upper(), fill=TEXT_RGB, font=font, anchor="mm")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False)
    return out.getvalue()


def _positions(direction: str, size: int, box: int, frames: int) -> list[tuple[int, int]]:
    """The top-left corner of the square in each frame: from one edge to the opposite one."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: one of {', '.join(DIRECTIONS)}")
    lo, hi = size // 16, size - box - size // 16
    centre = (size - box) // 2
    steps = [lo + (hi - lo) * i // max(1, frames - 1) for i in range(frames)]
    if direction == "right":
        return [(x, centre) for x in steps]
    if direction == "left":
        return [(x, centre) for x in reversed(steps)]
    if direction == "down":
        return [(centre, y) for y in steps]
    return [(centre, y) for y in reversed(steps)]


def video_frames(colour: str, direction: str, *, size: int = 224, frames: int = 16) -> np.ndarray:
    """The video's frames, (frames, size, size, 3) uint8 RGB: a square of `colour` moving."""
    import numpy as np  # deferred: the CLI imports this module and must start fast

    rgb = _rgb(colour)
    box = size // 4
    video = np.empty((frames, size, size, 3), dtype=np.uint8)
    video[:] = BACKGROUND_RGB
    for i, (x, y) in enumerate(_positions(direction, size, box, frames)):
        video[i, y : y + box, x : x + box] = rgb
    return video


def video_mp4(colour: str, direction: str, *, size: int = 224, frames: int = 16, fps: int = 8) -> bytes:
    """A square of `colour` crossing the frame towards `direction`, as an MPEG-4 (part 2) MP4."""
    import av

    pixels = video_frames(colour, direction, size=size, frames=frames)
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.options = {"flags": "+bitexact"}
        stream.codec_context.qscale = True  # a fixed quantiser: sharp edges, no rate control
        stream.codec_context.global_quality = 3 * 118  # q=3 (FF_QP2LAMBDA = 118)
        for frame in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


def _wav(pcm: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.astype("<i2").tobytes())
    return out.getvalue()


def _espeak() -> str | None:
    return os.environ.get("MMDEMO_ESPEAK") or shutil.which("espeak-ng")


def _resample(samples: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Deterministic resampling: a windowed-sinc low-pass below the new Nyquist, then linear
    interpolation onto the new grid (float64 throughout)."""
    import numpy as np  # deferred: the CLI imports this module and must start fast

    if src == dst:
        return samples
    if dst < src:
        cutoff = 0.45 * dst / src  # cycles per source sample
        taps = np.arange(-32, 33, dtype=np.float64)
        kernel = 2 * cutoff * np.sinc(2 * cutoff * taps) * np.hamming(len(taps))
        samples = np.convolve(samples, kernel / kernel.sum(), mode="same")
    n = int(len(samples) * dst / src)
    resampled: np.ndarray = np.interp(np.arange(n) * (src / dst), np.arange(len(samples)), samples)
    return resampled


def audio_wav(word: str, *, rate: int = SPEECH_RATE) -> bytes:
    """espeak-ng speaking `word` (fixed voice, speed and pitch), as mono PCM16 WAV at `rate` Hz,
    with 0.25 s of silence on each side and the peak at -3 dBFS.

    Raises KnownMediaUnavailable (one line) when espeak-ng is missing or fails.
    """
    import numpy as np  # deferred: the CLI imports this module and must start fast

    exe = _espeak()
    if exe is None:
        raise KnownMediaUnavailable("espeak-ng is not installed (make install-espeak): no spoken audio")
    if not word or not all(c.isalpha() or c in " -'" for c in word):
        raise ValueError(f"a word to speak must be letters only: {word!r}")
    with tempfile.TemporaryDirectory(prefix="mmdemo-espeak-") as tmp:
        path = os.path.join(tmp, "word.wav")
        argv = [exe, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_SPEED), "-p", str(ESPEAK_PITCH)]
        argv += ["-a", str(ESPEAK_AMPLITUDE), "-w", path, "--", word]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise KnownMediaUnavailable(f"espeak-ng could not run: {e}") from None
        if done.returncode != 0 or not os.path.exists(path):
            why = done.stderr.decode(errors="replace").strip().splitlines()
            raise KnownMediaUnavailable(
                f"espeak-ng failed (exit {done.returncode}): {why[-1] if why else 'no output'}"
            )
        try:
            with wave.open(path, "rb") as w:
                src, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
                raw = w.readframes(w.getnframes())
        except (wave.Error, EOFError) as e:
            raise KnownMediaUnavailable(f"espeak-ng wrote no readable WAV: {e}") from None
    if width != 2 or channels != 1:
        raise KnownMediaUnavailable(f"espeak-ng wrote {channels} channel(s) of {8 * width} bit")
    samples = np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    samples = _resample(samples, src, rate)
    peak = float(np.max(np.abs(samples))) if len(samples) else 0.0
    if peak <= 0.0:
        raise KnownMediaUnavailable(f"espeak-ng spoke silence for {word!r}")
    samples = samples * (0.7 / peak)
    pad = np.zeros(rate // 4)
    pcm = np.round(np.concatenate([pad, samples, pad]) * 32767)
    return _wav(np.clip(pcm, -32768, 32767), rate)


def tone_wav(beeps: int, *, rate: int = SPEECH_RATE, pitch: float = 880.0) -> bytes:
    """The fallback audio fact: `beeps` short beeps (0.2 s of `pitch` Hz, 0.3 s apart), with
    0.3 s of silence on each side, as mono PCM16 WAV."""
    import numpy as np  # deferred: the CLI imports this module and must start fast

    if beeps not in NUMBER_WORDS:
        raise ValueError(f"beeps must be one of {', '.join(map(str, NUMBER_WORDS))}: {beeps}")
    t = np.arange(int(rate * 0.2)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # no clicks
    beep = 0.5 * np.sin(2 * np.pi * pitch * t) * fade
    gap = np.zeros(int(rate * 0.3))
    parts = [gap]
    for _ in range(beeps):
        parts += [beep, gap]
    pcm = np.round(np.concatenate(parts) * 32767)
    return _wav(pcm, rate)


# -- the chance that a random model passes ---------------------------------------------------------


def chance_answer_set(demo: KnownDemo) -> float:
    """The chance that a guesser who knows the answer set passes: for each fact asked, it names
    values drawn uniformly from that fact's set (two media of one fact: two different values)."""
    if not demo.media:
        return 1.0 / (len(demo.expect) + len(demo.reject))
    sets = {
        "colour": len(COLOURS),
        "direction": len(DIRECTIONS),
        "word": len(SPOKEN),
        "beeps": len(BEEP_COUNTS),
    }
    p = 1.0
    for name, size in sets.items():
        n = sum(1 for m in demo.media if name in m.fact)
        if n == 1:
            p /= size
        elif n == 2:
            p *= 2.0 / (size * (size - 1))
    return p


def spellings(word: str) -> int:
    """An estimate of how many tokens of a 32k-150k vocabulary start a word with `word` (a group
    matches a word's start: `red` matches " red", "Red", " reduce", " redirect"...)."""
    if len(word) <= 2:
        return 100
    if len(word) <= 4:
        return 40
    return 8


def chance_vocabulary(demo: KnownDemo, vocab_size: int, tokens: int = KNOWN_MAX_TOKENS) -> float:
    """The chance that `tokens` tokens drawn uniformly from a vocabulary of `vocab_size` pass: every
    expected group found, no distractor (each group's chance from `spellings`; words spelled across
    two tokens, a second-order term, are left out)."""

    def hit(group: str) -> float:
        count = sum(spellings(w) for w in group.split("|"))
        return 1.0 - (1.0 - min(1.0, count / vocab_size)) ** tokens

    p = 1.0
    for group in demo.expect:
        p *= hit(group)
    for group in demo.reject:
        p *= 1.0 - hit(group)
    return p
