"""The tasks past chat: what vLLM serves besides `/v1/chat/completions`, and the route of each.

A leaf beside chattypes.py: the profile schema, the demos, the derivation and the CLI all name tasks.
A profile's `demos:` names chat types (core/chattypes.py) and tasks alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Task(str, Enum):
    """A task vLLM serves past chat, each with the example client vLLM ships for it."""

    TRANSCRIPTION = "transcription"
    TRANSLATION = "translation"
    REALTIME = "realtime"
    EMBEDDING = "embedding"
    SCORE = "score"
    RERANK = "rerank"
    CLASSIFY = "classify"
    RESPONSES = "responses"
    # Media-level features of the chat API (demos/features.py), each a demo of its own
    UUID = "uuid"
    IMAGE_EMBEDS = "image-embeds"


@dataclass(frozen=True)
class Route:
    """Where a task is served, which vLLM release first served it, and the example client that calls it."""

    path: str  # under the server's root (not /v1), as vLLM 0.32's routers register it
    added_in: str  # the first vLLM release with the route (the release after the PR that added it)
    pr: str
    example: str  # the example client in vLLM's repository (examples/...)
    runner: str  # "generate" or "pooling": the --runner the server needs for it


DOCS = "docs/features/multimodal_inputs.md"  # the page that shows the media features' payloads

# Routes read from vLLM 0.32.0's routers (vllm/entrypoints/speech_to_text/*/api_router.py,
# pooling/*/api_router.py, openai/responses/); releases from the PRs that added them.
ROUTES: dict[Task, Route] = {
    Task.TRANSCRIPTION: Route(
        "/v1/audio/transcriptions",
        "0.7.3",
        "#12909",
        "examples/speech_to_text/openai/openai_transcription_client.py",
        "generate",
    ),
    Task.TRANSLATION: Route(
        "/v1/audio/translations",
        "0.9.2",
        "#19615",
        "examples/speech_to_text/openai/openai_translation_client.py",
        "generate",
    ),
    Task.REALTIME: Route(
        "/v1/realtime",
        "0.16.0",
        "#33187",
        "examples/speech_to_text/realtime/openai_realtime_client.py",
        "generate",
    ),
    Task.EMBEDDING: Route(
        "/v1/embeddings", "0.6.4", "#9759", "examples/pooling/embed/vision_embedding_online.py", "pooling"
    ),
    Task.SCORE: Route(
        "/score", "0.6.4", "#10149", "examples/pooling/score/vision_score_api_online.py", "pooling"
    ),
    Task.RERANK: Route(
        "/rerank", "0.7.1", "#12376", "examples/pooling/score/vision_rerank_api_online.py", "pooling"
    ),
    Task.CLASSIFY: Route(
        "/classify", "0.9.0", "#17032", "examples/pooling/classify/vision_classification_online.py", "pooling"
    ),
    Task.RESPONSES: Route(
        "/v1/responses", "0.10.0", "#20504", "examples/reasoning/openai_responses_client.py", "generate"
    ),
    # No example client sends these: vLLM's docs/features/multimodal_inputs.md ("Online Serving") shows
    # the payloads. A `uuid` with no data ("image_url": None) is served from the processor cache since
    # PR #23950 (merged 2025-09-13, after 0.10.2's branch); `image_embeds` needs `--enable-mm-embeds`
    # since PR #27204 (2025-10-21: the flag, and embeddings refused without it).
    Task.UUID: Route("/v1/chat/completions", "0.11.0", "#23950", DOCS, "generate"),
    Task.IMAGE_EMBEDS: Route("/v1/chat/completions", "0.11.1", "#27204", DOCS, "generate"),
}

POOLING_TASKS = tuple(t for t, r in ROUTES.items() if r.runner == "pooling")
SPEECH_TASKS = (Task.TRANSCRIPTION, Task.TRANSLATION, Task.REALTIME)
MEDIA_FEATURES = (Task.UUID, Task.IMAGE_EMBEDS)  # chat completions with a feature of the media parts


_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def version_tuple(version: str) -> tuple[int, ...]:
    """'0.10.2+cpu' -> (0, 10, 2), '0.11.1rc2' -> (0, 11, 1): the release numbers only; () for none."""
    match = _VERSION.search(version)
    if match is None:
        return ()
    return tuple(int(p) for p in match.groups() if p is not None)


def too_old(task: Task, version: str) -> str | None:
    """The one-line refusal of a media feature on a vLLM older than the release that added it, else None."""
    route = ROUTES[task]
    if task not in MEDIA_FEATURES or not version_tuple(version):
        return None
    if version_tuple(version) >= version_tuple(route.added_in):
        return None
    return (
        f"vLLM {version} cannot serve the {task.value} demo: vLLM added it in {route.added_in} "
        f"(PR {route.pr}; {route.example})"
    )


def missing_route(task: Task, status: int) -> str:
    """The one-line refusal for a server that does not serve a task's route (HTTP 404 or 405)."""
    route = ROUTES[task]
    return (
        f"the server has no {route.path} (HTTP {status}): vLLM added {task.value} in {route.added_in} "
        f"(PR {route.pr}); this server is older, or its model does not serve {task.value}"
    )
