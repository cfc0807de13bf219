"""Demo media: the upstream example's assets, a verified cache, generated media with a known truth
(known.py, standalone), synthetic stand-ins and a loopback asset server."""

from orchestrator.media.loopback import AssetServer
from orchestrator.media.registry import MEDIA_TYPES, REGISTRY, USER_AGENT, AssetSpec, Kind
from orchestrator.media.store import (
    Asset,
    AssetStore,
    Fetched,
    ProgressHook,
    Provenance,
    Unavailable,
    b64,
    data_url,
    file_url,
)

__all__ = [
    "MEDIA_TYPES",
    "REGISTRY",
    "USER_AGENT",
    "Asset",
    "AssetServer",
    "AssetSpec",
    "AssetStore",
    "Fetched",
    "Kind",
    "ProgressHook",
    "Provenance",
    "Unavailable",
    "b64",
    "data_url",
    "file_url",
]
