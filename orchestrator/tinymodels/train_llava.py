"""Train the tiny Llava-1.5 to answer the known-answer image demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib and, by file path, the known-answer media module (nothing else of
mmdemo). No network. Deterministic: fixed seeds, float32, CPU, one thread.

Every image fact of the media module is trained, not one seed's demos: each colour (one image), each
ordered pair of colours (two images), and the text prompt. The inputs are what `vllm serve` itself
gives the model: each training request (text first, then the images as data URLs, as the example
client sends them) goes through vLLM's own renderer, built from the profile's serve flags
(SERVE_ARGS): the chat template, vLLM's image decoder and the model's CLIP processor. transformers'
LlavaForConditionalGeneration then learns, on those token ids and pixel tensors, to answer with a
short sentence and the end of the turn:

    text-only     Paris.
    single-image  Red.
    multi-image   Red and blue.

It is train_omni.py's recipe for the Llava architecture; the helpers both need (load_known, the
request parts, the renderer) are copied here rather than shared, so that each model's shipped weights
are keyed by its own scripts only (editing one trainer never retrains the other model).

Run through its builder, which writes the weights in the hub checkpoint's layout (this module
imports nothing of its builder: llava.py imports it):

    python llava.py --out DIR --retrain [--ship]

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KNOWN = Path(__file__).resolve().parents[1] / "media" / "known.py"

# The serve flags that shape what the model sees (profiles/cpu-tiny-llava.yaml; a test keeps them equal).
LIMITS = {"image": 2}
MAX_MODEL_LEN = 4096
SERVE_ARGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--kv-cache-memory-bytes",
    "256M",
    "--limit-mm-per-prompt",
    json.dumps(LIMITS),
]
END = "</s>"  # the end of the turn: the model's eos

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 40
BATCH = 8
LR = 3e-3
VISION_LR = 1.0  # the vision tower's rate, times LR


def load_known(path: Path | str | None = None) -> Any:
    """The known-answer media module, loaded by its file path (mmdemo itself is not importable here).

    (A copy of train_omni.load_known.)"""
    path = Path(path or KNOWN)
    spec = importlib.util.spec_from_file_location("mmdemo_known_media", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Example:
    chat_type: str
    prompt: str
    colours: tuple[str, ...]  # the images' colours, in the order they are sent
    answer: str


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def answers(known: Any) -> list[Example]:
    """Every known-answer request the model is trained on, with the answer it is trained to give
    (the known demos' own `answer`, as a sentence): every fact, not one seed's."""
    prompts, colours = known.PROMPTS, known.COLOURS
    out = [Example("text-only", prompts["text-only"], (), "Paris.")]
    out += [Example("single-image", prompts["single-image"], (c,), f"{_cap(c)}.") for c in colours]
    out += [
        Example("multi-image", prompts["multi-image"], (a, b), f"{_cap(a)} and {b}.")
        for a, b in itertools.permutations(colours, 2)
    ]
    return out


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer: the prompts and every answer, so their words become whole tokens."""
    texts = [*(known.PROMPTS[c] for c in ("text-only", "single-image", "multi-image"))]
    texts += [e.answer for e in answers(known)]
    return texts * 3


def _part(data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{b64}"}}


@dataclass
class Rendered:
    example: Example
    ids: list[int]  # the prompt as vLLM tokenizes it, then the answer and </s>
    prompt_len: int


async def _render_all(
    model_dir: Path, examples: list[Example], media: dict[str, bytes]
) -> list[tuple[list[int], list[Any]]]:
    """Each example's request through vLLM's own renderer: (prompt token ids, each image's pixel_values).

    (train_omni._render_all's way into vLLM's renderer, copied.)"""
    from starlette.datastructures import State
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.render.app_state import init_render_app_state
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(prog="vllm")
    command = ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(["serve", str(model_dir), *SERVE_ARGS])
    args.model = args.model_tag
    command.validate(args)
    config = AsyncEngineArgs.from_cli_args(args).create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER
    )
    state = State()
    await init_render_app_state(config, state, args)
    online = state.online_renderer

    out = []
    for ex in examples:
        content = [{"type": "text", "text": ex.prompt}, *(_part(media[c]) for c in ex.colours)]
        body = {
            "model": str(model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_completion_tokens": 16,
        }
        result = await online.render_chat(ChatCompletionRequest.model_validate(body), skip_mm_cache=True)
        if not isinstance(result, tuple):
            raise RuntimeError(f"vLLM refused a training request ({ex.chat_type}): {result}")  # noqa: TRY004
        engine_input = result[1][0]
        kwargs = engine_input.get("mm_kwargs") or {}
        pixels = [item["pixel_values"].data for item in kwargs.get("image", [])]
        if len(pixels) != len(ex.colours):
            raise RuntimeError(f"vLLM rendered {len(pixels)} image(s) for {ex}")
        out.append((list(engine_input["prompt_token_ids"]), pixels))
    return out


def prepare(
    model_dir: Path, known: Any, tokenizer: Any
) -> tuple[list[Rendered], dict[str, Any], dict[str, float]]:
    """The training set as vLLM renders it, and each colour's pixel tensor once."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    examples = answers(known)
    media = {c: bytes(known.image_jpeg(c)) for c in known.COLOURS}
    timings["media_s"] = time.monotonic() - started
    started = time.monotonic()
    rendered_raw = asyncio.run(_render_all(model_dir, examples, media))
    timings["render_s"] = time.monotonic() - started
    end = tokenizer.convert_tokens_to_ids(END)
    rendered: list[Rendered] = []
    pixels: dict[str, Any] = {}
    for ex, (prompt, images) in zip(examples, rendered_raw, strict=True):
        answer = [*tokenizer.encode(ex.answer, add_special_tokens=False), end]
        rendered.append(Rendered(ex, prompt + answer, len(prompt)))
        for colour, tensor in zip(ex.colours, images, strict=True):
            pixels.setdefault(colour, tensor)
    return rendered, pixels, timings


class Batcher:
    """Turns examples into the language model's inputs: each image through the tower once per batch."""

    def __init__(self, model: Any, pixels: dict[str, Any], config: Any) -> None:
        import torch

        self.model = model
        self.pixels = pixels
        self.image_id = config.image_token_index
        self.torch = torch

    def logits(self, batch: list[Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens) for a batch, right-padded."""
        torch = self.torch
        model = self.model.model  # LlavaModel: vision tower, projector, language model
        colours = sorted({c for r in batch for c in r.example.colours})
        feats: dict[str, Any] = {}
        if colours:
            got = model.get_image_features(
                pixel_values=torch.stack([self.pixels[c] for c in colours]),
                vision_feature_layer=self.model.config.vision_feature_layer,
                vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
                return_dict=True,
            ).pooler_output
            feats = dict(zip(colours, got, strict=True))
        longest = max(len(r.ids) for r in batch)
        embed = model.get_input_embeddings()
        rows, masks, picks, targets = [], [], [], []
        for b, r in enumerate(batch):
            ids = torch.tensor(r.ids)
            row = embed(ids)
            if r.example.colours:
                where = (ids == self.image_id).nonzero().squeeze(1)
                row = row.index_put((where,), torch.cat([feats[c] for c in r.example.colours]))
            pad = longest - len(r.ids)
            rows.append(torch.cat([row, row.new_zeros(pad, row.shape[1])]))
            masks.append(torch.tensor([1] * len(r.ids) + [0] * pad))
            for t in range(r.prompt_len, len(r.ids)):  # the answer: predicted from the token before
                picks.append((b, t - 1))
                targets.append(r.ids[t])
        hidden = model.language_model(
            inputs_embeds=torch.stack(rows),
            attention_mask=torch.stack(masks),
            position_ids=torch.arange(longest).expand(len(batch), longest),
            use_cache=False,
        ).last_hidden_state
        index = torch.tensor(picks)
        logits = self.model.lm_head(hidden[index[:, 0], index[:, 1]])
        return logits, torch.tensor(targets)


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict, dict]:
    """Train the Llava of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has transformers' names (model.language_model.*, model.vision_tower.*, ...)."""
    import torch
    from transformers import AutoTokenizer, LlavaConfig, LlavaForConditionalGeneration

    started = time.monotonic()
    torch.set_num_threads(1)  # bit for bit: one thread, one summation order
    torch.use_deterministic_algorithms(True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LlavaConfig.from_pretrained(model_dir)
    rendered, pixels, timings = prepare(model_dir, known, tokenizer)

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float().train()
    batcher = Batcher(model, pixels, config)
    vision = [p for n, p in model.named_parameters() if ".vision_tower." in f".{n}"]
    others = [p for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"]
    groups = [{"params": others, "lr": LR}, {"params": vision, "lr": LR * VISION_LR}]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.0)
    rng = random.Random(seed)
    order = list(range(len(rendered)))
    steps = epochs * -(-len(order) // BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / steps)),
    )
    train_started = time.monotonic()
    step = 0
    for epoch in range(epochs):
        rng.shuffle(order)
        total = 0.0
        for start in range(0, len(order), BATCH):
            batch = [rendered[i] for i in order[start : start + BATCH]]
            logits, targets = batcher.logits(batch)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            total += float(loss.detach()) * len(batch)
        if log:
            log(
                f"epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f} ({time.monotonic() - train_started:.0f} s)"
            )
    timings["train_s"] = time.monotonic() - train_started

    model.eval()
    wrong = []
    with torch.no_grad():
        for start in range(0, len(rendered), BATCH):
            batch = rendered[start : start + BATCH]
            logits, targets = batcher.logits(batch)
            got = logits.argmax(-1)
            at = 0
            for r in batch:
                n = len(r.ids) - r.prompt_len
                if not torch.equal(got[at : at + n], targets[at : at + n]):
                    wrong.append(f"{r.example.chat_type} {r.example.answer!r}")
                at += n
    timings["total_s"] = time.monotonic() - started
    report = {
        "examples": len(rendered),
        "epochs": epochs,
        "steps": step,
        "wrong": wrong,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return state, report
