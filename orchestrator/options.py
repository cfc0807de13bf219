"""Every default of a run, once; and what mmdemo reads from the environment, read in one place.

The argument parser takes its defaults from `DEFAULTS`, `doctor` shows them, and the session reads
nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI reads these defaults before it imports pydantic and the profile schema
    from orchestrator.profile import ChatType

DEFAULT_MAX_TOKENS = 128  # the upstream example's --max-completion-tokens default


@dataclass(frozen=True)
class Options:
    """Everything `mmdemo run` / `serve` / `demo` / `matrix` can be told."""

    profile: str | None = None
    gpu: str = "auto"
    host: str = "127.0.0.1"
    port: int | None = None
    vllm_bin: str | None = None  # None: discover (see preflight.discover_vllm)
    timeout_s: float | None = None  # readiness; None: the variant's ready_timeout_s
    grace_s: float = 15.0  # SIGTERM -> SIGKILL; vLLM's engine needs ~5 s to release its workers
    only: tuple[ChatType, ...] = ()
    concurrency: int | None = None  # None: every request at once
    max_completion_tokens: int | None = None
    request_timeout_s: float = 120.0
    offline: bool = False
    runs_dir: Path = Path("runs")
    profiles_dir: str | None = None
    cache_dir: Path | None = None
    base_url: str | None = None
    api_key: str | None = None  # None: a fresh random key per launch; EMPTY is the upstream example's
    follow_logs: bool = False
    quick_start: bool = False
    dummy_weights: bool = False
    prefetch: bool = True
    media_budget_s: float = 60.0  # all demo media downloads together
    run_dir: Path | None = None  # a matrix cell's own directory
    server_env: Mapping[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES of a cell


DEFAULTS = Options()


@dataclass(frozen=True)
class Environment:
    """The environment variables mmdemo itself reads."""

    vllm_bin: str | None = None  # MMDEMO_VLLM_BIN
    api_key: str | None = None  # VLLM_API_KEY: the key of an attached server
    cache_dir: str | None = None  # MMDEMO_CACHE_DIR
    xdg_cache_home: str | None = None  # XDG_CACHE_HOME
    profiles: tuple[str, ...] = ()  # MMDEMO_PROFILES, os.pathsep-separated
    asset_origin: str | None = None  # MMDEMO_ASSET_ORIGIN: a mirror of the upstream assets' paths

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
            asset_origin=env.get("MMDEMO_ASSET_ORIGIN") or None,
        )
