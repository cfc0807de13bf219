"""The media features of the chat API against the fake vLLM: a per-item `uuid` served from the cache, and
`image_embeds` with `--enable-mm-embeds`; their payloads as vLLM's docs send them, their named failures,
the serve flag and the version gate. The real CPU vLLM 0.32 check is by hand (see demos/features.py)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.core.errors import PreflightError
from orchestrator.core.tasks import Task, too_old
from orchestrator.demos import features
from orchestrator.demos.chat import Media
from orchestrator.demos.tasks import build_task_requests, run_all, to_record
from orchestrator.media import AssetServer, AssetStore
from orchestrator.profile.schema import ProfileError, TaskDemo, load_profile
from tests.conftest import FAKE_PROFILE, server_for

FAKE_EMBEDS = Path(__file__).parent / "probes" / "fake_image_embeds.py"


@pytest.fixture
def fake_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embeddings probe's stand-in (no torch), run by this Python as vLLM's would run the real one."""
    from orchestrator.vllm.runner import VllmInfo

    monkeypatch.setattr(features, "SCRIPT", FAKE_EMBEDS)
    info = VllmInfo("/x/vllm", "0.32.0+cpu", python=sys.executable)
    monkeypatch.setattr("orchestrator.vllm.runner.host", lambda *args, **kwargs: info)


def served(tmp_path: Path, *, embeds: bool = True, **switches: str) -> Iterator[tuple[str, Media, Path]]:
    root = tmp_path / "assets"
    store = AssetStore(root, offline=True)
    record = tmp_path / "record.jsonl"
    serve = {"enable_mm_embeds": True} if embeds else None
    with server_for(
        tmp_path, api_key="sk-x", media_dir=root, record=str(record), serve=serve, **switches
    ) as s:
        s.wait_ready(10)
        with AssetServer(root) as assets:
            yield s.base_url, Media(store, assets.url_for), record


def run(base_url: str, demos: list[TaskDemo], media: Media) -> dict[str, object]:
    results = run_all(
        build_task_requests(demos, media), base_url=base_url, api_key="sk-x", model="fake-omni",
        concurrency=1, timeout_s=20,
    )  # fmt: skip
    return {r.name: r for r in results}


def with_embeds(media: Media) -> Media:
    """The media of a run that launches vLLM here: the model's embeddings made by the (fake) probe."""
    return dataclasses.replace(media, embeds=functools.partial(features.model_embeds, None, "/models/x"))


def chat_bodies(record: Path) -> list[dict]:
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    return [r["body"] for r in lines if r["path"] == "/v1/chat/completions"]


def test_uuid_then_the_uuid_alone_is_served_from_the_cache_and_understood(tmp_path: Path) -> None:
    for base_url, media, record in served(tmp_path):
        result = run(base_url, [TaskDemo(task=Task.UUID)], media)["uuid/cached"]
        assert result.passed, result.error
        first, second = (b["messages"][0]["content"][1] for b in chat_bodies(record))
        assert first["image_url"]["url"].startswith("http://")
        assert first["uuid"].startswith("mmdemo-")
        assert second == {"type": "image_url", "image_url": None, "uuid": first["uuid"]}
        verdict = to_record(result, 0.0)
        assert verdict.verdict == "understood", verdict.verdict_reason
        assert [c.name for c in verdict.checks] == ["first", "cached", "words of request 1",
                                                    "words of request 2 (from the cache)"]  # fmt: skip


def test_a_uuid_the_server_has_not_cached_is_a_named_failure_in_its_words(tmp_path: Path) -> None:
    for base_url, media, _ in served(tmp_path, uuid_cache="0"):
        result = run(base_url, [TaskDemo(task=Task.UUID)], media)["uuid/cached"]
        assert not result.passed
        assert result.error.startswith("request 2 (uuid mmdemo-")
        assert result.error.endswith(
            "was not served from the server's cache: Cache miss for image at index 0 but data is not provided."
        )


def test_image_embeds_of_the_model_are_sent_as_the_docs_send_them(tmp_path: Path, fake_embeds: None) -> None:
    for base_url, media, record in served(tmp_path):
        result = run(base_url, [TaskDemo(task=Task.IMAGE_EMBEDS)], with_embeds(media))["image-embeds/embeds"]
        assert result.passed, result.error
        [body] = chat_bodies(record)
        part = body["messages"][0]["content"][1]
        assert set(part) == {"type", "image_embeds"}
        assert part["type"] == "image_embeds"
        assert base64.b64decode(part["image_embeds"])[:2] == b"PK"  # torch.save's zip
        verdict = to_record(result, 0.0)
        assert verdict.verdict == "understood", verdict.verdict_reason
        assert verdict.checks[0].value.startswith("16 x 64 from the model's own vision tower and projector")


