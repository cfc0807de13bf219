"""What every tiny-model trainer shares: the known-answer media module, vLLM's own renderer, the training loop
and the greedy check.

Standalone like the trainers: runs under the vLLM venv's python and imports only torch, vLLM, the
stdlib and, by file path, the known-answer media module (nothing else of mmdemo). It is one of the
sources every trained model's weights are keyed by (shipping.py): editing it retrains them all, as
it should, since it decides what each model sees and how it learns.

A trainer gives the model-specific parts: its examples, what it takes out of vLLM's rendering, the
model and its logits. The recipe here: each training request goes through vLLM's renderer built from
the profile's serve flags (so the token ids and tensors are those `vllm serve` feeds the model);
full passes over every fact in shuffled minibatches; AdamW with a 20-step warm-up and a cosine
decay, gradients clipped to norm 1; one thread and deterministic kernels, so the weights are a
function of the seed (on one CPU, with one torch); then every answer checked greedily.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KNOWN = Path(__file__).resolve().parents[1] / "media" / "known.py"


def serve_args(max_model_len: int, limits: dict[str, int], *extra: str) -> list[str]:
    """The serve flags of a tiny CPU profile (float32, eager, a fixed KV cache), its context and media
    limits, then its own (`extra`): the `vllm serve` a trainer renders its requests as."""
    return [
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        str(max_model_len),
        "--kv-cache-memory-bytes",
        "256M",
        "--limit-mm-per-prompt",
        json.dumps(limits),
        *extra,
    ]


def load_known(path: Path | str | None = None) -> Any:
    """The known-answer media module, loaded by its file path (mmdemo itself is not importable here)."""
    path = Path(path or KNOWN)
    spec = importlib.util.spec_from_file_location("mmdemo_known_media", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def part(kind: str, data: bytes) -> dict[str, Any]:
    """A content part as vLLM's example client sends a file: images (JPEG) and videos (MP4) as data URLs,
    audio (WAV; a tone is audio) as `input_audio`."""
    b64 = base64.b64encode(data).decode()
    if kind in ("audio", "tone"):
        return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
    mime = "image/jpeg" if kind == "image" else "video/mp4"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{b64}"}}


@dataclass(frozen=True)
class Example:
    """A training request and the answer the model learns to give it."""

    chat_type: str
    prompt: str
    media: tuple[tuple[str, tuple[str, ...]], ...]  # (kind, its fact's values) in the order they are sent
    answer: str


def answers(known: Any, chat_types: Sequence[str]) -> list[Example]:
    """Every known-answer request of those chat types, with the answer the model is trained to give (the
    known demos' own `answer`, as a sentence): every fact, not one seed's. Each colour (one image), each
    ordered pair of colours (two images), each colour x direction (video), each spoken word (one audio),
    each ordered pair of words (two audios), the beep counts of the tone fallback (espeak-ng missing)
    alone and in pairs, and the text prompt; in that order."""
    prompts, tones = known.PROMPTS, known.TONE_PROMPTS
    colours, words = known.COLOURS, known.SPOKEN
    beeps = [str(n) for n in known.BEEP_COUNTS]
    pairs = itertools.permutations
    out = [Example("text-only", prompts["text-only"], (), "Paris.")]
    if "single-image" in chat_types:
        out += [
            Example("single-image", prompts["single-image"], (("image", (c,)),), f"{cap(c)}.")
            for c in colours
        ]
    if "multi-image" in chat_types:
        out += [
            Example(
                "multi-image",
                prompts["multi-image"],
                (("image", (a,)), ("image", (b,))),
                f"{cap(a)} and {b}.",
            )
            for a, b in pairs(colours, 2)
        ]
    if "video" in chat_types:
        out += [
            Example("video", prompts["video"], (("video", (c, d)),), f"{cap(c)}, {d}.")
            for c in colours
            for d in known.DIRECTIONS
        ]
    if "audio" in chat_types:
        out += [Example("audio", prompts["audio"], (("audio", (w,)),), f"{cap(w)}.") for w in words]
    if "multi-audio" in chat_types:
        out += [
            Example(
                "multi-audio",
                prompts["multi-audio"],
                (("audio", (a,)), ("audio", (b,))),
                f"{cap(a)} and {cap(b)}.",
            )
            for a, b in pairs(words, 2)
        ]
    # espeak-ng missing: the audio demos count beeps instead (known.TONE_PROMPTS)
    if "audio" in chat_types:
        out += [Example("audio", tones["audio"], (("tone", (n,)),), f"{n}.") for n in beeps]
    if "multi-audio" in chat_types:
        out += [
            Example("multi-audio", tones["multi-audio"], (("tone", (a,)), ("tone", (b,))), f"{a} and {b}.")
            for a, b in pairs(beeps, 2)
        ]
    return out


def corpus(known: Any, chat_types: Sequence[str], *, tone_prompts: bool = False) -> list[str]:
    """Text for a tokenizer: the chat types' prompts (and the tone fallback's, `tone_prompts`), then every
    answer, thrice, so that their words become whole tokens."""
    texts = [known.PROMPTS[c] for c in chat_types]
    if tone_prompts:
        texts += known.TONE_PROMPTS.values()
    texts += [e.answer for e in answers(known, chat_types)]
    return texts * 3


def colours(example: Example) -> tuple[str, ...]:
    """The colours of an image example's images, in the order they are sent."""
    return tuple(fact[0] for _, fact in example.media)


