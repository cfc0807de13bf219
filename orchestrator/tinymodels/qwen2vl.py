"""Build a tiny random Qwen2-VL (images and video) for vLLM's Qwen2VLForConditionalGeneration.

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its sibling common.py (nothing from mmdemo). No network.
Deterministic for a given seed. Takes a few seconds.

    python qwen2vl.py --out DIR [--seed 0]

A second video architecture beside the omni thinker. Saved as transformers writes it
(`model.language_model.*`, `model.visual.*`, `lm_head.*`), which vLLM's loader maps; the
processor is transformers' own Qwen2VLProcessor with small pixel budgets.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

BUILDER = "qwen2_vl_tiny"
VERSION = 1

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
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
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


def build(out: Path, seed: int) -> Path:
    return common.build_standard(
        out,
        seed,
        tokenizer=build_tokenizer,
        config=build_config,
        processor=build_processor,
        weights=save_weights,
        builder=BUILDER,
        version=VERSION,
    )


if __name__ == "__main__":
    sys.exit(common.main(build, doc=__doc__))
