"""Build a tiny random text-only Qwen2 (Qwen2ForCausalLM) for vLLM: the model a derivation runs text-only.

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its sibling common.py (nothing from mmdemo). No network.
Deterministic for a given seed. Takes a few seconds.

    python text.py --out DIR [--seed 0]

A 2-layer Qwen2 with head size 32 (vLLM's CPU attention needs >= 32) and a ChatML chat template
in the tokenizer: no processor, no image, video or audio input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

BUILDER = "qwen2_text_tiny"
VERSION = 1

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOK = {t: i for i, t in enumerate(SPECIAL)}
CHAT_TEMPLATE = common.chatml_template({})


def build_tokenizer(seed: int) -> Any:
    tokenizer = common.build_tokenizer(seed, SPECIAL, eos="<|im_end|>", pad="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(vocab_size: int) -> Any:
    from transformers import Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs >= 32
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=TOK["<|im_start|>"],
        eos_token_id=TOK["<|im_end|>"],
        pad_token_id=TOK["<|endoftext|>"],
    )
    config.architectures = ["Qwen2ForCausalLM"]
    config.dtype = "float32"
    return config


def save_weights(config: Any, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float().eval()
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def build(out: Path, seed: int) -> Path:
    return common.build_standard(
        out,
        seed,
        tokenizer=build_tokenizer,
        config=build_config,
        processor=lambda tokenizer: tokenizer,  # a text model: the tokenizer carries the template
        weights=save_weights,
        builder=BUILDER,
        version=VERSION,
    )


if __name__ == "__main__":
    sys.exit(common.main(build, doc=__doc__))