def key(kind: str, fact: tuple[str, ...]) -> str:
    """A medium's name: its kind and fact (`"video:red/left"`)."""
    return kind + ":" + "/".join(fact)


def medium(known: Any, kind: str, fact: tuple[str, ...]) -> bytes:
    """The known-answer medium of that kind and fact, as the demos send it."""
    if kind == "image":
        return bytes(known.image_jpeg(*fact))
    if kind == "video":
        return bytes(known.video_mp4(*fact))
    if kind == "tone":
        return bytes(known.tone_wav(int(fact[0])))
    return bytes(known.audio_wav(*fact))


def modality(kind: str) -> str:
    """vLLM's name for a medium's modality (a tone is audio)."""
    return "audio" if kind == "tone" else kind


def items(example: Example, mm_kwargs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each medium of the example (by its key) and the tensors vLLM's processor made of it, by name."""
    out: dict[str, dict[str, Any]] = {}
    seen: dict[str, int] = {}
    for kind, fact in example.media:
        i = seen.get(modality(kind), 0)
        seen[modality(kind)] = i + 1
        item = mm_kwargs[modality(kind)][i]
        out[key(kind, fact)] = {name: elem.data for name, elem in item.items()}
    return out


@dataclass
class Rendered:
    example: Example
    ids: list[int]  # the prompt as vLLM tokenizes it, then the answer and the end of the turn
    prompt_len: int
    items: Any  # what the trainer takes of vLLM's rendering (`take`): by default, `items`


def prepare(
    model_dir: Path,
    serve_args: Sequence[str],
    known: Any,
    tokenizer: Any,
    examples: list[Example],
    *,
    end: str,
    take: Callable[[Example, dict[str, Any]], Any] = items,
) -> tuple[list[Rendered], dict[str, float]]:
    """The training set as vLLM renders it (each medium made once), and how long that took."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    media: dict[str, bytes] = {}
    for ex in examples:
        for kind, fact in ex.media:
            if key(kind, fact) not in media:
                media[key(kind, fact)] = medium(known, kind, fact)
    timings["media_s"] = time.monotonic() - started
    started = time.monotonic()
    requests = [
        (
            ex.chat_type,
            [{"type": "text", "text": ex.prompt}, *(part(k, media[key(k, f)]) for k, f in ex.media)],
        )
        for ex in examples
    ]
    engine_inputs = asyncio.run(render(model_dir, serve_args, requests))
    timings["render_s"] = time.monotonic() - started
    stop = tokenizer.convert_tokens_to_ids(end)
    rendered: list[Rendered] = []
    for ex, engine_input in zip(examples, engine_inputs, strict=True):
        prompt = list(engine_input["prompt_token_ids"])
        answer = [*tokenizer.encode(ex.answer, add_special_tokens=False), stop]
        rendered.append(
            Rendered(ex, prompt + answer, len(prompt), take(ex, engine_input.get("mm_kwargs") or {}))
        )
    return rendered, timings


def engine_config(model_dir: Path, serve_args: Sequence[str]) -> tuple[Any, Any]:
    """(vLLM's engine config, the parsed arguments) of `vllm serve MODEL_DIR SERVE_ARGS`."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", str(model_dir), *serve_args])
    args.model = args.model_tag
    command.validate(args)
    config = AsyncEngineArgs.from_cli_args(args).create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER
    )
    return config, args


async def render(
    model_dir: Path, serve_args: Sequence[str], requests: Sequence[tuple[str, list[dict[str, Any]]]]
) -> list[Any]:
    """Each request (what it is, its user message's content parts) through vLLM's own renderer, as
    `vllm serve MODEL_DIR SERVE_ARGS` renders it: its engine input (`prompt_token_ids`, `mm_kwargs`)."""
    from starlette.datastructures import State
    from vllm.entrypoints.launchers.render.app_state import init_render_app_state
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    config, args = engine_config(model_dir, serve_args)
    state = State()
    await init_render_app_state(config, state, args)
    online = state.online_renderer

    out = []
    for what, content in requests:
        body = {
            "model": str(model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_completion_tokens": 16,
        }
        result = await online.render_chat(ChatCompletionRequest.model_validate(body), skip_mm_cache=True)
        if not isinstance(result, tuple):
            raise RuntimeError(f"vLLM refused a training request ({what}): {result}")  # noqa: TRY004
        out.append(result[1][0])
    return out


# (logits at every answer position, the answer tokens) of a batch
Logits = Callable[[list[Any]], tuple[Any, Any]]


def deterministic() -> None:
    """Bit for bit: one thread, one summation order."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def answer_loss(batcher: Any, probes: Probes | None = None, aux: float = 0.0) -> Callable[[list[Any]], Any]:
    """A batch's loss: the cross-entropy of its answer tokens (`batcher.logits`), plus `aux` times the
    probes' on the media the batcher just encoded (`batcher.last_features`), where there are probes."""
    import torch

    def loss_of(batch: list[Any]) -> Any:
        logits, targets = batcher.logits(batch)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        if probes is not None and aux and batcher.last_features:
            loss = loss + aux * probes.loss(batcher.last_features)
        return loss

    return loss_of


def fit(
    model: Any,
    optimizer: Any,
    rendered: Sequence[Any],
    order: list[int],
    loss_of: Callable[[list[Any]], Any],
    *,
    epochs: int,
    batch: int,
    seed: int,
    log: Any = None,
) -> tuple[int, float]:
    """Train: `epochs` passes over `order` (indices into `rendered`, a fact repeated to weigh it more),
    shuffled by `seed`, in minibatches; the learning rate warms up over 20 steps and decays on a cosine.
    (steps, seconds)."""
    import torch

    rng = random.Random(seed)
    steps = epochs * -(-len(order) // batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps)),
    )
    started = time.monotonic()
    step = 0
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), batch):
            chunk = [rendered[i] for i in order[start : start + batch]]
            loss = loss_of(chunk)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            total += float(loss.detach()) * len(chunk)
        if log:
            log(
                f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.monotonic() - started:.0f} s)"
            )
    return step, time.monotonic() - started


