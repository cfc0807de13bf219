"""Phi3VProcessor for mmdemo's tiny Phi-3.5-vision, written after the hub's processing_phi3_v.py.

Shipped into the model directory and loaded through `auto_map` with `--trust-remote-code`. vLLM's
phi3v.py does not reimplement this processor; it reads from it:
  - `img_tokens`: the prompt's image tags `<|image_1|>`, `<|image_2|>`, ...
  - `calc_num_image_tokens_from_image_size(width, height)`: the feature size of one image
  - `__call__(text=..., images=...)`: `pixel_values` (n, num_crops + 1, 3, 336, 336) and
    `image_sizes` (n, 2), the HD-transformed size of each image.
The HD transform is the hub's: resize to fit `num_crops` 336 px crops keeping the aspect ratio, pad
the short side with white to a multiple of 336, cut into crops, prepend a 336x336 global view.
Needs only PIL, numpy, torch and transformers (no torchvision).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin

CROP = 336
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_TOKEN_ID = 32044  # vLLM's phi3v.py hard-codes it: `<|image|>`
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


def hd_size(width: int, height: int, num_crops: int) -> tuple[int, int]:
    """The (width, height) an image has after the HD transform: whole 336 px crops, at most num_crops."""
    transposed = width < height
    if transposed:
        width, height = height, width
    ratio = width / height
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    new_width = scale * CROP
    new_height = max(1, int(new_width / ratio))
    padded_height = math.ceil(new_height / CROP) * CROP
    if transposed:
        return padded_height, new_width
    return new_width, padded_height


def num_image_tokens(width: int, height: int, num_crops: int) -> int:
    """Feature size of one image: 12x12 merged patches per crop and per global view, plus newlines."""
    w, h = hd_size(width, height, num_crops)
    return (h // CROP * w // CROP + 1) * 144 + 1 + (h // CROP + 1) * 12


def hd_transform(image: Image.Image, num_crops: int) -> Image.Image:
    """Resize keeping the aspect ratio, then pad the short side with white to whole crops."""
    width, height = image.size
    transposed = width < height
    if transposed:
        image = image.transpose(Image.Transpose.TRANSPOSE)
        width, height = height, width
    target_w, target_h = hd_size(width, height, num_crops)
    new_h = max(1, int(target_w / (width / height)))
    image = image.resize((target_w, new_h), Image.Resampling.BILINEAR)
    padded = Image.new("RGB", (target_w, target_h), (255, 255, 255))
    padded.paste(image, (0, (target_h - new_h) // 2))
    if transposed:
        padded = padded.transpose(Image.Transpose.TRANSPOSE)
    return padded


def image_to_crops(image: Image.Image, num_crops: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(num_crops + 1, 3, 336, 336): the global view, the crops row by row, zero padding; and (h, w)."""
    hd = hd_transform(image.convert("RGB"), num_crops)
    array = np.asarray(hd, dtype=np.float32) / 255.0
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, h, w)
    _, h, w = tensor.shape
    global_view = torch.nn.functional.interpolate(tensor[None], size=(CROP, CROP), mode="bicubic")
    crops = (
        tensor.reshape(3, h // CROP, CROP, w // CROP, CROP).permute(1, 3, 0, 2, 4).reshape(-1, 3, CROP, CROP)
    )
    stacked = torch.cat([global_view, crops], dim=0)
    if stacked.shape[0] < num_crops + 1:
        padding = torch.zeros(num_crops + 1 - stacked.shape[0], 3, CROP, CROP)
        stacked = torch.cat([stacked, padding], dim=0)
    return stacked, (h, w)


class _ImageTags(Sequence[str]):
    """`<|image_1|>`, `<|image_2|>`, ... without building the hub's list of a million strings."""

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [f"<|image_{i + 1}|>" for i in range(*index.indices(len(self)))]
        if not 0 <= index < len(self):
            raise IndexError(index)
        return f"<|image_{index + 1}|>"


class Phi3VProcessor(ProcessorMixin):
    """Text through the tokenizer, images through the HD transform; image tags become image tokens."""

    special_image_token = "<|image|>"
    img_tokens = _ImageTags()

    def __init__(self, tokenizer=None, num_crops: int = 4, chat_template: str | None = None, **kwargs: Any):
        self.num_crops = num_crops
        super().__init__(tokenizer, chat_template=chat_template)

    def calc_num_image_tokens_from_image_size(self, width: int, height: int) -> int:
        """How many `<|image|>` tokens an image of this size becomes."""
        return num_image_tokens(width, height, self.num_crops)

    def calc_num_image_tokens(self, images: Sequence[Image.Image]) -> list[int]:
        """How many `<|image|>` tokens each image becomes."""
        return [self.calc_num_image_tokens_from_image_size(*im.size) for im in images]

    def __call__(
        self,
        text: str | list[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str | None = None,
        num_crops: int | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """input_ids (each `<|image_N|>` replaced by its image tokens), pixel_values and image_sizes."""
        num_crops = num_crops or self.num_crops
        data: dict[str, Any] = {}
        sizes: list[tuple[int, int]] = []
        if images is not None:
            images = [images] if isinstance(images, Image.Image) else list(images)
            crops = [image_to_crops(im, num_crops) for im in images]
            data["pixel_values"] = torch.stack([c for c, _ in crops])
            sizes = [s for _, s in crops]
            data["image_sizes"] = torch.tensor(sizes, dtype=torch.long)
        if text is not None:
            texts = [text] if isinstance(text, str) else list(text)
            tokens_per_image = [
                (h // CROP * w // CROP + 1) * 144 + 1 + (h // CROP + 1) * 12 for h, w in sizes
            ]
            ids = [self._expand(t, tokens_per_image) for t in texts]
            if len({len(i) for i in ids}) > 1 and return_tensors is not None:
                raise ValueError("texts of different lengths cannot be returned as one tensor")
            data["input_ids"] = ids
            data["attention_mask"] = [[1] * len(i) for i in ids]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _expand(self, text: str, tokens_per_image: list[int]) -> list[int]:
        chunks = IMAGE_TAG.split(text)  # text, tag number, text, tag number, ..., text
        ids: list[int] = []
        for i, chunk in enumerate(chunks):
            if i % 2:
                n = int(chunk) - 1
                if not 0 <= n < len(tokens_per_image):
                    raise ValueError(f"<|image_{chunk}|> in the prompt, but {len(tokens_per_image)} image(s)")
                ids += [IMAGE_TOKEN_ID] * tokens_per_image[n]
            elif chunk:
                ids += self.tokenizer(chunk, add_special_tokens=False).input_ids
        return ids

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "image_sizes"]
