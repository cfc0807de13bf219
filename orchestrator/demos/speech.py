"""Transcription, translation and realtime: the requests of vLLM's speech-to-text example clients.

Checked against vLLM 0.32.0's routers (vllm/entrypoints/speech_to_text/{transcription,translation,
realtime}/) and the example clients of vLLM's repository (Dec 2026):
- examples/speech_to_text/openai/openai_transcription_client.py: `sync_openai` sends the multipart
  fields file, model, language "en", prompt "", response_format "json", temperature 0.0 and, through
  extra_body, seed 4419 and repetition_penalty 1.3 (hotwords None is left out, as the SDK leaves out
  a None); then a stream: for a served name holding "openai", `stream_openai_response` (the same
  fields, seed 420, top_p 0.6, stream true), else `stream_api_response` (stream "true", model,
  language "en", response_format "json"), read as `data: {...}` lines of `choices[0].delta.content`.
- examples/speech_to_text/openai/openai_translation_client.py: file, model, response_format "json",
  temperature 0.0, language "it", seed 4419, repetition_penalty 1.3; the stream: language "it",
  stream true, model. Its clip is Italian; the known clip is English, so its language is "en".
- examples/speech_to_text/realtime/openai_realtime_client.py: WebSocket /v1/realtime; session.created
  from the server; session.update {model}; input_audio_buffer.commit (ready); input_audio_buffer.append
  of base64 PCM16 at 16 kHz in 4096-byte chunks; input_audio_buffer.commit {final: true}; the server
  sends transcription.delta events and transcription.done {text, usage}, or error {error}.
"""

from __future__ import annotations

import base64
import json
import time
import wave
from typing import Any

from orchestrator.core.tasks import ROUTES, Task, missing_route
from orchestrator.demos.taskcore import (
    MAX_WORD_ERROR_RATE,
    Conn,
    Outcome,
    TaskFailed,
    TaskRequest,
    refuse,
    sse_lines,
    with_model,
    word_error_rate,
)

# The words of the known spoken clip (media/known.py's espeak-ng voice speaks them).
SPOKEN = "the quick brown fox jumps over the lazy dog"
REALTIME_CHUNK = 4096  # bytes of PCM16 per input_audio_buffer.append, as the example sends them
SPEECH_RATE = 16000


def plain_fields(task: Task, language: str) -> dict[str, Any]:
    """The non-streamed request's form fields (the model is added at the send)."""
    if task is Task.TRANSCRIPTION:
        return {
            "language": language,
            "prompt": "",
            "response_format": "json",
            "temperature": 0.0,
            "seed": 4419,
            "repetition_penalty": 1.3,
        }
    return {
        "response_format": "json",
        "temperature": 0.0,
        "language": language,
        "seed": 4419,
        "repetition_penalty": 1.3,
    }


def stream_fields(task: Task, language: str, served: str) -> dict[str, Any]:
    """The streamed request's form fields; the transcription example picks its path by the served name."""
    if task is Task.TRANSLATION:
        return {"language": language, "stream": True}
    if "openai" in served:
        return {
            "language": language,
            "prompt": "",
            "response_format": "json",
            "temperature": 0.0,
            "seed": 420,
            "top_p": 0.6,
            "stream": True,
        }
    return {"stream": "true", "language": language, "response_format": "json"}


def realtime_events(model: str, pcm: bytes) -> list[dict[str, Any]]:
    """The events the realtime example sends, in order."""
    events: list[dict[str, Any]] = [
        {"type": "session.update", "model": model},
        {"type": "input_audio_buffer.commit"},
    ]
    for start in range(0, len(pcm), REALTIME_CHUNK):
        chunk = base64.b64encode(pcm[start : start + REALTIME_CHUNK]).decode("utf-8")
        events.append({"type": "input_audio_buffer.append", "audio": chunk})
    events.append({"type": "input_audio_buffer.commit", "final": True})
    return events


def form(fields: dict[str, Any]) -> dict[str, str]:
    """Form values as a multipart body carries them: true/false, numbers in Python's spelling."""
    return {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in fields.items()}


def pcm16(path: str) -> bytes:
    """A WAV's samples as PCM16 mono at 16 kHz: what the realtime API takes; other WAVs are refused."""
    try:
        with wave.open(path, "rb") as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as exc:
        raise TaskFailed(f"the realtime clip {path} is not a readable WAV: {exc}") from None
    if (rate, width, channels) != (SPEECH_RATE, 2, 1):
        raise TaskFailed(
            f"the realtime clip is {rate} Hz, {8 * width}-bit, {channels} channel(s): "
            "the realtime API takes 16 kHz 16-bit mono"
        )
    return frames


# -- sending ---------------------------------------------------------------------------------------


