"""Train the tiny Qwen2.5-Omni thinker to answer the known-answer demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, numpy, the stdlib and, by file path, the known-answer media module (nothing
else of mmdemo). No network. Deterministic: fixed seeds, float32, CPU, one thread.

Every fact of the media module is trained, not one seed's demos: each colour (one image), each
ordered pair of colours (two images), each colour x direction (video), each spoken word (one audio),
each ordered pair of words (two audios), the beep counts of the tone fallback (espeak-ng missing)
alone and in pairs, and the text prompt. The inputs are what `vllm serve` itself
gives the model: each training request (text first, then the media as data URLs and input_audio,
as the example client sends them) goes through vLLM's own renderer, built from the profile's serve
flags (SERVE_ARGS): the chat template, vLLM's media decoders (PIL, OpenCV and its frame sampling,
the audio resampler) and the model's processor. transformers' thinker then learns, on those token
ids and tensors, to answer with a short sentence and the end of the turn:

    text-only     Paris.
    single-image  Red.
    multi-image   Red and blue.
    video         Red, left.
    audio         Tokyo.            (tones: 3.)
    multi-audio   Tokyo and Cairo.  (tones: 3 and 5.)

Three things make it learn in about two minutes on one core: a probe per fact on each medium's mean
embedding (Probes: the encoders get a direct signal), a faster rate for the vision tower, and the
video sampled at 4 frames a second (MEDIA_IO_KWARGS; with the model's low rope base, omni.py).

    python train_omni.py --model DIR [--known PATH] [--seed 0]   # trains DIR's model.safetensors in place

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import itertools
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KNOWN = Path(__file__).resolve().parents[1] / "media" / "known.py"

# The serve flags that shape what the model sees (profiles/cpu-tiny-omni.yaml; a test keeps them equal).
MM_PROCESSOR_KWARGS = {"size": {"shortest_edge": 3136, "longest_edge": 12544}}
# 4 frames a second (vLLM's Qwen2-VL loader samples 2 by default): the 16-frame clip becomes 8 frames,
# 4 pairs (one temporal patch each) in which the square moves 2/3 of a patch; at 2 a second it moves
# more than a patch within a pair and the direction took far longer to learn.
MEDIA_IO_KWARGS = {"video": {"fps": 4, "max_frames": 16}}
LIMITS = {"image": 2, "video": 1, "audio": 2}
SERVE_ARGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "2048",
    "--kv-cache-memory-bytes",
    "256M",
    "--limit-mm-per-prompt",
    json.dumps(LIMITS),
    "--mm-processor-kwargs",
    json.dumps(MM_PROCESSOR_KWARGS),
    "--media-io-kwargs",
    json.dumps(MEDIA_IO_KWARGS),
]

# Training: full passes over every fact, minibatches, AdamW with a cosine decay.
EPOCHS = 44
BATCH = 8
LR = 3e-3
VISION_LR = 3.0  # the vision tower's rate, times LR
AUX = 1.0  # weight of the probes: each medium's mean embedding names its facts (a linear head, not saved)
REPEAT = {"video": 2, "multi-audio": 2}  # how often an example of a chat type comes per epoch


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
    prompts, tones = known.PROMPTS, known.TONE_PROMPTS
    colours, words = known.COLOURS, known.SPOKEN
    beeps = [str(n) for n in known.BEEP_COUNTS]
    pairs = itertools.permutations
    out = [Example("text-only", prompts["text-only"], (), "Paris.")]
    out += [
        Example("single-image", prompts["single-image"], (("image", (c,)),), f"{_cap(c)}.") for c in colours
    ]
    out += [
        Example(
            "multi-image", prompts["multi-image"], (("image", (a,)), ("image", (b,))), f"{_cap(a)} and {b}."
        )
        for a, b in pairs(colours, 2)
    ]
    out += [
        Example("video", prompts["video"], (("video", (c, d)),), f"{_cap(c)}, {d}.")
        for c in colours
        for d in known.DIRECTIONS
    ]
    out += [Example("audio", prompts["audio"], (("audio", (w,)),), f"{_cap(w)}.") for w in words]
    out += [
        Example(
            "multi-audio",
            prompts["multi-audio"],
            (("audio", (a,)), ("audio", (b,))),
            f"{_cap(a)} and {_cap(b)}.",
        )
        for a, b in pairs(words, 2)
    ]
    # espeak-ng missing: the audio demos count beeps instead (known.TONE_PROMPTS)
    out += [Example("audio", tones["audio"], (("tone", (n,)),), f"{n}.") for n in beeps]
    out += [
        Example("multi-audio", tones["multi-audio"], (("tone", (a,)), ("tone", (b,))), f"{a} and {b}.")
        for a, b in pairs(beeps, 2)
    ]
    return out


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer: the prompts and every answer, so their words become whole tokens."""
    texts = [*known.PROMPTS.values(), *(e.answer for e in answers(known))]
    return texts * 3


