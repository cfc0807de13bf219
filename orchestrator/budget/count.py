"""Before launch: each demo request's prompt tokens, counted by vLLM's own renderer, against the profile.

`count(request)` runs probes/demo_tokens.py in vLLM's Python (the host's, or the run's image's:
vllm/runner.py) on the plan's own
`vllm serve` argv through vLLM's serve parser and engine config, then every demo body (the media it
will really send, fetched and decoded as the server does; the chat template applied) through vLLM's
GPU-less renderer. No weights are loaded. The answer is cached per model files, vLLM version, argv
and request content, so a second run of the same profile reads a file.

`Budget.refusal()` is the one-line reason a demo cannot fit (the context, the per-prompt limits, the
encoder cache), naming the demo, its count, the limit and the profile field with a value that fits;
`Budget.warnings()` the demos that use most of the context.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from orchestrator.core import filecache
from orchestrator.core.errors import MMDemoError, PreflightError
from orchestrator.core.options import DEFAULT_MAX_TOKENS
from orchestrator.core.paths import assets_dir, cache_dir
from orchestrator.demos.chat import DemoRequest, Media, build_requests, worst_case
from orchestrator.launch.command import build_plan
from orchestrator.media import AssetServer, AssetStore, file_url
from orchestrator.model import tiny as models
from orchestrator.profile.schema import Profile, ResolvedProfile
from orchestrator.record.report import BudgetDemo, BudgetRecord
from orchestrator.vllm import runner
from orchestrator.vllm.logscan import explain_demo, round_up

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parents[1] / "probes" / "demo_tokens.py"
# Part of the cache key: bump it when the script's answer or the request bodies change meaning.
BUDGET_VERSION = 1
# A demo that uses this share of the context or more is worth a warning.
WARN_SHARE = 0.8
# Flags of the plan's argv that change no count: where the server listens, its key, how the weights
# and the KV cache are placed. Left out of the cache key (a profile's GPU variants share one count)
# and of what the renderer is given (no GPU needed to count a GPU variant's demos).
_UNCOUNTED = {
    "--host", "--port", "--api-key", "--gpu-memory-utilization", "--tensor-parallel-size", "-tp",
    "--pipeline-parallel-size", "-pp", "--data-parallel-size", "-dp", "--kv-cache-memory-bytes",
    "--swap-space", "--cpu-offload-gb", "--distributed-executor-backend", "--load-format",
    "--download-dir", "--kv-cache-dtype", "--block-size", "--compilation-config", "-O",
}  # fmt: skip
_UNCOUNTED_SWITCHES = {"--enforce-eager", "--disable-log-stats", "--disable-log-requests"}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Counted(_Frozen):
    """One request as vLLM's renderer saw it: its prompt tokens and each media item's, or vLLM's error."""

    id: str
    prompt_tokens: int | None = None
    items: tuple[tuple[str, int], ...] = ()  # (modality, embedding tokens) in prompt order
    error: str | None = None


class Answer(_Frozen):
    """What the script said: the sizes the real server would start with, and each request's count."""

    vllm: str = "?"
    error: str | None = None
    stage: str | None = None
    max_model_len: int | None = None
    model_max_len: int | None = None  # what the model's own config allows
    encoder_cache_size: int | None = None
    max_tokens_per_item: dict[str, int] | None = None
    limits: dict[str, int] = {}
    results: tuple[Counted, ...] = ()
    timings: dict[str, float] = {}  # the script's stages: import, config, encoder budget, renderer, requests


@dataclass(frozen=True)
class BudgetRequest:
    """What to count: the plan's argv (`serve MODEL ...`), its environment, and the demo requests."""

    vllm: runner.VllmInfo  # which vLLM counts (the host's, or an image's); its version is in the cache key
    argv: tuple[str, ...]  # without the command: ("serve", MODEL, "--flag", ...)
    env: Mapping[str, str]  # what the plan adds to the user's environment
    model_dir: Path | None  # a local model directory: its small files are part of the cache key
    requests: tuple[DemoRequest, ...]
    served_model_name: str
    timeout_s: float = 300.0
    use_cache: bool = True


