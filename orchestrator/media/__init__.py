"""Demo media: the upstream example's assets, a verified cache, synthetic stand-ins and a loopback asset server."""

from orchestrator.media.loopback import AssetServer
from orchestrator.media.registry import MEDIA_TYPES, REGISTRY, USER_AGENT, AssetSpec, Kind
from orchestrator.media.store import Asset, AssetStore, ProgressHook, Provenance, b64, data_url, file_url

__all__ = [
    "MEDIA_TYPES",
    "REGISTRY",
    "USER_AGENT",
    "Asset",
    "AssetServer",
    "AssetSpec",
    "AssetStore",
    "Kind",
    "ProgressHook",
    "Provenance",
    "b64",
    "data_url",
    "file_url",
]
