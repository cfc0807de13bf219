"""The fake vLLM's routes past chat: transcription, translation, realtime, embeddings, score, rerank,
classify and responses, as vLLM 0.32.0 answers them (stdlib only; imported by fake_vllm.py).

A perfect model where the media's truth is known (mmdemo's known-answer files, found by sha256 like
the chat answers): the spoken words come back as the transcript; an image's colour sets its embedding,
its score against a text naming that colour, and its label. Switches (environment, FAKE_VLLM_ +):
  NO_TASKS=a,b      those tasks' routes are missing (404), as on a vLLM from before them
  TASK_FAULT=x      a wrong answer: dimension (embeddings of two sizes), nan (a NaN in an embedding),
      empty (an empty transcript), close (the realtime WebSocket closes before transcription.done),
      order (the mismatched document scores highest), probs (class probabilities that do not sum to 1)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import time
from email.parser import BytesParser
from typing import Any

TASK_ROUTES = {
    "/v1/audio/transcriptions": "transcription",
    "/v1/audio/translations": "translation",
    "/v1/realtime": "realtime",
    "/v1/embeddings": "embedding",
    "/score": "score",
    "/v1/score": "score",
    "/rerank": "rerank",
    "/v1/rerank": "rerank",
    "/classify": "classify",
    "/v1/responses": "responses",
}
COLOURS = ("red", "green", "blue", "yellow", "pink", "purple", "orange", "white", "black", "grey")
DIMENSION = 16
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def served(path: str) -> bool:
    missing = {t.strip() for t in os.environ.get("FAKE_VLLM_NO_TASKS", "").split(",") if t.strip()}
    return path in TASK_ROUTES and TASK_ROUTES[path] not in missing


def fault() -> str:
    return os.environ.get("FAKE_VLLM_TASK_FAULT", "")


def multipart(handler: Any, raw: bytes) -> tuple[dict[str, str], bytes, str]:
    """The form fields, the uploaded file's bytes and its name."""
    header = f"Content-Type: {handler.headers.get('Content-Type')}\r\n\r\n".encode()
    message = BytesParser().parsebytes(header + raw)
    fields: dict[str, str] = {}
    data, name = b"", ""
    for part in message.get_payload() if message.is_multipart() else []:
        key = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename() is not None:
            data, name = payload, part.get_filename()
        else:
            fields[str(key)] = payload.decode()
    return fields, data, name


def spoken(fake_vllm: Any, handler: Any, data: bytes) -> str:
    """The words of a known clip, as a perfect Whisper writes them; else a fixed sentence."""
    answer = fake_vllm.truthful("", [data], handler.fake.opts["allowed_local_media_path"])
    if answer and fault() != "empty":
        return str(answer)
    return "" if fault() == "empty" else "Fake transcript."


