"""A profile derived from what vLLM says about a model: chat types, limits, context, memory, GPUs, CPU.

Pure: `derive(facts, weights, gpus, options)` takes the probe's `ModelFacts`, the weights' bytes and
the GPUs found, and returns a `Derivation`: the `Profile` (the same typed object a YAML file parses
into), where each value came from, and notes. A model that cannot run here is a one-line
`PreflightError`, before anything starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.core.chattypes import CHAT_TYPE_NEEDS, ChatType
from orchestrator.core.errors import PreflightError
from orchestrator.core.options import DEFAULT_MAX_TOKENS
from orchestrator.core.tasks import Task
from orchestrator.gpus.detect import CPU, GPU_CLASSES, Gpu
from orchestrator.gpus.sizing import (
    GIB,
    NO_BF16,
    Fit,
    fit,
    gpus_of_class,
    kv_bytes_per_token,
    need_at,
    tp_sizes,
)
from orchestrator.model.weights import Weights
from orchestrator.profile.schema import Profile
from orchestrator.vllm.probe import ModelFacts

# The words an answer about the upstream assets holds (the one copy; the shipped profiles agree,
# tests/test_derive.py checks it). The video has none: the clip's content varies by frame sampling.
EXPECTED_WORDS: dict[ChatType, tuple[str, ...]] = {
    ChatType.TEXT: ("Paris",),
    ChatType.SINGLE_IMAGE: ("boardwalk|wood|wooden|path|walkway|trail|bridge|grass|meadow|marsh|nature",),
    ChatType.MULTI_IMAGE: ("duck|mallard|bird", "lion"),
    ChatType.AUDIO: ("baseball|game|sport|crowd|cheer|announc|commentat|play|win|team",),
    ChatType.MULTI_AUDIO: ("different|not|no",),
}
TEXT_ALLOWANCE = 32  # the demo prompts' own words beyond the chat template's tokens
CONTEXT_STEP = 1024
MIN_CONTEXT = 2048
CONTEXT_CAP = 16384  # a derived context stays below this: the demos need it, a 128k config does not
DEFAULT_FRAMES = 32  # vLLM's video loader default
RANDOM_ANSWER_TOKENS = 16  # random weights: a short answer shows as much as a long one
# The CPU necessities of the tiny profiles (profiles/cpu-tiny-*.yaml, VLLM_NOTES "CPU backend").
CPU_KV_MIN = 256 * 2**20
CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # no second spawned worker process (~6 s)
CPU_PROCESS_BYTES = 3 * GIB  # RSS of the API server, engine core and worker
SMALL_MODEL = 1 * GIB  # weights below this also get a cpu variant when GPUs are found


@dataclass(frozen=True)
class DeriveOptions:
    """What the user said, and what mmdemo knows about the model beyond vLLM's facts."""

    name: str | None = None  # the profile's name (default: the model's last path part)
    served_model_name: str | None = None
    revision: str | None = None  # passed to vLLM as --revision
    trust_remote_code: bool = False
    random_weights: bool = False  # a tiny random model: no expected words, short answers
    gated: bool = False
    cpu: bool | None = None  # None: a cpu variant when no GPU is found or the model is small
    max_completion_tokens: int = DEFAULT_MAX_TOKENS
    host_memory_bytes: int | None = None  # None: not checked


