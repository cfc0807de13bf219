"""Media-level features of the chat API, each a demo of its own: a per-item `uuid`, and `image_embeds`.

No example client sends them; vLLM's docs/features/multimodal_inputs.md ("Online Serving") shows the
payloads, and vLLM 0.32.0's vllm/renderers/chat_utils.py (`_parse_chat_message_content_mm_part`)
reads them:

- `uuid`: request 1 sends the known image with `"uuid": ID`; request 2 the same part with no data,
  `{"type": "image_url", "image_url": None, "uuid": ID}`, which vLLM serves from its multimodal
  processor cache. A server that has not cached ID answers HTTP 400 "Cache miss for image at index 0
  but data is not provided." (vLLM 0.32.0 on CPU, tiny-llava).
- `image_embeds`: `{"type": "image_embeds", "image_embeds": BASE64}`, the base64 of a `torch.save`d
  tensor (vLLM's `tensor2base64`, vllm/utils/serial_utils.py; decoded by `ImageEmbeddingMediaIO`,
  vllm/multimodal/media/image.py, with `torch.load(weights_only=True)`), shaped (image tokens, the
  language model's hidden size). Refused without `--enable-mm-embeds`: "You must set
  `--enable-mm-embeds` to input `image_embeds`". The embeddings are the model's own: its vision tower
  and projector on the known image, run in vLLM's Python by probes/image_embeds.py; a model that then
  names the image's truth has understood them.
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from orchestrator.core.errors import Interrupted, MMDemoError
from orchestrator.core.tasks import Task, too_old
from orchestrator.demos.taskcore import Conn, Outcome, TaskFailed, TaskRequest, post_json, with_model
from orchestrator.profile.expect import alternatives, grade
from orchestrator.vllm import runner

SCRIPT = Path(__file__).resolve().parents[1] / "probes" / "image_embeds.py"
EMBED_TIMEOUT_S = 300.0  # imports of torch and transformers (~10 s on 2 cores) and a small model's load
VERSION_TIMEOUT_S = 5.0


class Embedded(BaseModel):
    """The probe's answer: the tensor as vLLM's docs send it, and its shape ([] where not known)."""

    embeds: str  # base64 of the torch.save'd tensor
    shape: list[int] = []
    hidden_size: int | None = None  # the language model's, from the model's config
    seconds: float | None = None


def model_embeds(vllm_bin: str | None, model: str, image: Path) -> Embedded:
    """The known image through the model's own vision tower and projector, in vLLM's Python."""
    script = runner.Script(
        SCRIPT, "the model's image embeddings", args=("--model", model, "--image", str(image))
    )
    return runner.run(runner.host(vllm_bin), script, Embedded, timeout_s=EMBED_TIMEOUT_S)


def file_embeds(path: Path) -> Embedded:
    """A profile's own embeddings file (torch-saved), as it is: its shape is vLLM's to check."""
    return Embedded(embeds=base64.b64encode(path.read_bytes()).decode("ascii"))


NOT_HERE = (
    "image-embeds makes the known image's embeddings with the model's own vision tower, in vLLM's Python "
    "on this host: a run that launches vLLM here (not attach, not --image), or a profile's own embeddings "
    "file (media: [FILE.pt])"
)


def refused() -> Embedded:
    raise TaskFailed(NOT_HERE)


# -- the payloads ----------------------------------------------------------------------------------


def new_uuid(key: str) -> str:
    """This run's id of the known image: request 2 can only find what request 1 cached."""
    return f"mmdemo-{key}-{secrets.token_hex(6)}"


