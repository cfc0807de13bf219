"""Build the tiny Llava-1.5 (LlavaForConditionalGeneration: CLIP vision tower + Llama) for vLLM, trained
to read the known-answer images (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, shipping.py and train_llava.py (nothing from mmdemo; the media
module is loaded by its file path). No network. Deterministic for a given seed.

    python llava.py --out DIR [--seed 0] [--random | --retrain] [--ship]

Shaped like llava-hf/llava-1.5-7b-hf, only tiny: CLIP tower at 64 px with 16 px patches (16 image
tokens, CLS dropped by the "default" feature strategy, features from layer -2), a 2-layer Llama
with head size 32 (vLLM's CPU attention needs >= 32), the hub's "USER: <image>\\n... ASSISTANT:"
chat template. Weights use the hub checkpoint's layout, which vLLM's loader maps:
language_model.model.*, language_model.lm_head.*, vision_tower.vision_model.*,
multi_modal_projector.*.

The trained weights travel with the project (weights/tiny-llava.safetensors and .json; shipping.py
says when a build copies them and when it trains again: train_llava.py).
`mmdemo-model.json` says `"weights": "trained"` or `"random"`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common, shipping, train_llava
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import shipping  # type: ignore[no-redef]
    import train_llava  # type: ignore[no-redef]

BUILDER = "llava_1_5_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (
    HERE / "llava.py",
    HERE / "train_llava.py",
    HERE / "trainkit.py",
    HERE / "common.py",
    train_llava.KNOWN,
)

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


def _train(model_dir: Path, seed: int, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    state, report = train_llava.train(model_dir, train_llava.load_known(), seed, log=log)
    return checkpoint_layout(state), report


TRAINED = shipping.Trained("tiny-llava", SOURCES, _train)


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    return shipping.build_standard(sys.modules[__name__], out, seed, random=random, retrain=retrain, log=log)


if __name__ == "__main__":
    sys.exit(shipping.main(build, TRAINED, doc=__doc__))