def send_upload(request: TaskRequest, conn: Conn) -> Outcome:
    """One multipart upload, plain or streamed, and the words that came back."""
    import requests  # deferred: the CLI must start fast

    assert request.upload is not None, "a speech request uploads a clip"
    fields = request.bodies[0]
    if request.task is Task.TRANSCRIPTION and request.delivery == "stream":  # the example's path by name
        fields = stream_fields(request.task, str(fields.get("language", "en")), conn.model)
    body = form(with_model(fields, conn.model))
    stream = body.get("stream") == "true"
    got = Outcome()
    started = time.monotonic()
    try:
        with open(request.upload, "rb") as clip:
            response = requests.post(
                conn.url(request.endpoint),
                files={"file": (request.upload.rsplit("/", 1)[-1], clip)},
                data=body,
                headers=conn.headers,
                timeout=conn.timeout_s,
                stream=stream,
            )
        with response:
            got.http_status = response.status_code
            if response.status_code >= 400:
                refuse(request.task, response.status_code, response.text)
            if stream:
                parts = []
                for event in sse_lines(response.iter_lines()):
                    for choice in event.get("choices") or []:
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            got.ttft_s = got.ttft_s or time.monotonic() - started
                            parts.append(delta)
                    usage = event.get("usage") or {}
                    got.prompt_tokens = usage.get("prompt_tokens", got.prompt_tokens)
                    got.completion_tokens = usage.get("completion_tokens", got.completion_tokens)
                got.answer = "".join(parts)
            else:
                answer = response.json()
                if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
                    raise TaskFailed(f"{request.endpoint} answered without a text: {response.text[:80]!r}")
                got.answer = answer["text"]
    except requests.Timeout:
        raise TaskFailed(f"hung: no answer within the {conn.timeout_s:g} s request timeout") from None
    except requests.RequestException as exc:
        raise TaskFailed(f"cannot reach the server at {conn.root}: {exc}") from None
    grade_words(request, got)
    return got


def send_realtime(request: TaskRequest, conn: Conn) -> Outcome:
    """The realtime example's WebSocket session: the clip in, the transcript out, the session closed."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException
    from websockets.sync.client import connect

    assert request.upload is not None, "a realtime request streams a clip"
    url = "ws" + conn.url(request.endpoint).removeprefix("http")
    got = Outcome()
    started = time.monotonic()
    pcm = pcm16(request.upload)
    try:
        with connect(
            url, additional_headers=conn.headers, open_timeout=conn.timeout_s, close_timeout=2, proxy=None
        ) as ws:
            got.http_status = 101
            first = json.loads(ws.recv(timeout=conn.timeout_s))
            if first.get("type") != "session.created":
                raise TaskFailed(f"the session began with {first.get('type')!r}, not session.created")
            for event in realtime_events(conn.model, pcm):
                ws.send(json.dumps(event))
            parts: list[str] = []
            while True:
                left = conn.timeout_s - (time.monotonic() - started)
                if left <= 0:
                    raise TaskFailed(f"hung: no transcription.done within the {conn.timeout_s:g} s timeout")
                event = json.loads(ws.recv(timeout=left))
                kind = event.get("type")
                if kind == "transcription.delta":
                    got.ttft_s = got.ttft_s or time.monotonic() - started
                    parts.append(str(event.get("delta", "")))
                elif kind == "transcription.done":
                    got.answer = str(event.get("text", "".join(parts)))
                    usage = event.get("usage") or {}
                    got.prompt_tokens = usage.get("prompt_tokens")
                    got.completion_tokens = usage.get("completion_tokens")
                    break
                elif kind == "error":
                    raise TaskFailed(f"the realtime session sent an error: {event.get('error')}")
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (403, 404):  # Starlette rejects a WebSocket to no route with 403
            raise TaskFailed(missing_route(Task.REALTIME, status), status) from None
        raise TaskFailed(f"the WebSocket handshake was refused: HTTP {status}", status) from None
    except TimeoutError:
        raise TaskFailed(
            f"hung: the realtime session went quiet for the {conn.timeout_s:g} s timeout"
        ) from None
    except ConnectionClosed as exc:
        raise TaskFailed(
            f"the server closed the realtime session before transcription.done ({exc})"
        ) from None
    except (WebSocketException, OSError) as exc:
        raise TaskFailed(f"cannot open {url}: {exc}") from None
    grade_words(request, got)
    return got


def grade_words(request: TaskRequest, got: Outcome) -> None:
    """An empty transcript fails; known words give the word error rate, checked unless unchecked."""
    got.check("text", bool(got.answer.strip()), f"{len(got.answer)} characters", shape_only=True)
    if not got.answer.strip():
        got.error = f"{ROUTES[request.task].path} answered with an empty transcript"
        return
    if not request.words:
        return
    rate = word_error_rate(request.words, got.answer)
    got.word_error_rate = round(rate, 4)
    if request.unchecked is None:
        got.check(
            "word error rate",
            rate <= MAX_WORD_ERROR_RATE,
            f"{rate:.2f} against {request.words!r} (at most {MAX_WORD_ERROR_RATE})",
        )
