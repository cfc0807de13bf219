"""Demo payloads field by field against the upstream example, and the runner against real HTTP servers."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.errors import ProfileError, ServerError
from orchestrator.demos.chat import (
    DemoRequest,
    DemoResult,
    Media,
    build_requests,
    redacted,
    run_demos,
)
from orchestrator.launch.api import list_models
from orchestrator.media import Asset, AssetServer, AssetStore
from orchestrator.profile.schema import ChatType, Demo
from tests.conftest import server_for

ALL = [Demo(chat_type=t) for t in ChatType]


def fake_url(asset: Asset) -> str:
    return f"http://media.test/{asset.key}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> AssetStore:
    return AssetStore(tmp_path_factory.mktemp("assets"), offline=True)


@pytest.fixture(scope="module")
def built(store: AssetStore) -> dict[str, DemoRequest]:
    return {r.name: r for r in build_requests(ALL, Media(store, fake_url, choice="upstream"))}


def b64_of(store: AssetStore, key: str) -> str:
    return base64.b64encode(store.get(key).path.read_bytes()).decode()


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(parts)}]


def text(prompt: str) -> dict[str, Any]:
    return {"type": "text", "text": prompt}


# -- payloads --------------------------------------------------------------------------------------


def test_one_request_per_chat_type_and_variant_in_the_examples_order(built: dict[str, DemoRequest]) -> None:
    assert list(built) == [
        "text-only/text",
        "single-image/url",
        "single-image/file",
        "single-image/base64",
        "multi-image/url",
        "video/url",
        "video/base64",
        "audio/input_audio",
        "audio/url",
        "audio/base64",
        "multi-audio/input_audio",
    ]
    for name, request in built.items():
        assert (request.chat_type, request.delivery) == tuple(name.split("/"))
        assert request.max_completion_tokens == 128
        assert request.expect == ()


def test_text_only_sends_plain_string_content(built: dict[str, DemoRequest]) -> None:
    request = built["text-only/text"]
    assert request.messages == [{"role": "user", "content": "What's the capital of France?"}]
    assert request.assets == ()


def test_single_image_payloads(built: dict[str, DemoRequest], store: AssetStore) -> None:
    image = store.get("image")
    prompt = text("What's in this image?")
    assert built["single-image/url"].messages == user(
        prompt, {"type": "image_url", "image_url": {"url": "http://media.test/image"}}
    )
    assert built["single-image/file"].messages == user(
        prompt, {"type": "image_url", "image_url": {"url": f"file://{image.path.resolve()}"}}
    )
    assert built["single-image/base64"].messages == user(
        prompt,
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64_of(store, 'image')}"}},
    )
    assert all(built[f"single-image/{v}"].assets == (image,) for v in ("url", "file", "base64"))


def test_multi_image_sends_duck_then_lion(built: dict[str, DemoRequest], store: AssetStore) -> None:
    request = built["multi-image/url"]
    assert request.messages == user(
        text("What are the animals in these images?"),
        {"type": "image_url", "image_url": {"url": "http://media.test/duck"}},
        {"type": "image_url", "image_url": {"url": "http://media.test/lion"}},
    )
    assert request.assets == (store.get("duck"), store.get("lion"))


def test_video_payloads(built: dict[str, DemoRequest], store: AssetStore) -> None:
    prompt = text("What's in this video?")
    assert built["video/url"].messages == user(
        prompt, {"type": "video_url", "video_url": {"url": "http://media.test/video"}}
    )
    assert built["video/base64"].messages == user(
        prompt, {"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{b64_of(store, 'video')}"}}
    )


def test_audio_payloads(built: dict[str, DemoRequest], store: AssetStore) -> None:
    prompt = text("What's in this audio?")
    data = b64_of(store, "winning_call")
    media_type = store.get("winning_call").media_type  # audio/wav for the synthetic stand-in
    assert built["audio/input_audio"].messages == user(
        prompt, {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    )
    assert built["audio/url"].messages == user(
        prompt, {"type": "audio_url", "audio_url": {"url": "http://media.test/winning_call"}}
    )
    assert built["audio/base64"].messages == user(
        prompt, {"type": "audio_url", "audio_url": {"url": f"data:{media_type};base64,{data}"}}
    )


def test_multi_audio_sends_two_input_audio_parts(built: dict[str, DemoRequest], store: AssetStore) -> None:
    assert built["multi-audio/input_audio"].messages == user(
        text("Are these two audios the same?"),
        {"type": "input_audio", "input_audio": {"data": b64_of(store, "winning_call"), "format": "wav"}},
        {"type": "input_audio", "input_audio": {"data": b64_of(store, "azacinto_foscolo"), "format": "wav"}},
    )


def test_profile_media_tokens_and_expectations_replace_the_defaults(
    store: AssetStore, tmp_path: Path
) -> None:
    cat = tmp_path / "cat.png"
    cat.write_bytes(b"\x89PNG cat")
    demo = Demo(chat_type=ChatType.SINGLE_IMAGE, media=(str(cat),), max_completion_tokens=7, expect=("cat",))
    requests = build_requests([demo], Media(store, fake_url), default_max_tokens=99)
    assert [r.delivery for r in requests] == ["url", "file", "base64"]
    asset = requests[0].assets[0]
    assert asset.provenance == "profile"
    assert requests[2].messages[0]["content"][1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert all(r.max_completion_tokens == 7 and r.expect == ("cat",) for r in requests)
    text_only = build_requests(
        [Demo(chat_type=ChatType.TEXT)], Media(store, fake_url, choice="upstream"), default_max_tokens=99
    )
    assert text_only[0].max_completion_tokens == 99


@pytest.mark.parametrize(
    ("chat_type", "files", "message"),
    [
        (ChatType.TEXT, ["x.jpg"], "'text-only' sends no media"),
        (ChatType.MULTI_IMAGE, ["a.jpg"], r"sends 2 image\(s\) per prompt; it lists 1"),
        (ChatType.AUDIO, ["clip.mp4"], r"needs audio media but '.*clip\.mp4' is video"),
    ],
)
def test_profile_media_that_does_not_fit_is_an_error(
    store: AssetStore, tmp_path: Path, chat_type: ChatType, files: list[str], message: str
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"media")
    demo = Demo(chat_type=chat_type, media=tuple(str(tmp_path / n) for n in files))
    with pytest.raises(ProfileError, match=message):
        build_requests([demo], Media(store, fake_url))


def test_redacted_shortens_base64_but_keeps_the_shape(built: dict[str, DemoRequest]) -> None:
    short = redacted(built["audio/input_audio"].messages)
    part = short[0]["content"][1]
    assert part["type"] == "input_audio"
    assert part["input_audio"]["format"] == "wav"
    assert part["input_audio"]["data"].endswith(" chars)")
    assert short[0]["content"][0] == text("What's in this audio?")
    assert len(json.dumps(short)) < 500


# -- a tiny OpenAI-compatible streaming server -----------------------------------------------------

Responder = Callable[["ChatHandler", dict[str, Any]], None]


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def do_POST(self) -> None:
        t_start = time.monotonic()
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.in_flight += 1
            self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
        try:
            self.server.responder(self, body)
        finally:
            with self.server.lock:
                self.server.in_flight -= 1
                self.server.records.append(
                    {
                        "t_start": t_start,
                        "t_end": time.monotonic(),
                        "body": body,
                        "auth": self.headers["Authorization"],
                    }
                )

    def sse(self, words: list[str], usage: bool = True, error: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
        chunks: list[dict[str, Any]] = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else " " + word}
            chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        if error is not None:
            chunks.append({"error": {"message": error, "type": "InternalServerError", "code": 500}})
        chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if usage:
            counts = {"prompt_tokens": 11, "completion_tokens": len(words), "total_tokens": 11 + len(words)}
            chunks.append({**base, "choices": [], "usage": counts})
        for chunk in chunks:
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def fail(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.records: list[dict[str, Any]] = []
        self.responder: Responder = lambda h, body: h.sse(["Paris", "is", "the", "capital."])
        self.release = threading.Event()  # lets a handler held for a timeout test finish at teardown

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def chat() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


def requests_for(*names: str, expect: tuple[str, ...] = ()) -> list[DemoRequest]:
    return [
        DemoRequest(
            name=n,
            chat_type=ChatType.TEXT,
            delivery="text",
            expect=expect,
            max_completion_tokens=16,
            messages=[{"role": "user", "content": n}],
        )
        for n in names
    ]


def run(chat: ChatServer, requests: list[DemoRequest], **kwargs: Any) -> list[DemoResult]:
    options: dict[str, Any] = {"concurrency": None, "timeout_s": 5.0, **kwargs}
    return run_demos(requests, base_url=chat.base_url, api_key="sk-test", model="m", **options)


def test_a_streamed_answer_passes_with_timings_and_usage(
    chat: ChatServer, built: dict[str, DemoRequest]
) -> None:
    request = built["multi-image/url"]
    seen: list[DemoResult] = []
    [result] = run(chat, [request], on_result=seen.append)
    assert seen == [result]
    assert result.passed
    assert (result.status, result.http_status, result.error) == ("passed", 200, None)
    assert result.answer == "Paris is the capital."
    assert (result.name, result.chat_type, result.delivery) == (
        "multi-image/url",
        ChatType.MULTI_IMAGE,
        "url",
    )
    assert (result.prompt_tokens, result.completion_tokens) == (11, 4)
    assert result.ttft_s is not None
    assert 0 < result.ttft_s <= result.latency_s
    assert result.latency_s == pytest.approx(result.ended_at - result.started_at)
    assert result.tokens_per_s == pytest.approx(4 / result.latency_s)
    assert [a.key for a in result.assets] == ["duck", "lion"]
    assert all(a.provenance == "synthetic" and a.sha256 for a in result.assets)

    [record] = chat.records
    assert record["auth"] == "Bearer sk-test"
    body = record["body"]
    assert body["model"] == "m"
    assert body["messages"] == request.messages
    assert body["max_completion_tokens"] == 128
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_a_server_error_fails_the_demo_with_the_servers_message(chat: ChatServer) -> None:
    message = "At most 1 image(s) may be provided in one prompt."

    def respond(h: ChatHandler, body: dict[str, Any]) -> None:
        if body["messages"][0]["content"] == "bad":
            payload = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}}
            h.fail(400, json.dumps(payload).encode())
        elif body["messages"][0]["content"] == "plain":
            h.fail(500, b"Internal Server Error")
        else:
            h.sse(["fine"])

    chat.responder = respond
    ok, bad, plain = run(chat, requests_for("ok", "bad", "plain"))
    assert ok.passed
    assert (bad.passed, bad.status, bad.http_status, bad.error) == (False, "failed", 400, message)
    assert (plain.passed, plain.http_status, plain.error) == (False, 500, "Internal Server Error")


def test_an_error_event_mid_stream_fails_the_demo(chat: ChatServer) -> None:
    chat.responder = lambda h, body: h.sse(["half"], error="EngineCore encountered an issue.")
    [result] = run(chat, requests_for("x"))
    assert not result.passed
    assert result.error == "EngineCore encountered an issue."
    assert result.answer == "half"


def test_expected_words_are_checked_case_insensitively(chat: ChatServer) -> None:
    passed, failed = run(
        chat, requests_for("a", expect=("paris", "CAPITAL")) + requests_for("b", expect=("Lyon",))
    )
    assert passed.passed
    assert not failed.passed
    assert failed.error is not None
    assert "Lyon" in failed.error
    assert failed.answer == "Paris is the capital."


def test_an_empty_answer_fails(chat: ChatServer) -> None:
    chat.responder = lambda h, body: h.sse([], usage=False)
    [result] = run(chat, requests_for("x"))
    assert not result.passed
    assert result.error is not None
    assert "empty" in result.error
    assert (result.prompt_tokens, result.completion_tokens, result.tokens_per_s) == (None, None, None)


def test_a_request_timeout_is_a_failure_not_a_hang(chat: ChatServer) -> None:
    def respond(h: ChatHandler, body: dict[str, Any]) -> None:
        if body["messages"][0]["content"] == "fast":
            h.sse(["fast"])
        else:
            chat.release.wait(30)  # held until teardown: the client must give up first

    chat.responder = respond
    fast, slow = run(chat, requests_for("fast", "slow"), timeout_s=0.3)
    assert fast.passed
    assert not slow.passed
    assert slow.error is not None
    assert "timeout" in slow.error
    assert slow.http_status is None
    assert slow.latency_s < 5


def test_an_unreachable_server_is_a_failure(chat: ChatServer) -> None:
    dead = ChatServer()
    dead.server_close()
    [result] = run_demos(
        requests_for("x"), base_url=dead.base_url, api_key="k", model="m", concurrency=1, timeout_s=2
    )
    assert not result.passed
    assert result.error is not None
    assert "cannot reach" in result.error


def test_all_at_once_runs_every_request_concurrently(chat: ChatServer) -> None:
    # The server holds each request until all four have arrived: a runner that sent them one by one
    # would break the barrier and get 500s.
    barrier = threading.Barrier(4, timeout=5)

    def respond(h: ChatHandler, body: dict[str, Any]) -> None:
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            h.fail(500, b"requests did not overlap")
        else:
            h.sse([body["messages"][0]["content"]])

    chat.responder = respond
    results = run(chat, requests_for("a", "b", "c", "d"), concurrency=None)
    assert [r.answer for r in results] == ["a", "b", "c", "d"]  # request order, whatever finished first
    assert all(r.passed for r in results)
    assert max(r["t_start"] for r in chat.records) < min(r["t_end"] for r in chat.records)


def test_a_concurrency_limit_caps_the_requests_in_flight(chat: ChatServer) -> None:
    barrier = threading.Barrier(2, timeout=5)

    def respond(h: ChatHandler, body: dict[str, Any]) -> None:
        barrier.wait()
        h.sse(["ok"])

    chat.responder = respond
    results = run(chat, requests_for("a", "b", "c", "d"), concurrency=2)
    assert all(r.passed for r in results)
    assert chat.max_in_flight == 2


def test_concurrency_one_is_the_examples_one_by_one(chat: ChatServer) -> None:
    seen: list[str] = []
    results = run(chat, requests_for("a", "b", "c"), concurrency=1, on_result=lambda r: seen.append(r.name))
    assert seen == ["a", "b", "c"]
    assert [r.name for r in results] == ["a", "b", "c"]
    records = sorted(chat.records, key=lambda r: r["t_start"])
    assert [r["body"]["messages"][0]["content"] for r in records] == ["a", "b", "c"]
    assert all(later["t_start"] >= earlier["t_end"] for earlier, later in itertools.pairwise(records))
    assert chat.max_in_flight == 1


def test_no_requests_means_no_results(chat: ChatServer) -> None:
    assert run(chat, []) == []
    assert chat.records == []


# -- end to end against the fake vLLM --------------------------------------------------------------


def test_every_demo_passes_end_to_end_with_local_media(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    store = AssetStore(root, offline=True)
    record_file = tmp_path / "record.jsonl"
    limits = {"limit_mm_per_prompt": {"image": 1, "video": 1, "audio": 2}}
    with server_for(
        tmp_path, api_key="sk-fake", media_dir=root, serve=limits, record=str(record_file)
    ) as fake:
        fake.wait_ready(10)
        base_url = fake.base_url
        assert list_models(base_url, "sk-fake") == ["fake-omni"]
        with pytest.raises(ServerError, match="401"):
            list_models(base_url, "wrong")
        with AssetServer(root) as server:
            requests = build_requests(ALL, Media(store, server.url_for, choice="upstream"))
            results = run_demos(
                requests, base_url=base_url, api_key="sk-fake", model="fake-omni", concurrency=1, timeout_s=10
            )
            served = server.requests_served
    by_name = {r.name: r for r in results}
    failed = {n: r.error for n, r in by_name.items() if not r.passed}
    # The fake enforces --limit-mm-per-prompt like vLLM: multi-image is refused with vLLM's own words.
    assert failed == {"multi-image/url": "At most 1 image(s) may be provided in one prompt."}
    assert by_name["multi-image/url"].http_status == 400
    assert by_name["single-image/file"].passed
    assert served == 3  # single-image, video and audio URLs were fetched from the loopback origin
    lines = record_file.read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["path"] == "/v1/chat/completions"]
    records.sort(key=lambda r: r["t_start"])
    assert [r["body"]["messages"] for r in records] == [r.messages for r in requests]
    assert all(later["t_start"] >= earlier["t_end"] for earlier, later in itertools.pairwise(records))


def stream_slowly(chat: ChatServer, pause_s: float) -> Responder:
    """A responder that sends one word, then another every `pause_s` until released."""

    def respond(h: ChatHandler, body: dict[str, Any]) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        while True:
            delta = {"index": 0, "delta": {"content": "word "}, "finish_reason": None}
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": "m",
                "choices": [delta],
            }
            try:
                h.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                h.wfile.flush()
            except OSError:  # the client gave up, as it should
                return
            if chat.release.wait(pause_s):
                return

    return respond


def test_a_stream_that_stalls_midway_is_hung_with_how_far_it_got(chat: ChatServer) -> None:
    chat.responder = stream_slowly(chat, pause_s=30)  # one word, then silence
    [result] = run(chat, requests_for("x"), timeout_s=0.3)
    assert not result.passed
    assert result.status == "hung"
    assert result.answer == "word "  # what did arrive is kept as evidence
    assert result.error is not None
    assert result.error.startswith("hung: the answer stopped after 5 characters (first token at ")
    assert result.error.endswith("nothing more within the 0.3 s request timeout")


def test_a_stream_that_trickles_past_the_deadline_is_a_timeout_failure(chat: ChatServer) -> None:
    # Each chunk arrives well within the read timeout; only the overall deadline can stop this one.
    chat.responder = stream_slowly(chat, pause_s=0.05)
    [result] = run(chat, requests_for("x"), timeout_s=0.3)
    assert not result.passed
    assert result.error == "the answer was still streaming after the 0.3 s request timeout"
    assert result.answer.startswith("word word ")
