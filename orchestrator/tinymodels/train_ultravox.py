"""Train the tiny Ultravox to answer the known-answer audio demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib and, by file path, the known-answer media module (nothing else of
mmdemo). No network. Deterministic: fixed seeds, float32, CPU, one thread.

Every audio fact of the media module is trained, not one seed's demos: each spoken word (one
audio), each ordered pair of words (two audios), the beep counts of the tone fallback (espeak-ng
missing) alone and in pairs, and the text prompt. The inputs are what `vllm serve` itself gives the
model: each training request (text first, then the audios as input_audio, as the example client
sends them) goes through vLLM's own renderer, built from the profile's serve flags (SERVE_ARGS):
the chat template, vLLM's audio decoder and resampler, and the model's own processor (remote code,
ultravox_processing.py). The model then learns, on those token ids and mel features, to answer with
a short sentence and the end of the turn:

    text-only     Paris.
    audio         Tokyo.            (tones: 3.)
    multi-audio   Tokyo and Cairo.  (tones: 3 and 5.)

Ultravox has no modeling class in transformers, and the model directory ships none (its only
remote code is the processor): vLLM runs its own UltravoxModel on the three parts the builder
writes, and so does this trainer, with transformers' modules for the same weights: the Whisper
encoder's layers (run as vLLM's UltravoxWhisperEncoder runs them: inputs shorter than 30 s, the
attention of each audio confined to its valid frames, the padding to itself), the projector
written here after vLLM's UltravoxFeedForwardProjector (stack 8 frames, RMSNorm, SwiGLU, RMSNorm),
and LlamaForCausalLM. The state dict has the builder's (hub) names: audio_tower.*,
multi_modal_projector.*, language_model.*.

Served, the demos go out at once and vLLM pads the audios of one encoder batch to the longest: the
training pads some audios by a random amount, so the answer does not hang on the padding.

It is train_omni.py's recipe for the Ultravox architecture (its probes included); the helpers
(load_known, the request parts, the renderer, the probes) are copied here rather than shared, so
that each model's shipped weights are keyed by its own scripts only.

Run through its builder, which writes the weights (this module imports nothing of its builder:
ultravox.py imports it):

    python ultravox.py --out DIR --retrain [--ship]

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

# The serve flags that shape what the model sees (profiles/cpu-tiny-ultravox.yaml; a test keeps them equal).
LIMITS = {"audio": 2}
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 5
SERVE_ARGS = [
    "--dtype",
    "float32",
    "--enforce-eager",
    "--trust-remote-code",
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--kv-cache-memory-bytes",
    "256M",
    "--limit-mm-per-prompt",
    json.dumps(LIMITS),
    "--max-num-seqs",
    str(MAX_NUM_SEQS),
]
END = "<|eot_id|>"  # the end of the turn: the model's eos

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 30
BATCH = 8
LR = 3e-3
AUX = 1.0  # weight of the probes: each audio's mean embedding names its fact (a linear head, not saved)
PAD_CHANCE = 0.5  # how often an audio is padded in training, as a shared encoder batch pads it
PAD_MAX = 256  # by up to this many mel frames (2.56 s)


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
    media: tuple[tuple[str, str], ...]  # (kind, fact): ("audio", "tokyo") or ("tone", "3"), in order
    answer: str


def _cap(word: str) -> str:
    return word[:1].upper() + word[1:]


def answers(known: Any) -> list[Example]:
    """Every known-answer request the model is trained on, with the answer it is trained to give
    (the known demos' own `answer`, as a sentence): every fact, not one seed's.

    (The audio part of train_omni.answers, copied.)"""
    prompts, tones = known.PROMPTS, known.TONE_PROMPTS
    words = known.SPOKEN
    beeps = [str(n) for n in known.BEEP_COUNTS]
    pairs = itertools.permutations
    out = [Example("text-only", prompts["text-only"], (), "Paris.")]
    out += [Example("audio", prompts["audio"], (("audio", w),), f"{_cap(w)}.") for w in words]
    out += [
        Example(
            "multi-audio",
            prompts["multi-audio"],
            (("audio", a), ("audio", b)),
            f"{_cap(a)} and {_cap(b)}.",
        )
        for a, b in pairs(words, 2)
    ]
    # espeak-ng missing: the audio demos count beeps instead (known.TONE_PROMPTS)
    out += [Example("audio", tones["audio"], (("tone", n),), f"{n}.") for n in beeps]
    out += [
        Example("multi-audio", tones["multi-audio"], (("tone", a), ("tone", b)), f"{a} and {b}.")
        for a, b in pairs(beeps, 2)
    ]
    return out


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer: the prompts and every answer, so their words become whole tokens."""
    texts = [known.PROMPTS[c] for c in ("text-only", "audio", "multi-audio")]
    texts += [*known.TONE_PROMPTS.values(), *(e.answer for e in answers(known))]
    return texts * 3


def _key(kind: str, fact: str) -> str:
    return f"{kind}:{fact}"


def _render(known: Any, kind: str, fact: str) -> bytes:
    return bytes(known.tone_wav(int(fact)) if kind == "tone" else known.audio_wav(fact))


def _part(data: bytes) -> dict[str, Any]:
    b64 = base64.b64encode(data).decode()
    return {"type": "input_audio", "input_audio": {"data": b64, "format": "wav"}}


@dataclass
class Rendered:
    example: Example
    ids: list[int]  # the prompt as vLLM tokenizes it, then the answer and <|eot_id|>
    prompt_len: int
    audios: list[tuple[Any, int, int]]  # each audio: (mel features (bins, frames), valid frames, LM tokens)


async def _render_all(
    model_dir: Path, examples: list[Example], media: dict[str, bytes]
) -> list[tuple[list[int], list[tuple[Any, int, int]]]]:
    """Each example's request through vLLM's own renderer: (prompt token ids, each audio's tensors).

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
        content = [{"type": "text", "text": ex.prompt}, *(_part(media[_key(k, f)]) for k, f in ex.media)]
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
        audios = []
        for item in kwargs.get("audio", []):
            data = {name: elem.data for name, elem in item.items()}
            if int(data["audio_num_chunks"]) != 1:  # the known audios are seconds long: one 30 s chunk
                raise RuntimeError(f"a known audio longer than one chunk: {ex}")
            features = data["audio_features"].reshape(-1, *data["audio_features"].shape[-2:])[0]
            lens, tokens = (int(data[name].reshape(-1)[0]) for name in ("audio_lens", "audio_token_len"))
            audios.append((features, lens, tokens))
        if len(audios) != len(ex.media):
            raise RuntimeError(f"vLLM rendered {len(audios)} audio(s) for {ex}")
        out.append((list(engine_input["prompt_token_ids"]), audios))
    return out


def prepare(model_dir: Path, known: Any, tokenizer: Any) -> tuple[list[Rendered], dict[str, float]]:
    """The training set as vLLM renders it."""
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
    for ex, (prompt, audios) in zip(examples, rendered_raw, strict=True):
        answer = [*tokenizer.encode(ex.answer, add_special_tokens=False), end]
        rendered.append(Rendered(ex, prompt + answer, len(prompt), audios))
    return rendered, timings


def build_model(config: dict[str, Any]) -> Any:
    """The tiny Ultravox as transformers' modules, named as the builder's weights are."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    class RMSNorm(torch.nn.Module):
        """vLLM's RMSNorm (eps 1e-6, weight times the normalised input)."""

        def __init__(self, size: int, eps: float = 1e-6) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(size))
            self.eps = eps

        def forward(self, x: Any) -> Any:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight

    class Projector(torch.nn.Module):
        """vLLM's UltravoxFeedForwardProjector (swiglu, projector_ln_mid)."""

        def __init__(self) -> None:
            super().__init__()
            if config["projector_act"] != "swiglu" or not config["projector_ln_mid"]:
                raise RuntimeError("the trainer knows the swiglu projector with ln_mid only")
            self.stack = int(config["stack_factor"])
            dim_in = config["audio_config"]["d_model"] * self.stack
            hidden = int(config["hidden_size"])
            self.ln_pre = RMSNorm(dim_in)
            self.linear_1 = torch.nn.Linear(dim_in, hidden, bias=False)
            self.ln_mid = RMSNorm(hidden // 2)
            self.linear_2 = torch.nn.Linear(hidden // 2, config["text_config"]["hidden_size"], bias=False)

        def forward(self, x: Any) -> Any:
            b, t, c = x.shape
            padded = -(-t // self.stack) * self.stack
            x = torch.nn.functional.pad(x, (0, 0, 0, padded - t)).reshape(
                b, padded // self.stack, c * self.stack
            )
            h = self.linear_1(self.ln_pre(x))
            d = h.shape[-1] // 2
            h = h[..., :d] * torch.nn.functional.silu(h[..., d:])
            return self.linear_2(self.ln_mid(h))

    class Ultravox(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.audio_tower = WhisperEncoder(
                WhisperConfig(**config["audio_config"], attn_implementation="eager")
            )
            self.multi_modal_projector = Projector()
            self.language_model = LlamaForCausalLM(LlamaConfig(**config["text_config"]))

        def encode(self, features: Any, lens: Any) -> Any:
            """vLLM's UltravoxWhisperEncoder: (audios, bins, frames) -> (audios, frames / 2, d_model)."""
            tower = self.audio_tower
            x = torch.nn.functional.gelu(tower.conv1(features))
            x = torch.nn.functional.gelu(tower.conv2(x)).permute(0, 2, 1)
            seq = x.shape[1]
            h = x + tower.embed_positions.weight[:seq]
            valid = (lens - 1) // 2 + 1
            inside = torch.arange(seq)[None, :] < valid[:, None]  # (audios, seq)
            allowed = inside[:, :, None] == inside[:, None, :]  # valid frames see valid, padding padding
            mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
            for layer in tower.layers:
                h = layer(h, mask[:, None])
            return tower.layer_norm(h)

    return Ultravox()


class Batcher:
    """Turns examples into the language model's inputs: the audios through the tower and projector."""

    def __init__(self, model: Any, config: dict[str, Any], rng: random.Random | None = None) -> None:
        import torch

        self.model = model
        self.audio_id = config["audio_token_index"]
        self.rng = rng  # None: no padding (the evaluation, one request served alone)
        self.torch = torch
        self.last_features: dict[str, Any] = {}

    def audio_embeddings(self, r: Rendered) -> list[Any]:
        """Each audio of one request, as one encoder batch of vLLM's: padded to the longest (and, in
        training, sometimes further)."""
        torch = self.torch
        width = max(f.shape[-1] for f, _, _ in r.audios)
        if self.rng is not None and self.rng.random() < PAD_CHANCE:
            width += self.rng.randint(1, PAD_MAX)
        feats = torch.stack([torch.nn.functional.pad(f, (0, width - f.shape[-1])) for f, _, _ in r.audios])
        lens = torch.tensor([n for _, n, _ in r.audios])
        hidden = self.model.encode(feats, lens)
        embeds = self.model.multi_modal_projector(hidden)
        out = []
        for i, (_, n, tokens) in enumerate(r.audios):
            valid = (n - 1) // 2 + 1
            kind, fact = r.example.media[i]
            self.last_features[_key(kind, fact)] = hidden[i, :valid]
            out.append(embeds[i, :tokens])
        return out

    def logits(self, batch: list[Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens) for a batch, right-padded."""
        torch = self.torch
        self.last_features = {}
        longest = max(len(r.ids) for r in batch)
        lm = self.model.language_model
        embed = lm.get_input_embeddings()
        rows, masks, picks, targets = [], [], [], []
        for b, r in enumerate(batch):
            ids = torch.tensor(r.ids)
            row = embed(ids)
            if r.audios:
                where = (ids == self.audio_id).nonzero().squeeze(1)
                row = row.index_put((where,), torch.cat(self.audio_embeddings(r)))
            pad = longest - len(r.ids)
            rows.append(torch.cat([row, row.new_zeros(pad, row.shape[1])]))
            masks.append(torch.tensor([1] * len(r.ids) + [0] * pad))
            for t in range(r.prompt_len, len(r.ids)):  # the answer: predicted from the token before
                picks.append((b, t - 1))
                targets.append(r.ids[t])
        hidden = lm.model(
            inputs_embeds=torch.stack(rows),
            attention_mask=torch.stack(masks),
            position_ids=torch.arange(longest).expand(len(batch), longest),
            use_cache=False,
        ).last_hidden_state
        index = torch.tensor(picks)
        logits = lm.lm_head(hidden[index[:, 0], index[:, 1]])
        return logits, torch.tensor(targets)


class Probes:
    """Linear heads on each audio's mean embedding, one per fact (word, beeps): a direct signal for
    the encoder, which the language model's answer alone gives it slowly. (train_omni.Probes, copied
    for the audio facts.)"""

    def __init__(self, known: Any, hidden: int) -> None:
        import torch

        self.torch = torch
        self.classes = {"audio": list(known.SPOKEN), "tone": [str(n) for n in known.BEEP_COUNTS]}
        self.heads = {kind: torch.nn.Linear(hidden, len(values)) for kind, values in self.classes.items()}

    def parameters(self) -> list[Any]:
        return [p for head in self.heads.values() for p in head.parameters()]

    def loss(self, features: dict[str, Any]) -> Any:
        torch = self.torch
        total = 0.0
        for key, feature in features.items():
            kind, _, fact = key.partition(":")
            pooled = feature.mean(0, keepdim=True)
            target = torch.tensor([self.classes[kind].index(fact)])
            total = total + torch.nn.functional.cross_entropy(self.heads[kind](pooled), target)
        return total / max(1, len(features))


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict, dict]:
    """Train the Ultravox of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has the builder's names (audio_tower.*, multi_modal_projector.*, language_model.*)."""
    import torch
    from transformers import AutoTokenizer

    started = time.monotonic()
    torch.set_num_threads(1)  # bit for bit: one thread, one summation order
    torch.use_deterministic_algorithms(True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    rendered, timings = prepare(model_dir, known, tokenizer)

    torch.manual_seed(seed)
    model = build_model(config).float().train()
    rng = random.Random(seed)
    batcher = Batcher(model, config, random.Random(seed + 1))
    probes = Probes(known, config["audio_config"]["d_model"])
    params = [p for p in model.parameters() if p.requires_grad] + probes.parameters()
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
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
            if AUX and batcher.last_features:
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
        # served alone (no padding), and beside a longer audio (padded), each answer must be right
        for checker in (Batcher(model, config), Batcher(model, config, random.Random(seed + 2))):
            for start in range(0, len(rendered), BATCH):
                batch = rendered[start : start + BATCH]
                logits, targets = checker.logits(batch)
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
        "wrong": sorted(set(wrong)),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return state, report
