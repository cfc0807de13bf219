"""The tasks past chat against the fake vLLM: each payload as vLLM's example client sends it, the checks
of each verdict, bad answers as named failures, and a route the server lacks as a one-line refusal."""

from __future__ import annotations

import base64
import json
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.tasks import MEDIA_FEATURES, ROUTES, Task
from orchestrator.demos.chat import Media
from orchestrator.demos.speech import REALTIME_CHUNK, SPOKEN
from orchestrator.demos.taskcore import TaskRequest, TaskResult, word_error_rate
from orchestrator.demos.tasks import build_task_requests, run_all, to_record
from orchestrator.media import AssetServer, AssetStore
from orchestrator.media import known as known_media
from orchestrator.profile.schema import TaskDemo
from tests.conftest import server_for

pytestmark = pytest.mark.skipif(known_media.espeak_missing() is not None, reason="espeak-ng is needed")

ALL = [TaskDemo(task=t) for t in Task]


@dataclass
class Fake:
    base_url: str
    store: AssetStore
    record: Path
    assets: AssetServer

    def requests(self, *tasks: Task, unchecked: str | None = None) -> list[TaskRequest]:
        media = Media(self.store, self.assets.url_for, unchecked=unchecked)
        return build_task_requests([TaskDemo(task=t) for t in tasks], media)

    def run(self, requests: list[TaskRequest], model: str = "fake-omni") -> dict[str, TaskResult]:
        results = run_all(
            requests, base_url=self.base_url, api_key="sk-fake", model=model, concurrency=1, timeout_s=10
        )
        assert all(isinstance(r, TaskResult) for r in results)
        return {r.name: r for r in results if isinstance(r, TaskResult)}

    def sent(self, path: str) -> list[dict[str, Any]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [r for r in map(json.loads, lines) if r["path"] == path]


def fake_server(tmp_path: Path, **switches: str) -> Iterator[Fake]:
    root = tmp_path / "assets"
    store = AssetStore(root, offline=True)
    record = tmp_path / "record.jsonl"
    with server_for(tmp_path, api_key="sk-fake", media_dir=root, record=str(record), **switches) as server:
        server.wait_ready(10)
        with AssetServer(root) as assets:
            yield Fake(server.base_url, store, record, assets)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[Fake]:
    yield from fake_server(tmp_path)


# -- payloads: what the example clients send ---------------------------------------------------------


def test_every_task_builds_the_requests_of_its_example_in_order(tmp_path: Path) -> None:
    store = AssetStore(tmp_path, offline=True)
    requests = build_task_requests(ALL, Media(store, lambda a: f"http://assets/{a.key}"))
    assert [r.name for r in requests] == [
        "transcription/plain", "transcription/stream", "translation/plain", "translation/stream",
        "realtime/websocket", "embedding/image-text", "score/images", "rerank/images", "classify/url",
        "classify/base64", "responses/image", "uuid/cached", "image-embeds/embeds",
    ]  # fmt: skip
    assert {r.endpoint for r in requests} == {ROUTES[t].path for t in Task}


def test_transcription_and_translation_send_the_examples_multipart_fields(fake: Fake) -> None:
    results = fake.run(fake.requests(Task.TRANSCRIPTION, Task.TRANSLATION))
    assert all(r.passed for r in results.values()), {n: r.error for n, r in results.items()}
    clip = known_media.audio_wav(SPOKEN)
    sent = fake.sent("/v1/audio/transcriptions") + fake.sent("/v1/audio/translations")
    fields = [r["body"]["fields"] for r in sent]
    # openai_transcription_client.py: sync_openai, then stream_api_response (a served name without "openai")
    assert fields[0] == {"model": "fake-omni", "language": "en", "prompt": "", "response_format": "json",
                         "temperature": "0.0", "seed": "4419", "repetition_penalty": "1.3"}  # fmt: skip
    assert fields[1] == {"model": "fake-omni", "stream": "true", "language": "en", "response_format": "json"}
    # openai_translation_client.py: sync_openai, then stream_openai_response (language from the clip)
    assert fields[2] == {"model": "fake-omni", "response_format": "json", "temperature": "0.0", "language": "en",
                         "seed": "4419", "repetition_penalty": "1.3"}  # fmt: skip
    assert fields[3] == {"model": "fake-omni", "language": "en", "stream": "true"}
    import hashlib

    assert {r["body"]["file"]["sha256"] for r in sent} == {hashlib.sha256(clip).hexdigest()}
    assert all(r["headers"]["authorization"] == "Bearer sk-fake" for r in sent)


def test_a_served_name_with_openai_streams_as_the_sdk_path_does(fake: Fake) -> None:
    requests = [r for r in fake.requests(Task.TRANSCRIPTION) if r.delivery == "stream"]
    # The example picks its streaming path by the served name (the fake refuses the unknown model).
    [result] = fake.run(requests, model="openai/whisper-fake").values()
    assert result.error == "The model `openai/whisper-fake` does not exist."
    if True:
        [sent] = fake.sent("/v1/audio/transcriptions")
        assert sent["body"]["fields"] == {"model": "openai/whisper-fake", "language": "en", "prompt": "",
                                          "response_format": "json", "temperature": "0.0", "seed": "420",
                                          "top_p": "0.6", "stream": "true"}  # fmt: skip


def test_realtime_sends_the_examples_events(fake: Fake) -> None:
    [result] = fake.run(fake.requests(Task.REALTIME)).values()
    assert result.passed, result.error
    assert result.answer == "The quick brown fox jumps over the lazy dog."
    [sent] = fake.sent("/v1/realtime")
    events = sent["body"]["events"]
    with wave.open(str(next(fake.store.root.rglob("known-v*-audio-word-*.wav"))), "rb") as w:
        pcm = w.readframes(w.getnframes())
    chunks = [
        base64.b64encode(pcm[i : i + REALTIME_CHUNK]).decode() for i in range(0, len(pcm), REALTIME_CHUNK)
    ]
    assert events == [
        {"type": "session.update", "model": "fake-omni"},
        {"type": "input_audio_buffer.commit"},
        *({"type": "input_audio_buffer.append", "audio": c} for c in chunks),
        {"type": "input_audio_buffer.commit", "final": True},
    ]


def test_pooling_tasks_send_the_examples_bodies(fake: Fake) -> None:
    results = fake.run(fake.requests(Task.EMBEDDING, Task.SCORE, Task.RERANK, Task.CLASSIFY))
    assert all(r.passed for r in results.values()), {n: r.error for n, r in results.items()}
    red, blue = (fake.assets.url_for(fake.store.known(known_media.Medium("image", {"colour": c}), "t"))
                 for c in ("red", "blue"))  # fmt: skip
    image = {"type": "image_url", "image_url": {"url": red}}
    # vision_embedding_online.py's run_clip: the image alone, then a text alone
    assert [r["body"] for r in fake.sent("/v1/embeddings")] == [
        {"model": "fake-omni", "messages": [{"role": "user", "content": [image]}], "encoding_format": "float"},
        *({"model": "fake-omni", "messages": [{"role": "user", "content": [{"type": "text", "text": t}]}],
           "encoding_format": "float"} for t in ("a photo of a red shape", "a photo of a blue shape")),
    ]  # fmt: skip
    documents = [image, {"type": "image_url", "image_url": {"url": blue}}]
    assert [r["body"] for r in fake.sent("/score")] == [
        {
            "model": "fake-omni",
            "queries": "a photo of a red shape",
            "documents": [{"content": [d]} for d in documents],
        }
    ]
    assert [r["body"] for r in fake.sent("/rerank")] == [
        {
            "model": "fake-omni",
            "query": "a photo of a red shape",
            "documents": [{"content": [d]} for d in documents],
        }
    ]
    classify = [r["body"] for r in fake.sent("/classify")]
    assert classify[0] == {"model": "fake-omni", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Please classify this image."}, image]}]}  # fmt: skip
    assert classify[1]["messages"][0]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")


def test_responses_sends_input_text_and_input_image(fake: Fake) -> None:
    [result] = fake.run(fake.requests(Task.RESPONSES)).values()
    assert result.passed, result.error
    [sent] = fake.sent("/v1/responses")
    content = sent["body"]["input"][0]["content"]
    assert [p["type"] for p in content] == ["input_text", "input_image"]
    assert sent["body"]["model"] == "fake-omni"


# -- verdicts ------------------------------------------------------------------------------------------


def test_a_perfect_fake_is_understood_with_the_word_error_rate_in_the_record(fake: Fake) -> None:
    labels = TaskDemo(task=Task.CLASSIFY, expect=("red", "green", "blue"))  # the model's labels
    # the media features need a server flag and vLLM's Python: tests/test_media_features.py
    demos = [*(TaskDemo(task=t) for t in Task if t is not Task.CLASSIFY and t not in MEDIA_FEATURES), labels]
    results = fake.run(build_task_requests(demos, Media(fake.store, fake.assets.url_for)))
    records = {n: to_record(r, 0.0) for n, r in results.items()}
    assert {n: r.verdict for n, r in records.items()} == dict.fromkeys(records, "understood")
    # Without the model's labels, a label is all there is: the shape of the answer.
    [unlabelled, _] = fake.run(fake.requests(Task.CLASSIFY)).values()
    assert to_record(unlabelled, 0.0).verdict == "answered"
    assert records["transcription/plain"].word_error_rate == 0.0
    assert records["transcription/plain"].task == "transcription"
    assert [c.name for c in records["embedding/image-text"].checks] == ["dimension", "finite", "pair order"]
    assert [c.name for c in records["rerank/images"].checks] == ["finite", "ranked first"]


def test_random_weights_stay_answered_and_say_which_checks_were_shape_only(fake: Fake) -> None:
    results = fake.run(fake.requests(Task.EMBEDDING, Task.TRANSCRIPTION, unchecked="random weights"))
    records = [to_record(r, 0.0) for r in results.values()]
    assert {r.verdict for r in records} == {"answered"}
    assert all(c.shape_only for r in records for c in r.checks)
    embedding = next(r for r in records if r.task == "embedding")
    assert embedding.verdict_reason == "shape only (dimension, finite): random weights"


@pytest.mark.parametrize(
    ("fault", "task", "error"),
    [
        ("dimension", Task.EMBEDDING, "the embeddings differ in dimension: 16, 24"),
        ("nan", Task.EMBEDDING, "embedding(s) 0 hold NaN or infinite values"),
        ("empty", Task.TRANSCRIPTION, "/v1/audio/transcriptions answered with an empty transcript"),
        ("close", Task.REALTIME, "the server closed the realtime session before transcription.done"),
        ("order", Task.RERANK, "the mismatched document ranked first"),
        ("probs", Task.CLASSIFY, "the probabilities are not 10 finite values summing to 1"),
    ],
)
def test_bad_answers_are_named_failures(tmp_path: Path, fault: str, task: Task, error: str) -> None:
    for fake in fake_server(tmp_path, task_fault=fault):
        results = fake.run(fake.requests(task))
        first = next(iter(results.values()))
        assert not first.passed
        assert first.error is not None
        assert first.error.startswith(error), first.error
        assert to_record(first, 0.0).verdict in ("failed", "no answer")


@pytest.mark.parametrize("task", [Task.TRANSCRIPTION, Task.REALTIME, Task.SCORE])
def test_a_server_without_the_route_gets_a_one_line_refusal_naming_the_release(
    tmp_path: Path, task: Task
) -> None:
    for fake in fake_server(tmp_path, no_tasks=task.value):
        first = next(iter(fake.run(fake.requests(task)).values()))
        route = ROUTES[task]
        assert first.error == (
            f"the server has no {route.path} (HTTP 404): vLLM added {task.value} in {route.added_in} "
            f"(PR {route.pr}); this server is older, or its model does not serve {task.value}"
        )


def test_word_error_rate_counts_substitutions_deletions_and_insertions() -> None:
    assert word_error_rate("the quick brown fox", "The quick brown fox.") == 0.0
    assert word_error_rate("the quick brown fox", "the slow brown fox") == 0.25
    assert word_error_rate("the quick brown fox", "the brown fox jumps") == 0.5
    assert word_error_rate("a b", "") == 1.0


# -- a run: the session, the record and its renderings --------------------------------------------------


def test_a_run_of_every_task_is_recorded_and_rendered(tmp_path: Path, mmdemo_env: dict[str, str]) -> None:
    import xml.etree.ElementTree as ET

    from tests.conftest import FAKE, mmdemo, schema_problems

    profile = Path(__file__).parent / "profiles" / "fake-tasks.yaml"
    done = mmdemo("run", str(profile), "--vllm-bin", str(FAKE), "--runs-dir", str(tmp_path / "runs"),
                  "--grace", "2", env=mmdemo_env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = (tmp_path / "runs").glob("2*")
    report = json.loads((run / "report.json").read_text())
    assert schema_problems(report) == []
    tasks = {d["name"]: d for d in report["demos"] if d["task"]}
    assert [n for n in tasks if "(repeat)" not in n] == [
        "transcription/plain", "transcription/stream", "translation/plain", "translation/stream",
        "realtime/websocket", "embedding/image-text", "score/images", "rerank/images", "classify/url",
        "classify/base64", "responses/image",
    ]  # fmt: skip
    assert {d["verdict"] for d in tasks.values()} == {"understood"}
    # A named profile: what it runs is known, what the model serves is not probed (None, not empty).
    assert report["capabilities"] == {
        "chat_types": {"served": None, "run": ["text-only"]},
        "tasks": {"served": None, "run": [t.value for t in Task if t not in MEDIA_FEATURES]},
    }
    assert tasks["transcription/plain"]["word_error_rate"] == 0.0
    # The worst case sends chat media only; the tasks are not in it.
    worst = next(d for d in report["demos"] if d["kind"] == "worst case") if any(
        d["kind"] == "worst case" for d in report["demos"]) else None  # fmt: skip
    assert worst is None  # text-only is the only chat type: no media, no worst case
    markdown = (run / "report.md").read_text()
    assert "transcription/plain" in markdown
    assert "word error rate 0.00" in markdown
    cases = {c.get("name"): c for c in ET.parse(run / "junit.xml").getroot().iter("testcase")}
    assert "transcription/plain" in cases
    assert cases["transcription/plain"].get("classname", "").endswith(".transcription")
    html = (run / "report.html").read_text()
    assert "realtime/websocket" in html
    assert "word error rate" in html