@dataclass(frozen=True)
class Derivation:
    """A derived profile, where each value came from (dotted key -> short text), and notes."""

    profile: Profile
    provenance: Mapping[str, str]
    notes: tuple[str, ...]
    facts: ModelFacts
    weights: Weights | None = None

    @property
    def line(self) -> str:
        """The one line a run prints: what was derived, from what."""
        kinds = ", ".join(
            [*(c.value for c in self.profile.chat_types), *(t.task.value for t in self.profile.tasks)]
        )
        return (
            f"no profile for {self.profile.model}: derived one from vLLM {self.facts.vllm}'s facts "
            f"({'/'.join(self.facts.architectures) or '?'}; {kinds}; variants {', '.join(self.profile.variants)})"
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-ready: for the run's report."""
        return {
            "vllm": self.facts.vllm,
            "architectures": list(self.facts.architectures),
            "values": dict(self.provenance),
            "notes": list(self.notes),
            "weights_bytes": self.weights.bytes if self.weights else None,
        }


@dataclass
class _Draft:
    """The derivation as it is written; frozen into a Profile at the end."""

    facts: ModelFacts
    data: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def set(self, path: str, value: Any, source: str) -> None:
        *parents, last = path.split(".")
        node = self.data
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
        self.provenance[path] = source


def derive(
    facts: ModelFacts, weights: Weights | None, gpus: Sequence[Gpu], options: DeriveOptions = DeriveOptions()
) -> Derivation:
    """The profile vLLM's facts, the weights and the GPUs found call for; a refusal when none can run."""
    refuse_unrunnable(facts, options)
    draft = _Draft(facts)
    vllm = facts.vllm
    draft.set("model", facts.model, "the model given")
    if options.served_model_name:
        draft.set("served_model_name", options.served_model_name, "the model's name")
    draft.data["description"] = f"Derived by mmdemo from what vLLM {vllm} says about {facts.model}."
    draft.data["source"] = (
        f"mmdemo's derivation (orchestrator/model/derive.py) from vLLM {vllm}'s model probe"
    )
    answer = RANDOM_ANSWER_TOKENS if options.random_weights else options.max_completion_tokens
    if chats_served(facts):
        chats, context, why = _chat_types(draft, answer)
    else:  # a speech or pooling model: no chat prompt to fit, the model's own context
        chats, context = [], facts.max_model_len or 0
        why = f"vLLM {vllm}: the model's own context (it serves no chat: {', '.join(facts.tasks)})"
    _demos(draft, chats, options)
    _task_demos(draft, options)
    draft.set("serve.max_model_len", context, why)
    if options.trust_remote_code and facts.needs_remote_code:
        draft.set("serve.trust_remote_code", True, f"--trust-remote-code ({'; '.join(facts.remote_code)})")
    if options.revision:
        draft.set("serve.extra_args", ["--revision", options.revision], "the revision given (@...)")
    _runner(draft)
    version = facts.vllm.split("+", 1)[0]
    draft.set("requires.vllm_version", version, "the vLLM that derived it")
    if options.gated:
        draft.set("requires.hf_token", True, "the hub says the repo is gated")
        draft.set("env.HF_TOKEN", "${HF_TOKEN}", "the hub says the repo is gated")
    _variants(draft, weights, gpus, options, context)
    profile = Profile.model_validate({"name": options.name or _name(facts.model), **draft.data})
    return Derivation(profile, dict(draft.provenance), tuple(draft.notes), facts, weights)


def refuse_unrunnable(facts: ModelFacts, options: DeriveOptions) -> None:
    """One line for a model vLLM refused, one that needs code it was not allowed, or one with no template."""
    model, vllm = facts.model, facts.vllm
    arch = "/".join(facts.architectures) or "(none named)"
    kind = facts.error_kind
    if kind == "unsupported-architecture" or facts.supported is False:
        raise PreflightError(
            f"{model}: vLLM {vllm} does not support the architecture {arch}",
            hint="a newer vLLM may; `mmdemo doctor` shows the one in use",
        )
    if facts.needs_remote_code and not options.trust_remote_code:
        where = "; ".join(facts.remote_code) or "its config"
        raise PreflightError(
            f"{model} needs to run its own code ({where}); pass --trust-remote-code to allow it",
            hint="read the model's .py files first: they run with your permissions",
        )
    if kind == "gated":
        raise PreflightError(f"{model} is a gated model and no token with access to it is set")
    if facts.error is not None:
        raise PreflightError(f"{model}: vLLM {vllm} cannot read the model ({kind}): {facts.error}")
    if facts.chat_template is False and chats_served(facts):
        raise PreflightError(
            f"{model} has no chat template (none in its tokenizer or processor, no fallback in vLLM {vllm}): "
            "the chat demos need one",
            hint="write one into a profile's serve.chat_template (`mmdemo init` gives a file to edit)",
        )


def _chat_types(draft: _Draft, answer: int) -> tuple[list[tuple[ChatType, int]], int, str]:
    """Every chat type whose inputs the model takes and whose prompt fits; the context for them, and why."""
    facts = draft.facts
    limits = facts.modalities
    config_len = facts.max_model_len or MIN_CONTEXT
    cap = min(config_len, CONTEXT_CAP)
    text = (facts.text_prompt_tokens or 64) + TEXT_ALLOWANCE + answer
    frames = _frames(draft, text, cap)
    chosen: list[tuple[ChatType, int]] = []
    for chat, need in CHAT_TYPE_NEEDS.items():
        if need is None:
            chosen.append((chat, text))
            continue
        modality, count = need
        if modality not in limits:
            continue
        if (limit := limits[modality]) is not None and limit < count:
            draft.notes.append(
                f"{chat.value}: vLLM allows {limit} {modality}(s) per prompt, it sends {count}"
            )
            continue
        per_item = _item_tokens(facts, modality, frames)
        if per_item is None:
            draft.notes.append(f"{chat.value}: vLLM did not count a {modality}'s tokens; sized to {cap}")
            chosen.append((chat, cap))
            continue
        tokens = text + count * per_item
        if tokens > cap:
            draft.notes.append(
                f"{chat.value} left out: it needs {tokens} tokens, more than the {cap} allowed"
            )
            continue
        chosen.append((chat, tokens))
    if not limits:
        arch = "/".join(facts.architectures)
        draft.notes.append(
            f"{arch} is a text-only model (vLLM lists no image, video or audio input): text-only"
        )
    most = max(tokens for _, tokens in chosen)
    context = min(max(MIN_CONTEXT, math.ceil(most / CONTEXT_STEP) * CONTEXT_STEP), config_len)
    worst = max(chosen, key=lambda c: c[1])[0].value
    why = (
        f"the longest demo ({worst}) needs {most} tokens with a {answer}-token answer, "
        f"rounded up to {CONTEXT_STEP}s; the config allows {config_len}"
    )
    if limits:
        sent = {m: 0 for m in limits if m in ("image", "video", "audio")}
        for chat, _ in chosen:
            if (need := CHAT_TYPE_NEEDS[chat]) is not None:
                sent[need[0]] = max(sent[need[0]], need[1])
        draft.set("serve.limit_mm_per_prompt", sent, "the most of each modality one chosen demo sends")
    if frames is not None and frames != DEFAULT_FRAMES and any(c == ChatType.VIDEO for c, _ in chosen):
        draft.set(
            "serve.media_io_kwargs",
            {"video": {"num_frames": frames}},
            f"{DEFAULT_FRAMES} frames of the demo video are {facts.video_tokens.get(DEFAULT_FRAMES)} tokens, "
            f"over {cap}; {frames} are {facts.video_tokens[frames]}",
        )
    return chosen, context, why


def _frames(draft: _Draft, text: int, cap: int) -> int | None:
    """The most frames (of those vLLM counted) whose video prompt fits the cap."""
    counted = draft.facts.video_tokens
    for frames in sorted(counted, reverse=True):
        if text + counted[frames] <= cap:
            return frames
    return min(counted) if counted else None


def _item_tokens(facts: ModelFacts, modality: str, frames: int | None) -> int | None:
    if modality == "video" and frames is not None and frames in facts.video_tokens:
        return facts.video_tokens[frames]
    if modality in facts.demo_tokens:
        return facts.demo_tokens[modality]
    return (facts.max_tokens_per_item or {}).get(modality)


def _demos(draft: _Draft, chats: Sequence[tuple[ChatType, int]], options: DeriveOptions) -> None:
    vllm = draft.facts.vllm
    shown = {m: "any number" if n is None else str(n) for m, n in draft.facts.modalities.items()}
    inputs = ", ".join(f"{m} ({n} per prompt)" for m, n in shown.items()) or "text only"
    demos: list[dict[str, Any]] = []
    for index, (chat, _) in enumerate(chats):
        demo: dict[str, Any] = {"chat_type": chat.value}
        if options.random_weights:
            demo["max_completion_tokens"] = RANDOM_ANSWER_TOKENS
        elif words := EXPECTED_WORDS.get(chat):
            demo["expect"] = list(words)
            draft.provenance[f"demos.{index}.expect"] = "the upstream asset's words (derive.EXPECTED_WORDS)"
        demos.append(demo)
    draft.data["demos"] = demos
    why = "random weights: answers only" if options.random_weights else "real weights: expected words"
    draft.provenance["demos"] = f"vLLM {vllm}: inputs {inputs}; {why}"


def _variants(
    draft: _Draft, weights: Weights | None, gpus: Sequence[Gpu], options: DeriveOptions, context: int
) -> None:
    facts = draft.facts
    on_disk = weights.bytes if weights and weights.bytes else _estimated_bytes(facts)
    weights_source = weights.source if weights and weights.bytes else "estimated from the config's sizes"
    variants: dict[str, Any] = {}
    misses: list[str] = []
    classes: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        if gpu.variant is None:
            draft.notes.append(f"GPU {gpu.index} ({gpu.name}) is of no class mmdemo knows: not sized")
            continue
        classes.setdefault(gpu.variant, []).append(gpu)
    for gpu_class, found in classes.items():
        found_fit = _gpu_fit(facts, on_disk, gpu_class, found, context)
        if found_fit is None:
            misses.append(_miss(facts, on_disk, gpu_class, found, context))
            continue
        variants[gpu_class] = _gpu_variant(facts, found_fit)
        draft.provenance[f"variants.{gpu_class}"] = (
            f"{found_fit.need.describe(context)} = {found_fit.need.total / GIB:.1f} GiB per GPU at "
            f"tensor_parallel_size {found_fit.tensor_parallel_size} fits {len(found)} x {gpu_class} "
            f"({found_fit.card_gib:.1f} GiB) at gpu_memory_utilization {found_fit.utilization:g}; "
            f"weights: {weights_source}"
        )
    small = on_disk < SMALL_MODEL or options.random_weights
    if options.cpu or (options.cpu is None and (not classes or small)):
        cpu, why = _cpu_variant(facts, on_disk, options, context)
        if cpu is None:
            misses.append(why)
        else:
            variants[CPU] = cpu
            draft.provenance[f"variants.{CPU}"] = why
    if not variants and not misses:
        raise PreflightError(
            f"{facts.model}: no GPU of a known class was found and no cpu variant was asked for"
        )
    if not variants:
        raise PreflightError(f"{facts.model} is too big for this machine: {'; '.join(misses)}")
    draft.notes.extend(misses)
    draft.data["variants"] = variants


def _served_bytes(facts: ModelFacts, on_disk: int) -> float:
    """Weights as vLLM holds them on a GPU: a float32 checkpoint is cast to 16 bits (dtype auto)."""
    if facts.config_dtype == "float32" and not facts.quantization:
        return on_disk / 2
    return float(on_disk)


def _needs(facts: ModelFacts, on_disk: int, context: int, available: int) -> list[Any]:
    heads, kv_heads = facts.num_attention_heads or 1, facts.num_key_value_heads or 1
    per_token = kv_bytes_per_token(facts.num_hidden_layers or 1, kv_heads, facts.head_dim or 1, 2)
    return [
        need_at(
            tp,
            weights=_served_bytes(facts, on_disk),
            kv_per_token=per_token,
            kv_heads=kv_heads,
            context=context,
            hidden=facts.hidden_size or 1,
            multimodal=facts.is_multimodal,
        )
        for tp in tp_sizes(heads, kv_heads, available)
    ]


def _gpu_fit(
    facts: ModelFacts, on_disk: int, gpu_class: str, found: Sequence[Gpu], context: int
) -> Fit | None:
    card = min(g.memory_total_mib for g in found)
    return fit(gpu_class, card, _needs(facts, on_disk, context, len(found)))


def _gpu_variant(facts: ModelFacts, found: Fit) -> dict[str, Any]:
    serve: dict[str, Any] = {"gpu_memory_utilization": found.utilization}
    if found.tensor_parallel_size > 1:
        serve["tensor_parallel_size"] = found.tensor_parallel_size
    if found.gpu_class in NO_BF16 and facts.config_dtype in ("bfloat16", "float32"):
        serve["dtype"] = "half"
    requires = {"gpu_memory_gib": found.gpu_memory_gib, "gpu_count": found.tensor_parallel_size}
    return {"serve": serve, "requires": requires}


def _miss(facts: ModelFacts, on_disk: int, gpu_class: str, found: Sequence[Gpu], context: int) -> str:
    """Why the GPUs found cannot hold it, and what would."""
    one = _needs(facts, on_disk, context, 1)[0]
    have = min(g.memory_total_mib for g in found) / 1024
    would = []
    more = fit(gpu_class, min(g.memory_total_mib for g in found), _needs(facts, on_disk, context, 8))
    if more is not None:
        would.append(f"{more.tensor_parallel_size} x {gpu_class} (tensor parallel)")
    bigger = [c for c in GPU_CLASSES if fit(c, gpus_of_class(c)[0].memory_total_mib, [one]) is not None]
    if bigger:
        smallest = min(bigger, key=lambda c: GPU_CLASSES[c])
        would.append(f"one {smallest} ({GPU_CLASSES[smallest]} GB) or larger")
    tail = f"; it would fit {' or '.join(would)}" if would else ""
    cards = f"the {gpu_class} found has" if len(found) == 1 else f"the {len(found)} {gpu_class} found have"
    return (
        f"it needs ~{one.total / GIB:.1f} GiB on one GPU ({one.describe(context)}) and "
        f"{cards} {have:.1f} GiB each{tail}"
    )


def _cpu_variant(
    facts: ModelFacts, on_disk: int, options: DeriveOptions, context: int
) -> tuple[dict[str, Any] | None, str]:
    """The tiny profiles' CPU necessities, the KV cache sized for two full contexts."""
    heads = facts.num_key_value_heads or 1
    per_token = kv_bytes_per_token(facts.num_hidden_layers or 1, heads, facts.head_dim or 1, 4)
    kv = max(CPU_KV_MIN, 2 * context * per_token)
    kv_text = f"{math.ceil(kv / 2**20 / 256) * 256}M" if kv < GIB else f"{math.ceil(kv / GIB)}G"
    float32 = on_disk * (1 if facts.config_dtype == "float32" else 2)
    need = float32 + kv + CPU_PROCESS_BYTES
    if options.host_memory_bytes is not None and need > 0.9 * options.host_memory_bytes:
        return None, (
            f"on the CPU it needs ~{need / GIB:.1f} GiB (float32 weights, KV cache, processes) "
            f"and this machine has {options.host_memory_bytes / GIB:.1f} GiB"
        )
    variant = {
        "serve": {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": kv_text},
        "env": dict(CPU_ENV),
        "requires": {"gpu_count": 0},
        "ready_timeout_s": 300 if on_disk < SMALL_MODEL else 1800,
    }
    why = (
        f"the CPU necessities of profiles/cpu-tiny-*.yaml: float32, eager, a {kv_text} KV cache "
        f"({context} tokens x 2 at {per_token} bytes each, at least 256M)"
    )
    return variant, why


def _estimated_bytes(facts: ModelFacts) -> int:
    """Parameters of a decoder from its sizes (12 h^2 per layer + embeddings), at 2 bytes each."""
    hidden, layers = facts.hidden_size or 0, facts.num_hidden_layers or 0
    params = 12 * layers * hidden * hidden + 2 * (facts.vocab_size or 0) * hidden
    return 2 * params


def _name(model: str) -> str:
    return model.rstrip("/").rsplit("/", 1)[-1] or "derived"


def chats_served(facts: ModelFacts) -> bool:
    """Whether the model chats: its tasks say so, or (facts from a probe before tasks) it is assumed."""
    return not facts.tasks or "chat" in facts.tasks


# The tasks past chat a derivation runs where the model serves them: what the model is for. The
# Responses API is listed as served (`mmdemo models`, plan) but not run by default: the chat types
# already show a chat model works; a profile may name it.
DERIVED_TASKS = tuple(t for t in Task if t is not Task.RESPONSES)


def _task_demos(draft: _Draft, options: DeriveOptions) -> None:
    facts = draft.facts
    chosen = [Task(t) for t in facts.tasks if t in {d.value for d in DERIVED_TASKS}]
    if not chosen:
        return
    demos = draft.data.setdefault("demos", [])
    for task in chosen:
        demo: dict[str, Any] = {"task": task.value}
        if task is Task.CLASSIFY and facts.labels:
            demo["expect"] = ["|".join(facts.labels)]  # any one of the model's labels
            draft.provenance[f"demos.{len(demos)}.expect"] = "the model's labels (config id2label)"
        demos.append(demo)
    served = ", ".join(facts.tasks)
    draft.provenance["demos"] = (
        draft.provenance.get("demos", f"vLLM {facts.vllm}")
        + f"; tasks served: {served} (runner {facts.runner})"
    )
    if not options.random_weights and chosen:
        draft.notes.append(f"tasks past chat derived from vLLM {facts.vllm}'s model class: {served}")


def _runner(draft: _Draft) -> None:
    """`--runner pooling` (and `--convert`) where vLLM resolves the model to a pooling runner, as the
    pooling examples start the server (examples/pooling/embed/vision_embedding_online.py)."""
    facts = draft.facts
    if facts.runner != "pooling":
        return
    draft.set(
        "serve.runner", "pooling", f"vLLM {facts.vllm}: {'/'.join(facts.architectures)} is a pooling model"
    )
    if facts.convert and facts.convert != "none":
        extra = list(draft.data.get("serve", {}).get("extra_args", []))
        draft.set(
            "serve.extra_args",
            [*extra, "--convert", facts.convert],
            f"vLLM {facts.vllm}: converted to {facts.convert}",
        )
