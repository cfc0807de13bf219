"""Build the tiny Phi-3.5-vision (Phi3VForCausalLM) for vLLM, with its remote-code processor, trained to
read the known-answer images (orchestrator/media/known.py), or with random weights (`--random`).

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its siblings common.py, shipping.py and train_phi3v.py (nothing from mmdemo;
the media module is loaded by its file path). No network. Deterministic for a given seed.

    python phi3v.py --out DIR [--seed 0] [--random | --retrain] [--ship]

Like microsoft/Phi-3.5-vision-instruct, the model directory carries its own code, loaded with
`--trust-remote-code` through `auto_map`: configuration_phi3_v.py (model_type `phi3_v`) and
processing_phi3_v.py (the HD transform, `img_tokens`, `calc_num_image_tokens_from_image_size`),
copied from phi3v_remote/ next to this file. vLLM hard-codes the vision tower (CLIP ViT-L/14-336,
width 1024) and the image token id 32044, so the tower keeps its full width and the vocabulary
its full size (32064, the tokenizer padded with word-like filler entries); `img_processor.layer_idx` 0 cuts
the tower to one layer. The Phi-3 text model is tiny (hidden 64, 2 layers, head size 32).
Weights use the hub checkpoint's layout (model.*, lm_head.*, model.vision_embed_tokens.*): ~73 MB.

Training (train_phi3v.py) leaves the CLIP tower and the filler rows of the vocabulary at their seeded
values: what travels with the project (weights/tiny-phi3v.safetensors, ~2 MB, and .json) is only what
training changed, and a build puts it back on the seeded weights (Packing, below; shipping.py says when
a build copies them and when it trains again: about 2 minutes on 2 CPU cores). `mmdemo-model.json`
says `"weights": "trained"` or `"random"`.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path
from typing import Any

try:
    from . import common, shipping, train_phi3v
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]
    import shipping  # type: ignore[no-redef]
    import train_phi3v  # type: ignore[no-redef]

BUILDER = "phi3_5_vision_tiny"
VERSION = 2
HERE = Path(__file__).resolve().parent
REMOTE = HERE / "phi3v_remote"
REMOTE_FILES = ("configuration_phi3_v.py", "processing_phi3_v.py")
# What the trained weights are a function of (with the seed, torch, transformers and vLLM): the remote
# processor decides the pixels and image tokens the model is trained on.
SOURCES = (
    HERE / "phi3v.py",
    HERE / "train_phi3v.py",
    HERE / "trainkit.py",
    HERE / "common.py",
    *(REMOTE / name for name in REMOTE_FILES),
    train_phi3v.KNOWN,
)

SPECIAL = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
TOK = {t: i for i, t in enumerate(SPECIAL)}
VOCAB = 32064  # as the real model's; vLLM's phi3v.py hard-codes the image token id below
IMAGE_TOKEN = "<|image|>"
IMAGE_TOKEN_ID = 32044
CLIP_WIDTH = 1024  # vLLM builds CLIP ViT-L/14-336 whatever the config says
NUM_CROPS = 4  # the hub processor's default for Phi-3.5-vision

# microsoft/Phi-3.5-vision-instruct's template: string content; vLLM puts `<|image_N|>` tags into it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + '\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
    "{{- '<|assistant|>\n' -}}"
    "{% endif %}"
)


def build_tokenizer(seed: int):
    """The shared BPE, its vocabulary padded to 32064 entries with `<|image|>` at 32044."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    small = common.build_tokenizer(
        seed,
        SPECIAL,
        corpus=train_phi3v.corpus(train_phi3v.load_known()),
        eos="<|end|>",
        pad="<|endoftext|>",
        bos="<s>",
        unk="<unk>",
    )
    spec = json.loads(small.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    used = set(vocab.values())
    # A random model samples these ~31k filler ids far more often than the ~600 trained ones: make
    # them decode to words (" lionsky"), like the other tiny models' gibberish. No merge reaches them.
    fillers = (
        "\u0120" + "".join(words)  # Ġ: byte-level BPE's space
        for n in (2, 3)
        for words in itertools.product(common.WORDS, repeat=n)
    )
    for i in range(VOCAB):
        if i == IMAGE_TOKEN_ID:
            vocab[IMAGE_TOKEN] = i
        elif i not in used:
            vocab[next(f for f in fillers if f not in vocab)] = i
    spec["added_tokens"].append(
        {
            "id": IMAGE_TOKEN_ID,
            "content": IMAGE_TOKEN,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
    )
    tok = Tokenizer.from_str(json.dumps(spec))
    if tok.get_vocab_size() != VOCAB or tok.token_to_id(IMAGE_TOKEN) != IMAGE_TOKEN_ID:
        raise RuntimeError(
            f"padded vocabulary is {tok.get_vocab_size()}, {IMAGE_TOKEN} is {tok.token_to_id(IMAGE_TOKEN)}"
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
        bos_token="<s>",
        unk_token="<unk>",
        model_max_length=32768,
    )


def build_config():
    sys.path.insert(0, str(REMOTE))
    from configuration_phi3_v import Phi3VConfig

    config = Phi3VConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: vLLM's CPU attention needs >= 32
        num_key_value_heads=2,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=TOK["<s>"],
        eos_token_id=TOK["<|end|>"],
        pad_token_id=TOK["<|endoftext|>"],
        img_processor={
            "image_dim_out": CLIP_WIDTH,
            "model_name": "openai/clip-vit-large-patch14-336",
            "name": "clip_vision_model",
            "num_img_tokens": 144,
            "layer_idx": 0,  # vLLM builds layer_idx + 1 CLIP layers: one
            "type_feature": "patch",
        },
        embd_layer={
            "embedding_cls": "image",
            "hd_transform_order": "sub_glb",
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
    )
    config.architectures = ["Phi3VForCausalLM"]
    config.auto_map = {"AutoConfig": "configuration_phi3_v.Phi3VConfig"}
    config.dtype = "float32"
    return config


def save_weights(config, path: Path, seed: int) -> None:
    """The seeded random weights (train_phi3v.initial_model), in the hub checkpoint's layout."""
    from safetensors.torch import save_file

    save_file(seeded_state(config, seed), str(path), metadata={"format": "pt"})


def seeded_state(config, seed: int) -> dict[str, Any]:
    return train_phi3v.checkpoint_state(*train_phi3v.initial_model(config, seed))


def write_processor(tmp: Path, tokenizer) -> None:
    tokenizer.save_pretrained(tmp)
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    processor = {
        "processor_class": "Phi3VProcessor",
        "auto_map": {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"},
        "num_crops": NUM_CROPS,
    }
    (tmp / "processor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    config = json.loads((tmp / "tokenizer_config.json").read_text())
    config["processor_class"] = "Phi3VProcessor"
    config["auto_map"] = {"AutoProcessor": "processing_phi3_v.Phi3VProcessor"}
    (tmp / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# -- the trained weights: shipped packed, or trained again ---------------------------------------


def pack(state: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """What training changed in `state` against the seeded weights: the tensors that differ, and of a
    matrix whose last rows are still the seeded ones (the vocabulary's fillers), its rows up to the last
    changed one."""
    import torch

    out = {}
    for name, value in state.items():
        start = seeded[name]
        if value.shape != start.shape:
            raise RuntimeError(f"{name}: {tuple(value.shape)}, seeded {tuple(start.shape)}")
        if torch.equal(value, start):
            continue
        rows = int((value != start).any(dim=1).nonzero().max()) + 1 if value.dim() == 2 else len(value)
        out[name] = value[:rows].contiguous()
    return out


def unpack(packed: dict[str, Any], seeded: dict[str, Any]) -> dict[str, Any]:
    """The whole weights: the seeded ones with `packed` written over them (leading rows, or whole tensors)."""
    state = dict(seeded)
    for name, value in packed.items():
        if name not in seeded or value.shape[1:] != seeded[name].shape[1:]:
            raise RuntimeError(f"packed weight {name} {tuple(value.shape)} fits no seeded weight")
        if value.shape == seeded[name].shape:
            state[name] = value
        else:
            whole = seeded[name].clone()
            whole[: value.shape[0]] = value
            state[name] = whole
    return state


class Packing:
    """shipping.Packing: only what training changed (~2 MB of ~73 MB) is shipped; a build puts it back on
    the seeded weights, regenerated from the seed. The json's sha256 is that of the packed weights;
    model_sha256, of the whole model.safetensors."""

    def pack(self, state: dict[str, Any], seed: int) -> dict[str, Any]:
        return pack(state, seeded_state(build_config(), seed))

    def unpack(self, packed: dict[str, Any], seed: int) -> dict[str, Any]:
        return unpack(packed, seeded_state(build_config(), seed))


def _train(model_dir: Path, seed: int, log: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return train_phi3v.train(model_dir, train_phi3v.load_known(), seed, log=log)  # the checkpoint's layout


TRAINED = shipping.Trained("tiny-phi3v", SOURCES, _train, Packing())


def build(out: Path, seed: int, *, random: bool = False, retrain: bool = False, log: Any = None) -> Path:
    said: dict[str, Any] = {"weights": "random"}

    def fill(tmp: Path) -> None:
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE / name, tmp / name)
        tokenizer = build_tokenizer(seed)
        config = build_config()
        config.save_pretrained(tmp)
        write_processor(tmp, tokenizer)
        if random:
            save_weights(config, tmp / "model.safetensors", seed)
        else:
            said.update(TRAINED.weights(tmp, seed, retrain=retrain, log=log))

    return common.build_into_place(
        out, fill, builder=BUILDER, version=VERSION, seed=seed, marker_extra=lambda: said
    )


if __name__ == "__main__":
    sys.exit(shipping.main(build, TRAINED, doc=__doc__))
