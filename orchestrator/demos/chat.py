"""Demo requests: the chat types of vLLM's multimodal example client as payloads, and a streaming runner.

Prompts and payload shapes are those of `openai_chat_completion_client_for_multimodal.py`, one request
per way the example sends media (URL, base64, file, input_audio).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.errors import AssetError, ProfileError
from orchestrator.media import Asset, AssetStore, b64, data_url, file_url
from orchestrator.media import known as known_media
from orchestrator.profile.expect import alternatives, grade
from orchestrator.profile.schema import Demo
from orchestrator.record.report import AssetRecord, DemoRecord, Verdict
from orchestrator.render.text import one_line

if TYPE_CHECKING:
    from pathlib import Path

    from openai import OpenAI

log = logging.getLogger(__name__)

PROMPTS: dict[ChatType, str] = {
    ChatType.TEXT: "What's the capital of France?",
    ChatType.SINGLE_IMAGE: "What's in this image?",
    ChatType.MULTI_IMAGE: "What are the animals in these images?",
    ChatType.VIDEO: "What's in this video?",
    ChatType.AUDIO: "What's in this audio?",
    ChatType.MULTI_AUDIO: "Are these two audios the same?",
}
# The registry assets the upstream example sends for each chat type.
DEFAULT_ASSETS: dict[ChatType, tuple[str, ...]] = {
    ChatType.TEXT: (),
    ChatType.SINGLE_IMAGE: ("image",),
    ChatType.MULTI_IMAGE: ("duck", "lion"),
    ChatType.VIDEO: ("video",),
    ChatType.AUDIO: ("winning_call",),
    ChatType.MULTI_AUDIO: ("winning_call", "azacinto_foscolo"),
}
# How the example sends each chat type's media (its deliveries), in its order (single-image's `file`
# needs --allowed-local-media-path).
DELIVERIES: dict[ChatType, tuple[str, ...]] = {
    ChatType.TEXT: ("text",),
    ChatType.SINGLE_IMAGE: ("url", "file", "base64"),
    ChatType.MULTI_IMAGE: ("url",),
    ChatType.VIDEO: ("url", "base64"),
    ChatType.AUDIO: ("input_audio", "url", "base64"),
    ChatType.MULTI_AUDIO: ("input_audio",),
}


# Where a run's demo media come from: auto (the upstream assets; where one cannot be had, the
# known-answer media), known (the known-answer media always), upstream (the upstream assets; a
# synthetic stand-in with no truth where one cannot be had).
MediaChoice = Literal["auto", "known", "upstream"]
MEDIA_CHOICES: tuple[MediaChoice, ...] = ("auto", "known", "upstream")


@dataclass(frozen=True)
class Planned:
    """What one demo sends and what its answer is checked against."""

    prompt: str
    assets: tuple[Asset, ...]
    expect: tuple[str, ...] = ()
    reject: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()  # phrases left out of the graded answer
    expect_source: str | None = None  # "known" (the media's truth), "profile"; None: nothing checked
    unchecked: str | None = None  # why nothing is checked
    max_completion_tokens: int | None = None  # a known demo's short answer


@dataclass(frozen=True)
class Media:
    """Where demo media come from: the asset store, the URL the model server fetches an asset by,
    upstream or known-answer media (and the seed of those), and whether answers are checked."""

    store: AssetStore
    url: Callable[[Asset], str]
    choice: MediaChoice = "auto"
    seed: int = known_media.DEFAULT_SEED
    unchecked: str | None = None  # set: no answer is checked (a model with random weights), and why
    # the model's own embeddings of an image (demos/features.py), where vLLM runs on this host
    embeds: Callable[[Path], Any] | None = None

    def for_demo(self, demo: Demo) -> tuple[Asset, ...]:
        """The assets a demo sends."""
        return self.plan(demo).assets

    def plan(self, demo: Demo) -> Planned:
        """The prompt, the assets and the words a demo's answer is checked against: the profile's
        own media, the example's assets, or the known-answer media (whose truth gives the words)."""
        planned = self._plan(demo)
        if self.unchecked is not None:
            planned = dataclasses.replace(
                planned, expect=(), reject=(), ignore=(), expect_source=None, unchecked=self.unchecked
            )
        return planned

    def _plan(self, demo: Demo) -> Planned:
        need = CHAT_TYPE_NEEDS[demo.chat_type]
        name = demo.chat_type.value
        prompt = PROMPTS[demo.chat_type]
        if demo.media:
            if need is None:
                raise ProfileError(f"demo {name!r} sends no media but lists {len(demo.media)} media item(s)")
            modality, count = need
            if len(demo.media) != count:
                listed = len(demo.media)
                raise ProfileError(
                    f"demo {name!r} sends {count} {modality}(s) per prompt; it lists {listed} media"
                )
            assets = tuple(self.store.custom(ref) for ref in demo.media)
            for ref, asset in zip(demo.media, assets, strict=True):
                if asset.kind != modality:
                    raise ProfileError(f"demo {name!r} needs {modality} media but {ref!r} is {asset.kind}")
            if demo.expect:  # words the profile wrote for its own files
                return Planned(prompt, assets, demo.expect, expect_source="profile")
            return Planned(
                prompt, assets, unchecked="the profile's own media, and no expected words for them"
            )
        if self.choice == "known":
            return self._known(demo, "--media known")
        keys = DEFAULT_ASSETS[demo.chat_type]
        if not keys:  # text-only: offline, the known truth (with its distractors) grades it too
            if self.choice == "auto" and self.store.offline:
                return self._known(demo, "offline mode")
            return self._upstream(demo, prompt, ())
        fetched = [self.store.upstream(key) for key in keys]
        missing = [str(f) for f in fetched if not isinstance(f, Asset)]
        if not missing:
            return self._upstream(demo, prompt, tuple(a for a in fetched if isinstance(a, Asset)))
        if self.choice == "auto":
            return self._known(demo, missing[0])
        return self._synthetic(demo, missing[0])

    @staticmethod
    def _upstream(demo: Demo, prompt: str, assets: tuple[Asset, ...]) -> Planned:
        if demo.expect:
            return Planned(prompt, assets, demo.expect, expect_source="profile")
        return Planned(prompt, assets, unchecked="the profile expects no words of this demo")

    def _synthetic(self, demo: Demo, reason: str) -> Planned:
        """The example's prompt on synthetic stand-ins: there is no truth, and no word is expected."""
        keys = DEFAULT_ASSETS[demo.chat_type]
        fetched = [self.store.upstream(key) for key in keys]
        assets = tuple(
            f if isinstance(f, Asset) else self.store.substitute(k, reason)
            for k, f in zip(keys, fetched, strict=True)
        )
        why = f"a synthetic stand-in with no truth to check ({reason})"
        return Planned(PROMPTS[demo.chat_type], assets, unchecked=why)

    def _known(self, demo: Demo, reason: str) -> Planned:
        """The known-answer demo of this chat type; where its media cannot be made, synthetic ones."""
        chosen = known_media.known_demos(self.seed)[demo.chat_type.value]
        try:
            assets = tuple(self.store.known(medium, reason) for medium in chosen.media)
        except AssetError:
            raise
        except Exception as exc:  # a generator that failed here (a missing decoder, espeak-ng broken)
            why = " ".join(str(exc).split()) or type(exc).__name__
            log.info("demo %s: known media could not be made (%s)", demo.chat_type.value, why)
            return self._synthetic(demo, f"known media could not be made: {why}")
        tokens = min(known_media.KNOWN_MAX_TOKENS, demo.max_completion_tokens or known_media.KNOWN_MAX_TOKENS)
        return Planned(
            chosen.prompt,
            assets,
            chosen.expect,
            chosen.reject,
            chosen.ignore,
            expect_source="known",
            max_completion_tokens=tokens,
        )