def wrong_answers(rendered: Sequence[Any], logits_of: Logits, *, batch: int) -> list[str]:
    """The examples whose answer, greedily decoded token by token from the right prefix, is not exactly theirs."""
    import torch

    wrong = []
    with torch.no_grad():
        for start in range(0, len(rendered), batch):
            chunk = list(rendered[start : start + batch])
            logits, targets = logits_of(chunk)
            got = logits.argmax(-1)
            at = 0
            for r in chunk:
                n = len(r.ids) - r.prompt_len
                if not torch.equal(got[at : at + n], targets[at : at + n]):
                    wrong.append(f"{r.example.chat_type} {r.example.answer!r}")
                at += n
    return wrong


def finish(
    model: Any,
    rendered: Sequence[Any],
    *,
    epochs: int,
    steps: int,
    wrong: list[str],
    timings: dict[str, float],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the state dict, the report every builder records: examples, epochs, steps, wrong, timings)."""
    report = {
        "examples": len(rendered),
        "epochs": epochs,
        "steps": steps,
        "wrong": wrong,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, report


class Probes:
    """Linear heads on each medium's mean embedding, one per fact (colour, direction, word, beeps): a
    direct signal for the encoders, which the language model's answer alone gives them slowly.

    `classes` maps a medium's kind to the value lists of its facts, in the order a medium's key names
    them (`"video:red/left"`: colour, then direction). Not saved with the model."""

    def __init__(self, classes: dict[str, list[list[str]]], hidden: int) -> None:
        import torch

        self.torch = torch
        self.classes = classes
        self.heads = {
            (kind, i): torch.nn.Linear(hidden, len(values))
            for kind, sets in self.classes.items()
            for i, values in enumerate(sets)
        }

    def parameters(self) -> list[Any]:
        return [p for head in self.heads.values() for p in head.parameters()]

    def loss(self, features: dict[str, Any]) -> Any:
        """Mean cross-entropy of the heads over the media of a batch, keyed `kind:fact[/fact...]`."""
        torch = self.torch
        total = 0.0
        for key, feature in features.items():
            kind, _, fact = key.partition(":")
            pooled = feature.mean(0, keepdim=True)
            for i, value in enumerate(fact.split("/")):
                target = torch.tensor([self.classes[kind][i].index(value)])
                total = total + torch.nn.functional.cross_entropy(self.heads[(kind, i)](pooled), target)
        return total / max(1, len(features))