def _render(known: Any, kind: str, fact: tuple[str, ...]) -> bytes:
    if kind == "image":
        return bytes(known.image_jpeg(*fact))
    if kind == "video":
        return bytes(known.video_mp4(*fact))
    if kind == "tone":
        return bytes(known.tone_wav(int(fact[0])))
    return bytes(known.audio_wav(*fact))


def _part(kind: str, data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    if kind in ("audio", "tone"):
        return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}
    mime = "image/jpeg" if kind == "image" else "video/mp4"
    return {"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{mime};base64,{b64}"}}


@dataclass
class Rendered:
    example: Example
    ids: list[int]  # the prompt as vLLM tokenizes it, then the answer and <|im_end|>
    prompt_len: int
    items: dict[str, dict[str, Any]]  # medium key -> its tensors, as vLLM's processor made them


def _key(kind: str, fact: tuple[str, ...]) -> str:
    return kind + ":" + "/".join(fact)


def _modality(kind: str) -> str:
    return "audio" if kind == "tone" else kind


async def _render_all(
    model_dir: Path, examples: list[Example], media: dict[str, bytes]
) -> list[tuple[list[int], dict]]:
    """Each example's request through vLLM's own renderer: (prompt token ids, {key: tensors})."""
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
            i = seen.get(_modality(kind), 0)
            seen[_modality(kind)] = i + 1
            item = kwargs[_modality(kind)][i]
            items[_key(kind, fact)] = {name: elem.data for name, elem in item.items()}
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
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rendered: list[Rendered] = []
    tensors: dict[str, dict] = {}
    for ex, (prompt, items) in zip(examples, rendered_raw, strict=True):
        answer = [*tokenizer.encode(ex.answer, add_special_tokens=False), end]
        rendered.append(Rendered(ex, prompt + answer, len(prompt), items))
        for key, item in items.items():
            tensors.setdefault(key, item)
    return rendered, tensors, timings


