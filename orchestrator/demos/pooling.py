"""Embedding, score, rerank and classify: the requests of vLLM's pooling example clients.

Checked against vLLM 0.32.0's routers (vllm/entrypoints/pooling/{embed,scoring,classify}/) and the
examples of vLLM's repository (Dec 2026); a pooling model is served with `--runner pooling`:
- examples/pooling/embed/vision_embedding_online.py (`run_clip`, `run_siglip`): POST /v1/embeddings
  with {"messages": [...], "model", "encoding_format": "float"}: one message holding one image_url,
  one holding one text (CLIP refuses both in one message). The known image and two texts, the
  matching one and a mismatched one, so that the pair order means something.
- examples/pooling/score/vision_score_api_online.py: POST /score {"model", "queries": str,
  "documents": ...}. The example's `{"content": [image_url, ...]}` is one document holding every
  image (vLLM 0.32's scoring/utils.py reads a dict as one document: one score, and a model taking one
  image per prompt, as CLIP, refuses it: "At most 1 image(s) may be provided in one prompt"), so the
  demo sends the list form the same API takes, `[{"content": [image_url]}, ...]`: one score per image.
- examples/pooling/score/vision_rerank_api_online.py: POST /rerank {"model", "query": str,
  "documents": [{"content": [image_url]}, ...]} (its "list" form).
- examples/pooling/classify/vision_classification_online.py: POST /classify {"model", "messages":
  [{"role": "user", "content": [{"type": "text", "text": "Please classify this image."},
  {"type": "image_url", "image_url": {"url": ...}}]}]}, by URL and by base64.
"""

from __future__ import annotations

from typing import Any

from orchestrator.demos.taskcore import (
    Conn,
    Outcome,
    TaskFailed,
    TaskRequest,
    all_finite,
    cosine,
    post_json,
    vector,
    with_model,
)

CLASSIFY_PROMPT = "Please classify this image."  # the example's words


def image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def embedding_bodies(image_url: str, texts: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """The image alone, then each text alone, as `run_clip` sends them."""
    image = {"messages": [{"role": "user", "content": [image_part(image_url)]}], "encoding_format": "float"}
    return (
        image,
        *(
            {
                "messages": [{"role": "user", "content": [{"type": "text", "text": t}]}],
                "encoding_format": "float",
            }
            for t in texts
        ),
    )


def score_body(query: str, urls: tuple[str, ...]) -> dict[str, Any]:
    return {"queries": query, "documents": [{"content": [image_part(u)]} for u in urls]}


def rerank_body(query: str, urls: tuple[str, ...]) -> dict[str, Any]:
    return {"query": query, "documents": [{"content": [image_part(u)]} for u in urls]}


def classify_body(url: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": CLASSIFY_PROMPT}, image_part(url)]}
        ]
    }


# -- sending ---------------------------------------------------------------------------------------


def send_embedding(request: TaskRequest, conn: Conn) -> Outcome:
    """Embed the image and each text; one dimension for all, finite, the matching text nearer."""
    got = Outcome()
    vectors = []
    for body in request.bodies:
        got.http_status, answer = post_json(
            conn, request.task, request.endpoint, with_model(body, conn.model)
        )
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            raise TaskFailed(f"{request.endpoint} answered no data[0].embedding: {str(answer)[:80]}")
        vectors.append(vector(data[0].get("embedding"), "data[0].embedding"))
        got.prompt_tokens = (got.prompt_tokens or 0) + int(
            (answer.get("usage") or {}).get("prompt_tokens") or 0
        )
    sizes = sorted({len(v) for v in vectors})
    got.answer = f"{len(vectors)} embeddings of dimension {', '.join(map(str, sizes))}"
    if not got.check("dimension", len(sizes) == 1, " and ".join(map(str, sizes)), shape_only=True):
        got.error = f"the embeddings differ in dimension: {', '.join(map(str, sizes))} (one model, one size)"
        return got
    bad = [i for i, v in enumerate(vectors) if not all_finite(v)]
    if not got.check(
        "finite", not bad, "every value finite" if not bad else f"NaN or inf in {bad}", shape_only=True
    ):
        got.error = f"embedding(s) {', '.join(map(str, bad))} hold NaN or infinite values"
        return got
    if request.unchecked is None and len(vectors) == 3:
        match, other = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
        said = f"{request.texts[0]!r} {match:.3f} vs {request.texts[1]!r} {other:.3f}"
        if not got.check("pair order", match > other, said):
            got.error = f"the image is nearer the mismatched text: {said}"
    return got


def _scores(answer: Any, key: str, score: str, want: int, route: str) -> list[tuple[int, float]]:
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list) or len(items) != want:
        raise TaskFailed(
            f"{route} answered {key} of {len(items) if isinstance(items, list) else 'no'} "
            f"item(s) for {want} document(s)"
        )
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("index"), int):
            raise TaskFailed(f"{route} answered an item without an index: {str(item)[:80]}")
        out.append((item["index"], vector([item.get(score)], f"{key}[].{score}")[0]))
    return out


def send_ranking(request: TaskRequest, conn: Conn) -> Outcome:
    """/score or /rerank: a finite score per document; the matching document (index 0) first."""
    got = Outcome()
    got.http_status, answer = post_json(
        conn, request.task, request.endpoint, with_model(request.bodies[0], conn.model)
    )
    rerank = request.endpoint == "/rerank"
    scores = _scores(
        answer,
        "results" if rerank else "data",
        "relevance_score" if rerank else "score",
        len(request.assets),
        request.endpoint,
    )
    ranked = sorted(scores, key=lambda s: -s[1])
    got.answer = ", ".join(f"document {i}: {s:.4f}" for i, s in ranked)
    got.prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
    if not got.check("finite", all_finite([s for _, s in scores]), got.answer, shape_only=True):
        got.error = f"a score is NaN or infinite: {got.answer}"
        return got
    if request.unchecked is None:
        first = ranked[0][0]
        if not got.check("ranked first", first == 0, f"document {first} (the matching one is 0)"):
            got.error = f"the mismatched document ranked first: {got.answer}"
    return got


def send_classify(request: TaskRequest, conn: Conn) -> Outcome:
    """/classify: a label, and probabilities over num_classes that are finite and sum to one."""
    got = Outcome()
    got.http_status, answer = post_json(
        conn, request.task, request.endpoint, with_model(request.bodies[0], conn.model)
    )
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        raise TaskFailed(f"/classify answered no data[0]: {str(answer)[:80]}")
    item = data[0]
    probs = vector(item.get("probs"), "data[0].probs")
    label = item.get("label")
    got.answer = f"{label} ({max(probs):.3f} of {len(probs)} classes)"
    got.prompt_tokens = (answer.get("usage") or {}).get("prompt_tokens")
    shape = (
        all_finite(probs) and abs(sum(probs) - 1) < 1e-3 and item.get("num_classes", len(probs)) == len(probs)
    )
    if not got.check("probabilities", shape, f"{len(probs)} summing to {sum(probs):.4f}", shape_only=True):
        got.error = f"the probabilities are not {len(probs)} finite values summing to 1: {probs[:8]}"
        return got
    if not isinstance(label, str) or not label:
        got.error = "/classify answered no label"
        got.check("labels", False, repr(label), shape_only=True)
        return got
    if request.labels:
        known = got.check(
            "labels",
            label in request.labels,
            f"{label!r} of {', '.join(request.labels)}",
            shape_only=request.unchecked is not None,
        )
        if not known:
            got.error = f"the label {label!r} is not one of the model's labels ({', '.join(request.labels)})"
    return got
