"""The trained tiny-llava (orchestrator/tinymodels/llava.py + train_llava.py): its shipped weights, and its
answers on a real CPU `vllm serve` (marker `vllm`).

`mmdemo run cpu-tiny-llava --offline` must get every demo *understood*; the served model must answer
every known-answer image demo of seeds 0, 1 and 2 under greedy decoding, and its answers must follow
the images: an image with its colour channels swapped, another seed's images, each fail the grade.
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
from orchestrator.profile.schema import load_profile
from orchestrator.tinymodels import llava, train_llava
from tests.conftest import REPO
from tests.trained import compare_bits

known = train_llava.load_known()
IMAGE_CHATS = ("text-only", "single-image", "multi-image")


def test_the_trainer_renders_with_the_profiles_serve_flags() -> None:
    serve = yaml.safe_load((REPO / "profiles" / "cpu-tiny-llava.yaml").read_text())["serve"]
    assert serve["limit_mm_per_prompt"] == train_llava.LIMITS
    assert serve["max_model_len"] == train_llava.MAX_MODEL_LEN
    assert serve["dtype"] == "float32"
    assert not {"mm_processor_kwargs", "media_io_kwargs", "chat_template"} & set(serve)
    assert tuple(d.chat_type.value for d in load_profile("cpu-tiny-llava").demos) == IMAGE_CHATS


def test_the_shipped_weights_are_those_of_these_scripts() -> None:
    """Editing llava.py, train_llava.py, common.py or media/known.py makes a build retrain (seconds, but
    the build is no longer a copy): ship the weights again
    (`python orchestrator/tinymodels/llava.py --out DIR --retrain --ship`)."""
    info = json.loads(llava.SHIPPED_INFO.read_text())
    assert info["sources"] == llava.sources_key(), (
        "the shipped tiny-llava weights are stale: retrain and ship"
    )
    assert info["sha256"] == hashlib.sha256(llava.SHIPPED.read_bytes()).hexdigest()
    assert llava.SHIPPED.stat().st_size < 4 << 20


def test_every_fact_is_trained_not_one_seeds() -> None:
    examples = train_llava.answers(known)
    assert len(examples) == 1 + len(known.COLOURS) ** 2  # Paris, each colour, each ordered pair
    for seed in range(10):
        for chat_type in IMAGE_CHATS:
            demo = known.known_demos(seed, speech=False)[chat_type]
            colours = tuple(m.fact["colour"] for m in demo.media)
            (example,) = [e for e in examples if e.chat_type == chat_type and e.colours == colours]
            assert example.prompt == demo.prompt
            assert grade(example.answer, demo.expect, demo.reject, demo.ignore, whole=True) == ((), ())


# -- on a real CPU vLLM ----------------------------------------------------------------------------


def _part(data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}}


def _chat(port: int, prompt: str, images: list[bytes]) -> str:
    body = {
        "model": "tiny-llava",
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}, *map(_part, images)]}],
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


@contextlib.contextmanager
def _server(vllm_bin: str, model: Path) -> Any:
    from tests.conftest import free_port

    port = free_port()
    argv = [vllm_bin, "serve", str(model), *train_llava.SERVE_ARGS, "--served-model-name", "tiny-llava"]
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


def _build(vllm_bin: str, out: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    python = str(Path(vllm_bin).parent / "python")
    return subprocess.run(
        [python, str(Path(llava.__file__)), "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.vllm
@pytest.mark.timeout(600)
def test_the_trained_llava_reads_the_known_images_on_a_real_server(vllm_bin: str, tmp_path: Path) -> None:
    model = tmp_path / "tiny-llava"
    done = _build(vllm_bin, model)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((model / "mmdemo-model.json").read_text())["weights"] == "trained"

    answers: dict[tuple[int, str], str] = {}
    failures = []
    with _server(vllm_bin, model) as port:
        for seed in (0, 1, 2):
            for chat_type in IMAGE_CHATS:
                demo = known.known_demos(seed, speech=False)[chat_type]
                answer = _chat(port, demo.prompt, [m.render() for m in demo.media])
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
                _chat(port, red.prompt, [_swapped_channels(known.image_jpeg("red"))]),
            )
        }
        for chat_type in ("single-image", "multi-image"):
            theirs = [m.render() for m in other[chat_type].media]
            altered[f"seed 1 {chat_type} given seed 2's images"] = (
                demos[chat_type],
                _chat(port, demos[chat_type].prompt, theirs),
            )
        a, b = (m.render() for m in demos["multi-image"].media)
        swapped_order = _chat(port, demos["multi-image"].prompt, [b, a])

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
    info = json.loads(llava.SHIPPED_INFO.read_text())
    started = time.monotonic()
    done = _build(vllm_bin, tmp_path / "retrained", "--retrain")
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
    # another seed trains other weights (and still passes its own check: the build fails otherwise)
    done = _build(vllm_bin, tmp_path / "seed1", "--seed", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    seed1 = json.loads((tmp_path / "seed1" / "mmdemo-model.json").read_text())
    assert (seed1["seed"], seed1["weights"], seed1["training"]["shipped"]) == (1, "trained", False)
    assert seed1["training"]["sha256"] != info["sha256"]
