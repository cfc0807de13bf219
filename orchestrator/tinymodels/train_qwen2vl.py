"""Train the tiny Qwen2-VL to answer the known-answer demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib, its sibling trainkit.py and, by file path, the known-answer media module (nothing else of
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
base: qwen2vl.py); the renderer, the loop, the probes and the check are trainkit.py's, which every trainer shares.

Run through its builder, which writes the weights (this module imports nothing of its builder:
qwen2vl.py imports it):

    python qwen2vl.py --out DIR --retrain [--ship]

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

try:
    from . import trainkit
except ImportError:  # run as a script: the script's directory is on sys.path
    import trainkit  # type: ignore[no-redef]

KNOWN = trainkit.KNOWN

# The serve flags that shape what the model sees (profiles/cpu-tiny-qwen2vl.yaml; a test keeps them equal).
LIMITS = {"image": 2, "video": 1}
MAX_MODEL_LEN = 4096
# 4 frames a second (vLLM's Qwen2-VL loader samples 2 by default): the 16-frame clip becomes 8 frames,
# 4 pairs (one temporal patch each) in which the square moves 2/3 of a patch (train_omni.py's finding).
MEDIA_IO_KWARGS = {"video": {"fps": 4, "max_frames": 16}}
SERVE_ARGS = trainkit.serve_args(MAX_MODEL_LEN, LIMITS, "--media-io-kwargs", json.dumps(MEDIA_IO_KWARGS))
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


CHAT_TYPES = ("text-only", "single-image", "multi-image", "video")
load_known = trainkit.load_known


def answers(known: Any) -> list[trainkit.Example]:
    """Every known-answer request the model is trained on (trainkit.answers)."""
    return trainkit.answers(known, CHAT_TYPES)


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer (trainkit.corpus)."""
    return trainkit.corpus(known, CHAT_TYPES)


PIXELS = ("pixel_values", "pixel_values_videos")


def tensors_of(model_dir: Path, rendered: list[trainkit.Rendered]) -> dict[str, dict[str, Any]]:
    """Each medium's tensors once, by its key, its pixels normalised as vLLM's tower does it.

    vLLM's processor hands Qwen2-VL's tower raw uint8 pixels, which the tower normalises itself on the
    device (mm_input_norm): the trainer applies that very module, so transformers' tower sees what
    vLLM's sees after it."""
    import torch
    from vllm.config import set_current_vllm_config
    from vllm.model_executor.layers.fusion.mm_input_norm import build_mm_input_norm

    config, _ = trainkit.engine_config(model_dir, SERVE_ARGS)
    with set_current_vllm_config(config):
        norm = build_mm_input_norm(config.model_config)
    out: dict[str, dict[str, Any]] = {}
    for r in rendered:
        for key, item in r.items.items():
            if key not in out:
                out[key] = {
                    name: norm(data, torch.float32).float() if name in PIXELS else data
                    for name, data in item.items()
                }
    return out


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

    def position_ids(self, r: trainkit.Rendered) -> Any:
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
            item = self.tensors[trainkit.key(k, f)]
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

    def logits(self, batch: list[trainkit.Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens) for a batch, right-padded."""
        torch = self.torch
        keys = sorted({trainkit.key(k, f) for r in batch for k, f in r.example.media})
        feats = self.features(keys)
        self.last_features = feats
        longest = max(len(r.ids) for r in batch)
        embed = self.model.get_input_embeddings()
        rows, positions, masks, picks, targets = [], [], [], [], []
        for b, r in enumerate(batch):
            ids = torch.tensor(r.ids)
            row = embed(ids)
            for kind, token in self.ids.items():
                parts = [feats[trainkit.key(k, f)] for k, f in r.example.media if k == kind]
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


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict, dict]:
    """Train the Qwen2-VL of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has transformers' names (model.language_model.*, model.visual.*, lm_head.*)."""
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    started = time.monotonic()
    trainkit.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen2VLConfig.from_pretrained(model_dir)
    rendered, timings = trainkit.prepare(model_dir, SERVE_ARGS, known, tokenizer, answers(known), end=END)
    tensors = tensors_of(model_dir, rendered)

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().train()
    batcher = Batcher(model, tensors, config)
    probed = {"image": [list(known.COLOURS)], "video": [list(known.COLOURS), list(known.DIRECTIONS)]}
    probes = trainkit.Probes(probed, config.text_config.hidden_size)
    vision = [p for n, p in model.named_parameters() if n.startswith("model.visual.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("model.visual.")]
    groups = [
        {"params": others + list(probes.parameters()), "lr": LR},
        {"params": vision, "lr": LR * VISION_LR},
    ]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.0)

    loss_of = trainkit.answer_loss(batcher, probes, AUX)

    order = [i for i, r in enumerate(rendered) for _ in range(REPEAT.get(r.example.chat_type, 1))]
    steps, timings["train_s"] = trainkit.fit(
        model, optimizer, rendered, order, loss_of, epochs=epochs, batch=BATCH, seed=seed, log=log
    )
    model.eval()
    wrong = trainkit.wrong_answers(rendered, batcher.logits, batch=BATCH)
    timings["total_s"] = time.monotonic() - started
    return trainkit.finish(model, rendered, epochs=epochs, steps=steps, wrong=wrong, timings=timings)
