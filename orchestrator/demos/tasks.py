"""The demos of the tasks past chat: their requests, built from the known-answer media, and their runner.

`build_task_requests` turns a profile's tasks into requests shaped as vLLM's example clients send them
(demos/speech.py, pooling.py, responses.py say which example and what it sends); `run_all` sends chat
demos through the chat runner and task demos here, one list of results in the order given; `to_record`
gives a task's verdict: understood (a truth checked), answered (only the answer's shape checked, and
which checks those were), failed (what did not hold), or no answer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.core.background import background
from orchestrator.core.errors import AssetError
from orchestrator.core.tasks import ROUTES, Task
from orchestrator.demos import features, pooling, responses, speech
from orchestrator.demos.chat import DemoRequest, DemoResult, Media, interrupted, run_demos
from orchestrator.demos.chat import to_record as chat_record
from orchestrator.demos.taskcore import Conn, Outcome, TaskFailed, TaskRequest, TaskResult
from orchestrator.media import Asset, data_url
from orchestrator.media import known as known_media
from orchestrator.profile.expect import alternatives
from orchestrator.profile.schema import TaskDemo
from orchestrator.record.report import DemoRecord, Verdict

log = logging.getLogger(__name__)

# The known image of the pooling demos and its mismatched twin; the texts that describe each.
MATCH, OTHER = "red", "blue"
KNOWN_REASON = "the task's known-answer media"


def describe(colour: str) -> str:
    return f"a photo of a {colour} shape"


def build_task_requests(tasks: Sequence[TaskDemo], media: Media) -> list[TaskRequest]:
    """Every request of every task, in the order of the profile's demos."""
    out: list[TaskRequest] = []
    for demo in tasks:
        if demo.task in (Task.TRANSCRIPTION, Task.TRANSLATION):
            out += _speech(demo, media)
        elif demo.task is Task.REALTIME:
            out += _realtime(demo, media)
        elif demo.task is Task.RESPONSES:
            out.append(_responses(demo, media))
        elif demo.task is Task.UUID:
            out.append(_uuid(demo, media))
        elif demo.task is Task.IMAGE_EMBEDS:
            out.append(_image_embeds(demo, media))
        else:
            out += _pooling(demo, media)
    return out


def _base(demo: TaskDemo, delivery: str, assets: tuple[Asset, ...], unchecked: str | None) -> TaskRequest:
    task = demo.task
    return TaskRequest(
        name=f"{task.value}/{delivery}",
        chat_type=task.value,
        delivery=delivery,
        messages=[],
        max_completion_tokens=known_media.KNOWN_MAX_TOKENS,
        assets=assets,
        task=task,
        endpoint=ROUTES[task].path,
        unchecked=unchecked,
    )


def _clip(demo: TaskDemo, media: Media) -> tuple[Asset, str, str | None]:
    """The clip to send, its words, and why nothing is checked (None: the words are)."""
    if demo.media:
        words = " ".join(alternatives(g)[0] for g in demo.expect)
        return (
            media.store.custom(demo.media[0]),
            words,
            media.unchecked or (None if words else "the profile's own clip, and no expected words for it"),
        )
    try:
        clip = media.store.known(known_media.Medium("audio", {"word": speech.SPOKEN}), KNOWN_REASON)
        return clip, speech.SPOKEN, media.unchecked
    except AssetError:
        raise
    except Exception as exc:  # espeak-ng missing or broken: the example's own clip, with no truth
        why = " ".join(str(exc).split()) or type(exc).__name__
        key = "azacinto_foscolo" if demo.task is Task.TRANSLATION else "winning_call"
        fetched = media.store.upstream(key)
        asset = fetched if isinstance(fetched, Asset) else media.store.substitute(key, str(fetched))
        return asset, "", f"the known clip could not be made ({why}): no words to check"


def _speech(demo: TaskDemo, media: Media) -> list[TaskRequest]:
    clip, words, unchecked = _clip(demo, media)
    # The known clip is English; the translation example's own clip is Italian ("it").
    language = "it" if clip.key == "azacinto_foscolo" else "en"
    base = dataclasses.replace(
        _base(demo, "plain", (clip,), unchecked),
        upload=str(clip.path),
        words=words,
        prompt=words and f'spoken: "{words}"',
    )
    stream = dataclasses.replace(
        base,
        name=f"{demo.task.value}/stream",
        delivery="stream",
        bodies=(speech.stream_fields(demo.task, language, ""),),
    )
    return [dataclasses.replace(base, bodies=(speech.plain_fields(demo.task, language),)), stream]


