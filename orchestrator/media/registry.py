"""The upstream example's assets: where each lives and what it is, and media types by extension."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from orchestrator.core.errors import AssetError

Kind = Literal["image", "video", "audio"]

S3 = "https://vllm-public-assets.s3.us-west-2.amazonaws.com"
# The upstream example's own header: some hosts refuse requests without a User-Agent.
USER_AGENT = "vLLM Example Client"


# Extension -> media type, for the registry and for profile media: a fixed table, not the host's mime.types.
# fmt: off
MEDIA_TYPES: dict[str, str] = {
    ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
    ".mp4": "video/mp4", ".webm": "video/webm", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".wav": "audio/wav", ".ogg": "audio/ogg", ".mp3": "audio/mpeg", ".flac": "audio/flac",
}
# fmt: on


def guess(ref: str, name: str) -> tuple[Kind, str]:
    """(kind, media type) of a file from its extension; `ref` names it in the error."""
    media_type = MEDIA_TYPES.get(Path(name).suffix.lower())
    if media_type is None:
        known = " ".join(MEDIA_TYPES)
        raise AssetError(f"media {ref!r}: cannot tell image, video or audio from its extension ({known})")
    return cast(Kind, media_type.split("/", 1)[0]), media_type


@dataclass(frozen=True)
class AssetSpec:
    """One upstream asset: where it lives and what it is; sha256 None means trust on first use."""

    key: str
    url: str
    media_type: str
    kind: Kind
    filename: str
    sha256: str | None = None


def _spec(key: str, url: str, sha256: str | None = None) -> AssetSpec:
    filename = url.rsplit("/", 1)[1]
    kind, media_type = guess(url, filename)
    return AssetSpec(key, url, media_type, kind, filename, sha256)


REGISTRY: dict[str, AssetSpec] = {
    spec.key: spec
    for spec in (
        _spec("image", f"{S3}/vision_model_images/2560px-Gfp-wisconsin-madison-the-nature-boardwalk.jpg"),
        _spec("duck", f"{S3}/multimodal_asset/duck.jpg"),
        _spec("lion", f"{S3}/multimodal_asset/lion.jpg"),
        _spec("winning_call", f"{S3}/multimodal_asset/winning_call.ogg"),
        _spec("azacinto_foscolo", f"{S3}/multimodal_asset/azacinto_foscolo.ogg"),
        _spec("video", "http://commondatastorage.googleapis.com/gtv-videos-bucket/sample/ForBiggerFun.mp4"),
    )
}
