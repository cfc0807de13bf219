"""The chat types of vLLM's multimodal example client, and what each puts in one prompt.

A leaf: the profile schema, the options, the demos and the CLI all name chat types.
"""

from __future__ import annotations

from enum import Enum


class ChatType(str, Enum):
    """The chat types of vLLM's openai_chat_completion_client_for_multimodal.py."""

    TEXT = "text-only"
    SINGLE_IMAGE = "single-image"
    MULTI_IMAGE = "multi-image"
    VIDEO = "video"
    AUDIO = "audio"
    MULTI_AUDIO = "multi-audio"


# How many items of which modality each chat type puts in one prompt.
CHAT_TYPE_NEEDS: dict[ChatType, tuple[str, int] | None] = {
    ChatType.TEXT: None,
    ChatType.SINGLE_IMAGE: ("image", 1),
    ChatType.MULTI_IMAGE: ("image", 2),
    ChatType.VIDEO: ("video", 1),
    ChatType.AUDIO: ("audio", 1),
    ChatType.MULTI_AUDIO: ("audio", 2),
}