def uuid_bodies(prompt: str, url: str, uuid: str, max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Request 1: the image and its uuid; request 2: the uuid alone (`image_url` None), as the docs send it."""
    first = {"type": "image_url", "image_url": {"url": url}, "uuid": uuid}
    second = {"type": "image_url", "image_url": None, "uuid": uuid}
    return _chat_body(prompt, first, max_tokens), _chat_body(prompt, second, max_tokens)


def embeds_body(prompt: str, embeds: str, max_tokens: int) -> dict[str, Any]:
    return _chat_body(prompt, {"type": "image_embeds", "image_embeds": embeds}, max_tokens)


def _chat_body(prompt: str, part: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    content = [{"type": "text", "text": prompt}, dict(part)]
    return {"messages": [{"role": "user", "content": content}], "max_completion_tokens": max_tokens}


# -- sending ---------------------------------------------------------------------------------------


def send_uuid(request: TaskRequest, conn: Conn) -> Outcome:
    """Request 1 with the image, request 2 with its uuid only: both answered, and right where graded."""
    got = Outcome()
    _gate(request.task, conn)
    first_body, second_body = request.bodies
    got.http_status, first = _answer(conn, request, first_body, got)
    if not got.check("first", bool(first), "answered with the image and its uuid", shape_only=True):
        got.error = "request 1 (the image and its uuid) answered with empty text"
        return got
    uuid = second_body["messages"][0]["content"][1]["uuid"]
    try:
        got.http_status, second = _answer(conn, request, second_body)
    except TaskFailed as exc:
        raise TaskFailed(
            f"request 2 (uuid {uuid} and no data) was not served from the server's cache: {exc}", exc.status
        ) from None
    got.answer = f"1: {first} | 2: {second}"
    if not got.check("cached", bool(second), f"uuid {uuid} answered with no data", shape_only=True):
        got.error = f"request 2 (uuid {uuid} and no data) answered with empty text"
        return got
    _words(got, request, first, "request 1")
    if got.error is None:
        _words(got, request, second, "request 2 (from the cache)")
    return got


def send_embeds(request: TaskRequest, conn: Conn) -> Outcome:
    """The known image's embeddings in an `image_embeds` part; answered, and right where graded."""
    got = Outcome()
    _gate(request.task, conn)
    assert request.embeds is not None, "an image-embeds request carries its embeddings' source"
    made = request.embeds()
    shape = " x ".join(str(n) for n in made.shape) or "not known here"
    fits = not made.shape or made.hidden_size is None or made.shape[-1] == made.hidden_size
    where = "the model's own vision tower and projector" if made.shape else "the profile's file"
    took = f", made in {made.seconds:.1f} s" if made.seconds is not None else ""
    if not got.check("embeddings", fits, f"{shape} from {where}{took}", shape_only=True):
        got.error = f"embeddings of shape {shape}, but the language model's hidden size is {made.hidden_size}"
        return got
    body = embeds_body(request.prompt, made.embeds, request.max_completion_tokens)
    try:
        got.http_status, answer = _answer(conn, request, body, got)
    except TaskFailed as exc:
        raise TaskFailed(f"the server refused the image_embeds part: {exc}", exc.status) from None
    got.answer = answer
    if not got.check("text", bool(answer.strip()), f"{len(answer)} characters", shape_only=True):
        got.error = "the image_embeds request answered with empty text"
        return got
    _words(got, request, answer, "the answer")
    return got


def _gate(task: Task, conn: Conn) -> None:
    """A server whose `/version` is older than the feature: refused in one line, before any request."""
    import requests  # deferred: the CLI must start fast

    with contextlib.suppress(requests.RequestException, ValueError):
        response = requests.get(conn.url("/version"), timeout=VERSION_TIMEOUT_S)
        version = response.json().get("version") if response.ok else None
        said = too_old(task, version) if isinstance(version, str) else None
        if said:
            raise TaskFailed(said)


def _answer(
    conn: Conn, request: TaskRequest, body: Mapping[str, Any], tokens: Outcome | None = None
) -> tuple[int, str]:
    """One chat completion (not streamed): its status and text; its token counts into `tokens`."""
    status, answer = post_json(conn, request.task, request.endpoint, with_model(body, conn.model))
    try:
        text = answer["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        raise TaskFailed(f"{request.endpoint} answered no message: {str(answer)[:80]}", status) from None
    if tokens is not None and isinstance(answer.get("usage"), dict):
        tokens.prompt_tokens = answer["usage"].get("prompt_tokens")
        tokens.completion_tokens = answer["usage"].get("completion_tokens")
    return status, str(text)


def _words(got: Outcome, request: TaskRequest, answer: str, which: str) -> None:
    """The known image's words, where graded (a trained model, the known media): a meaning check."""
    if not request.expect or request.unchecked is not None:
        return
    lacking, named = grade(answer, request.expect, request.reject, request.ignore, whole=True)
    groups = ", ".join("|".join(alternatives(g)) for g in request.expect)
    if got.check(f"words of {which}", not lacking and not named, f"named {groups}" if not lacking else ""):
        return
    missing = ", ".join("|".join(alternatives(g)) for g in lacking)
    wrong = ", ".join("|".join(alternatives(g)) for g in named)
    parts = (p for p in (missing and f"lacks {missing}", wrong and f"names {wrong}") if p)
    got.error = f"{which} {'; '.join(parts)}: {answer[:120]!r}"


def made_now(make: Callable[[], Embedded]) -> Callable[[], Embedded]:
    """`make` now, while the server starts (the repeat sends the same embeddings), with the seconds it took
    kept in its answer; what it raised is raised again when the demo is sent, as that demo's failure."""
    started = time.monotonic()
    try:
        made = make()
    except Interrupted:
        raise
    except (MMDemoError, OSError) as exc:
        failed = TaskFailed(f"the model's image embeddings were not made: {exc}")

        def raise_it() -> Embedded:
            raise failed

        return raise_it
    made = made.model_copy(update={"seconds": made.seconds or time.monotonic() - started})
    return lambda: made