class Batcher:
    """Turns examples into the language model's inputs, with the media encoders run once per medium."""

    def __init__(self, model: Any, tensors: dict[str, dict], config: Any) -> None:
        import torch

        self.model = model
        self.tensors = tensors
        self.image_id = config.image_token_id
        self.video_id = config.video_token_id
        self.audio_id = config.audio_token_id
        self.positions: dict[int, Any] = {}
        self.torch = torch

    def position_ids(self, r: Rendered) -> Any:
        """3-D rope positions, as transformers' thinker computes them for this prompt (cached)."""
        torch = self.torch
        cached = self.positions.get(id(r))
        if cached is not None:
            return cached
        ids = torch.tensor([r.ids])
        images = [self.tensors[_key(k, f)] for k, f in r.example.media if k == "image"]
        videos = [self.tensors[_key(k, f)] for k, f in r.example.media if k == "video"]
        audios = [self.tensors[_key(k, f)] for k, f in r.example.media if _modality(k) == "audio"]
        pos, _ = self.model.get_rope_index(
            ids,
            torch.stack([t["image_grid_thw"] for t in images]) if images else None,
            torch.stack([t["video_grid_thw"] for t in videos]) if videos else None,
            torch.ones_like(ids),
            False,
            torch.stack([t["audio_feature_lengths"] for t in audios]) if audios else None,
            torch.stack([t["second_per_grid_ts"] for t in videos]) if videos else None,
        )
        self.positions[id(r)] = pos
        return pos

    def features(self, keys: list[str]) -> dict[str, Any]:
        """Each medium's embeddings (the encoders run on this batch's media, each once)."""
        torch = self.torch
        model = self.model
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
        ks = [k for k in keys if k.startswith(("audio:", "tone:"))]
        if ks:
            feats = [self.tensors[k]["input_audio_features"] for k in ks]  # (mel, frames) each
            longest = max(f.shape[1] for f in feats)
            padded = torch.zeros(len(ks), feats[0].shape[0], longest)
            mask = torch.zeros(len(ks), longest, dtype=torch.long)
            for i, f in enumerate(feats):
                padded[i, :, : f.shape[1]] = f
                mask[i, : f.shape[1]] = 1
            hidden = model.get_audio_features(padded, mask, return_dict=True).last_hidden_state
            lengths = model.audio_tower._get_feat_extract_output_lengths(mask.sum(-1))[1].tolist()
            out.update(zip(ks, torch.split(hidden, lengths), strict=True))
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
            for kind, token in (("image", self.image_id), ("video", self.video_id), ("audio", self.audio_id)):
                parts = [feats[_key(k, f)] for k, f in r.example.media if _modality(k) == kind]
                if parts:
                    where = (ids == token).nonzero().squeeze(1)
                    row = row.index_put((where,), torch.cat(parts))
            pad = longest - len(r.ids)
            rows.append(torch.cat([row, row.new_zeros(pad, row.shape[1])]))
            pos = self.position_ids(r)[:, 0, :]
            positions.append(torch.cat([pos, pos[:, -1:].expand(3, pad)], dim=1))
            masks.append(torch.tensor([1] * len(r.ids) + [0] * pad))
            for t in range(r.prompt_len, len(r.ids)):  # the answer: predicted from the token before
                picks.append((b, t - 1))
                targets.append(r.ids[t])
        hidden = self.model.model(
            inputs_embeds=torch.stack(rows),
            position_ids=torch.stack(positions, dim=1),
            attention_mask=torch.stack(masks),
            use_cache=False,
        ).last_hidden_state
        index = torch.tensor(picks)
        logits = self.model.lm_head(hidden[index[:, 0], index[:, 1]])
        return logits, torch.tensor(targets)


class Probes:
    """Linear heads on each medium's mean embedding, one per fact (colour, direction, word, beeps):
    a direct signal for the encoders, which the language model's answer alone gives them slowly."""

    def __init__(self, known: Any, hidden: int) -> None:
        import torch

        self.torch = torch
        self.classes = {
            "image": [list(known.COLOURS)],
            "video": [list(known.COLOURS), list(known.DIRECTIONS)],
            "audio": [list(known.SPOKEN)],
            "tone": [[str(n) for n in known.BEEP_COUNTS]],
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
    """Train the thinker of the model in `model_dir` (config, tokenizer and processor saved there)."""
    import torch
    from transformers import AutoTokenizer, Qwen2_5OmniConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    started = time.monotonic()
    torch.set_num_threads(1)  # bit for bit: one thread, one summation order
    torch.use_deterministic_algorithms(True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen2_5OmniConfig.from_pretrained(model_dir).thinker_config
    rendered, tensors, timings = prepare(model_dir, known, tokenizer)

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).float().train()
    batcher = Batcher(model, tensors, config)
    probes = Probes(known, config.text_config.hidden_size)
    vision = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument(
        "--model", required=True, type=Path, help="a tiny-omni directory (config, tokenizer, processor)"
    )
    ap.add_argument("--known", type=Path, default=KNOWN)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from safetensors.torch import save_file

    with contextlib.redirect_stdout(sys.stderr):
        state, report = train(args.model, load_known(args.known), args.seed, epochs=args.epochs, log=print)
    save_file(
        {f"thinker.{k}": v for k, v in state.items()},
        str(args.model / "model.safetensors"),
        metadata={"format": "pt"},
    )
    print(json.dumps(report, indent=2))
    return 0 if not report["wrong"] else 1


if __name__ == "__main__":
    sys.exit(main())
