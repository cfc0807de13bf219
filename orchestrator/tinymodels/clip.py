"""Build a tiny random CLIP (CLIPModel: a text and a vision tower, each projected) for vLLM's embeddings.

Standalone: runs under the vLLM venv's python and imports only torch, transformers, tokenizers,
safetensors, the stdlib and its sibling common.py (nothing from mmdemo). No network.
Deterministic for a given seed. Takes a few seconds.

    python clip.py --out DIR [--seed 0]

Shaped like openai/clip-vit-base-patch32, only tiny: a 64 px image in 16 px patches, towers of
hidden size 64 with 2 heads (head size 32: vLLM's CPU attention needs one of 32, 64, 80, ...) and
2 layers, projected to 64 (vLLM needs the projection at least the text hidden size), 77 text
positions. vLLM serves it as CLIPEmbeddingModel with `--runner pooling` at /v1/embeddings, one
image or one text per input (vLLM's own "template_basic" chat template renders messages), and uses
token id 0 as its image placeholder: the tokenizer keeps its special tokens at the end, as CLIP's
does (49406 `<|startoftext|>`, 49407 `<|endoftext|>`), never at 0.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

BUILDER = "clip_tiny"
VERSION = 1

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
IMAGE_SIZE = 64
PATCH = 16
HIDDEN = 64
TEXT_POSITIONS = 77


def build_tokenizer(seed: int) -> Any:
    """A byte-level BPE over common.sentences with `<|startoftext|> ... <|endoftext|>` around every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(list(common.sentences(random.Random(seed))), trainer)
    tok.add_special_tokens([BOS, EOS])  # after the vocabulary: id 0 stays an ordinary token
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, bos), (EOS, eos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
        model_max_length=TEXT_POSITIONS,
    )


def build_config(tokenizer: Any) -> Any:
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=128,
        projection_dim=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,  # head size 32: vLLM's CPU attention needs >= 32
        max_position_embeddings=TEXT_POSITIONS,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=HIDDEN,
        intermediate_size=128,
        projection_dim=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=HIDDEN)
    config.architectures = ["CLIPModel"]
    config.dtype = "float32"
    return config


def build_processor(tokenizer: Any) -> Any:
    from transformers import CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def save_weights(config: Any, path: Path, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPModel

    torch.manual_seed(seed)
    model = CLIPModel(config).float().eval()
    # The hub checkpoint's names: text_model.*, vision_model.*, text_projection, visual_projection.
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})


def build(out: Path, seed: int) -> Path:
    def fill(tmp: Path) -> None:
        tokenizer = build_tokenizer(seed)
        config = build_config(tokenizer)
        config.save_pretrained(tmp)
        build_processor(tokenizer).save_pretrained(tmp)  # tokenizer and image processor
        save_weights(config, tmp / "model.safetensors", seed)

    return common.build_into_place(out, fill, builder=BUILDER, version=VERSION, seed=seed)


if __name__ == "__main__":
    sys.exit(common.main(build, doc=__doc__))