# A demo of the example client; the same request again once the first round is done (vLLM's
# multimodal processor cache serves it: a known source of second-request failures); or the one
# request with every medium the limits allow (the encoder and KV-cache memory a clean start may
# not have reserved).
Kind = Literal["demo", "repeat", "worst case"]
WORST_CASE = "worst-case"
WORST_CASE_PROMPT = "Describe everything you were given: every image, video and audio."
# The most of each modality the worst-case request sends: no more than the demos themselves send.
WORST_CASE_ASSETS_MAX = {"image": 3, "video": 1, "audio": 2}


@dataclass(frozen=True)
class DemoRequest:
    """One chat completion to send, with the messages exactly as the upstream example builds them."""

    name: str
    chat_type: str  # a ChatType's value, or "worst-case"
    delivery: str
    messages: list[dict[str, Any]]
    max_completion_tokens: int
    expect: tuple[str, ...] = ()
    assets: tuple[Asset, ...] = ()
    prompt: str = ""
    kind: Kind = "demo"
    reject: tuple[str, ...] = ()  # distractors: an answer naming one fails
    ignore: tuple[str, ...] = ()  # phrases left out of the graded answer
    expect_source: str | None = None  # "known", "profile"; None: nothing checked
    unchecked: str | None = None  # why nothing is checked