def handle(fake_vllm: Any, handler: Any, path: str, body: Any) -> None:
    """Answer one request to a task route (the route is served: `served` said so)."""
    task = TASK_ROUTES[path]
    model = handler.fake.opts["name"]
    if task == "realtime":
        realtime(fake_vllm, handler)
        return
    if task in ("transcription", "translation"):
        if not isinstance(body, bytes):
            raise fake_vllm.ApiError(400, "Expected multipart/form-data with a file.")
        fields, data, name = multipart(handler, body)
        handler._body = {"fields": fields, "file": {"name": name, "size": len(data),
                                                    "sha256": hashlib.sha256(data).hexdigest()}}  # fmt: skip
        if fields.get("model", model) != model:
            raise fake_vllm.ApiError(404, f"The model `{fields['model']}` does not exist.")
        text = spoken(fake_vllm, handler, fake_vllm.check_media("audio", data, "file"))
        if fields.get("stream") == "true":
            stream_words(handler, text, model)
        else:
            handler.send_json(200, {"text": text, "usage": {"type": "duration", "seconds": 1}})
        return
    if not isinstance(body, dict) or body.get("model", model) != model:
        raise fake_vllm.ApiError(400 if not isinstance(body, dict) else 404, "bad request or model")
    root = handler.fake.opts["allowed_local_media_path"]
    if task == "embedding":
        vec = embed(fake_vllm, body, root)
        handler.send_json(200, {"object": "list", "model": model, "usage": {"prompt_tokens": 5, "total_tokens": 5},
                                "data": [{"index": 0, "object": "embedding", "embedding": vec}]})  # fmt: skip
    elif task in ("score", "rerank"):
        query = body.get("queries") if task == "score" else body.get("query")
        docs = body.get("documents")
        # As vLLM 0.32 reads them: a dict is one document (all its parts in one prompt), a list is many.
        documents = [docs] if isinstance(docs, dict) else docs
        scores = [score(fake_vllm, str(query), d["content"][0], root) for d in documents]
        if fault() == "order":
            scores = scores[::-1]
        if task == "score":
            data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
            handler.send_json(
                200, {"object": "list", "model": model, "data": data, "usage": {"prompt_tokens": 9}}
            )
        else:
            results = sorted(({"index": i, "relevance_score": s, "document": None} for i, s in enumerate(scores)),
                             key=lambda r: -r["relevance_score"])  # fmt: skip
            handler.send_json(200, {"model": model, "results": results, "usage": {"prompt_tokens": 9}})
    elif task == "classify":
        colour = colour_of_messages(fake_vllm, body.get("messages"), root)
        probs = [0.9 if c == colour else 0.1 / (len(COLOURS) - 1) for c in COLOURS]
        if fault() == "probs":
            probs = [0.5] * len(COLOURS)
        label = colour or COLOURS[0]
        handler.send_json(200, {"object": "list", "model": model, "usage": {"prompt_tokens": 7},
                                "data": [{"index": 0, "label": label, "probs": probs,
                                          "num_classes": len(COLOURS)}]})  # fmt: skip
    else:  # responses
        text, media = responses_input(fake_vllm, body.get("input"), root)
        answer = fake_vllm.truthful(text, media, root) or f'fake reply to "{text}"'
        handler.send_json(200, {"id": "resp_fake", "object": "response", "model": model, "status": "completed",
                                "output": [{"type": "message", "role": "assistant", "status": "completed",
                                            "content": [{"type": "output_text", "text": answer}]}],
                                "usage": {"input_tokens": 12, "output_tokens": len(answer.split())}})  # fmt: skip


