"""`mmdemo serve` for vLLM's example client: a fixed port, the key EMPTY, the model from /v1/models."""

from __future__ import annotations

import base64
import io
import signal
import socket
from pathlib import Path
from typing import Any

from tests.conftest import FAKE, FAKE_PROFILE, example_client_chat, signal_mmdemo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_example_client_works_against_serve_with_key_empty(
    tmp_path: Path, mmdemo_env: dict[str, str]
) -> None:
    from PIL import Image

    port = free_port()
    out = tmp_path / "out.txt"
    answers: list[Any] = []
    jpeg = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(jpeg, "JPEG")
    image = {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()},
    }

    def ready_then_ask() -> bool:
        if "serving until Ctrl-C" not in out.read_text(errors="replace"):
            return False
        answers.append(example_client_chat(port, "What's the capital of France?"))
        answers.append(example_client_chat(port, [{"type": "text", "text": "What's in this image?"}, image]))
        return True

    args = [
        "serve", str(FAKE_PROFILE), "--vllm-bin", str(FAKE), "--port", str(port), "--api-key", "EMPTY",
        "--runs-dir", str(tmp_path / "runs"), "--grace", "2",
    ]  # fmt: skip
    code = signal_mmdemo(args, mmdemo_env, out, ready_then_ask, signal.SIGINT)
    text = out.read_text()
    assert code == 0, text
    assert len(answers) == 2
    assert all(isinstance(a, str) and a for a in answers)
    assert "API key:  EMPTY" in text
    assert "Authorization: Bearer EMPTY" in text
    assert "stopped: teardown" in text


def test_serve_prints_the_example_commands_on_port_8000() -> None:
    from orchestrator.cli.terminal import serve_banner
    from orchestrator.session.context import Endpoint

    banner = serve_banner(Endpoint("http://127.0.0.1:8000/v1", "EMPTY", "tiny"))
    assert "python openai_chat_completion_client_for_multimodal.py -c multi-audio" in banner
    other = serve_banner(Endpoint("http://127.0.0.1:9000/v1", "abc123", "tiny"))
    assert "--port 8000 --api-key EMPTY" in other
    assert "-c video" not in other


def test_serve_prints_how_to_run_each_tasks_example_client() -> None:
    from orchestrator.cli.terminal import serve_banner
    from orchestrator.core.tasks import ROUTES, Task
    from orchestrator.session.context import Endpoint

    tasks = [Task.EMBEDDING, Task.SCORE, Task.RERANK]
    banner = serve_banner(Endpoint("http://127.0.0.1:9000/v1", "abc123", "clip"), chats=False, tasks=tasks)
    lines = banner.splitlines()
    assert "openai_chat_completion_client_for_multimodal.py" not in banner  # a pooling model: no chat
    assert "chat/completions" not in banner
    # /score and /rerank are not guarded by the key: their clients reach any port
    assert f"  python {ROUTES[Task.SCORE].example} --host 127.0.0.1 --port 9000" in lines
    assert f"  python {ROUTES[Task.RERANK].example} --host 127.0.0.1 --port 9000" in lines
    # the embedding client has localhost:8000 and EMPTY written in
    [embedding] = [line for line in lines if ROUTES[Task.EMBEDDING].example in line]
    assert "--model clip" in embedding
    assert embedding.endswith("# needs --port 8000 --api-key EMPTY")
    speech = serve_banner(Endpoint("http://127.0.0.1:8000/v1", "EMPTY", "w"), chats=False,
                          tasks=[Task.TRANSCRIPTION, Task.TRANSLATION])  # fmt: skip
    assert f"  python {ROUTES[Task.TRANSCRIPTION].example} --audio_path CLIP.wav" in speech.splitlines()
    assert "needs --port 8000" not in speech