@dataclass(frozen=True)
class DemoResult:
    """How one demo request ended: the answer, its timings and token counts, or the error."""

    name: str
    chat_type: str
    delivery: str
    passed: bool
    # hung: no token by the timeout (none at all, or no more); interrupted: in flight when the run stopped
    status: Literal["passed", "failed", "hung", "interrupted"]
    http_status: int | None
    latency_s: float
    ttft_s: float | None  # time to the first content delta
    prompt_tokens: int | None
    completion_tokens: int | None
    tokens_per_s: float | None  # completion tokens over the whole latency
    answer: str
    error: str | None
    started_at: float  # time.monotonic()
    ended_at: float
    assets: tuple[Asset, ...] = ()
    prompt: str = ""
    expected: tuple[tuple[str, ...], ...] = ()
    missing: tuple[tuple[str, ...], ...] = ()
    kind: Kind = "demo"
    max_completion_tokens: int | None = None
    reject: tuple[tuple[str, ...], ...] = ()
    distractors: tuple[tuple[str, ...], ...] = ()  # the distractor groups the answer named
    expect_source: str | None = None
    unchecked: str | None = None


def build_requests(demos: Sequence[Demo], media: Media, default_max_tokens: int = 128) -> list[DemoRequest]:
    """One request per demo and delivery of its media: the upstream example's prompts and assets, or
    the known-answer ones (media.plan)."""
    out: list[DemoRequest] = []
    for demo in demos:
        chat_type = demo.chat_type
        planned = media.plan(demo)
        prompt = planned.prompt
        for delivery in DELIVERIES[chat_type]:
            content: str | list[dict[str, Any]]
            if chat_type is ChatType.TEXT:
                content = prompt  # the example sends plain string content here
            else:
                parts = [_part(delivery, a, media) for a in planned.assets]
                content = [{"type": "text", "text": prompt}, *parts]
            out.append(
                DemoRequest(
                    name=f"{chat_type.value}/{delivery}",
                    chat_type=chat_type.value,
                    delivery=delivery,
                    messages=[{"role": "user", "content": content}],
                    max_completion_tokens=planned.max_completion_tokens
                    or demo.max_completion_tokens
                    or default_max_tokens,
                    expect=planned.expect,
                    assets=planned.assets,
                    prompt=prompt,
                    reject=planned.reject,
                    ignore=planned.ignore,
                    expect_source=planned.expect_source,
                    unchecked=planned.unchecked,
                )
            )
    return out


def repeats(requests: Sequence[DemoRequest]) -> list[DemoRequest]:
    """Every request that sends media, once more: the second time goes through vLLM's processor cache."""
    return [
        dataclasses.replace(r, name=f"{r.name} (repeat)", kind="repeat")
        for r in requests
        if r.kind == "demo" and r.assets
    ]


