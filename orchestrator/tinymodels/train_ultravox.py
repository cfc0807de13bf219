"""Train the tiny Ultravox to answer the known-answer audio demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib, its sibling trainkit.py and, by file path, the known-answer media module (nothing else of
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

It is train_omni.py's recipe for the Ultravox architecture (its probes included); the renderer, the
loop, the probes and the check are trainkit.py's, which every trainer shares.

Run through its builder, which writes the weights (this module imports nothing of its builder:
ultravox.py imports it):

    python ultravox.py --out DIR --retrain [--ship]

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

try:
    from . import trainkit
except ImportError:  # run as a script: the script's directory is on sys.path
    import trainkit  # type: ignore[no-redef]

KNOWN = trainkit.KNOWN

# The serve flags that shape what the model sees (profiles/cpu-tiny-ultravox.yaml; a test keeps them equal).
LIMITS = {"audio": 2}
MAX_MODEL_LEN = 2048
MAX_NUM_SEQS = 5
SERVE_ARGS = trainkit.serve_args(
    MAX_MODEL_LEN, LIMITS, "--trust-remote-code", "--max-num-seqs", str(MAX_NUM_SEQS)
)
END = "<|eot_id|>"  # the end of the turn: the model's eos

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 30
BATCH = 8
LR = 3e-3
AUX = 1.0  # weight of the probes: each audio's mean embedding names its fact (a linear head, not saved)
PAD_CHANCE = 0.5  # how often an audio is padded in training, as a shared encoder batch pads it
PAD_MAX = 256  # by up to this many mel frames (2.56 s)


CHAT_TYPES = ("text-only", "audio", "multi-audio")
load_known = trainkit.load_known


def answers(known: Any) -> list[trainkit.Example]:
    """Every known-answer request the model is trained on (trainkit.answers), tones included."""
    return trainkit.answers(known, CHAT_TYPES)


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer (trainkit.corpus)."""
    return trainkit.corpus(known, CHAT_TYPES, tone_prompts=True)


def audios_of(example: trainkit.Example, mm_kwargs: dict[str, Any]) -> list[tuple[Any, int, int]]:
    """Each audio of a rendered request: (mel features (bins, frames), valid frames, LM tokens)."""
    audios = []
    for item in mm_kwargs.get("audio", []):
        data = {name: elem.data for name, elem in item.items()}
        if int(data["audio_num_chunks"]) != 1:  # the known audios are seconds long: one 30 s chunk
            raise RuntimeError(f"a known audio longer than one chunk: {example}")
        features = data["audio_features"].reshape(-1, *data["audio_features"].shape[-2:])[0]
        lens, tokens = (int(data[name].reshape(-1)[0]) for name in ("audio_lens", "audio_token_len"))
        audios.append((features, lens, tokens))
    if len(audios) != len(example.media):
        raise RuntimeError(f"vLLM rendered {len(audios)} audio(s) for {example}")
    return audios


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

    def audio_embeddings(self, r: trainkit.Rendered) -> list[Any]:
        """Each audio of one request, as one encoder batch of vLLM's: padded to the longest (and, in
        training, sometimes further)."""
        torch = self.torch
        width = max(f.shape[-1] for f, _, _ in r.items)
        if self.rng is not None and self.rng.random() < PAD_CHANCE:
            width += self.rng.randint(1, PAD_MAX)
        feats = torch.stack([torch.nn.functional.pad(f, (0, width - f.shape[-1])) for f, _, _ in r.items])
        lens = torch.tensor([n for _, n, _ in r.items])
        hidden = self.model.encode(feats, lens)
        embeds = self.model.multi_modal_projector(hidden)
        out = []
        for i, (_, n, tokens) in enumerate(r.items):
            valid = (n - 1) // 2 + 1
            kind, fact = r.example.media[i]
            self.last_features[trainkit.key(kind, fact)] = hidden[i, :valid]
            out.append(embeds[i, :tokens])
        return out

    def logits(self, batch: list[trainkit.Rendered]) -> tuple[Any, Any]:
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
            if r.items:
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


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict, dict]:
    """Train the Ultravox of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has the builder's names (audio_tower.*, multi_modal_projector.*, language_model.*)."""
    import torch
    from transformers import AutoTokenizer

    started = time.monotonic()
    trainkit.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    rendered, timings = trainkit.prepare(
        model_dir, SERVE_ARGS, known, tokenizer, answers(known), end=END, take=audios_of
    )

    torch.manual_seed(seed)
    model = build_model(config).float().train()
    batcher = Batcher(model, config, random.Random(seed + 1))
    probed = {"audio": [list(known.SPOKEN)], "tone": [[str(n) for n in known.BEEP_COUNTS]]}
    probes = trainkit.Probes(probed, config["audio_config"]["d_model"])
    params = [p for p in model.parameters() if p.requires_grad] + probes.parameters()
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)

    loss_of = trainkit.answer_loss(batcher, probes, AUX)

    steps, timings["train_s"] = trainkit.fit(
        model,
        optimizer,
        rendered,
        list(range(len(rendered))),
        loss_of,
        epochs=epochs,
        batch=BATCH,
        seed=seed,
        log=log,
    )
    model.eval()
    # served alone (no padding), and beside a longer audio (padded), each answer must be right
    wrong = [
        *trainkit.wrong_answers(rendered, Batcher(model, config).logits, batch=BATCH),
        *trainkit.wrong_answers(
            rendered, Batcher(model, config, random.Random(seed + 2)).logits, batch=BATCH
        ),
    ]
    timings["total_s"] = time.monotonic() - started
    return trainkit.finish(
        model, rendered, epochs=epochs, steps=steps, wrong=sorted(set(wrong)), timings=timings
    )
