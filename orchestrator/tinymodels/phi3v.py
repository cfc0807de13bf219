"""Build a tiny random Phi-3.5-vision (Phi3VForCausalLM) for vLLM, with its remote-code processor.

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its sibling common.py (nothing from mmdemo). No network.
Deterministic for a given seed. Takes a few seconds.

    python phi3v.py --out DIR [--seed 0]

Like microsoft/Phi-3.5-vision-instruct, the model directory carries its own code, loaded with
`--trust-remote-code` through `auto_map`: configuration_phi3_v.py (model_type `phi3_v`) and
processing_phi3_v.py (the HD transform, `img_tokens`, `calc_num_image_tokens_from_image_size`),
copied from phi3v_remote/ next to this file. vLLM hard-codes the vision tower (CLIP ViT-L/14-336,
width 1024) and the image token id 32044, so the tower keeps its full width and the vocabulary
its full size (32064, the tokenizer padded with word-like filler entries); `img_processor.layer_idx` 0 cuts
the tower to one layer. The Phi-3 text model is tiny (hidden 64, 2 layers, head size 32).
Weights use the hub checkpoint's layout (model.*, lm_head.*, model.vision_embed_tokens.*): ~60 MB.
"""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

BUILDER = "phi3_5_vision_tiny"
VERSION = 1
REMOTE = Path(__file__).resolve().parent / "phi3v_remote"
REMOTE_FILES = ("configuration_phi3_v.py", "processing_phi3_v.py")

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

    small = common.build_tokenizer(seed, SPECIAL, eos="<|end|>", pad="<|endoftext|>", bos="<s>", unk="<unk>")
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
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    text = Phi3Config(**{k: v for k, v in config.to_dict().items() if k in Phi3Config.__dataclass_fields__})
    state = dict(Phi3ForCausalLM(text).float().state_dict())  # model.*, lm_head.*
    clip = CLIPVisionConfig(
        hidden_size=CLIP_WIDTH,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=config.img_processor["layer_idx"] + 1,
        image_size=336,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )
    tower = CLIPVisionModel(clip).float()
    prefix = "model.vision_embed_tokens."
    for key, value in tower.state_dict().items():
        # transformers 5 drops the hub's `vision_model.` level; vLLM (and the hub checkpoint) keep it.
        name = key if key.startswith("vision_model.") else f"vision_model.{key}"
        if not name.startswith("vision_model.post_layernorm."):  # vLLM's cut tower has none
            state[f"{prefix}img_processor.{name}"] = value
    hidden, merged = config.hidden_size, CLIP_WIDTH * 4
    state[f"{prefix}glb_GN"] = torch.randn(1, 1, merged) * 0.02
    state[f"{prefix}sub_GN"] = torch.randn(1, 1, 1, merged) * 0.02
    first, second = torch.nn.Linear(merged, hidden), torch.nn.Linear(hidden, hidden)
    for i, layer in ((0, first), (2, second)):  # Sequential(Linear, GELU, Linear)
        state[f"{prefix}img_projection.{i}.weight"] = layer.weight
        state[f"{prefix}img_projection.{i}.bias"] = layer.bias
    state = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(state, str(path), metadata={"format": "pt"})


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


def build(out: Path, seed: int) -> Path:
    def fill(tmp: Path) -> None:
        for name in REMOTE_FILES:
            shutil.copyfile(REMOTE / name, tmp / name)
        tokenizer = build_tokenizer(seed)
        config = build_config()
        config.save_pretrained(tmp)
        write_processor(tmp, tokenizer)
        save_weights(config, tmp / "model.safetensors", seed)

    return common.build_into_place(out, fill, builder=BUILDER, version=VERSION, seed=seed)


if __name__ == "__main__":
    sys.exit(common.main(build, doc=__doc__))
