"""What the installed vLLM says about a model, without loading its weights; one JSON object out.

Runs under the Python of the vLLM environment, imports only the stdlib, vLLM and what vLLM brings
(huggingface_hub, transformers). Reads JSON on stdin:

    {"model": DIR_OR_HUB_ID, "revision": REV|null, "trust_remote_code": bool,
     "media": {"image": [W, H], "video": [W, H], "frames": [32, 16, 8, 4], "audio_s": 30.0}}

and writes one JSON object to stdout (see `main`); everything vLLM itself prints goes to stderr.
A failure is `"error": ONE LINE` with an `"error_kind"` (unsupported-architecture,
needs-remote-code, gated, not-found, config, processor), never a traceback.

What it asks, in vLLM 0.32's terms: `EngineArgs(...).create_model_config()` (architecture, support,
context length, dtype), the tokenizer and `resolve_chat_template` (the template vLLM would use),
`MULTIMODAL_REGISTRY.create_processor(mc).info.get_supported_mm_limits()` (modalities and per-prompt
limits), and the model's own dummy-input builder, processed by the model's own processor, for the
number of prompt tokens one item of the demo media's size becomes.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time

CODE_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class Refusal(Exception):
    """A reason the model cannot be probed further, with its kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_json(model: str, revision: str | None, name: str) -> dict | None:
    """A small JSON file of the model (local dir or hub), None when it has none."""
    if os.path.isdir(model):
        path = os.path.join(model, name)
        if not os.path.isfile(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        path = hf_hub_download(model, name, revision=revision)
    except EntryNotFoundError:
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def classify(exc: BaseException) -> Refusal:
    """Turn what vLLM, transformers or the hub raised into a kind and one line."""
    name = type(exc).__name__
    # pydantic's wrapping of vLLM's own ValueError: "1 validation error for ModelConfig Value error, ..."
    text = re.sub(r"^\d+ validation errors? for \w+ (Value error, )?", "", one_line(exc, 2000))
    if name == "GatedRepoError" or "gated repo" in text.lower():
        return Refusal("gated", "the model is in a gated repository: access needs a token")
    if name in ("RepositoryNotFoundError", "RevisionNotFoundError"):
        return Refusal("not-found", text[:300])
    if "are not supported for now" in text or "has no vLLM implementation" in text:
        return Refusal("unsupported-architecture", text.split(" Supported architectures")[0][:300])
    if "trust_remote_code" in text or "trust-remote-code" in text:
        return Refusal("needs-remote-code", text[:300])
    return Refusal("config", f"{name}: {text[:300]}")


def remote_code(model: str, revision: str | None) -> list[str]:
    """Where the model asks for its own code: the files with an `auto_map`, and what they map."""
    found = []
    for name in CODE_FILES:
        try:
            data = read_json(model, revision, name)
        except Exception:  # a missing or unreadable optional file
            continue
        auto_map = (data or {}).get("auto_map")
        if auto_map:
            found.append(f"{name}: {', '.join(sorted(auto_map))}")
    return found


def chat_template(mc) -> tuple[bool, int | None]:
    """(vLLM finds a chat template, prompt tokens of the example's text-only request)."""
    from vllm.renderers.hf import resolve_chat_template
    from vllm.tokenizers import cached_tokenizer_from_config

    tokenizer = cached_tokenizer_from_config(mc)
    template = resolve_chat_template(tokenizer, None, None, model_config=mc)
    if template is None:
        return False, None
    try:
        messages = [{"role": "user", "content": "What's the capital of France?"}]
        ids = tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return True, len(ids)
    except Exception as exc:
        print(f"model_facts: text prompt not counted: {one_line(exc)}", file=sys.stderr)
        return True, None


def media_options(media: dict, frames: int | None):
    """vLLM's dummy-input options shaped like the demo media (the model caps each at its own maximum)."""
    from vllm.config.multimodal import (
        AudioDummyOptions,
        ImageDummyOptions,
        MultiModalDummyOptions,
        VideoDummyOptions,
    )

    width, height = media.get("image") or (2560, 1707)
    video_w, video_h = media.get("video") or (1280, 720)
    options = {
        "image": ImageDummyOptions(width=width, height=height),
        "video": VideoDummyOptions(num_frames=frames or 32, width=video_w, height=video_h),
        "audio": AudioDummyOptions(length=int(16000 * float(media.get("audio_s") or 30.0))),
    }
    return MultiModalDummyOptions(options)


def item_tokens(processor, mc, modality: str, media: dict, frames: int | None = None) -> int:
    """Prompt tokens one item of `modality`, sized like the demo media, becomes in this model."""
    counts = {modality: 1}
    builder = processor.dummy_inputs
    data = builder.get_dummy_mm_data(mc.max_model_len, counts, media_options(media, frames))
    items = processor.info.parse_mm_data({modality: data[modality]}, validate=False)
    out = processor(builder.get_dummy_text(counts), items)
    return sum(p.length for p in out["mm_placeholders"][modality])


def multimodal(mc, media: dict) -> dict:
    """Modalities, per-prompt limits and per-item tokens, from the model's own processor."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    processor = MULTIMODAL_REGISTRY.create_processor(mc)
    limits = dict(processor.info.get_supported_mm_limits())
    out: dict = {"modalities": limits, "max_tokens_per_item": None, "demo_tokens": {}, "video_tokens": {}}
    try:
        most = processor.info.get_mm_max_tokens_per_item(mc.max_model_len, dict.fromkeys(limits, 1))
        out["max_tokens_per_item"] = dict(most) if most is not None else None
    except Exception as exc:
        print(f"model_facts: no max tokens per item: {one_line(exc)}", file=sys.stderr)
    for modality in limits:
        try:
            if modality == "video":
                for frames in media.get("frames") or (32,):
                    out["video_tokens"][str(frames)] = item_tokens(processor, mc, modality, media, frames)
                first = str((media.get("frames") or (32,))[0])
                out["demo_tokens"][modality] = out["video_tokens"][first]
            else:
                out["demo_tokens"][modality] = item_tokens(processor, mc, modality, media)
        except Exception as exc:
            print(f"model_facts: {modality} tokens not counted: {one_line(exc)}", file=sys.stderr)
    return out


def text_facts(mc) -> dict:
    from vllm.config import ParallelConfig

    text = mc.hf_text_config
    config_dtype = getattr(text, "dtype", None) or getattr(mc.hf_config, "dtype", None)
    return {
        "architectures": list(mc.architectures),
        "model_type": getattr(mc.hf_config, "model_type", None),
        "supported": True,
        "is_multimodal": bool(mc.is_multimodal_model),
        "max_model_len": int(mc.max_model_len),
        "config_dtype": str(config_dtype).removeprefix("torch.") if config_dtype is not None else None,
        "quantization": mc.quantization,
        "num_attention_heads": int(mc.get_num_attention_heads(ParallelConfig())),
        "num_key_value_heads": int(mc.get_total_num_kv_heads()),
        "hidden_size": int(mc.get_hidden_size()),
        "num_hidden_layers": int(mc.get_total_num_hidden_layers()),
        "head_dim": int(mc.get_head_size()),
        "vocab_size": int(mc.get_vocab_size()),
    }


def task_facts(mc) -> dict:
    """The tasks the server would serve, as vLLM 0.32 decides them after loading (gpu_model_runner's
    get_supported_tasks, entrypoints/*/factories.py), read here from the model class, unloaded.

    generate: the chat types and responses; SupportsTranscription: transcription and translation (a
    transcription-only model serves nothing else); SupportsRealtime: realtime; a pooling runner:
    embedding (an embedding pooler: also score and rerank) or classify (a classifier with one label:
    also score and rerank)."""
    from vllm.model_executor.model_loader.utils import get_model_architecture
    from vllm.model_executor.models.interfaces import supports_realtime, supports_transcription
    from vllm.model_executor.models.interfaces_base import is_text_generation_model

    cls, arch = get_model_architecture(mc)
    tasks: list[str] = []
    if mc.runner_type == "generate":
        only = supports_transcription(cls) and bool(getattr(cls, "supports_transcription_only", False))
        if is_text_generation_model(cls) and not only:
            tasks += ["chat", "responses"]
        if supports_transcription(cls):
            tasks += ["transcription", "translation"]
        if supports_realtime(cls):
            tasks.append("realtime")
    elif mc.runner_type == "pooling":
        labels = getattr(mc.hf_config, "id2label", None) or {}
        classify = mc.convert_type == "classify" or arch.endswith("ForSequenceClassification")
        if classify:
            tasks.append("classify")
            if getattr(mc.hf_config, "num_labels", 0) == 1:
                tasks += ["score", "rerank"]
        else:
            tasks += ["embedding", "score", "rerank"]
        return {
            "runner": mc.runner_type,
            "convert": mc.convert_type,
            "tasks": tasks,
            "labels": [str(v) for _, v in sorted(labels.items(), key=lambda kv: int(kv[0]))]
            if classify
            else [],
        }
    return {"runner": mc.runner_type, "convert": mc.convert_type, "tasks": tasks, "labels": []}


def probe(request: dict, facts: dict, timings: dict) -> None:
    """Fill `facts` in place, step by step, so a refusal still carries what was learnt before it."""
    from vllm.engine.arg_utils import EngineArgs

    model, revision = request["model"], request.get("revision")
    trust = bool(request.get("trust_remote_code"))
    try:
        config = read_json(model, revision, "config.json")
    except Exception as exc:
        raise classify(exc) from None
    if config is None:
        raise Refusal("config", f"{model} has no config.json")
    facts["architectures"] = list(config.get("architectures") or [])
    facts["model_type"] = config.get("model_type")
    facts["remote_code"] = remote_code(model, revision)

    def refusal(exc: BaseException, stage: str) -> Refusal:
        found = classify(exc)
        if found.kind == "config" and facts["remote_code"] and not trust:
            # without its own code the model's config or processor does not load
            return Refusal("needs-remote-code", found.args[0])
        if found.kind == "config" and stage == "processor":
            return Refusal("processor", f"vLLM cannot build the model's processor: {found.args[0]}")
        return found

    start = time.monotonic()
    try:
        args = EngineArgs(
            model=model, revision=revision, tokenizer_revision=revision, trust_remote_code=trust
        )
        mc = args.create_model_config()
    except Exception as exc:
        found = refusal(exc, "config")
        if found.kind == "unsupported-architecture":
            facts["supported"] = False
        raise found from None
    timings["config_s"] = round(time.monotonic() - start, 2)
    facts.update(text_facts(mc))
    try:
        facts.update(task_facts(mc))
    except Exception as exc:  # the tasks are a view of the class; the chat facts stand without them
        facts["tasks_error"] = one_line(exc)
    # An auto_map alone is no need: transformers uses its own class where it has one, so a model
    # that loaded without trust_remote_code does not need it; one loaded with it is taken to.
    facts["needs_remote_code"] = bool(facts["remote_code"]) and trust
    start = time.monotonic()
    try:
        facts["chat_template"], facts["text_prompt_tokens"] = chat_template(mc)
    except Exception as exc:
        raise refusal(exc, "tokenizer") from None
    timings["tokenizer_s"] = round(time.monotonic() - start, 2)
    if mc.is_multimodal_model:
        start = time.monotonic()
        try:
            facts.update(multimodal(mc, request.get("media") or {}))
        except Exception as exc:
            raise refusal(exc, "processor") from None
        timings["processor_s"] = round(time.monotonic() - start, 2)


def main() -> int:
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # vLLM logs to stdout; keep stdout for the answer
    sys.stdout = sys.stderr
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    request = json.load(sys.stdin)
    start = time.monotonic()
    facts: dict = {"model": request["model"], "revision": request.get("revision"), "error": None}
    timings: dict = {}
    try:
        import vllm

        facts["vllm"] = getattr(vllm, "__version__", "?")
        timings["import_s"] = round(time.monotonic() - start, 2)
        probe(request, facts, timings)
    except Refusal as refusal:
        facts["error"], facts["error_kind"] = refusal.args[0], refusal.kind
        if refusal.kind == "needs-remote-code":
            facts["needs_remote_code"] = True
    except Exception as exc:  # a probe bug or an unforeseen vLLM change: still one line
        facts["error"], facts["error_kind"] = f"{type(exc).__name__}: {one_line(exc)}", "probe"
    timings["total_s"] = round(time.monotonic() - start, 2)
    facts["timings"] = timings
    facts["error"] = re.sub(r" at 0x[0-9a-f]+>", ">", facts["error"]) if facts["error"] else None
    json.dump(facts, out)
    out.write("\n")
    out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
