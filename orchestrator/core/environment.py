"""The environment variables mmdemo itself reads, read in this one place.

`Options.environment` holds the values a command started with; the session's steps take them from
there. Only the file-system locations (paths.py) and vLLM's discovery (backend.py), which are also
called outside a session, read them afresh. The Hugging Face variables (HF_HOME, HF_HUB_CACHE,
XDG_CACHE_HOME, HF_ENDPOINT, HF_TOKEN and its file, HF_HUB_OFFLINE) are resolved by hfenv.py, as
huggingface_hub resolves them: `hf`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchestrator.core.hfenv import HfEnv


@dataclass(frozen=True)
class Environment:
    """The environment variables mmdemo itself reads."""

    vllm_bin: str | None = None  # MMDEMO_VLLM_BIN
    api_key: str | None = None  # VLLM_API_KEY: the key of an attached server
    cache_dir: str | None = None  # MMDEMO_CACHE_DIR
    xdg_cache_home: str | None = None  # XDG_CACHE_HOME
    profiles: tuple[str, ...] = ()  # MMDEMO_PROFILES, os.pathsep-separated
    asset_mirror: str | None = None  # MMDEMO_ASSET_MIRROR: a mirror of the upstream assets' paths
    recipes_url: str | None = None  # MMDEMO_RECIPES_URL: where `recipe:ORG/MODEL` is fetched (models/)
    hf: HfEnv = field(default_factory=lambda: HfEnv.read({}))  # the hub, its cache, offline, the token

    @classmethod
    def read(cls, environ: Mapping[str, str] | None = None) -> Environment:
        """Read the variables from `environ` (default: os.environ)."""
        env = os.environ if environ is None else environ
        return cls(
            vllm_bin=env.get("MMDEMO_VLLM_BIN") or None,
            api_key=env.get("VLLM_API_KEY") or None,
            cache_dir=env.get("MMDEMO_CACHE_DIR") or None,
            xdg_cache_home=env.get("XDG_CACHE_HOME") or None,
            profiles=tuple(p for p in env.get("MMDEMO_PROFILES", "").split(os.pathsep) if p),
            # MMDEMO_ASSET_ORIGIN: its earlier name, still honoured
            asset_mirror=env.get("MMDEMO_ASSET_MIRROR") or env.get("MMDEMO_ASSET_ORIGIN") or None,
            recipes_url=env.get("MMDEMO_RECIPES_URL") or None,
            hf=HfEnv.read(env),
        )