def stream_words(handler: Any, text: str, model: str) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def chunk(payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    words = text.split(" ") if text else []
    for i, word in enumerate(words):
        delta = {"content": word if i == 0 else " " + word}
        chunk(json.dumps({"id": "trsc-fake", "object": "transcription.chunk", "created": int(time.time()),
                          "model": model, "choices": [{"delta": delta, "finish_reason": None}]}))  # fmt: skip
    chunk(json.dumps({"id": "trsc-fake", "object": "transcription.chunk", "created": int(time.time()),
                      "model": model, "choices": [{"delta": {"content": ""}, "finish_reason": "stop"}]}))  # fmt: skip
    chunk("[DONE]")
    handler.record()
    handler.wfile.write(b"0\r\n\r\n")


def fact_of(fake_vllm: Any, url: str, root: str | None) -> dict[str, str]:
    data = fake_vllm.load_url("image", url, root)
    return fake_vllm.known_truths(root).get(hashlib.sha256(data).hexdigest(), {})


def colour_vector(colour: str | None) -> list[float]:
    vec = [0.01] * DIMENSION
    if colour in COLOURS:
        vec[COLOURS.index(colour)] = 1.0
    return vec


def embed(fake_vllm: Any, body: dict[str, Any], root: str | None) -> list[float]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise fake_vllm.ApiError(400, "Field 'messages' (or 'input') is required.")
    parts = [p for m in messages for p in (m.get("content") if isinstance(m.get("content"), list) else [])]
    images = [p for p in parts if p.get("type") == "image_url"]
    texts = [p.get("text", "") for p in parts if p.get("type") == "text"]
    if images and texts:  # vLLM 0.32's CLIP: one or the other
        raise fake_vllm.ApiError(400, "CLIP accepts text-only or image-only inputs, not both!")
    if images:
        colour = fact_of(fake_vllm, images[0]["image_url"]["url"], root).get("colour")
    else:
        colour = next((c for c in COLOURS if c in " ".join(texts).split()), None)
    vec = colour_vector(colour)
    if fault() == "dimension" and texts:
        vec = vec + [0.0] * 8
    if fault() == "nan" and images:
        vec[0] = float("nan")
    return vec


def score(fake_vllm: Any, query: str, part: dict[str, Any], root: str | None) -> float:
    colour = fact_of(fake_vllm, part["image_url"]["url"], root).get("colour")
    return 0.9 if colour and colour in query.split() else 0.1


def colour_of_messages(fake_vllm: Any, messages: Any, root: str | None) -> str | None:
    for message in messages or []:
        for part in message.get("content") or [] if isinstance(message.get("content"), list) else []:
            if part.get("type") == "image_url":
                return fact_of(fake_vllm, part["image_url"]["url"], root).get("colour")
    return None


def responses_input(fake_vllm: Any, items: Any, root: str | None) -> tuple[str, list[bytes]]:
    text, media = "", []
    for item in items if isinstance(items, list) else []:
        for part in item.get("content") or []:
            if part.get("type") == "input_text":
                text += part.get("text", "")
            elif part.get("type") == "input_image":
                media.append(fake_vllm.load_url("image", part["image_url"], root))
    return text, media


# -- the realtime WebSocket ------------------------------------------------------------------------


def realtime(fake_vllm: Any, handler: Any) -> None:
    """vLLM's realtime session: session.created; session.update, input_audio_buffer.commit, appends,
    a final commit; then transcription.delta per word and transcription.done."""
    key = handler.headers.get("Sec-WebSocket-Key")
    if handler.headers.get("Upgrade", "").lower() != "websocket" or not key:
        raise fake_vllm.ApiError(400, "Expected a WebSocket upgrade.")
    accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
    handler.send_response(101)
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True
    events: list[dict[str, Any]] = []
    handler._body = {"events": events}
    send_ws(handler, {"type": "session.created", "id": "sess-fake", "created": int(time.time())})
    audio = bytearray()
    while True:
        message = recv_ws(handler)
        if message is None:
            return
        event = json.loads(message)
        events.append(event)
        if event.get("type") == "session.update" and event.get("model") != handler.fake.opts["name"]:
            send_ws(handler, {"type": "error", "error": f"The model `{event.get('model')}` does not exist.",
                              "code": "model_not_found"})  # fmt: skip
        elif event.get("type") == "input_audio_buffer.append":
            audio += base64.b64decode(event["audio"])
        elif event.get("type") == "input_audio_buffer.commit" and event.get("final"):
            break
    if fault() == "close":
        close_ws(handler)
        return
    text = realtime_words(fake_vllm, handler, bytes(audio))
    for i, word in enumerate(text.split(" ")):
        send_ws(handler, {"type": "transcription.delta", "delta": word if i == 0 else " " + word})
    send_ws(handler, {"type": "transcription.done", "text": text,
                      "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 20}})  # fmt: skip
    recv_ws(handler)  # the client's close


def realtime_words(fake_vllm: Any, handler: Any, pcm: bytes) -> str:
    """The known clip's words where the PCM is a known clip's samples; else a fixed sentence."""
    import wave

    root = handler.fake.opts["allowed_local_media_path"]
    from pathlib import Path

    dirs = (
        [Path(os.environ["MMDEMO_CACHE_DIR"]) / "assets" / "known"]
        if os.environ.get("MMDEMO_CACHE_DIR")
        else []
    )
    if root:
        dirs.append(Path(root) / "known")
    for folder in dirs:
        for path in sorted(folder.glob("known-v*-audio-word-*.wav")) if folder.is_dir() else []:
            with wave.open(str(path), "rb") as w:
                if w.readframes(w.getnframes()) == pcm:
                    return path.stem.split("-", 4)[4].capitalize() + "."
    return "Fake transcript."


def send_ws(handler: Any, event: dict[str, Any]) -> None:
    data = json.dumps(event).encode()
    head = bytes([0x81])
    if len(data) < 126:
        head += bytes([len(data)])
    elif len(data) < 1 << 16:
        head += bytes([126]) + struct.pack("!H", len(data))
    else:
        head += bytes([127]) + struct.pack("!Q", len(data))
    handler.wfile.write(head + data)
    handler.wfile.flush()


def close_ws(handler: Any) -> None:
    handler.wfile.write(bytes([0x88, 2]) + struct.pack("!H", 1011))
    handler.wfile.flush()


def recv_ws(handler: Any) -> str | None:
    """One text message from the client (pings answered); None once it closes."""
    while True:
        head = handler.rfile.read(2)
        if len(head) < 2:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", handler.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", handler.rfile.read(8))[0]
        mask = handler.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(handler.rfile.read(length)))
        if opcode == 0x8:
            handler.wfile.write(bytes([0x88, 0]))
            handler.wfile.flush()
            return None
        if opcode == 0x9:
            handler.wfile.write(bytes([0x8A, len(payload)]) + payload)
            continue
        if opcode in (0x1, 0x0):
            return payload.decode()