def worst_case(requests: Sequence[DemoRequest], limits: Mapping[str, int] | None) -> DemoRequest | None:
    """One request with every medium the profile's limits allow, of the media the demos send.

    None when the demos send no media. A modality the limits leave unset gets as many items as a
    demo sends at most (vLLM's default limit is far above what any demo needs).
    """
    demos = [r for r in requests if r.kind == "demo"]
    by_kind: dict[str, dict[str, Asset]] = {}
    most: dict[str, int] = {}
    for request in demos:
        for asset in request.assets:
            if asset.kind:
                by_kind.setdefault(asset.kind, {}).setdefault(asset.key, asset)
                count = sum(1 for a in request.assets if a.kind == asset.kind)
                most[asset.kind] = max(most.get(asset.kind, 0), count)
    chosen: list[Asset] = []
    for kind, assets in by_kind.items():
        allowed = limits[kind] if limits is not None and kind in limits else most[kind]
        chosen += list(assets.values())[: min(allowed, WORST_CASE_ASSETS_MAX.get(kind, 1))]
    if not chosen:
        return None
    parts = [{"type": "text", "text": WORST_CASE_PROMPT}, *(_inline_part(a) for a in chosen)]
    return DemoRequest(
        name=f"{WORST_CASE}/all-media",
        chat_type=WORST_CASE,
        delivery="base64",
        messages=[{"role": "user", "content": parts}],
        max_completion_tokens=max(r.max_completion_tokens for r in demos),
        assets=tuple(chosen),
        prompt=WORST_CASE_PROMPT,
        kind="worst case",
        unchecked="the worst case checks that the server answers every medium at once",
    )


def _inline_part(asset: Asset) -> dict[str, Any]:
    """A medium carried in the request itself: the worst case must not depend on a fetch."""
    return _part("input_audio" if asset.kind == "audio" else "base64", asset, None)


def _part(delivery: str, asset: Asset, media: Media | None) -> dict[str, Any]:
    if delivery == "input_audio":
        # The example says "wav" whatever the container; the server decodes by content.
        return {"type": "input_audio", "input_audio": {"data": b64(asset), "format": "wav"}}
    kind = f"{asset.kind}_url"  # image_url, video_url, audio_url
    if delivery == "url":
        assert media is not None, "a URL needs the asset server"
        return {"type": kind, kind: {"url": media.url(asset)}}
    urls = {"base64": data_url, "file": file_url}
    return {"type": kind, kind: {"url": urls[delivery](asset)}}