def _realtime(demo: TaskDemo, media: Media) -> list[TaskRequest]:
    clip, words, unchecked = _clip(demo, media)
    base = _base(demo, "websocket", (clip,), unchecked)
    return [
        dataclasses.replace(base, upload=str(clip.path), words=words, prompt=words and f'spoken: "{words}"')
    ]


def _image(media: Media, colour: str) -> Asset:
    return media.store.known(known_media.Medium("image", {"colour": colour}), KNOWN_REASON)


def _pooling(demo: TaskDemo, media: Media) -> list[TaskRequest]:
    match, other = _image(media, MATCH), _image(media, OTHER)
    unchecked = media.unchecked
    task = demo.task
    if task is Task.EMBEDDING:
        texts = (describe(MATCH), describe(OTHER))
        base = _base(demo, "image-text", (match,), unchecked)
        bodies = pooling.embedding_bodies(media.url(match), texts)
        return [dataclasses.replace(base, bodies=bodies, texts=texts, prompt=" / ".join(texts))]
    if task in (Task.SCORE, Task.RERANK):
        urls = (media.url(match), media.url(other))
        build = pooling.score_body if task is Task.SCORE else pooling.rerank_body
        base = _base(demo, "images", (match, other), unchecked)
        return [dataclasses.replace(base, bodies=(build(describe(MATCH), urls),), prompt=describe(MATCH))]
    labels = tuple(alternatives(g)[0] for g in demo.expect)
    base = dataclasses.replace(
        _base(demo, "url", (match,), unchecked), labels=labels, prompt=pooling.CLASSIFY_PROMPT
    )
    return [
        dataclasses.replace(base, bodies=(pooling.classify_body(media.url(match)),)),
        dataclasses.replace(
            base,
            name=f"{task.value}/base64",
            delivery="base64",
            bodies=(pooling.classify_body(data_url(match)),),
        ),
    ]


def _responses(demo: TaskDemo, media: Media) -> TaskRequest:
    chosen = known_media.known_demos(media.seed)["single-image"]
    assets = tuple(media.store.known(m, KNOWN_REASON) for m in chosen.media)
    base = _base(demo, "image", assets, media.unchecked)
    body = responses.responses_body(chosen.prompt, media.url(assets[0]), known_media.KNOWN_MAX_TOKENS)
    return dataclasses.replace(
        base,
        bodies=(body,),
        prompt=chosen.prompt,
        expect=chosen.expect,
        reject=chosen.reject,
        ignore=chosen.ignore,
        expect_source="known",
    )


def _known_image(demo: TaskDemo, media: Media, delivery: str) -> TaskRequest:
    """A request about the known single-image demo's image, graded by its words as the chat demos are."""
    chosen = known_media.known_demos(media.seed)["single-image"]
    assets = tuple(media.store.known(m, KNOWN_REASON) for m in chosen.media)
    return dataclasses.replace(
        _base(demo, delivery, assets, media.unchecked),
        prompt=chosen.prompt,
        expect=chosen.expect,
        reject=chosen.reject,
        ignore=chosen.ignore,
        expect_source="known",
    )


def _uuid(demo: TaskDemo, media: Media) -> TaskRequest:
    base = _known_image(demo, media, "cached")
    image = base.assets[0]
    bodies = features.uuid_bodies(
        base.prompt, media.url(image), features.new_uuid(image.key), base.max_completion_tokens
    )
    return dataclasses.replace(base, bodies=bodies)


def _image_embeds(demo: TaskDemo, media: Media) -> TaskRequest:
    base = _known_image(demo, media, "embeds")
    if demo.media:  # the profile's own embeddings: of no known image, so nothing to grade
        path = Path(demo.media[0]).expanduser()
        why = media.unchecked or "the profile's own embeddings: no truth to check the answer against"
        return dataclasses.replace(
            base, assets=(), expect=(), expect_source=None, unchecked=why,
            embeds=features.made_now(lambda: features.file_embeds(path)),
        )  # fmt: skip
    if media.embeds is not None:
        image, make = base.assets[0].path, media.embeds
        return dataclasses.replace(base, embeds=features.made_now(lambda: make(image)))
    return dataclasses.replace(base, embeds=features.refused)


# -- running ---------------------------------------------------------------------------------------

SENDERS: dict[Task, Callable[[TaskRequest, Conn], Outcome]] = {
    Task.TRANSCRIPTION: speech.send_upload,
    Task.TRANSLATION: speech.send_upload,
    Task.REALTIME: speech.send_realtime,
    Task.EMBEDDING: pooling.send_embedding,
    Task.SCORE: pooling.send_ranking,
    Task.RERANK: pooling.send_ranking,
    Task.CLASSIFY: pooling.send_classify,
    Task.RESPONSES: responses.send_responses,
    Task.UUID: features.send_uuid,
    Task.IMAGE_EMBEDS: features.send_embeds,
}