@dataclass(frozen=True)
class Budget:
    """The counts against the profile: what refuses the run, what is worth a warning."""

    answer: Answer
    requests: tuple[DemoRequest, ...]
    profile: str  # the profile's label, for the messages
    seconds: float
    cached: bool
    _by_id: dict[str, Counted] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update({c.id: c for c in self.answer.results})

    def counted(self, request: DemoRequest) -> Counted | None:
        return self._by_id.get(request.name)

    def problems(self) -> list[str]:
        """Every request that cannot work with this profile, one line each, the worst first."""
        context: list[tuple[int, str]] = []
        other: list[str] = []
        limit = self.answer.max_model_len
        for request in self.requests:
            counted = self.counted(request)
            if counted is None:
                continue
            if counted.error is not None:
                if _BUDGET_ERROR.search(counted.error):  # the profile's limits; other errors: warnings
                    reason = explain_demo(counted.error, completion_tokens=request.max_completion_tokens)
                    other.append(
                        f"{request.name}: vLLM refuses it: {counted.error}"
                        + (f"; {reason}" if reason else "")
                    )
                continue
            assert counted.prompt_tokens is not None
            needed = counted.prompt_tokens + request.max_completion_tokens
            if limit is not None and needed > limit:
                context.append((needed, f"{request.name} needs {needed} tokens ({counted.prompt_tokens} "
                                        f"prompt + {request.max_completion_tokens} completion)"))  # fmt: skip
            cache = self.answer.encoder_cache_size
            for modality, tokens in counted.items:
                if cache is not None and tokens > cache:
                    other.append(
                        f"{request.name}: one {modality} item is {tokens} tokens, more than the encoder "
                        f"cache's {cache}: {_smaller(modality)}"
                    )
                    break
        lines = []
        if context:  # one line: every request that does not fit, the largest first, and one value for all
            context.sort(key=lambda c: -c[0])
            needs = ", ".join(text for _, text in context)
            lines.append(f"{needs} but max_model_len is {limit}: {self._fits(context[0][0])}")
        return lines + other

    def _fits(self, needed: int) -> str:
        """The profile field and a value that holds `needed` (or the knobs, when the model's context cannot)."""
        ceiling = self.answer.model_max_len
        value = round_up(needed)
        if ceiling is not None and value > ceiling:
            value = ceiling if needed <= ceiling else 0
        if value:
            return f"set serve.max_model_len: {value} in {self.profile}"
        return (
            f"the model's own context is {ceiling} tokens, so no max_model_len holds it: make the media "
            f"smaller (serve.mm_processor_kwargs, serve.media_io_kwargs) or lower the demo's max_completion_tokens"
        )

    def refusal(self) -> PreflightError | None:
        """The run's refusal before launch, when a demo cannot fit; None when every one does."""
        problems = self.problems()
        if not problems:
            return None
        return PreflightError(
            "; ".join(problems),
            hint="counted before launch by vLLM's own renderer on the demos' media; --no-budget skips the check",
        )

    def warnings(self) -> list[str]:
        """Demos that fit but use WARN_SHARE of the context or more."""
        limit = self.answer.max_model_len
        out = []
        for request in self.requests:
            counted = self.counted(request)
            if counted is not None and counted.error is not None and not _BUDGET_ERROR.search(counted.error):
                out.append(
                    f"{request.name}: vLLM's renderer could not count it before launch: {counted.error}"
                )
            if limit is None or counted is None or counted.prompt_tokens is None:
                continue
            needed = counted.prompt_tokens + request.max_completion_tokens
            if WARN_SHARE * limit <= needed <= limit:
                out.append(
                    f"{request.name} uses {needed} of max_model_len {limit} tokens ({needed / limit:.0%}): "
                    f"a larger medium would not fit"
                )
        return out

    def summary(self) -> str:
        """One line for the terminal: how many fit, the largest against the context."""
        counted = [(c.prompt_tokens + r.max_completion_tokens, r.name) for r in self.requests
                   if (c := self.counted(r)) is not None and c.prompt_tokens is not None]  # fmt: skip
        source = "cached" if self.cached else f"{self.seconds:.1f} s"
        if not counted:
            return f"no request counted ({source})"
        most, name = max(counted)
        limit = self.answer.max_model_len
        return f"{len(counted)} requests fit; the largest, {name}, needs {most} of {limit} tokens ({source})"

    def record(self) -> BudgetRecord:
        """The counts as report.json keeps them."""
        answer = self.answer
        demos = []
        for request in self.requests:
            counted = self.counted(request)
            if counted is None:
                continue
            demos.append(
                BudgetDemo(
                    name=request.name,
                    prompt_tokens=counted.prompt_tokens,
                    completion_tokens=request.max_completion_tokens,
                    items=[[m, n] for m, n in counted.items],
                    error=counted.error,
                )
            )
        return BudgetRecord(
            vllm=answer.vllm,
            max_model_len=answer.max_model_len,
            model_max_len=answer.model_max_len,
            encoder_cache_size=answer.encoder_cache_size,
            max_tokens_per_item=answer.max_tokens_per_item,
            limits=answer.limits,
            demos=demos,
            seconds=round(self.seconds, 3),
            cached=self.cached,
        )


