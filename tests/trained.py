"""What the tests of the trained tiny models share: the shipped weights' checks, a retrain, and a real CPU
`vllm serve` to ask.

Bit for bit, a retrain reproduces the shipped weights only on the CPU that trained them, with the same
torch and transformers: float kernels differ by instruction set (tiny-omni retrained on an Intel Xeon
with AVX-512 and AMX gave other bits than the shipped weights, trained on the previous session's
machine, an AMD EPYC by its benchmark record). Anywhere, the retrain
must succeed, and a build fails when the trained model answers any fact wrong.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator.media import known


def compare_bits(shipped: dict[str, Any], retrained: dict[str, Any]) -> str | None:
    """None where the retrain must equal the shipped weights bit for bit; else why it cannot."""
    if shipped.get("machine") != retrained.get("machine"):
        return f"shipped from {shipped.get('machine')!r}, retrained on {retrained.get('machine')!r}"
    versions = {k: v for k, v in retrained.get("versions", {}).items() if k in ("torch", "transformers")}
    if {k: shipped.get("versions", {}).get(k) for k in versions} != versions:
        return f"shipped with {shipped.get('versions')}, retrained with {retrained.get('versions')}"
    return None


def assert_shipped_weights_current(builder: ModuleType, *, under_mib: int) -> None:
    """The shipped weights are those of the builder's sources as they are now, and small."""
    trained = builder.TRAINED
    info = json.loads(trained.shipped_info_path.read_text())
    name = Path(builder.__file__).name
    assert info["sources"] == trained.key(), (
        f"the shipped {trained.name} weights are stale: "
        f"python orchestrator/tinymodels/{name} --out DIR --retrain --ship"
    )
    assert info["sha256"] == hashlib.sha256(trained.shipped.read_bytes()).hexdigest()
    assert trained.shipped.stat().st_size < under_mib << 20


