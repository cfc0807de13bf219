"""Build the tiny Qwen2.5-Omni thinker (text + image + video + audio) for vLLM, trained to read the
known-answer media (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, shipping.py and train_omni.py (nothing from mmdemo; the
media module is loaded by its file path). No network. Deterministic for a given seed.

    python omni.py --out DIR [--seed 0] [--random | --retrain] [--ship]

The trained weights travel with the project (weights/tiny-omni.safetensors and .json; shipping.py
says when a build copies them and when it trains again: train_omni.py, about 4 minutes on 2 CPU cores).

DIR is built in a sibling temp dir and renamed into place; `mmdemo-model.json` (builder, version,
seed, and `"weights": "trained"` or `"random"`) is written last, so its presence marks a complete
model. Weights use the original checkpoint layout (thinker.audio_tower.*, thinker.visual.*,
thinker.model.*, thinker.lm_head.*); the chat template emits one placeholder per media part.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common, shipping, train_omni
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import shipping  # type: ignore[no-redef]
    import train_omni  # type: ignore[no-redef]

BUILDER = "qwen2_5_omni_thinker_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (
    HERE / "omni.py",
    HERE / "train_omni.py",
    HERE / "trainkit.py",
    HERE / "common.py",
    train_omni.KNOWN,
)

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


def _train(model_dir: Path, seed: int, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    state, report = train_omni.train(model_dir, train_omni.load_known(), seed, log=log)
    return {f"thinker.{k}": v for k, v in state.items()}, report


TRAINED = shipping.Trained("tiny-omni", SOURCES, _train)


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    return shipping.build_standard(sys.modules[__name__], out, seed, random=random, retrain=retrain, log=log)


if __name__ == "__main__":
    sys.exit(shipping.main(build, TRAINED, doc=__doc__))
