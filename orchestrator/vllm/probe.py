"""The model probe: what the installed vLLM says about a model (no weights), typed, and cached.

`probe(request)` runs probes/model_facts.py in vLLM's Python through runner.py (on the host, or in
the run's image; ~7-15 s, mostly imports) and returns `ModelFacts`; `autoprofile.probe_request` fills
in which vLLM (`runner.VllmInfo`). The answer is cached under `cache_dir()/probes/`, keyed by the
model (a local directory's small files hashed), its revision (the hub commit where known), the
vLLM version, trust_remote_code and the demo media, so a second call reads a file. `probe` takes
one argument, so a caller can start it with `orchestrator.core.background.background(probe, request)`
and collect it when it is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from orchestrator.core import filecache
from orchestrator.core.paths import cache_dir
from orchestrator.vllm import runner

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parents[1] / "probes" / "model_facts.py"
# Part of the cache key: bump it when the script's answer changes meaning.
PROBE_VERSION = 1
# Kinds of refusal that depend only on the model's files and the vLLM version: safe to cache.
_CACHED_ERRORS = {"unsupported-architecture", "needs-remote-code"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class DemoMedia(_Frozen):
    """The size of the example's media as vLLM receives them (the upstream assets)."""

    image: tuple[int, int] = (2560, 1707)  # the boardwalk, the largest of the example's images
    video: tuple[int, int] = (1280, 720)  # ForBiggerFun.mp4
    frames: tuple[int, ...] = (32, 16, 8, 4)  # vLLM's video loader samples 32 frames by default
    audio_s: float = 30.0  # at least as long as winning_call.ogg; Whisper-style encoders cut at 30 s


DEMO_MEDIA = DemoMedia()


class ModelFacts(_Frozen):
    """What vLLM says about a model; `error` (one line) and `error_kind` when it refused."""

    model: str
    revision: str | None = None
    vllm: str = "?"
    error: str | None = None
    error_kind: str | None = None
    architectures: tuple[str, ...] = ()
    model_type: str | None = None
    supported: bool | None = None
    is_multimodal: bool = False
    modalities: dict[str, int | None] = {}  # modality -> per-prompt limit (None: any number)
    max_tokens_per_item: dict[str, int] | None = None
    demo_tokens: dict[str, int] = {}  # prompt tokens of one demo-sized item, per modality
    video_tokens: dict[int, int] = {}  # frames sampled -> prompt tokens of the demo video
    text_prompt_tokens: int | None = None
    max_model_len: int | None = None
    config_dtype: str | None = None
    quantization: str | None = None
    needs_remote_code: bool = False
    remote_code: tuple[str, ...] = ()  # "config.json: AutoConfig, AutoModel", ...
    chat_template: bool | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    runner: str | None = None  # the runner vLLM resolves `--runner auto` to: generate, pooling
    convert: str | None = None  # the convert it resolves `--convert auto` to: none, embed, classify
    tasks: tuple[str, ...] = ()  # chat, responses, transcription, ... (probes/model_facts.task_facts)
    labels: tuple[str, ...] = ()  # a classifier's labels (config id2label)
    tasks_error: str | None = None  # why the tasks could not be read (the chat facts stand)
    timings: dict[str, float] = {}


@dataclass(frozen=True)
class ProbeRequest:
    """What to probe (a local directory or hub id), with which vLLM, and what changes its answer."""

    model: str
    vllm: runner.VllmInfo  # which vLLM answers (the host's, or an image's); its version is in the cache key
    revision: str | None = None
    commit: str | None = None  # the hub commit `revision` resolved to: a new commit is a new entry
    trust_remote_code: bool = False
    media: DemoMedia = DEMO_MEDIA
    timeout_s: float = 300.0
    use_cache: bool = True


def probe(request: ProbeRequest) -> ModelFacts:
    """The facts for `request`: from the cache, else from a run of the probe script."""
    path = cache_path(request)
    if request.use_cache and (cached := filecache.read(path, ModelFacts)) is not None:
        log.info("model facts for %s from the cache (%s)", request.model, path)
        return cached
    facts = run_script(request)
    if facts.error is None or facts.error_kind in _CACHED_ERRORS:
        filecache.write(path, facts)
    return facts


def cache_path(request: ProbeRequest) -> Path:
    """Where the facts for this request (model, revision, options, vLLM version) are cached."""
    key = {
        "probe": PROBE_VERSION,
        "model": request.model,
        "revision": request.commit or request.revision,
        "trust_remote_code": request.trust_remote_code,
        "vllm": request.vllm.version,
        "media": request.media.model_dump(mode="json"),
        "files": filecache.model_digest(Path(request.model)),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "probes" / f"{digest}.json"


def run_script(request: ProbeRequest, env: Mapping[str, str] | None = None) -> ModelFacts:
    """Run the probe script once (no cache), through the runner: its process group ends with it."""
    payload = {
        "model": request.model,
        "revision": request.revision,
        "trust_remote_code": request.trust_remote_code,
        "media": request.media.model_dump(mode="json"),
    }
    model = Path(request.model)
    start = time.monotonic()
    facts = runner.run(
        request.vllm,
        runner.Script(SCRIPT, "vLLM's model probe"),
        ModelFacts,
        json.dumps(payload),
        timeout_s=request.timeout_s,
        env=env,
        mounts=[model] if model.is_dir() else [],
    )
    log.info("model facts for %s in %.1f s", request.model, time.monotonic() - start)
    return facts