def build(
    vllm_bin: str, builder: ModuleType, out: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a builder script in vLLM's Python, as `mmdemo models build` does."""
    python = str(Path(vllm_bin).parent / "python")
    return subprocess.run(
        [python, str(Path(builder.__file__)), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_retrains(
    vllm_bin: str, builder: ModuleType, tmp_path: Path, *, timeout: float = 540
) -> dict[str, Any]:
    """A retrain answers every trained fact right (the build fails otherwise), and on the CPU and with the
    torch and transformers that trained the shipped weights, gives their very bits. The marker's training."""
    info = json.loads(builder.TRAINED.shipped_info_path.read_text())
    started = time.monotonic()
    done = build(vllm_bin, builder, tmp_path / "retrained", "--retrain", timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    training: dict[str, Any] = json.loads((tmp_path / "retrained" / "mmdemo-model.json").read_text())[
        "training"
    ]
    print(f"retrained in {time.monotonic() - started:.0f} s: {training['timings']}", file=sys.stderr)
    why_not = compare_bits(info, training)
    if why_not is None:
        assert training["sha256"] == info["sha256"]
    else:
        print(f"bits not compared: {why_not}", file=sys.stderr)
    return training


# -- asking a real CPU vLLM ------------------------------------------------------------------------


def part(kind: str, data: bytes) -> dict[str, Any]:
    """A content part as the example client sends a file's bytes: images and videos as data URLs,
    audio as `input_audio`."""
    b64 = base64.b64encode(data).decode()
    if kind == "audio":
        return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
    mime = "image/jpeg" if kind == "image" else "video/mp4"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{b64}"}}


def chat(port: int, model: str, prompt: str, media: Sequence[tuple[str, bytes]]) -> str:
    """The answer, greedy, to the prompt (text first) and the media ((kind, bytes), in order)."""
    body = {
        "model": model,
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt}, *(part(k, d) for k, d in media)]}
        ],
        "max_completion_tokens": known.KNOWN_MAX_TOKENS,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(json.loads(response.read())["choices"][0]["message"]["content"])


def swapped_channels(jpeg: bytes) -> bytes:
    """The image with its red and blue channels swapped, encoded as known.py encodes images."""
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    r, g, b = image.split()
    out = io.BytesIO()
    Image.merge("RGB", (b, g, r)).save(out, format="JPEG", quality=known.JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def reversed_mp4(colour: str, direction: str) -> bytes:
    """known.py's video of that shape and motion with its frames in reverse order, encoded as known.py does."""
    import av

    frames = known.video_frames(colour, direction)[::-1]
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.qscale = True
        stream.codec_context.global_quality = 3 * 118
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.copy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()


@contextlib.contextmanager
def served(vllm_bin: str, model: Path, serve_args: Sequence[str], name: str) -> Iterator[int]:
    """`vllm serve` the model directory on a free loopback port until healthy; its port. Its whole
    process group is ended on the way out, whatever happens."""
    from tests.conftest import free_port

    port = free_port()
    argv = [vllm_bin, "serve", str(model), *serve_args, "--served-model-name", name]
    argv += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    log = model.parent / "vllm.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited {proc.returncode}: {log.read_text()[-3000:]}")
            with (
                contextlib.suppress(urllib.error.URLError, OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as ok,
            ):
                if ok.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve not ready in 300 s: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.2)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def assert_renders_as_profiled(serve_args: Sequence[str], profile: str) -> None:
    """A trainer renders its requests with exactly the serve flags mmdemo gives `vllm serve` for the profile
    (values compared as JSON where they are JSON), bar the flags that only let a request in."""
    from orchestrator.launch.command import serve_args as profile_args
    from orchestrator.profile.schema import load_profile

    def flags(args: Sequence[str]) -> dict[str, object]:
        out: dict[str, object] = {}
        for arg in args:
            if arg.startswith("--"):
                key = arg
                out[key] = True
            else:
                out[key] = json.loads(arg) if arg.startswith(("{", "[")) else arg
        return out

    served_flags = flags(profile_args(load_profile(profile).resolve("cpu").serve))
    admission = {"--enable-mm-embeds"}  # an image-embeds demo's permission: nothing rendered changes
    assert flags(serve_args) == {k: v for k, v in served_flags.items() if k not in admission}


def assert_reads_known_images(ask: Callable[[str, list[bytes]], str], known: ModuleType) -> None:
    """A trained image model, served, answers every image demo of seeds 0, 1 and 2, and its answers
    follow the images, not the prompt: an image with its colour channels swapped and another seed's
    images each fail the grade of the truth they were made from (seeds 1 and 2 share no colour of an
    image demo), and two images in the other order get their colours in the other order."""
    from orchestrator.profile.expect import grade

    answers: dict[tuple[int, str], str] = {}
    failures = []
    for seed in (0, 1, 2):
        for chat_type in ("text-only", "single-image", "multi-image"):
            demo = known.known_demos(seed, speech=False)[chat_type]
            answer = ask(demo.prompt, [m.render() for m in demo.media])
            answers[seed, chat_type] = answer
            missing, named = grade(answer, demo.expect, demo.reject, demo.ignore, whole=True)
            if missing or named:
                failures.append(f"seed {seed} {chat_type}: {answer!r} missing {missing}, distractors {named}")
    demos, other = known.known_demos(1, speech=False), known.known_demos(2, speech=False)
    red = known.KnownDemo("single-image", known.PROMPTS["single-image"], (), ("red",), ())
    altered = {
        "red image, channels swapped": (red, ask(red.prompt, [swapped_channels(known.image_jpeg("red"))]))
    }
    for chat_type in ("single-image", "multi-image"):
        theirs = [m.render() for m in other[chat_type].media]
        altered[f"seed 1 {chat_type} given seed 2's images"] = (
            demos[chat_type],
            ask(demos[chat_type].prompt, theirs),
        )
    a, b = (m.render() for m in demos["multi-image"].media)
    swapped_order = ask(demos["multi-image"].prompt, [b, a])

    print(json.dumps({f"{seed} {chat_type}": a for (seed, chat_type), a in answers.items()}, indent=1))
    print(json.dumps({name: answer for name, (_, answer) in altered.items()}, indent=1))
    assert not failures, "\n".join(failures)
    for name, (demo, answer) in altered.items():
        assert grade(answer, demo.expect, demo.reject, demo.ignore, whole=True) != ((), ()), (name, answer)
    for chat_type in ("single-image", "multi-image"):
        assert answers[1, chat_type] != answers[2, chat_type]
    first, second = (m.fact["colour"] for m in demos["multi-image"].media)
    assert swapped_order == f"{second.capitalize()} and {first}.", swapped_order


def assert_every_fact_trained(trainer: ModuleType, known: ModuleType) -> None:
    """Every known-answer demo of the trainer's chat types, of ten seeds, spoken or beeped, is exactly one
    of its training examples (prompt and media), whose answer the demo's grade takes: every fact is
    trained, not one seed's."""
    from orchestrator.profile.expect import grade

    examples = trainer.answers(known)
    for seed in range(10):
        for speech in (True, False):
            demos = known.known_demos(seed, speech=speech)
            for chat_type in trainer.CHAT_TYPES:
                demo = demos[chat_type]
                media = tuple(
                    ("tone" if "beeps" in m.fact else m.kind, tuple(m.fact.values())) for m in demo.media
                )
                found = [
                    e for e in examples if (e.chat_type, e.prompt, e.media) == (chat_type, demo.prompt, media)
                ]
                assert len(found) == 1, (seed, speech, chat_type, media)
                assert grade(found[0].answer, demo.expect, demo.reject, demo.ignore, whole=True) == ((), ())
