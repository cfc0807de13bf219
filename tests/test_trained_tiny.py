"""The trained tiny-omni (orchestrator/tinymodels/omni.py + train_omni.py): its shipped weights, and its
answers on a real CPU `vllm serve` (marker `vllm`).

The served model must answer every known-answer demo (orchestrator/media/known.py) of seeds 0, 1 and
2 under greedy decoding, and its answers must follow the media: another seed's medium, an image
with its colour channels swapped, a video with its frames reversed each fail the grade.
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
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.profile.expect import grade
from orchestrator.tinymodels import omni, train_omni
from tests.conftest import REPO, free_port
from tests.trained import compare_bits

known = train_omni.load_known()


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    serve = yaml.safe_load((REPO / "profiles" / "cpu-tiny-omni.yaml").read_text())["serve"]
    assert serve["mm_processor_kwargs"] == train_omni.MM_PROCESSOR_KWARGS
    assert serve["media_io_kwargs"] == train_omni.MEDIA_IO_KWARGS
    assert serve["limit_mm_per_prompt"] == train_omni.LIMITS
    assert str(serve["max_model_len"]) in train_omni.SERVE_ARGS


def test_the_shipped_weights_are_those_of_these_scripts() -> None:
    """Editing omni.py, train_omni.py, common.py or media/known.py makes a build retrain (minutes):
    ship the weights again (`python orchestrator/tinymodels/omni.py --out DIR --retrain --ship`)."""
    info = json.loads(omni.SHIPPED_INFO.read_text())
    assert info["sources"] == omni.sources_key(), "the shipped tiny-omni weights are stale: retrain and ship"
    assert info["sha256"] == hashlib.sha256(omni.SHIPPED.read_bytes()).hexdigest()
    assert omni.SHIPPED.stat().st_size < 8 << 20


def test_every_fact_is_trained_not_one_seeds() -> None:
    examples = train_omni.answers(known)
    facts = {(e.chat_type, tuple(m for m in e.media)) for e in examples}
    for seed in range(10):
        for speech in (True, False):
            for demo in known.known_demos(seed, speech=speech).values():
                media = tuple((_kind(m), tuple(m.fact.values())) for m in demo.media)
                assert (demo.chat_type, media) in facts, (seed, demo.chat_type, media)
                (example,) = [e for e in examples if e.chat_type == demo.chat_type and e.media == media]
                assert example.prompt == demo.prompt
                assert grade(example.answer, demo.expect, demo.reject, demo.ignore, whole=True) == ((), ())


def _kind(medium: Any) -> str:
    return "tone" if "beeps" in medium.fact else medium.kind


# -- on a real CPU vLLM ----------------------------------------------------------------------------


def _part(kind: str, data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    if kind == "audio":
        return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
    mime = "image/jpeg" if kind == "image" else "video/mp4"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{b64}"}}


def _chat(port: int, prompt: str, media: list[tuple[str, bytes]]) -> str:
    body = {
        "model": "tiny-omni",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": prompt}, *(_part(k, d) for k, d in media)]}
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


def _swapped_channels(jpeg: bytes) -> bytes:
    from PIL import Image

    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    r, g, b = image.split()
    out = io.BytesIO()
    Image.merge("RGB", (b, g, r)).save(out, format="JPEG", quality=known.JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def _reversed_mp4(colour: str, direction: str) -> bytes:
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
def _server(vllm_bin: str, model: Path) -> Any:
    port = free_port()
    argv = [vllm_bin, "serve", str(model), *train_omni.SERVE_ARGS, "--served-model-name", "tiny-omni"]
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


def _build(vllm_bin: str, out: Path, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    python = str(Path(vllm_bin).parent / "python")
    script = Path(omni.__file__)
    return subprocess.run(
        [python, str(script), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_the_trained_omni_reads_the_known_media_on_a_real_server(vllm_bin: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-omni"
    done = _build(vllm_bin, model)
    assert done.returncode == 0, done.stdout + done.stderr
    marker = json.loads((model / "mmdemo-model.json").read_text())
    assert marker["weights"] == "trained", marker
    assert marker["training"]["shipped"], marker

    answers: dict[tuple[int, str], str] = {}
    failures = []
    with _server(vllm_bin, model) as port:
        for seed in (0, 1, 2):
            for chat_type, demo in known.known_demos(seed).items():
                answer = _chat(port, demo.prompt, [(m.kind, m.render()) for m in demo.media])
                answers[seed, chat_type] = answer
                missing, named = grade(answer, demo.expect, demo.reject, demo.ignore, whole=True)
                if missing or named:
                    failures.append(
                        f"seed {seed} {chat_type}: {answer!r} missing {missing}, distractors {named}"
                    )

        # The answers follow the media, not the prompt: each altered medium fails the grade of the
        # truth it was made from. Seeds 1 and 2 share no fact of a media demo (known.known_demos).
        demos, other = known.known_demos(1), known.known_demos(2)
        red = known.KnownDemo("single-image", known.PROMPTS["single-image"], (), ("red",), ())
        swapped = _chat(port, red.prompt, [("image", _swapped_channels(known.image_jpeg("red")))])
        video = demos["video"]
        fact = video.media[0].fact
        backwards = _chat(port, video.prompt, [("video", _reversed_mp4(fact["colour"], fact["direction"]))])
        altered = {
            "red image, channels swapped": (red, swapped),
            "seed 1 video, frames reversed": (video, backwards),
        }
        for chat_type in ("single-image", "multi-image", "video", "audio", "multi-audio"):
            theirs = [(m.kind, m.render()) for m in other[chat_type].media]
            altered[f"seed 1 {chat_type} given seed 2's media"] = (
                demos[chat_type],
                _chat(port, demos[chat_type].prompt, theirs),
            )

    print(json.dumps({f"{seed} {chat_type}": a for (seed, chat_type), a in answers.items()}, indent=1))
    print(json.dumps({name: answer for name, (_, answer) in altered.items()}, indent=1))
    assert not failures, "\n".join(failures)
    for name, (demo, answer) in altered.items():
        assert grade(answer, demo.expect, demo.reject, demo.ignore, whole=True) != ((), ()), (name, answer)
    assert fact["direction"] not in backwards.casefold(), backwards
    for chat_type in ("single-image", "multi-image", "video", "audio", "multi-audio"):
        assert answers[1, chat_type] != answers[2, chat_type]


@pytest.mark.vllm
@pytest.mark.timeout(900)
def test_retraining_answers_every_fact_and_gives_the_shipped_bits_on_their_cpu(
    vllm_bin: str, tmp_path: Path
) -> None:
    info = json.loads(omni.SHIPPED_INFO.read_text())
    started = time.monotonic()
    done = _build(vllm_bin, tmp_path / "retrained", "--retrain", timeout=840)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    marker = json.loads((tmp_path / "retrained" / "mmdemo-model.json").read_text())
    print(
        f"retrained in {time.monotonic() - started:.0f} s: {marker['training']['timings']}", file=sys.stderr
    )
    # the build succeeded: the retrained model answers every trained fact right (it fails otherwise)
    why_not = compare_bits(info, marker["training"])
    if why_not is None:
        assert marker["training"]["sha256"] == info["sha256"]
    else:
        print("bits not compared: {why_not}", file=sys.stderr)