def run_all(
    requests: Sequence[DemoRequest],
    *,
    base_url: str,
    api_key: str,
    model: str,
    concurrency: int | None,
    timeout_s: float,
    on_result: Callable[[DemoResult], None] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> list[DemoResult]:
    """The chat demos through the chat runner, then the task demos one at a time; results in order."""
    chats = [r for r in requests if not isinstance(r, TaskRequest)]
    done = run_demos(
        chats,
        base_url=base_url,
        api_key=api_key,
        model=model,
        concurrency=concurrency,
        timeout_s=timeout_s,
        on_result=on_result,
        cancelled=cancelled,
    )
    if len(done) != len(chats) or cancelled():  # stopped: what finished or was in flight, no task sent
        return done
    chat_results = iter(done)
    conn = Conn(base_url, api_key, model, timeout_s)
    results: list[DemoResult] = []
    for request in requests:
        if not isinstance(request, TaskRequest):
            results.append(next(chat_results))
            continue
        if cancelled():
            break
        result = run_task_until(request, conn, cancelled)
        results.append(result)
        if on_result is not None and not cancelled():
            on_result(result)
    return results


def run_task_until(request: TaskRequest, conn: Conn, cancelled: Callable[[], bool]) -> TaskResult:
    """`run_task`, in a thread of its own: a stop ends the wait at once, the task then `interrupted` (in
    flight, as a chat demo would be), its connection left to the request timeout in the background."""
    sent = time.monotonic()
    future = background(run_task, request, conn, name=f"task {request.name}")
    while True:
        try:
            return future.result(timeout=POLL_S)
        except TimeoutError:
            if cancelled():
                base = interrupted(request, sent)
                fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(DemoResult)}
                return TaskResult(**fields, task=request.task.value, endpoint=request.endpoint)


POLL_S = 0.05  # how often a task's wait looks at the stop


def run_task(request: TaskRequest, conn: Conn) -> TaskResult:
    """Send one task demo as its example does; every failure becomes the result's one-line error."""
    started = time.monotonic()
    try:
        got = SENDERS[request.task](request, conn)
    except TaskFailed as exc:
        got = Outcome(http_status=exc.status, error=str(exc))
    except Exception as exc:  # one broken demo must not stop the others
        log.exception("demo %s: unexpected failure", request.name)
        got = Outcome(error=f"{type(exc).__name__}: {exc}")
    ended = time.monotonic()
    error = got.error or next((f"{c.name}: {c.value}" for c in got.checks if not c.passed), None)
    latency = ended - started
    log.info(
        "demo %s: %s in %.2f s%s",
        request.name,
        "passed" if error is None else "failed",
        latency,
        f" ({error})" if error else "",
    )
    return TaskResult(
        name=request.name,
        chat_type=request.chat_type,
        delivery=request.delivery,
        passed=error is None,
        status="passed" if error is None else "hung" if error.startswith("hung") else "failed",
        http_status=got.http_status,
        latency_s=latency,
        ttft_s=got.ttft_s,
        prompt_tokens=got.prompt_tokens,
        completion_tokens=got.completion_tokens,
        tokens_per_s=None,
        answer=got.answer,
        error=error,
        started_at=started,
        ended_at=ended,
        assets=request.assets,
        prompt=request.prompt,
        expected=tuple(alternatives(g) for g in request.expect),
        kind=request.kind,
        expect_source=request.expect_source,
        unchecked=request.unchecked,
        task=request.task.value,
        endpoint=request.endpoint,
        checks=tuple(got.checks),
        word_error_rate=got.word_error_rate,
    )


def to_record(result: DemoResult, phase_start: float) -> DemoRecord:
    """A result as report.json keeps it; a task's with its checks and the verdict they give."""
    record = chat_record(result, phase_start)
    if not isinstance(result, TaskResult):
        return record
    record.task, record.endpoint = result.task, result.endpoint
    record.checks, record.word_error_rate = list(result.checks), result.word_error_rate
    record.verdict, record.verdict_reason = task_verdict(result)
    return record


def task_verdict(result: TaskResult) -> tuple[Verdict, str | None]:
    """no answer, failed (the first check or error), understood (a meaning check held), or answered."""
    if result.error is not None and not result.answer:
        return "no answer", result.error
    if result.error is not None:
        return "failed", result.error
    meaning = [c for c in result.checks if not c.shape_only]
    shape = ", ".join(c.name for c in result.checks if c.shape_only) or "none"
    if meaning:
        checked = "; ".join(f"{c.name}: {c.value}" for c in meaning)
        return "understood", f"{checked} (shape: {shape})"
    why = result.unchecked or "no truth to check this answer against"
    return "answered", f"shape only ({shape}): {why}"
