"""Train the tiny Qwen2-VL to answer the known-answer demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib and, by file path, the known-answer media module (nothing else of
mmdemo). No network. Deterministic: fixed seeds, float32, CPU, one thread.

Every image and video fact of the media module is trained, not one seed's demos: each colour (one
image), each ordered pair of colours (two images), each colour x direction (video), and the text
prompt. The inputs are what `vllm serve` itself gives the model: each training request (text first,
then the media as data URLs, as the example client sends them) goes through vLLM's own renderer,
built from the profile's serve flags (SERVE_ARGS): the chat template, vLLM's media decoders (PIL,
OpenCV and its frame sampling) and the model's Qwen2VLProcessor. transformers'
Qwen2VLForConditionalGeneration then learns, on those token ids and tensors, to answer with a short
sentence and the end of the turn:

    text-only     Paris.
    single-image  Red.
    multi-image   Red and blue.
    video         Red, left.

It is train_omni.py's recipe for the Qwen2-VL architecture (a probe per fact on each medium's mean
embedding, a faster rate for the vision tower, the video sampled at 4 frames a second, a low rope
base: qwen2vl.py); the helpers it needs (load_known, the request parts, the renderer, the batcher,
the probes) are copied here rather than shared, so that each model's shipped weights are keyed by
its own scripts only (editing one trainer never retrains another model).

Run through its builder, which writes the weights (this module imports nothing of its builder:
qwen2vl.py imports it):

    python qwen2vl.py --out DIR --retrain [--ship]

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

# The serve flags that shape what the model sees (profiles/cpu-tiny-qwen2vl.yaml; a test keeps them equal).
LIMITS = {"image": 2, "video": 1}
MAX_MODEL_LEN = 4096
# 4 frames a second (vLLM's Qwen2-VL loader samples 2 by default): the 16-frame clip becomes 8 frames,
# 4 pairs (one temporal patch each) in which the square moves 2/3 of a patch (train_omni.py's finding).
MEDIA_IO_KWARGS = {"video": {"fps": 4, "max_frames": 16}}
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
    "--media-io-kwargs",
    json.dumps(MEDIA_IO_KWARGS),
]
END = "<|im_end|>"  # the end of the turn: the model's eos

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 56
BATCH = 8
LR = 5e-3
VISION_LR = 3.0  # the vision tower's rate, times LR
AUX = 1.0  # weight of the probes: each medium's mean embedding names its facts (a linear head, not saved)
# How often an example of a chat type comes per epoch: the video's direction is what takes longest
# (28 epochs with the video twice left 5 directions wrong).
REPEAT = {"video": 3}


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
    media: tuple[tuple[str, tuple[str, ...]], ...]  # (kind, fact) in the order they are sent
    answer: str


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def answers(known: Any) -> list[Example]:
    """Every known-answer request the model is trained on, with the answer it is trained to give
    (the known demos' own `answer`, as a sentence): every fact, not one seed's."""
    prompts, colours = known.PROMPTS, known.COLOURS
    out = [Example("text-only", prompts["text-only"], (), "Paris.")]
    out += [
        Example("single-image", prompts["single-image"], (("image", (c,)),), f"{_cap(c)}.") for c in colours
    ]
    out += [
        Example(
            "multi-image", prompts["multi-image"], (("image", (a,)), ("image", (b,))), f"{_cap(a)} and {b}."
        )
        for a, b in itertools.permutations(colours, 2)
    ]
    out += [
        Example("video", prompts["video"], (("video", (c, d)),), f"{_cap(c)}, {d}.")
        for c in colours
        for d in known.DIRECTIONS
    ]
    return out


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer: the prompts and every answer, so their words become whole tokens."""
    texts = [*(known.PROMPTS[c] for c in ("text-only", "single-image", "multi-image", "video"))]
    texts += [e.answer for e in answers(known)]
    return texts * 3


def _render(known: Any, kind: str, fact: tuple[str, ...]) -> bytes:
    if kind == "image":
        return bytes(known.image_jpeg(*fact))
    return bytes(known.video_mp4(*fact))


def _part(kind: str, data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    mime = "image/jpeg" if kind == "image" else "video/mp4"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{b64}"}}


PIXELS = ("pixel_values", "pixel_values_videos")


def _key(kind: str, fact: tuple[str, ...]) -> str:
    return kind + ":" + "/".join(fact)


@dataclass
class Rendered:
    example: Example
    ids: list[int]  # the prompt as vLLM tokenizes it, then the answer and <|im_end|>
    prompt_len: int
    items: dict[str, dict[str, Any]]  # medium key -> its tensors, as vLLM's processor made them


async def _render_all(
    model_dir: Path, examples: list[Example], media: dict[str, bytes]
) -> list[tuple[list[int], dict]]:
    """Each example's request through vLLM's own renderer: (prompt token ids, {key: tensors}).

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
    # vLLM's processor hands Qwen2-VL's tower raw uint8 pixels, which the tower normalises itself on the
    # device (mm_input_norm): the trainer applies that very module, so transformers' tower sees what
    # vLLM's sees after it.
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.fusion.mm_input_norm import build_mm_input_norm

    with set_current_vllm_config(config):
        norm = build_mm_input_norm(config.model_config)

    def tensor(name: str, data: Any) -> Any:
        return norm(data, torch.float32).float() if name in PIXELS else data

    out = []
    for ex in examples:
        content = [{"type": "text", "text": ex.prompt}, *(_part(k, media[_key(k, f)]) for k, f in ex.media)]
        body = {
            "model": str(model_dir),
            "messages": [{"role": "user", "content": content}],
            "max_completion_tokens": 16,
        }
        result = await online.render_chat(ChatCompletionRequest.model_validate(body), skip_mm_cache=True)
        if not isinstance(result, tuple):
            raise RuntimeError(f"vLLM refused a training request ({ex.chat_type}): {result}")  # noqa: TRY004
        engine_input = result[1][0]
        items: dict[str, dict] = {}
        seen: dict[str, int] = {}
        kwargs = engine_input.get("mm_kwargs") or {}
        for kind, fact in ex.media:
            i = seen.get(kind, 0)
            seen[kind] = i + 1
            item = kwargs[kind][i]
            items[_key(kind, fact)] = {name: tensor(name, elem.data) for name, elem in item.items()}
        out.append((list(engine_input["prompt_token_ids"]), items))
    return out


def prepare(
    model_dir: Path, known: Any, tokenizer: Any
) -> tuple[list[Rendered], dict[str, dict], dict[str, float]]:
    """The training set as vLLM renders it, and each medium's tensors once."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    examples = answers(known)
    media: dict[str, bytes] = {}
    for ex in examples:
        for kind, fact in ex.media:
            if _key(kind, fact) not in media:
                media[_key(kind, fact)] = _render(known, kind, fact)
    timings["media_s"] = time.monotonic() - started
    started = time.monotonic()
    rendered_raw = asyncio.run(_render_all(model_dir, examples, media))
    timings["render_s"] = time.monotonic() - started
    end = tokenizer.convert_tokens_to_ids(END)
    rendered: list[Rendered] = []
    tensors: dict[str, dict] = {}
    for ex, (prompt, items) in zip(examples, rendered_raw, strict=True):
        answer = [*tokenizer.encode(ex.answer, add_special_tokens=False), end]
        rendered.append(Rendered(ex, prompt + answer, len(prompt), items))
        for key, item in items.items():
            tensors.setdefault(key, item)
    return rendered, tensors, timings


class Batcher:
    """Turns examples into the language model's inputs, with the vision tower run once per medium."""

    def __init__(self, model: Any, tensors: dict[str, dict], config: Any) -> None:
        import torch

        self.model = model
        self.tensors = tensors
        self.ids = {"image": config.image_token_id, "video": config.video_token_id}
        self.merge = config.vision_config.spatial_merge_size
        self.tokens_per_second = getattr(config.vision_config, "tokens_per_second", 1.0)
        self.positions: dict[int, Any] = {}
        self.torch = torch
        self.last_features: dict[str, Any] = {}

    def position_ids(self, r: Rendered) -> Any:
        """(3, len) rope positions, as vLLM's Qwen2-VL computes them (get_mrope_input_positions, ported)."""
        torch = self.torch
        cached = self.positions.get(id(r))
        if cached is not None:
            return cached
        ids = torch.tensor(r.ids)
        parts, st, start = [], 0, 0
        media = iter(r.example.media)
        i = 0
        while i < len(r.ids):
            kind = next((k for k, t in self.ids.items() if int(ids[i]) == t), None)
            if kind is None:
                i += 1
                continue
            k, f = next(media)
            item = self.tensors[_key(k, f)]
            t, h, w = item[f"{kind}_grid_thw"].tolist()
            h, w = h // self.merge, w // self.merge
            factor = 1.0
            if kind == "video":
                factor = float(item.get("second_per_grid_ts", torch.tensor(1.0))) * self.tokens_per_second
            text = i - st
            parts.append(torch.arange(text).expand(3, text) + start)
            grid = torch.stack(
                torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
            )
            if factor != 1.0:
                grid[0] = (grid[0] * factor).long()
            parts.append(grid.reshape(3, -1) + text + start)
            start = int(parts[-1].max()) + 1
            st = i = i + t * h * w
        text = len(r.ids) - st
        parts.append(torch.arange(text).expand(3, text) + start)
        pos = torch.cat(parts, dim=1)
        self.positions[id(r)] = pos
        return pos

    def features(self, keys: list[str]) -> dict[str, Any]:
        """Each medium's embeddings (the vision tower runs on this batch's media, each once)."""
        torch = self.torch
        model = self.model.model
        out: dict[str, Any] = {}
        for kind in ("image", "video"):
            ks = [k for k in keys if k.startswith(kind + ":")]
            if not ks:
                continue
            pv = "pixel_values" if kind == "image" else "pixel_values_videos"
            grid = f"{kind}_grid_thw"
            fn = model.get_image_features if kind == "image" else model.get_video_features
            got = fn(
                torch.cat([self.tensors[k][pv] for k in ks]),
                torch.stack([self.tensors[k][grid] for k in ks]),
                return_dict=True,
            ).pooler_output
            out.update(zip(ks, got, strict=True))
        return out

    def logits(self, batch: list[Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens) for a batch, right-padded."""
        torch = self.torch
        keys = sorted({_key(k, f) for r in batch for k, f in r.example.media})
        feats = self.features(keys)
        self.last_features = feats
        longest = max(len(r.ids) for r in batch)
        embed = self.model.get_input_embeddings()
        rows, positions, masks, picks, targets = [], [], [], [], []
        for b, r in enumerate(batch):
            ids = torch.tensor(r.ids)
            row = embed(ids)
            for kind, token in self.ids.items():
                parts = [feats[_key(k, f)] for k, f in r.example.media if k == kind]
                if parts:
                    where = (ids == token).nonzero().squeeze(1)
                    row = row.index_put((where,), torch.cat(parts))
            pad = longest - len(r.ids)
            rows.append(torch.cat([row, row.new_zeros(pad, row.shape[1])]))
            pos = self.position_ids(r)
            positions.append(torch.cat([pos, pos[:, -1:].expand(3, pad)], dim=1))
            masks.append(torch.tensor([1] * len(r.ids) + [0] * pad))
            for t in range(r.prompt_len, len(r.ids)):  # the answer: predicted from the token before
                picks.append((b, t - 1))
                targets.append(r.ids[t])
        hidden = self.model.model.language_model(
            inputs_embeds=torch.stack(rows),
            position_ids=torch.stack(positions, dim=1),
            attention_mask=torch.stack(masks),
            use_cache=False,
        ).last_hidden_state
        index = torch.tensor(picks)
        logits = self.model.lm_head(hidden[index[:, 0], index[:, 1]])
        return logits, torch.tensor(targets)


class Probes:
    """Linear heads on each medium's mean embedding, one per fact (colour, direction): a direct signal
    for the vision tower, which the language model's answer alone gives it slowly.

    (train_omni.Probes for images and video, copied.)"""

    def __init__(self, known: Any, hidden: int) -> None:
        import torch

        self.torch = torch
        self.classes = {
            "image": [list(known.COLOURS)],
            "video": [list(known.COLOURS), list(known.DIRECTIONS)],
        }
        self.heads = {
            (kind, i): torch.nn.Linear(hidden, len(values))
            for kind, sets in self.classes.items()
            for i, values in enumerate(sets)
        }

    def parameters(self) -> list[Any]:
        return [p for head in self.heads.values() for p in head.parameters()]

    def loss(self, features: dict[str, Any]) -> Any:
        torch = self.torch
        total = 0.0
        for key, feature in features.items():
            kind, _, fact = key.partition(":")
            pooled = feature.mean(0, keepdim=True)
            for i, value in enumerate(fact.split("/")):
                target = torch.tensor([self.classes[kind][i].index(value)])
                total = total + torch.nn.functional.cross_entropy(self.heads[(kind, i)](pooled), target)
        return total / max(1, len(features))


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict, dict]:
    """Train the Qwen2-VL of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has transformers' names (model.language_model.*, model.visual.*, lm_head.*)."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    started = time.monotonic()
    torch.set_num_threads(1)  # bit for bit: one thread, one summation order
    torch.use_deterministic_algorithms(True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen2VLConfig.from_pretrained(model_dir)
    rendered, tensors, timings = prepare(model_dir, known, tokenizer)

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().train()
    batcher = Batcher(model, tensors, config)
    probes = Probes(known, config.text_config.hidden_size)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    groups = [
        {"params": others + list(probes.parameters()), "lr": LR},
        {"params": vision, "lr": LR * VISION_LR},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.0)
    rng = random.Random(seed)
    order = [i for i, r in enumerate(rendered) for _ in range(REPEAT.get(r.example.chat_type, 1))]
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
            if AUX:
                loss = loss + AUX * probes.loss(batcher.last_features)
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
