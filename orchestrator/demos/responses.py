"""The Responses API: a chat model asked about an image through `/v1/responses`.

vLLM's examples/reasoning/openai_responses_client.py calls `client.responses.create(model=...,
input=[{"role": "user", "content": ...}])`; the image goes in as the Responses API's own parts,
`input_text` and `input_image` (vLLM 0.32.0 reads `input_image.image_url`:
vllm/entrypoints/openai/responses/protocol.py). One addition: `max_output_tokens`, the demo's token
cap, as the chat demos send `max_completion_tokens` (the example leaves the length to the server).
"""

from __future__ import annotations

from typing import Any

from orchestrator.demos.taskcore import Conn, Outcome, TaskFailed, TaskRequest, post_json, with_model
from orchestrator.profile.expect import alternatives, grade


def responses_body(prompt: str, image_url: str, max_tokens: int) -> dict[str, Any]:
    content = [{"type": "input_text", "text": prompt}, {"type": "input_image", "image_url": image_url}]
    return {"input": [{"role": "user", "content": content}], "max_output_tokens": max_tokens}


def output_text(answer: Any) -> str:
    """The text of every output_text part of every message in `output`."""
    if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
        raise TaskFailed(f"/v1/responses answered no output list: {str(answer)[:80]}")
    parts = []
    for item in answer["output"]:
        if isinstance(item, dict) and item.get("type") == "message":
            for part in item.get("content") or []:
                if isinstance(part, dict) and part.get("type") == "output_text":
                    parts.append(str(part.get("text", "")))
    return "".join(parts)


def send_responses(request: TaskRequest, conn: Conn) -> Outcome:
    """One response; its text graded against the known image's words as the chat demos are."""
    got = Outcome()
    got.http_status, answer = post_json(
        conn, request.task, request.endpoint, with_model(request.bodies[0], conn.model)
    )
    got.answer = output_text(answer)
    usage = answer.get("usage") or {}
    got.prompt_tokens, got.completion_tokens = usage.get("input_tokens"), usage.get("output_tokens")
    if not got.check("text", bool(got.answer.strip()), f"{len(got.answer)} characters", shape_only=True):
        got.error = "/v1/responses answered with empty text"
        return got
    if request.expect and request.unchecked is None:
        lacking, named = grade(
            got.answer, request.expect, request.reject, request.ignore, whole=request.expect_source == "known"
        )
        groups = ", ".join("|".join(alternatives(g)) for g in request.expect)
        if not got.check("words", not lacking and not named, f"named {groups}" if not lacking else ""):
            missing = ", ".join("|".join(alternatives(g)) for g in lacking)
            wrong = ", ".join("|".join(alternatives(g)) for g in named)
            got.error = (
                "; ".join(
                    p for p in (missing and f"the answer lacks {missing}", wrong and f"it names {wrong}") if p
                )
                + f"; the answer: {got.answer[:120]!r}"
            )
    return got
