"""Build the tiny Ultravox (Whisper-style audio encoder + Llama, vLLM's UltravoxModel) for vLLM,
trained to hear the known-answer audio (orchestrator/media/known.py), or with random weights
(`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, shipping.py, ultravox_processing.py and train_ultravox.py
(nothing from mmdemo; the media module is loaded by its file path). No network. Deterministic for
a given seed.

    python ultravox.py --out DIR [--seed 0] [--random | --retrain] [--ship]

config.json is written by hand: vLLM reads it with its own UltravoxConfig (inline `audio_config`
and `text_config`, no hub ids), whose save_pretrained output does not reload. The processor is
remote code on the hub, so the project's own (ultravox_processing.py) is copied into DIR and named
in `auto_map`: serve with `--trust-remote-code`. Weights are full: `audio_tower.*` (Whisper
encoder names), `multi_modal_projector.*` and `language_model.*` (Llama names).

The trained weights travel with the project (weights/tiny-ultravox.safetensors and .json; shipping.py
says when a build copies them and when it trains again: train_ultravox.py; espeak-ng needed).
`mmdemo-model.json` says `"weights": "trained"` or `"random"`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from . import common, shipping, train_ultravox
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import shipping  # type: ignore[no-redef]
    import train_ultravox  # type: ignore[no-redef]

BUILDER = "ultravox_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
PROCESSOR_MODULE = HERE / "ultravox_processing.py"
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (
    HERE / "ultravox.py",
    PROCESSOR_MODULE,
    HERE / "train_ultravox.py",
    HERE / "trainkit.py",
    HERE / "common.py",
    train_ultravox.KNOWN,
)

# Llama-3 style special tokens, then the audio placeholder vLLM matches in the prompt.
SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|audio|>",
]
TOK = {t: i for i, t in enumerate(SPECIAL)}

# Content as a string, like Llama 3's template: vLLM then puts one `<|audio|>` per audio part
# before the text ("string" content format), and the processor expands each one.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

HIDDEN = 64
MEL_BINS = 128  # Ultravox 0.5 sits on whisper-large-v3-turbo: 128 mel bins
STACK_FACTOR = 8
PROJECTOR_HIDDEN = 128  # swiglu halves it


def build_tokenizer(seed: int) -> Any:
    return common.build_tokenizer(
        seed,
        SPECIAL,
        corpus=train_ultravox.corpus(train_ultravox.load_known()),
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        bos="<|begin_of_text|>",
    )


def text_config(vocab_size: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,  # vLLM's CPU attention needs >= 32
        "max_position_embeddings": 4096,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "bos_token_id": TOK["<|begin_of_text|>"],
        "eos_token_id": TOK["<|eot_id|>"],
        "pad_token_id": TOK["<|end_of_text|>"],
    }


def audio_config() -> dict[str, Any]:
    return {
        "model_type": "whisper",
        "num_mel_bins": MEL_BINS,
        "d_model": HIDDEN,
        "encoder_layers": 2,
        "encoder_attention_heads": 2,  # head size 32
        "encoder_ffn_dim": 128,
        "decoder_layers": 1,
        "decoder_attention_heads": 2,
        "decoder_ffn_dim": 128,
        "max_source_positions": 1500,  # 30 s of 10 ms mel frames, halved by the stride-2 conv
    }


def build_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["UltravoxModel"],
        "model_type": "ultravox",
        "audio_config": audio_config(),
        "text_config": text_config(vocab_size),
        "audio_token_index": TOK["<|audio|>"],
        "vocab_size": vocab_size,
        "hidden_size": PROJECTOR_HIDDEN,
        "stack_factor": STACK_FACTOR,
        "projector_act": "swiglu",
        "projector_ln_mid": True,  # Ultravox >= 0.5
        "norm_init": 0.4,
        "dtype": "float32",
        "bos_token_id": TOK["<|begin_of_text|>"],
        "eos_token_id": TOK["<|eot_id|>"],
        "pad_token_id": TOK["<|end_of_text|>"],
    }


def build_processor(tokenizer: Any) -> Any:
    from transformers import WhisperFeatureExtractor

    try:  # here, not at the top: it imports transformers, which mmdemo's own tests (keys, flags) lack
        from .ultravox_processing import UltravoxProcessor
    except ImportError:  # run as a script
        from ultravox_processing import UltravoxProcessor  # type: ignore[no-redef]

    return UltravoxProcessor(
        audio_processor=WhisperFeatureExtractor(feature_size=MEL_BINS),
        tokenizer=tokenizer,
        stack_factor=STACK_FACTOR,
        audio_placeholder="<|audio|>",
        chat_template=CHAT_TEMPLATE,
    )


def ship_processor(directory: Path) -> None:
    """Copy the processor module into the model and name it in `auto_map` (remote code, as on the hub)."""
    shutil.copyfile(PROCESSOR_MODULE, directory / PROCESSOR_MODULE.name)
    auto_map = {"AutoProcessor": f"{PROCESSOR_MODULE.stem}.UltravoxProcessor"}
    path = directory / "processor_config.json"
    data = json.loads(path.read_text())
    data.update(auto_map=auto_map, processor_class="UltravoxProcessor")
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def state_dict(config: dict[str, Any], seed: int) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    torch.manual_seed(seed)
    state: dict[str, Any] = {}
    encoder = WhisperEncoder(WhisperConfig(**config["audio_config"])).float()
    state.update({f"audio_tower.{k}": v for k, v in encoder.state_dict().items()})
    dim_in = HIDDEN * STACK_FACTOR
    dim_mid = PROJECTOR_HIDDEN // 2
    projector = {
        "ln_pre.weight": torch.ones(dim_in),
        "linear_1.weight": torch.randn(PROJECTOR_HIDDEN, dim_in) * 0.02,
        "ln_mid.weight": torch.ones(dim_mid),
        "linear_2.weight": torch.randn(HIDDEN, dim_mid) * 0.02,
    }
    state.update({f"multi_modal_projector.{k}": v for k, v in projector.items()})
    llama = LlamaForCausalLM(LlamaConfig(**config["text_config"])).float()
    state.update({f"language_model.{k}": v for k, v in llama.state_dict().items()})
    return {k: v.detach().contiguous() for k, v in state.items()}


def _train(model_dir: Path, seed: int, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return train_ultravox.train(
        model_dir, train_ultravox.load_known(), seed, log=log
    )  # already in the checkpoint's layout


TRAINED = shipping.Trained("tiny-ultravox", SOURCES, _train)


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    said: dict[str, Any] = {"weights": "random"}

    def fill(tmp: Path) -> None:
        from safetensors.torch import save_file

        tokenizer = build_tokenizer(seed)
        config = build_config(len(tokenizer))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        build_processor(tokenizer).save_pretrained(tmp)  # tokenizer, feature extractor, chat template
        ship_processor(tmp)
        if random:
            save_file(state_dict(config, seed), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            said.update(TRAINED.weights(tmp, seed, retrain=retrain, log=log))

    return common.build_into_place(
        out, fill, builder=BUILDER, version=VERSION, seed=seed, marker_extra=lambda: said
    )


if __name__ == "__main__":
    sys.exit(shipping.main(build, TRAINED, doc=__doc__))