def redacted(messages: list[dict[str, Any]], keep: int = 48) -> list[dict[str, Any]]:
    """The messages with base64 payloads shortened, for logs and reports."""

    def shorten(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shorten(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shorten(v) for v in value]
        if isinstance(value, str) and len(value) > keep and (value.startswith("data:") or " " not in value):
            return f"{value[:keep]}...({len(value)} chars)"
        return value

    return cast(list[dict[str, Any]], shorten(messages))


# -- running ---------------------------------------------------------------------------------------


def run_demos(
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
    """Send every request (at most `concurrency` at once; None = all) and return results in order.

    Returns early once `cancelled()` is true: the caller is stopping and tearing the server down ends
    the requests still in flight; those come back `interrupted` (those not sent yet do not come back).
    """
    from openai import OpenAI  # deferred: the CLI must start fast

    if not requests:
        return []
    workers = len(requests) if concurrency is None else max(1, min(concurrency, len(requests)))
    report_lock = threading.Lock()  # callbacks draw on one terminal: one at a time

    http_client = plain_http_client() if base_url.startswith("http://") else None
    with OpenAI(
        base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=0, http_client=http_client
    ) as client:
        quiet = threading.Event()

        sent: dict[int, float] = {}  # request index -> when it was sent

        def one(index: int, request: DemoRequest) -> DemoResult:
            sent[index] = time.monotonic()
            result = _run_one(client, request, model=model, base_url=base_url, timeout_s=timeout_s)
            # Once the run is interrupted, failures of requests still in flight are ours, not news.
            if on_result is not None and not quiet.is_set() and not cancelled():
                with report_lock:
                    on_result(result)
            return result

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo")
        futures = [pool.submit(one, i, request) for i, request in enumerate(requests)]
        pending = set(futures)
        while pending and not cancelled():
            _, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
        if pending:  # stopping: do not wait for requests in flight; tearing the server down ends them
            quiet.set()
            pool.shutdown(wait=False, cancel_futures=True)
            return [
                f.result() if f.done() else interrupted(r, sent.get(i))
                for i, (f, r) in enumerate(zip(futures, requests, strict=True))
                if not f.cancelled()
            ]
        pool.shutdown(wait=True)
        return [f.result() for f in futures]


def interrupted(request: DemoRequest, sent_at: float | None) -> DemoResult:
    """A request in flight when the run stopped: no answer, and how long it had been waiting."""
    now = time.monotonic()
    started = sent_at if sent_at is not None else now
    return DemoResult(
        name=request.name,
        chat_type=request.chat_type,
        delivery=request.delivery,
        passed=False,
        status="interrupted",
        http_status=None,
        latency_s=now - started,
        ttft_s=None,
        prompt_tokens=None,
        completion_tokens=None,
        tokens_per_s=None,
        answer="",
        error=f"in flight when the run was interrupted, after {now - started:.2f} s",
        started_at=started,
        ended_at=now,
        assets=request.assets,
        prompt=request.prompt,
        kind=request.kind,
        max_completion_tokens=request.max_completion_tokens,
        expect_source=request.expect_source,
        unchecked=request.unchecked,
    )


def plain_http_client() -> Any:
    """The SDK's HTTP client for a plain http:// server: no TLS, so no CA bundle to load (~40 ms)."""
    from openai import DefaultHttpxClient  # deferred: the CLI must start fast

    return DefaultHttpxClient(verify=False)


class _Overdue(Exception):
    """The stream went on past the request's deadline."""


@dataclass
class _Progress:
    """What has arrived so far; kept when the stream breaks off, as evidence for the report."""

    started: float
    http_status: int | None = None
    ttft: float | None = None
    parts: list[str] = field(default_factory=list)
    usage: Any = None


def _stream(client: OpenAI, request: DemoRequest, model: str, deadline: float, got: _Progress) -> None:
    from openai import omit

    stream = client.chat.completions.create(
        model=model,
        messages=cast(Any, request.messages),
        max_completion_tokens=request.max_completion_tokens,
        stream=True,
        stream_options={"include_usage": True},
        # A known truth is graded: the model's likeliest answer, not a sample (the example client's own
        # prompts keep the server's default sampling, as the example sends them).
        temperature=0.0 if request.expect_source == "known" else omit,
    )
    with stream:
        got.http_status = stream.response.status_code
        for chunk in stream:
            if chunk.usage is not None:
                got.usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta is not None and choice.delta.content:
                    if got.ttft is None:
                        got.ttft = time.monotonic() - got.started
                    got.parts.append(choice.delta.content)
            if time.monotonic() > deadline:
                raise _Overdue


def _run_one(
    client: OpenAI, request: DemoRequest, *, model: str, base_url: str, timeout_s: float
) -> DemoResult:
    import openai  # deferred: the CLI must start fast

    got = _Progress(started=time.monotonic())
    deadline = got.started + timeout_s  # the client's timeout bounds each read, not a trickling stream
    error: str | None = None
    hung = False  # no token by the timeout: the server took the request and went quiet
    try:
        _stream(client, request, model, deadline, got)
    except openai.APIStatusError as exc:
        got.http_status = exc.status_code
        error = _server_message(exc)
        exc.response.close()  # the SDK leaves an error response's connection open
    except openai.APITimeoutError:
        hung = True
        if got.parts:
            error = (
                f"hung: the answer stopped after {len(''.join(got.parts))} characters (first token at "
                f"{got.ttft:.2f} s); nothing more within the {timeout_s:g} s request timeout"
            )
        else:
            error = f"hung: no first token within the {timeout_s:g} s request timeout"
    except openai.APIConnectionError as exc:
        error = f"cannot reach the server at {base_url}: {exc.__cause__ or exc}"
    except openai.APIError as exc:  # an error event in the middle of the stream
        error = _server_message(exc)
    except _Overdue:
        error = f"the answer was still streaming after the {timeout_s:g} s request timeout"
    except Exception as exc:  # one broken demo must not stop the others
        log.exception("demo %s: unexpected failure", request.name)
        error = f"{type(exc).__name__}: {exc}"
    ended = time.monotonic()

    answer = "".join(got.parts)
    if error is None and not answer.strip():
        error = "the server answered with empty text"
    expected = tuple(alternatives(group) for group in request.expect)
    lacking, named = grade(
        answer, request.expect, request.reject, request.ignore, whole=request.expect_source == "known"
    )
    missing = tuple(alternatives(group) for group in lacking)
    distractors = tuple(alternatives(group) for group in named)
    if error is None and (missing or distractors):
        error = failed_message(missing, distractors, answer)
    latency = ended - got.started
    completion_tokens = getattr(got.usage, "completion_tokens", None)
    result = DemoResult(
        name=request.name,
        chat_type=request.chat_type,
        delivery=request.delivery,
        passed=error is None,
        status="passed" if error is None else "hung" if hung else "failed",
        http_status=got.http_status,
        latency_s=latency,
        ttft_s=got.ttft,
        prompt_tokens=getattr(got.usage, "prompt_tokens", None),
        completion_tokens=completion_tokens,
        tokens_per_s=completion_tokens / latency if completion_tokens and latency > 0 else None,
        answer=answer,
        error=error,
        started_at=got.started,
        ended_at=ended,
        assets=request.assets,
        prompt=request.prompt,
        expected=expected,
        missing=missing,
        kind=request.kind,
        max_completion_tokens=request.max_completion_tokens,
        reject=tuple(alternatives(group) for group in request.reject),
        distractors=distractors,
        expect_source=request.expect_source,
        unchecked=request.unchecked,
    )
    log.info("demo %s: %s in %.2f s%s", request.name, result.status, latency, f" ({error})" if error else "")
    return result


def failed_message(
    missing: Sequence[Sequence[str]], distractors: Sequence[Sequence[str]], answer: str
) -> str:
    """Why a checked answer failed, with the answer itself (cut, on one line; escaped where shown)."""
    parts = []
    if missing:
        parts.append(f"the answer lacks the expected word(s): {', '.join('|'.join(g) for g in missing)}")
    if distractors:
        parts.append(f"it names the distractor(s): {', '.join('|'.join(g) for g in distractors)}")
    return "; ".join(parts) + f'; the answer: "{one_line(answer, ANSWER_SHOWN)}"'


# How much of a failed answer its error message shows (report.json keeps the whole answer).
ANSWER_SHOWN = 120


def _server_message(exc: Any) -> str:
    """The server's own error text: `error.message` (or `message`) from the JSON body, else the body."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()
    return str(exc.message)


# -- expectations and the record -------------------------------------------------------------------


def to_record(result: DemoResult, phase_start: float) -> DemoRecord:
    """One demo result as report.json keeps it, with its verdict and what the verdict checked."""
    verdict, reason = verdict_of(result)
    return DemoRecord(
        name=result.name,
        chat_type=result.chat_type,
        kind=result.kind,
        delivery=result.delivery,
        status=result.status,
        verdict=verdict,
        http_status=result.http_status,
        latency_s=round(result.latency_s, 4),
        ttft_s=None if result.ttft_s is None else round(result.ttft_s, 4),
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        tokens_per_s=None if result.tokens_per_s is None else round(result.tokens_per_s, 4),
        prompt=result.prompt,
        answer=result.answer,
        error=result.error,
        expected=[list(g) for g in result.expected],
        missing=[list(g) for g in result.missing],
        reject=[list(g) for g in result.reject],
        distractors=[list(g) for g in result.distractors],
        expect_source=result.expect_source,
        verdict_reason=reason,
        started_s=round(result.started_at - phase_start, 4),
        assets=[
            AssetRecord(
                key=a.key,
                kind=a.kind,
                provenance=a.provenance,
                sha256=a.sha256,
                source_url=a.source_url,
                path=str(a.path),
                reason=a.reason,
                fact=dict(a.fact) if a.fact else None,
                truth=a.truth,
            )
            for a in result.assets
        ],
    )


def verdict_of(result: DemoResult) -> tuple[Verdict, str | None]:
    """understood (a truth, checked), answered (nothing to check, and why), failed (what was
    missing or named wrongly), or no answer; with what it checked."""
    if result.error is not None and not result.answer:
        return "no answer", None
    if result.missing or result.distractors:
        return "failed", result.error
    whose = "the known media's truth" if result.expect_source == "known" else "the profile's words"
    truths = [a.truth for a in result.assets if a.truth]
    if result.expected and result.passed:
        groups = ", ".join("|".join(g) for g in result.expected)
        checked = f"{whose}: named {groups}"
        if result.reject:
            checked += f", and none of {len(result.reject)} distractor(s)"
        return "understood", checked + (f" ({'; '.join(truths)})" if truths else "")
    if result.expected:  # checked words found, but the request failed otherwise (e.g. it hung)
        return "answered", result.error
    return "answered", result.unchecked or "no expected words to check"