# vLLM's words for a request that does not fit the profile's limits (others are not the profile's fault).
_BUDGET_ERROR = re.compile(r"may be provided in one|maximum context length|pre-allocated encoder cache")


def _smaller(modality: str) -> str:
    if modality == "video":
        return "set serve.media_io_kwargs: {video: {num_frames: N}} (fewer frames) or serve.mm_processor_kwargs max_pixels"
    if modality == "image":
        return "set serve.mm_processor_kwargs (e.g. max_pixels) to make images smaller"
    return "send a shorter clip, or raise serve.max_num_batched_tokens above it"


def count(
    request: BudgetRequest,
    profile: str,
    check: Callable[[], None] = lambda: None,
    counter: Counter | None = None,
) -> Budget:
    """The counts for `request`: from the cache, else from the script (`counter`, started ahead, or a new
    run), which `check` may end (it raises, e.g. Interrupted). PreflightError when vLLM cannot build
    its renderer here."""
    start = time.monotonic()
    path = cache_path(request)
    cached = filecache.read(path, Answer) if request.use_cache else None
    if cached is not None and counter is not None:
        counter.close()  # started ahead of time, not needed
    if cached is not None:
        answer = cached
    elif counter is not None:
        answer = counter.answer(request, check)
    else:
        answer = run_script(request, check)
    if answer.error is not None:
        who = "vLLM" if answer.vllm == "?" else f"vLLM {answer.vllm}"
        raise PreflightError(f"{who} could not count the demos' tokens ({answer.stage}): {answer.error}")
    if cached is None:
        filecache.write(path, answer)
    return Budget(answer, request.requests, profile, time.monotonic() - start, cached is not None)


def bodies(request: BudgetRequest, *, local_files: bool = False) -> list[dict[str, Any]]:
    """The chat request bodies the demos will send (the openai SDK's, less the streaming options).

    `local_files`: each medium sent by URL as its file:// URL instead (the same bytes, so the same
    count): an image's renderer has no network, and the file is mounted at the same path."""
    out = []
    for r in request.requests:
        body = {
            "model": request.served_model_name,
            "messages": _by_file(r) if local_files and r.delivery == "url" else r.messages,
            "max_completion_tokens": r.max_completion_tokens,
        }
        out.append({"id": r.name, "body": body})
    return out


