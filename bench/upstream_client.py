"""A stand-in for vLLM's `openai_chat_completion_client_for_multimodal.py`, for the upstream flow.

Faithful to the example: one process per chat type, which lists the models (first one wins),
downloads its media with the example's User-Agent, and sends that chat type's requests one at a
time, non-streaming, printing each answer. Only the addresses are given on the command line: the
base URL, the API key and the media URLs (a loopback asset server instead of S3). Stdlib, requests and
openai only; run it as a file: `python bench/upstream_client.py -c CHAT_TYPE --base-url ... --media JSON`.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

import requests
from openai import OpenAI

HEADERS = {"User-Agent": "vLLM Example Client"}


def encode_base64_content_from_url(content_url: str) -> str:
    """Download the content and encode it to base64, as the example does (every run)."""
    with requests.get(content_url, headers=HEADERS, timeout=30) as response:
        response.raise_for_status()
        return base64.b64encode(response.content).decode("utf-8")


def parts_for(chat_type: str, media: dict[str, str]) -> list[Any]:
    """The content sent by each request of a chat type, in the example's order."""
    if chat_type == "text-only":
        return ["What's the capital of France?"]
    if chat_type == "single-image":
        url = media["image"]
        encoded = encode_base64_content_from_url(url)
        return [
            _content("What's in this image?", [{"type": "image_url", "image_url": {"url": url}}]),
            _content(
                "What's in this image?",
                [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{encoded}"}}],
            ),
        ]
    if chat_type == "multi-image":
        images = [{"type": "image_url", "image_url": {"url": media[k]}} for k in ("duck", "lion")]
        return [_content("What are the animals in these images?", images)]
    if chat_type == "video":
        url = media["video"]
        encoded = encode_base64_content_from_url(url)
        return [
            _content("What's in this video?", [{"type": "video_url", "video_url": {"url": url}}]),
            _content(
                "What's in this video?",
                [{"type": "video_url", "video_url": {"url": f"data:video/mp4;base64,{encoded}"}}],
            ),
        ]
    if chat_type == "audio":
        url = media["winning_call"]
        encoded = encode_base64_content_from_url(url)
        return [
            _content(
                "What's in this audio?",
                [{"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}}],
            ),
            _content("What's in this audio?", [{"type": "audio_url", "audio_url": {"url": url}}]),
            _content(
                "What's in this audio?",
                [{"type": "audio_url", "audio_url": {"url": f"data:audio/ogg;base64,{encoded}"}}],
            ),
        ]
    if chat_type == "multi-audio":
        clips = [encode_base64_content_from_url(media[k]) for k in ("winning_call", "azacinto_foscolo")]
        audio = [{"type": "input_audio", "input_audio": {"data": c, "format": "wav"}} for c in clips]
        return [_content("Are these two audios the same?", audio)]
    raise SystemExit(f"unknown chat type {chat_type!r}")


def _content(text: str, media_parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text}, *media_parts]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chat-type", "-c", required=True)
    parser.add_argument("--max-completion-tokens", "-n", type=int, default=128)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--media", default="{}", help="JSON: asset key -> URL")
    args = parser.parse_args(argv)
    client = OpenAI(api_key=args.api_key, base_url=args.base_url)
    model = client.models.list().data[0].id
    for content in parts_for(args.chat_type, json.loads(args.media)):
        chat_completion = client.chat.completions.create(
            messages=[{"role": "user", "content": content}],
            model=model,
            max_completion_tokens=args.max_completion_tokens,
        )
        print("Chat completion output:", chat_completion.choices[0].message.content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
