"""Train the tiny Qwen2.5-Omni thinker to answer the known-answer demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, numpy, the stdlib, its sibling trainkit.py and, by file path, the known-answer media module (nothing
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
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

try:
    from . import trainkit
except ImportError:  # run as a script: the script's directory is on sys.path
    import trainkit  # type: ignore[no-redef]

KNOWN = trainkit.KNOWN

# The serve flags that shape what the model sees (profiles/cpu-tiny-omni.yaml; a test keeps them equal).
MM_PROCESSOR_KWARGS = {"size": {"shortest_edge": 3136, "longest_edge": 12544}}
# 4 frames a second (vLLM's Qwen2-VL loader samples 2 by default): the 16-frame clip becomes 8 frames,
# 4 pairs (one temporal patch each) in which the square moves 2/3 of a patch; at 2 a second it moves
# more than a patch within a pair and the direction took far longer to learn.
MEDIA_IO_KWARGS = {"video": {"fps": 4, "max_frames": 16}}
LIMITS = {"image": 2, "video": 1, "audio": 2}
SERVE_ARGS = trainkit.serve_args(
    2048,
    LIMITS,
    "--mm-processor-kwargs",
    json.dumps(MM_PROCESSOR_KWARGS),
    "--media-io-kwargs",
    json.dumps(MEDIA_IO_KWARGS),
)

# Training: full passes over every fact, minibatches, AdamW with a cosine decay.
EPOCHS = 44
BATCH = 8
LR = 3e-3
VISION_LR = 3.0  # the vision tower's rate, times LR
AUX = 1.0  # weight of the probes: each medium's mean embedding names its facts (a linear head, not saved)
REPEAT = {"video": 2, "multi-audio": 2}  # how often an example of a chat type comes per epoch


def probed(known: Any) -> dict[str, list[list[str]]]:
    """The probes' facts: each medium's kind, and the values of each of its facts."""
    return {
        "image": [list(known.COLOURS)],
        "video": [list(known.COLOURS), list(known.DIRECTIONS)],
        "audio": [list(known.SPOKEN)],
        "tone": [[str(n) for n in known.BEEP_COUNTS]],
    }


CHAT_TYPES = ("text-only", "single-image", "multi-image", "video", "audio", "multi-audio")
load_known = trainkit.load_known


def answers(known: Any) -> list[trainkit.Example]:
    """Every known-answer request the model is trained on (trainkit.answers), tones included."""
    return trainkit.answers(known, CHAT_TYPES)


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer (trainkit.corpus)."""
    return trainkit.corpus(known, CHAT_TYPES)


def tensors_of(rendered: list[trainkit.Rendered]) -> dict[str, dict[str, Any]]:
    """Each medium's tensors once, by its key."""
    out: dict[str, dict[str, Any]] = {}
    for r in rendered:
        for key, item in r.items.items():
            out.setdefault(key, item)
    return out


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

    def position_ids(self, r: trainkit.Rendered) -> Any:
        """3-D rope positions, as transformers' thinker computes them for this prompt (cached)."""
        torch = self.torch
        cached = self.positions.get(id(r))
        if cached is not None:
            return cached
        ids = torch.tensor([r.ids])
        images = [self.tensors[trainkit.key(k, f)] for k, f in r.example.media if k == "image"]
        videos = [self.tensors[trainkit.key(k, f)] for k, f in r.example.media if k == "video"]
        audios = [
            self.tensors[trainkit.key(k, f)] for k, f in r.example.media if trainkit.modality(k) == "audio"
        ]
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
            for kind, token in (("image", self.image_id), ("video", self.video_id), ("audio", self.audio_id)):
                parts = [
                    feats[trainkit.key(k, f)] for k, f in r.example.media if trainkit.modality(k) == kind
                ]
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
    trainkit.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = Qwen2_5OmniConfig.from_pretrained(model_dir).thinker_config
    rendered, timings = trainkit.prepare(
        model_dir, SERVE_ARGS, known, tokenizer, answers(known), end="<|im_end|>"
    )

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config).float().train()
    batcher = Batcher(model, tensors_of(rendered), config)
    probes = trainkit.Probes(probed(known), config.text_config.hidden_size)
    vision = [p for n, p in model.named_parameters() if n.startswith("visual.")]
    others = [p for n, p in model.named_parameters() if not n.startswith("visual.")]
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
