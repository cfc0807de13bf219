"""Build a tiny random Whisper (WhisperForConditionalGeneration) for vLLM's transcription and translation.

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its sibling common.py (nothing from mmdemo). No network.
Deterministic for a given seed. Takes a few seconds.

    python whisper.py --out DIR [--seed 0]

Shaped like openai/whisper-tiny, only tinier: 80 mel bins over 30 s chunks (1500 encoder positions,
as vLLM pads every clip to them), d_model 64 with 2 heads (head size 32: vLLM's CPU attention needs
one of 32, 64, 80, ...), 2 encoder and 2 decoder layers, 448 decoder positions. The tokenizer holds
the tokens vLLM's Whisper prompt names: `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`
(every Whisper language, `<|translate|>`, `<|prev|>` for a request prompt). Serve with
`--max-model-len 448 --kv-cache-memory-bytes 256M` (../shared/VLLM_NOTES.md, "Tiny models past chat").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

BUILDER = "whisper_tiny"
VERSION = 1

# Whisper's languages, in its tokenizer's order (vLLM validates the `language` field against its own
# list and asks the tokenizer for `<|xx|>` of each when it detects the language).
LANGUAGES = (  # noqa: SIM905 - a word list reads best as one string
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur "
    "hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si "
    "km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha "
    "ba jw su yue"
).split()
SPECIAL = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    *(f"<|{code}|>" for code in LANGUAGES),
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|prev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]
TOK = {t: i for i, t in enumerate(SPECIAL)}
MEL_BINS = 80
D_MODEL = 64
MAX_TARGET_POSITIONS = 448


def build_tokenizer(seed: int) -> Any:
    return common.build_tokenizer(
        seed,
        SPECIAL,
        eos="<|endoftext|>",
        pad="<|endoftext|>",
        bos="<|endoftext|>",
        unk="<|endoftext|>",
        vocab_size=800,
        model_max_length=MAX_TARGET_POSITIONS,
    )


def build_config(vocab_size: int) -> Any:
    from transformers import WhisperConfig

    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=MEL_BINS,
        d_model=D_MODEL,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,  # head size 32: vLLM's CPU attention needs >= 32
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,  # 30 s of 10 ms frames, halved by the second convolution
        max_target_positions=MAX_TARGET_POSITIONS,
        pad_token_id=TOK["<|endoftext|>"],
        bos_token_id=TOK["<|endoftext|>"],
        eos_token_id=TOK["<|endoftext|>"],
        decoder_start_token_id=TOK["<|startoftranscript|>"],
        suppress_tokens=[],
        begin_suppress_tokens=[],
        tie_word_embeddings=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    config.dtype = "float32"
    return config


def build_generation_config(config: Any) -> Any:
    """A default of 32 new tokens (vLLM reads `max_new_tokens` as a request's default max_tokens): a
    random model never writes <|endoftext|>, and 448 tokens of it take seconds per request on CPU."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=32,
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def build_processor(tokenizer: Any) -> Any:
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    return WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=MEL_BINS), tokenizer=tokenizer
    )


def wordy(tokenizer: Any) -> list[int]:
    """The ids of tokens that decode to a word piece (two letters or more): what a transcript shows."""
    return [
        i
        for i in range(len(tokenizer))
        if sum(c.isascii() and c.isalpha() for c in tokenizer.decode([i])) >= 2
    ]


def save_weights(config: Any, tokenizer: Any, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).float().eval()
    # vLLM ties the output projection to the decoder's token embeddings. Shrink every row but the word
    # pieces', so that greedy decoding writes words: a random model otherwise writes control bytes or
    # <|endoftext|> at once, and a transcript of those is empty once stripped.
    embed = model.model.decoder.embed_tokens.weight
    keep = torch.zeros(embed.shape[0], dtype=torch.bool)
    keep[wordy(tokenizer)] = True
    with torch.no_grad():
        embed[~keep] *= 0.01
    # The hub checkpoint's names (model.encoder.*, model.decoder.*), without the tied output projection.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"}
    save_file(state, str(path), metadata={"format": "pt"})


def build(out: Path, seed: int) -> Path:
    def fill(tmp: Path) -> None:
        tokenizer = build_tokenizer(seed)
        config = build_config(len(tokenizer))
        config.save_pretrained(tmp)
        build_processor(tokenizer).save_pretrained(tmp)  # tokenizer and feature extractor
        build_generation_config(config).save_pretrained(tmp)
        save_weights(config, tokenizer, tmp / "model.safetensors", seed)

    return common.build_into_place(out, fill, builder=BUILDER, version=VERSION, seed=seed)


if __name__ == "__main__":
    sys.exit(common.main(build, doc=__doc__))
