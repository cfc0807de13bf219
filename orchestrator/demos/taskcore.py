"""What every task past chat shares: the request and its outcome, the HTTP call, the checks.

A task request carries the bodies vLLM's own example client sends (core/tasks.py names the example of
each task), with the model left for the send, as the examples take it from `GET /v1/models`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.tasks import Task, missing_route
from orchestrator.demos.chat import DemoRequest, DemoResult
from orchestrator.record.report import TaskCheck

# A transcript is right when at most this share of the known words is wrong (substituted, left out
# or added): espeak-ng's voice is clear, but one word in three may be heard as a homophone.
MAX_WORD_ERROR_RATE = 0.34


@dataclass(frozen=True)
class TaskRequest(DemoRequest):
    """A demo of a task past chat: the bodies the example sends, in order, and what its verdict needs."""

    task: Task = Task.TRANSCRIPTION
    endpoint: str = ""  # the route, as core.tasks.ROUTES names it
    bodies: tuple[Mapping[str, Any], ...] = ()  # JSON bodies or multipart form fields, without the model
    upload: str | None = None  # the file a multipart request uploads (its path)
    words: str = ""  # speech: the words of the known clip; "" when none is known
    texts: tuple[str, ...] = ()  # embedding: the matching text first, then the mismatched one
    labels: tuple[str, ...] = ()  # classify: the labels an answer may name; () any
    embeds: Callable[[], Any] | None = None  # image-embeds: makes the embeddings (features.Embedded)


@dataclass(frozen=True)
class TaskResult(DemoResult):
    """How a task demo ended, with what its checks measured."""

    task: str = ""
    endpoint: str = ""
    checks: tuple[TaskCheck, ...] = ()
    word_error_rate: float | None = None


@dataclass(frozen=True)
class Conn:
    """Where the demos go: the server's /v1 URL, its key, the served model, the request timeout."""

    base_url: str  # http://host:port/v1
    api_key: str
    model: str
    timeout_s: float

    @property
    def root(self) -> str:
        """The server's root: vLLM serves /score, /rerank and /classify beside /v1, not under it."""
        return self.base_url.removesuffix("/v1")

    def url(self, route: str) -> str:
        return self.root + route

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class Outcome:
    """What one task demo got back: the answer shown, the checks, and the error that ended it, if any."""

    answer: str = ""
    http_status: int | None = None
    error: str | None = None
    checks: list[TaskCheck] = field(default_factory=list)
    word_error_rate: float | None = None
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def check(self, name: str, passed: bool, value: str = "", *, shape_only: bool = False) -> bool:
        self.checks.append(TaskCheck(name=name, passed=passed, value=value, shape_only=shape_only))
        return passed


class TaskFailed(Exception):
    """A task request the server refused or answered in a shape that is not the task's; str() is one line."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def with_model(body: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The body with the served model, as the example client puts it (first)."""
    return {"model": model, **body}


def post_json(conn: Conn, task: Task, route: str, body: Mapping[str, Any]) -> tuple[int, Any]:
    """POST one JSON body; a refusal (404 for a route the server lacks, or its own error) raises TaskFailed."""
    import requests  # deferred: the CLI must start fast

    try:
        response = requests.post(conn.url(route), json=body, headers=conn.headers, timeout=conn.timeout_s)
    except requests.Timeout:
        raise TaskFailed(f"hung: no answer within the {conn.timeout_s:g} s request timeout") from None
    except requests.RequestException as exc:
        raise TaskFailed(f"cannot reach the server at {conn.root}: {exc}") from None
    with response:
        refuse(task, response.status_code, response.text)
        try:
            return response.status_code, response.json()
        except ValueError:
            raise TaskFailed(
                f"{route} answered HTTP {response.status_code} with no JSON", response.status_code
            ) from None


def refuse(task: Task, status: int, text: str) -> None:
    """Raise TaskFailed for an HTTP error: a missing route in one line naming the release that added it."""
    if status in (404, 405) and ("Not Found" in text or "Method Not Allowed" in text):
        raise TaskFailed(missing_route(task, status), status)
    if status >= 400:
        raise TaskFailed(server_message(text) or f"HTTP {status}", status)


def server_message(text: str) -> str:
    """vLLM's own words from an error body: `error.message`, `message` or `detail`; else the text."""
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:300]
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if isinstance(inner.get(key), str) and inner[key]:
                    return str(inner[key])
        if isinstance(inner, str):
            return inner
    return " ".join(text.split())[:300]


def sse_lines(lines: Iterator[bytes | str]) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent stream (`data: {...}` lines), up to `[DONE]`."""
    for raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line:
            continue
        line = line.removeprefix("data: ")
        if line.strip() == "[DONE]":
            return
        try:
            event = json.loads(line)
        except ValueError:
            raise TaskFailed(f"the stream sent a line that is not JSON: {line[:80]!r}") from None
        if isinstance(event, dict) and "error" in event:
            raise TaskFailed(server_message(line))
        if isinstance(event, dict):
            yield event


# -- checks ----------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation, as word error rates are counted."""
    return _WORD.findall(text.lower())


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / words of the reference: a word-level edit distance."""
    ref, hyp = words_of(reference), words_of(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        current = [i]
        for j, h in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / len(ref)


def vector(value: Any, what: str) -> list[float]:
    """A list of numbers from an answer, or TaskFailed naming what it was instead."""
    if not isinstance(value, list) or not value:
        raise TaskFailed(f"{what} is not a non-empty list of numbers: {str(value)[:80]}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TaskFailed(f"{what} holds something that is not a number")
    return [float(v) for v in value]


def all_finite(values: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0