def test_image_embeds_without_the_flag_is_refused_in_the_servers_words(
    tmp_path: Path, fake_embeds: None
) -> None:
    for base_url, media, _ in served(tmp_path, embeds=False):
        result = run(base_url, [TaskDemo(task=Task.IMAGE_EMBEDS)], with_embeds(media))["image-embeds/embeds"]
        assert result.error == (
            "the server refused the image_embeds part: You must set `--enable-mm-embeds` to input `image_embeds`"
        )


def test_embeddings_of_the_wrong_width_fail_before_sending(
    tmp_path: Path, fake_embeds: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EMBEDS_SHAPE", "16,32")
    for base_url, media, record in served(tmp_path):
        result = run(base_url, [TaskDemo(task=Task.IMAGE_EMBEDS)], with_embeds(media))["image-embeds/embeds"]
        assert result.error == "embeddings of shape 16 x 32, but the language model's hidden size is 64"
        assert chat_bodies(record) == []


def test_an_attached_run_has_no_vllm_to_make_embeddings_and_says_so(tmp_path: Path) -> None:
    for base_url, media, _ in served(tmp_path):
        result = run(base_url, [TaskDemo(task=Task.IMAGE_EMBEDS)], media)["image-embeds/embeds"]
        assert result.error == features.NOT_HERE


def test_an_older_server_gets_a_one_line_refusal_naming_the_release(tmp_path: Path) -> None:
    for base_url, media, record in served(tmp_path, version="0.10.2"):
        result = run(base_url, [TaskDemo(task=Task.UUID)], media)["uuid/cached"]
        assert (
            result.error
            == too_old(Task.UUID, "0.10.2")
            == (
                "vLLM 0.10.2 cannot serve the uuid demo: vLLM added it in 0.11.0 "
                "(PR #23950; docs/features/multimodal_inputs.md)"
            )
        )
        assert chat_bodies(record) == []


def test_the_demo_adds_its_serve_flag_and_the_release_it_needs(tmp_path: Path) -> None:
    text = FAKE_PROFILE.read_text().replace("demos: [", "demos: [uuid, image-embeds, ")
    path = tmp_path / "features.yaml"
    path.write_text(text)
    resolved = load_profile(str(path)).resolve("cpu")
    from orchestrator.launch.command import build_plan

    assert "--enable-mm-embeds" in build_plan(resolved).argv
    assert resolved.requires.vllm_version == "0.11.1"
    path.write_text(
        text.replace("  max_model_len: 2048\n", "  max_model_len: 2048\n  enable_mm_embeds: false\n")
    )
    with pytest.raises(ProfileError, match="the image-embeds demo needs --enable-mm-embeds"):
        load_profile(str(path))


def test_before_launch_an_older_vllm_is_refused_naming_the_demo_that_needs_more(tmp_path: Path) -> None:
    from orchestrator.core.errors import PreflightError
    from orchestrator.launch.checks import check_version
    from orchestrator.vllm.runner import VllmInfo

    path = tmp_path / "features.yaml"
    path.write_text(FAKE_PROFILE.read_text().replace("demos: [", "demos: [image-embeds, "))
    resolved = load_profile(str(path)).resolve("cpu")
    with pytest.raises(PreflightError) as refused:
        check_version(VllmInfo(path="/opt/vllm/bin/vllm", version="0.11.0"), resolved)
    assert str(refused.value) == (
        "vLLM 0.11.0 cannot serve the image-embeds demo: vLLM added it in 0.11.1 "
        "(PR #27204; docs/features/multimodal_inputs.md); /opt/vllm/bin/vllm is 0.11.0"
    )
    check_version(VllmInfo(path="/opt/vllm/bin/vllm", version="0.11.1"), resolved)  # new enough: no error


def test_embeddings_that_cannot_be_made_fail_that_demo_alone_with_why(tmp_path: Path) -> None:
    def broken(image: Path) -> features.Embedded:
        raise PreflightError(f"the model's image embeddings: no torch in vLLM's Python ({image.name})")

    for base_url, media, record in served(tmp_path):
        demos = [TaskDemo(task=Task.IMAGE_EMBEDS), TaskDemo(task=Task.UUID)]
        results = run(base_url, demos, dataclasses.replace(media, embeds=broken))
        failed = results["image-embeds/embeds"]
        assert failed.error.startswith("the model's image embeddings were not made: ")
        assert "no torch in vLLM's Python" in failed.error
        assert results["uuid/cached"].passed  # the other demos go on
        assert all("image_embeds" not in json.dumps(b) for b in chat_bodies(record))
