"""Train the tiny Llava-1.5 to answer the known-answer image demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib, its sibling trainkit.py and, by file path, the known-answer media module (nothing else of
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

It is the recipe of trainkit.py (the renderer, the loop, the check), which every trainer shares; this
module has what is Llava's: its examples' images, the batcher and the model.

Run through its builder, which writes the weights in the hub checkpoint's layout (this module
imports nothing of its builder: llava.py imports it):

    python llava.py --out DIR --retrain [--ship]

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

try:
    from . import trainkit
except ImportError:  # run as a script: the script's directory is on sys.path
    import trainkit  # type: ignore[no-redef]

KNOWN = trainkit.KNOWN

# The serve flags that shape what the model sees (profiles/cpu-tiny-llava.yaml; a test keeps them equal).
LIMITS = {"image": 2}
MAX_MODEL_LEN = 4096
SERVE_ARGS = trainkit.serve_args(MAX_MODEL_LEN, LIMITS)
END = "</s>"  # the end of the turn: the model's eos

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 40
BATCH = 8
LR = 3e-3
VISION_LR = 1.0  # the vision tower's rate, times LR


CHAT_TYPES = ("text-only", "single-image", "multi-image")
load_known = trainkit.load_known


def answers(known: Any) -> list[trainkit.Example]:
    """Every known-answer request the model is trained on (trainkit.answers)."""
    return trainkit.answers(known, CHAT_TYPES)


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer (trainkit.corpus)."""
    return trainkit.corpus(known, CHAT_TYPES)


class Batcher:
    """Turns examples into the language model's inputs: each image through the tower once per batch."""

    def __init__(self, model: Any, pixels: dict[str, Any], config: Any) -> None:
        import torch

        self.model = model
        self.pixels = pixels
        self.image_id = config.image_token_index
        self.torch = torch

    def logits(self, batch: list[trainkit.Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens) for a batch, right-padded."""
        torch = self.torch
        model = self.model.model  # LlavaModel: vision tower, projector, language model
        shown = sorted({c for r in batch for c in trainkit.colours(r.example)})
        feats: dict[str, Any] = {}
        if shown:
            got = model.get_image_features(
                pixel_values=torch.stack([self.pixels[c] for c in shown]),
                vision_feature_layer=self.model.config.vision_feature_layer,
                vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
                return_dict=True,
            ).pooler_output
            feats = dict(zip(shown, got, strict=True))
        longest = max(len(r.ids) for r in batch)
        embed = model.get_input_embeddings()
        rows, masks, picks, targets = [], [], [], []
        for b, r in enumerate(batch):
            ids = torch.tensor(r.ids)
            row = embed(ids)
            if trainkit.colours(r.example):
                where = (ids == self.image_id).nonzero().squeeze(1)
                row = row.index_put((where,), torch.cat([feats[c] for c in trainkit.colours(r.example)]))
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
    trainkit.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = LlavaConfig.from_pretrained(model_dir)
    rendered, timings = trainkit.prepare(model_dir, SERVE_ARGS, known, tokenizer, answers(known), end=END)
    pixels: dict[str, Any] = {}
    for r in rendered:
        for colour, item in zip(trainkit.colours(r.example), r.items.values(), strict=True):
            pixels.setdefault(colour, item["pixel_values"])

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float().train()
    batcher = Batcher(model, pixels, config)
    vision = [p for n, p in model.named_parameters() if ".vision_tower." in f".{n}"]
    others = [p for n, p in model.named_parameters() if ".vision_tower." not in f".{n}"]
    groups = [{"params": others, "lr": LR}, {"params": vision, "lr": LR * VISION_LR}]
    optimizer = torch.optim.AdamW(groups, lr=LR, weight_decay=0.0)

    loss_of = trainkit.answer_loss(batcher)

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
    wrong = trainkit.wrong_answers(rendered, batcher.logits, batch=BATCH)
    timings["total_s"] = time.monotonic() - started
    return trainkit.finish(model, rendered, epochs=epochs, steps=steps, wrong=wrong, timings=timings)
