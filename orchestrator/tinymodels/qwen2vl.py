"""Build the tiny Qwen2-VL (images and video) for vLLM's Qwen2VLForConditionalGeneration, trained to
read the known-answer media (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, shipping.py and train_qwen2vl.py (nothing from mmdemo; the
media module is loaded by its file path). No network. Deterministic for a given seed.

    python qwen2vl.py --out DIR [--seed 0] [--random | --retrain] [--ship]

A second video architecture beside the omni thinker. Saved as transformers writes it
(`model.language_model.*`, `model.visual.*`, `lm_head.*`), which vLLM's loader maps; the
processor is transformers' own Qwen2VLProcessor with small pixel budgets.

The trained weights travel with the project (weights/tiny-qwen2vl.safetensors and .json; shipping.py
says when a build copies them and when it trains again: train_qwen2vl.py).
`mmdemo-model.json` says `"weights": "trained"` or `"random"`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common, shipping, train_qwen2vl
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import shipping  # type: ignore[no-redef]
    import train_qwen2vl  # type: ignore[no-redef]

BUILDER = "qwen2_vl_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (
    HERE / "qwen2vl.py",
    HERE / "train_qwen2vl.py",
    HERE / "trainkit.py",
    HERE / "common.py",
    train_qwen2vl.KNOWN,
)

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


def _train(model_dir: Path, seed: int, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return train_qwen2vl.train(
        model_dir, train_qwen2vl.load_known(), seed, log=log
    )  # already in the checkpoint's layout


TRAINED = shipping.Trained("tiny-qwen2vl", SOURCES, _train)


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    return shipping.build_standard(sys.modules[__name__], out, seed, random=random, retrain=retrain, log=log)


if __name__ == "__main__":
    sys.exit(shipping.main(build, TRAINED, doc=__doc__))
