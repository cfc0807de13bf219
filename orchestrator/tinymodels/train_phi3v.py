"""Train the tiny Phi-3.5-vision to answer the known-answer image demos (orchestrator/media/known.py).

Standalone like the builders: runs under the vLLM venv's python and imports only torch,
transformers, vLLM, the stdlib, its sibling trainkit.py and, by file path, the known-answer media
module and the model directory's own configuration_phi3_v.py (nothing else of mmdemo). No network.
Deterministic: fixed seeds, float32, CPU, one thread.

Every image fact of the media module is trained, not one seed's demos: each colour (one image), each
ordered pair of colours (two images), and the text prompt. The inputs are what `vllm serve` itself
gives the model: each training request (text first, then the images as data URLs, as the example
client sends them) goes through vLLM's own renderer, built from the profile's serve flags
(SERVE_ARGS): the chat template, vLLM's image decoder, the model directory's remote-code processor
(the HD transform: a 448 px image becomes a global view and 4 crops of 336 px, 757 image tokens).
The model then learns, on those token ids and pixel tensors, to answer with a short sentence and the
end of the turn:

    text-only     Paris.
    single-image  Red.
    multi-image   Red and blue.

It is the recipe of trainkit.py (the examples, the renderer, the loop, the check), which every
trainer shares; this module has what is Phi-3.5-vision's own. vLLM hard-codes the image encoder's
tower, CLIP ViT-L/14-336 (width 1024, here cut to one layer), which is costly on these CPUs (5 crops
of 577 tokens per image).
The tower stays frozen at its seeded random initialisation (one random CLIP layer still carries the
colour of a patch: a random linear map of its pixels, normalised) and runs once per colour; what
learns is the rest of the image embedding (the HD separators glb_GN and sub_GN and the projector,
Linear-GELU-Linear from 4096 to the text width) and the small Phi-3 text model. The image embedding's
forward is written here after vLLM's (vllm/model_executor/models/phi3v.py, Phi3HDImageEmbedding:
get_img_features, hd_feature_transform, reshape_hd_patches_2x2merge, add_image_newline); vLLM serves
the text model with its Llama implementation, which computes what transformers' Phi3ForCausalLM does
for this config (fused qkv and gate-up projections, SiLU, RMSNorm, full-width rope with base 10000).

Only the rows of the 32064-entry vocabulary that the tokenizer really uses (its first ~600 ids) are
trained in the output layer; the padding ids keep their seeded rows, as they do in the input
embedding (they never occur). So the trained weights differ from the seeded ones in ~2 MB, which is
what phi3v.py ships; a build regenerates the rest from the seed (initial_model).

Cost (2 CPU cores shared with other work, one thread): vLLM's rendering ~10 s, the tower ~10 s (8
images), 14 epochs ~105 s, about 2 minutes in all. Two images make a 1538-token prompt: the text
model's last layer runs its queries at the answer's positions only (Trainee.hidden), and each chat
type is its own right-padded batch, so no attention mask is needed and no text-only prompt is padded
to two images' length.

Run through its builder, which writes the weights in the hub checkpoint's layout (this module
imports nothing of its builder: phi3v.py imports it):

    python phi3v.py --out DIR --retrain [--ship]

API: `answers(known)` (the training set), `train(model_dir, known, seed) -> (state_dict, report)`
(the state dict under the hub checkpoint's names: model.*, lm_head.*, model.vision_embed_tokens.*),
`initial_model(config, seed)` (the seeded weights, trained from), `checkpoint_state(...)`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

try:
    from . import trainkit
except ImportError:  # run as a script: the script's directory is on sys.path
    import trainkit  # type: ignore[no-redef]

KNOWN = trainkit.KNOWN
load_known = trainkit.load_known

# The serve flags that shape what the model sees (profiles/cpu-tiny-phi3v.yaml; a test keeps them equal).
LIMITS = {"image": 2}
MAX_MODEL_LEN = 4096
SERVE_ARGS = trainkit.serve_args(MAX_MODEL_LEN, LIMITS, "--runner", "generate", "--trust-remote-code")
END = "<|end|>"  # the end of the turn: the model's eos
IMAGE_TOKEN_ID = 32044  # vLLM's phi3v.py hard-codes it (_IMAGE_TOKEN_ID)
CROP = 336

# vLLM builds CLIP ViT-L/14-336 whatever the config says (phi3v.py, CLIP_VIT_LARGE_PATCH14_336_CONFIG),
# with img_processor.layer_idx + 1 layers and no post-layernorm.
CLIP = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}

# Training: full passes over every fact, minibatches, AdamW with a warm-up and a cosine decay.
EPOCHS = 14
BATCH = 4
LR = 5e-3
# How often an example of a chat type comes per epoch: the one text-only fact, seen once, kept the
# least margin (its right token led the next best logit by 0.5; every image fact's by 4 or more).
WEIGHT = {"text-only": 4}


CHAT_TYPES = ("text-only", "single-image", "multi-image")


def answers(known: Any) -> list[trainkit.Example]:
    """Every known-answer request the model is trained on (trainkit.answers)."""
    return trainkit.answers(known, CHAT_TYPES)


def corpus(known: Any) -> list[str]:
    """Text for the tokenizer (trainkit.corpus)."""
    return trainkit.corpus(known, CHAT_TYPES)


# -- the model --------------------------------------------------------------------------------------


def _image_embedding_class() -> Any:
    import torch
    from torch import nn

    class ImageEmbedding(nn.Module):
        """Phi3HDImageEmbedding of vLLM 0.32 (vllm/model_executor/models/phi3v.py) past its CLIP tower,
        for `embd_layer` use_hd_transform, with_learnable_separator, hd_transform_order "sub_glb" and
        projection "mlp" (depth 2): the HD separators and the projector, whose weights vLLM loads
        from model.vision_embed_tokens.{glb_GN, sub_GN, img_projection.*}."""

        def __init__(self, image_dim_out: int, hidden: int) -> None:
            super().__init__()
            self.image_dim_out = image_dim_out
            merged = image_dim_out * 4  # 2x2 patches merged into the channels
            self.glb_GN = nn.Parameter(torch.randn(1, 1, merged) * 0.02)
            self.sub_GN = nn.Parameter(torch.randn(1, 1, 1, merged) * 0.02)
            self.img_projection = nn.Sequential(
                nn.Linear(merged, hidden), nn.GELU(), nn.Linear(hidden, hidden)
            )

        def reshape_hd_patches_2x2merge(self, image_features: Any, h_crop: int, w_crop: int) -> Any:
            """(n * h_crop * w_crop, 576, 1024) -> (n, h_crop * 12, w_crop * 12, 4096), as vLLM's."""
            n, length, channels = image_features.shape
            side = int(length**0.5)
            images = n // (h_crop * w_crop)
            return (
                image_features.reshape(n, side, side, channels)
                .reshape(n, side // 2, 2, side // 2, 2, channels)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(n, -1, 4 * channels)
                .reshape(images, h_crop, w_crop, side // 2, side // 2, -1)
                .permute(0, 1, 3, 2, 4, 5)
                .reshape(images, h_crop * side // 2, w_crop * side // 2, 4 * channels)
            )

        def add_image_newline(self, image_features_hd: Any) -> Any:
            """A sub_GN at the end of every row of merged patches, as vLLM's."""
            images, h, _, dim = image_features_hd.shape
            newline = self.sub_GN.expand(images, h, -1, -1)
            return torch.cat([image_features_hd, newline], dim=2).reshape(images, -1, dim)

        def forward(self, features: Any, image_size: tuple[int, int]) -> Any:
            """One image's embeddings (its image tokens, in order) from its tower features
            (crops + 1, 576, 1024), global view first: vLLM's hd_feature_transform for one image,
            [sub crops with newlines, glb_GN, global view with newlines], then img_projection."""
            h_crop, w_crop = image_size[0] // CROP, image_size[1] // CROP
            glb = self.add_image_newline(self.reshape_hd_patches_2x2merge(features[:1], 1, 1))[0]
            sub = features[1 : 1 + h_crop * w_crop]
            sub = self.add_image_newline(self.reshape_hd_patches_2x2merge(sub, h_crop, w_crop))[0]
            return self.img_projection(torch.cat([sub, self.glb_GN.squeeze(0), glb]))

    return ImageEmbedding


def initial_model(config: Any, seed: int) -> tuple[Any, Any, Any]:
    """The seeded model (text model, CLIP tower, image embedding) for a Phi3VConfig: what `--random`
    serves, and what training starts from (the tower is never trained)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

    torch.manual_seed(seed)
    text = Phi3Config(**{k: v for k, v in config.to_dict().items() if k in Phi3Config.__dataclass_fields__})
    lm = Phi3ForCausalLM(text).float()
    clip = CLIPVisionConfig(**CLIP, num_hidden_layers=config.img_processor["layer_idx"] + 1)
    tower = CLIPVisionModel(clip).float().eval()
    embedding = _image_embedding_class()(config.img_processor["image_dim_out"], config.hidden_size).float()
    return lm, tower, embedding


def checkpoint_state(lm: Any, tower: Any, embedding: Any) -> dict[str, Any]:
    """The weights under the hub checkpoint's names, which vLLM's loader maps: model.*, lm_head.*,
    model.vision_embed_tokens.{img_processor.vision_model.*, glb_GN, sub_GN, img_projection.*}."""
    state = dict(lm.state_dict())
    prefix = "model.vision_embed_tokens."
    for key, value in tower.state_dict().items():
        # transformers 5 drops the hub's `vision_model.` level; vLLM (and the hub checkpoint) keep it.
        name = key if key.startswith("vision_model.") else f"vision_model.{key}"
        if not name.startswith("vision_model.post_layernorm."):  # vLLM's cut tower has none
            state[f"{prefix}img_processor.{name}"] = value
    for key, value in embedding.state_dict().items():
        state[prefix + key] = value
    return {k: v.detach().contiguous() for k, v in state.items()}


# -- the training set, as vLLM renders it ---------------------------------------------------------


def pixels_of(rendered: list[trainkit.Rendered]) -> dict[str, tuple[Any, tuple[int, int]]]:
    """Each colour's image as vLLM's processor made it, once: (pixel_values, its HD size (h, w))."""
    out: dict[str, tuple[Any, tuple[int, int]]] = {}
    for r in rendered:
        for colour, item in zip(trainkit.colours(r.example), r.items.values(), strict=True):
            h, w = (int(x) for x in item["image_sizes"].tolist())
            out.setdefault(colour, (item["pixel_values"], (h, w)))
    return out


def tower_features(tower: Any, pixels: dict[str, tuple[Any, tuple[int, int]]]) -> dict[str, Any]:
    """Each colour's CLIP features once (the tower is frozen): vLLM's get_img_features with
    type_feature "patch", the last (layer_idx-th) layer's hidden states without the CLS token."""
    import torch

    out = {}
    with torch.no_grad():
        for colour, (values, _) in sorted(pixels.items()):
            out[colour] = tower(pixel_values=values).last_hidden_state[:, 1:].contiguous()
    return out


class Trainee:
    """What learns (the text model, the image embedding's separators and projector) and its logits."""

    def __init__(
        self, lm: Any, embedding: Any, features: dict[str, Any], sizes: dict[str, tuple[int, int]], rows: int
    ) -> None:
        import torch

        self.torch = torch
        self.lm = lm
        self.embedding = embedding
        self.features = features
        self.sizes = sizes
        self.module = torch.nn.ModuleDict({"lm": lm, "embedding": embedding})
        # The output layer learns the tokenizer's rows only; the padding ids keep their seeded rows.
        mask = torch.zeros(lm.lm_head.weight.shape[0], 1)
        mask[:rows] = 1.0
        lm.lm_head.weight.register_hook(lambda grad: grad * mask)

    def logits(self, batch: list[trainkit.Rendered]) -> tuple[Any, Any]:
        """(logits at every answer position, the answer tokens), in the batch's order. Each chat type
        runs as its own right-padded batch (causal attention: no mask needed), each colour's image
        embedded once."""
        torch = self.torch
        shown = sorted({c for r in batch for c in trainkit.colours(r.example)})
        images = {c: self.embedding(self.features[c], self.sizes[c]) for c in shown}
        embed = self.lm.model.embed_tokens
        rows_of: dict[int, Any] = {}
        for chat_type in ("text-only", "single-image", "multi-image"):
            group = [(i, r) for i, r in enumerate(batch) if r.example.chat_type == chat_type]
            if not group:
                continue
            longest = max(len(r.ids) for _, r in group)
            start = min(r.prompt_len for _, r in group) - 1  # the first position an answer is read at
            embeds = []
            for _, r in group:
                ids = torch.tensor(r.ids)
                row = embed(ids)
                if r.example.media:  # vLLM's _merge_multimodal_embeddings: the images in order
                    where = (ids == IMAGE_TOKEN_ID).nonzero().squeeze(1)
                    row = row.index_put((where,), torch.cat([images[c] for c in trainkit.colours(r.example)]))
                embeds.append(torch.cat([row, row.new_zeros(longest - len(r.ids), row.shape[1])]))
            hidden = self.hidden(torch.stack(embeds), start)
            for b, (i, r) in enumerate(group):  # the answer: each token predicted from the one before
                rows_of[i] = hidden[b, r.prompt_len - 1 - start : len(r.ids) - 1 - start]
        logits = self.lm.lm_head(torch.cat([rows_of[i] for i in range(len(batch))]))
        return logits, torch.tensor([t for r in batch for t in r.ids[r.prompt_len :]])

    def hidden(self, embeds: Any, start: int) -> Any:
        """The text model's last hidden states at positions start.. of a right-padded batch: transformers'
        Phi3Model, except that its last layer runs its queries from `start` on only (the answer's
        positions; its keys and values still cover the whole sequence), which halves the cost of
        attending over two images' 1514 tokens. Same arithmetic as Phi3DecoderLayer and Phi3Attention."""
        import torch.nn.functional as F
        from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

        torch = self.torch
        model = self.lm.model
        batch, length, _ = embeds.shape
        positions = torch.arange(length).expand(batch, length)
        cos, sin = model.rotary_emb(embeds, position_ids=positions)
        h = embeds
        for layer in model.layers[:-1]:  # causal, whole sequences
            h = layer(h, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
        layer = model.layers[-1]
        attn = layer.self_attn
        heads, kv_heads, dim = self.lm.config.num_attention_heads, attn.num_key_value_heads, attn.head_dim
        qkv = attn.qkv_proj(layer.input_layernorm(h))
        q, k, v = (
            part.view(batch, length, -1, dim).transpose(1, 2)
            for part in qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], dim=-1)
        )
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if kv_heads != heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        causal = torch.arange(length)[None, :] <= torch.arange(start, length)[:, None]
        out = F.scaled_dot_product_attention(q[:, :, start:], k, v, attn_mask=causal, scale=attn.scaling)
        tail = h[:, start:] + attn.o_proj(out.transpose(1, 2).reshape(batch, length - start, heads * dim))
        tail = tail + layer.mlp(layer.post_attention_layernorm(tail))
        return model.norm(tail)

    def loss(self, batch: list[trainkit.Rendered]) -> Any:
        logits, targets = self.logits(batch)
        return self.torch.nn.functional.cross_entropy(logits, targets)


def load_config(model_dir: Path) -> Any:
    """The model directory's Phi3VConfig, through its own remote-code module (as vLLM loads it)."""
    import importlib.util

    path = Path(model_dir) / "configuration_phi3_v.py"
    spec = importlib.util.spec_from_file_location("mmdemo_phi3v_configuration", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module.Phi3VConfig.from_pretrained(model_dir)


def train(
    model_dir: Path, known: Any, seed: int = 0, *, epochs: int = EPOCHS, log: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the Phi-3.5-vision of the model in `model_dir` (config, tokenizer and processor saved there).

    The state dict has the hub checkpoint's names (checkpoint_state)."""
    import torch
    from transformers import AutoTokenizer

    started = time.monotonic()
    trainkit.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = load_config(model_dir)
    rendered, timings = trainkit.prepare(model_dir, SERVE_ARGS, known, tokenizer, answers(known), end=END)
    pixels = pixels_of(rendered)

    lm, tower, embedding = initial_model(config, seed)
    begun = time.monotonic()
    features = tower_features(tower, pixels)
    timings["tower_s"] = time.monotonic() - begun
    rows = 1 + max(i for r in rendered for i in r.ids if i != IMAGE_TOKEN_ID)
    trainee = Trainee(lm, embedding, features, {c: size for c, (_, size) in pixels.items()}, rows)
    lm.train()
    optimizer = torch.optim.AdamW(trainee.module.parameters(), lr=LR, weight_decay=0.0)
    steps, timings["train_s"] = trainkit.fit(
        trainee.module,
        optimizer,
        rendered,
        [i for i, r in enumerate(rendered) for _ in range(WEIGHT.get(r.example.chat_type, 1))],
        trainee.loss,
        epochs=epochs,
        batch=BATCH,
        seed=seed,
        log=log,
    )
    lm.eval()
    gaps: list[tuple[float, str]] = []

    def checked(batch: list[trainkit.Rendered]) -> tuple[Any, Any]:
        logits, targets = trainee.logits(batch)
        right = logits.gather(1, targets[:, None]).squeeze(1)
        gap = (right - logits.scatter(1, targets[:, None], float("-inf")).amax(1)).tolist()
        at = 0
        for r in batch:
            n = len(r.ids) - r.prompt_len
            gaps.append((min(gap[at : at + n]), f"{r.example.chat_type} {r.example.answer!r}"))
            at += n
        return logits, targets

    wrong = trainkit.wrong_answers(rendered, checked, batch=BATCH)
    timings["total_s"] = time.monotonic() - started
    _, report = trainkit.finish(
        trainee.module, rendered, epochs=epochs, steps=steps, wrong=wrong, timings=timings
    )
    # the least lead of a right answer token's logit over the next best: room for vLLM's other kernels
    report["margin"] = round(min(gaps)[0], 2)
    report["weakest"] = [(round(gap, 2), label) for gap, label in sorted(gaps)[:3]]
    return checkpoint_state(lm, tower, embedding), report