def _by_file(request: DemoRequest) -> list[dict[str, Any]]:
    """The request's messages with each URL medium (in the order of its assets) as a file:// URL."""
    assets = iter(request.assets)
    messages = []
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type", "") if isinstance(part, dict) else ""
                url = part.get(kind, {}).get("url") if kind.endswith("_url") else None
                asset = next(assets, None) if isinstance(url, str) and not url.startswith("data:") else None
                parts.append({**part, kind: {**part[kind], "url": file_url(asset)}} if asset else part)
            messages.append({**message, "content": parts})
        else:
            messages.append(message)
    return messages


def counted_argv(argv: Sequence[str]) -> list[str]:
    """The argv less what cannot change a count: the port, the host, the key, the GPU placement."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _UNCOUNTED_SWITCHES:
            continue
        if name in _UNCOUNTED:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def cache_path(request: BudgetRequest) -> Path:
    """Where the counts for this model, vLLM, argv, environment and demo content are cached."""
    requests = [
        {
            "name": r.name,
            "delivery": r.delivery,
            "prompt": r.prompt,
            "completion": r.max_completion_tokens,
            "media": [a.sha256 for a in r.assets],
        }
        for r in request.requests
    ]
    key = {
        "budget": BUDGET_VERSION,
        "vllm": request.vllm.version,
        "argv": counted_argv(request.argv),
        "env": {k: v for k, v in sorted(request.env.items()) if k.startswith("VLLM_")},
        "files": filecache.model_digest(request.model_dir),
        "requests": requests,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / "budgets" / f"{digest}.json"


class Counter:
    """The counting script's process, started ahead of the counts so its ~10 s of imports (vLLM, its
    serve parser, its renderer) overlap what comes before them; leaving it ends the process group (and,
    in an image, the container). `mounts`: what an image's renderer reads (the model, the media)."""

    def __init__(self, vllm: runner.VllmInfo, env: Mapping[str, str], mounts: Sequence[Path] = ()) -> None:
        self.vllm = vllm
        self._process = runner.Process(vllm, runner.Script(SCRIPT, "vLLM's renderer"), env=env, mounts=mounts)

    def __enter__(self) -> Counter:
        self._process.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """End the process group and reap the script (it is not needed, or it has answered)."""
        self._process.close()

    def answer(self, request: BudgetRequest, check: Callable[[], None]) -> Answer:
        """Send the requests, wait for the counts (calling `check` meanwhile), end the process."""
        in_image = self.vllm.image is not None
        payload = json.dumps(
            {"argv": counted_argv(request.argv), "requests": bodies(request, local_files=in_image)}
        )
        return self._process.answer(Answer, payload, timeout_s=request.timeout_s, check=check)


def run_script(request: BudgetRequest, check: Callable[[], None] = lambda: None) -> Answer:
    """Run the script once, calling `check` while it runs; its process group ends with it, whatever happens."""
    with Counter(request.vllm, request.env, mounts=mounts(request)) as counter:
        return counter.answer(request, check)


def mounts(request: BudgetRequest) -> list[Path]:
    """What the renderer reads from disk: the model's files and the media (file:// URLs)."""
    found = [request.model_dir] if request.model_dir is not None else []
    argv = list(request.argv)
    for index, arg in enumerate(argv[:-1]):
        if arg == "--allowed-local-media-path":
            found.append(Path(argv[index + 1]))
    found += [a.path.resolve().parent for r in request.requests for a in r.assets]
    return list(dict.fromkeys(found))


# -- validate --against-vllm: every profile whose model files are at hand ----------------------------

# A hub model's files that its config, tokenizer, processor and chat template come from: never weights.
SMALL_FILES = ("*.json", "*.jinja", "*.txt", "*.model", "*.tiktoken", "*.py", "tokenizer*")
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.h5", "*.msgpack", "*.onnx")


@dataclass(frozen=True)
class ProfileBudget:
    """One profile x variant in `validate --against-vllm`: counted and fits (ok), refused (error), or not
    counted here and why (note)."""

    key: str  # label::variant
    status: str  # ok, error, note
    text: str

    def line(self) -> str:
        return f"{self.key}: {self.text}"


