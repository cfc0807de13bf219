"""Every default of a run, once.

The argument parser takes its defaults from `DEFAULTS`, `doctor` shows them, and the session reads
nothing else; the environment it started with is `Options.environment`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orchestrator.core.chattypes import ChatType
from orchestrator.core.environment import Environment

DEFAULT_MAX_TOKENS = 128  # the upstream example's --max-completion-tokens default
DEFAULT_ASSET_SEED = 0  # media/known.py's DEFAULT_SEED (core imports nothing above it; a test pins them)


@dataclass(frozen=True)
class Options:
    """Everything `mmdemo run` / `serve` / `demo` / `matrix` can be told."""

    profile: str | None = None
    gpu: str = "auto"
    host: str = "127.0.0.1"
    port: int | None = None
    vllm_bin: str | None = None  # None: discover (vllm.backend.locate_vllm says the order)
    timeout_s: float | None = None  # readiness; None: the variant's ready_timeout_s
    grace_s: float = 15.0  # SIGTERM -> SIGKILL; vLLM's engine needs ~5 s to release its workers
    only: tuple[ChatType, ...] = ()
    concurrency: int | None = None  # None: every request at once
    max_completion_tokens: int | None = None
    request_timeout_s: float = 120.0
    offline: bool = False
    media: Literal["auto", "known", "upstream"] = "auto"  # the demos' media: see demos.chat.MediaChoice
    asset_seed: int = DEFAULT_ASSET_SEED  # which known-answer media (colours, directions, words)
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
    worst_case: bool = True  # after the demos, one request with every medium the limits allow
    budget: bool = True  # each demo's tokens counted by vLLM's renderer against the profile
    count_first: bool = False  # count before `vllm serve` starts (else beside its start; a refusal ends it)
    trust_remote_code: bool = False  # a derived profile may run a model's own code: never added silently
    recipe_variant: str | None = None  # a vLLM recipe's variant (`--variant`); None: by the GPU's memory
    recipe_features: tuple[str, ...] = ()  # a recipe's opt-in features asked for (`--feature`)
    recipe_without: tuple[str, ...] = ()  # a recipe's features turned off (`--no-feature`)
    run_dir: Path | None = None  # a matrix cell's own directory
    server_env: Mapping[str, str] = field(default_factory=dict)  # e.g. CUDA_VISIBLE_DEVICES of a cell
    image: str | None = None  # run vLLM in this container image (its entrypoint `vllm serve`)
    container_runtime: str | None = None  # docker or podman; None: the one on PATH, docker first
    environment: Environment = field(default_factory=Environment.read)  # what the command started with


DEFAULTS = Options()