def model_files(profile: Profile) -> tuple[Path | None, str | None]:
    """(the directory holding the model's config and processor files, else why there is none here)."""
    if (local := profile.local_model) is not None:
        if models.is_built(local):
            return models.model_dir(local), None
        return None, f"tiny model {local} is not built (`mmdemo models build {local}`)"
    path = Path(profile.model_path)
    if path.is_dir():
        return path, None
    from huggingface_hub import snapshot_download  # deferred: the hub client, for hub models only

    try:  # a few small files (or the cache's copy, offline); never the weights
        found = snapshot_download(
            profile.model_path, allow_patterns=list(SMALL_FILES), ignore_patterns=list(_WEIGHTS)
        )
    except Exception as exc:  # offline, gated, not found: the check cannot run, the profile may still be fine
        return None, f"the config and processor files of {profile.model_path} are not at hand: {_why(exc)}"
    return Path(found), None


def _why(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "LocalEntryNotFoundError":
        return "the hub cannot be reached and the HF cache has no copy"
    if name == "GatedRepoError":
        return "a gated repository (set HF_TOKEN)"
    text = " ".join(str(exc).split()) or name
    return f"{name}: {text[:160]}"


def check_profiles(
    profiles: Sequence[Profile],
    vllm_bin: str | None = None,
    *,
    use_cache: bool = True,
    vllm: runner.VllmInfo | None = None,
) -> list[ProfileBudget]:
    """Each profile x supported variant's demos counted by the installed vLLM (or `vllm`, an image's), on
    the cached (or, offline, synthetic) media; one line each, or one per profile whose model files are
    not here."""
    try:
        info = vllm or runner.host(vllm_bin)
    except MMDemoError as exc:  # the parser check above has its own verdict; the counts just cannot run
        return [ProfileBudget(p.label, "note", f"demos not counted: {exc}") for p in profiles]
    store = AssetStore(assets_dir(), offline=True)
    out: list[ProfileBudget] = []
    with AssetServer(store.root) as server:
        media = Media(store=store, url=server.url_for)
        for profile in profiles:
            if not profile.demos:  # tasks past chat only: the renderer counts chat requests
                out.append(ProfileBudget(profile.label, "ok", "no chat demo to count"))
                continue
            files, why = model_files(profile)
            if files is None:
                out.append(ProfileBudget(profile.label, "note", f"demos not counted: {why}"))
                continue
            for variant in profile.variants:
                resolved = profile.resolve(variant)
                if not resolved.unsupported:
                    key = f"{profile.label}::{variant}"
                    out.append(_check_one(key, resolved, files, media, info, use_cache=use_cache))
    return out


def _check_one(
    key: str, resolved: ResolvedProfile, files: Path, media: Media, vllm: runner.VllmInfo, *, use_cache: bool
) -> ProfileBudget:
    plan = build_plan(resolved, vllm_bin="vllm", media_dir=str(media.store.root))
    argv = list(plan.argv[1:])
    argv[1] = str(files)  # the model by its local files: nothing is fetched while counting
    requests = build_requests(resolved.profile.demos, media, DEFAULT_MAX_TOKENS)
    limits = resolved.serve.limit_mm_per_prompt
    worst = worst_case(requests, None if limits is None else {str(k): v for k, v in limits.items()})
    request = BudgetRequest(
        vllm=vllm,
        argv=tuple(argv),
        env=plan.env,
        model_dir=files,
        requests=tuple(requests + ([worst] if worst else [])),
        served_model_name=plan.served_model_name,
        use_cache=use_cache,
    )
    try:
        found = count(request, resolved.profile.label)
    except PreflightError as exc:
        return ProfileBudget(key, "note", f"demos not counted: {exc}")
    if (refusal := found.refusal()) is not None:
        return ProfileBudget(key, "error", str(refusal))
    warned = "; ".join(found.warnings())
    return ProfileBudget(key, "ok", found.summary() + (f"; {warned}" if warned else ""))
