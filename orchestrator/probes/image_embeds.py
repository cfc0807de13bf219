"""An image's embeddings as the model's language model takes them: its vision tower and projector.

Runs under the Python of the vLLM environment (torch, transformers, PIL), imports nothing of mmdemo:

    python image_embeds.py --model DIR_OR_HUB_ID --image FILE

and writes one JSON object to stdout:

    {"embeds": BASE64, "shape": [TOKENS, HIDDEN], "hidden_size": HIDDEN}

BASE64 is what vLLM's docs send as an `image_embeds` part (docs/features/multimodal_inputs.md): the
base64 of `torch.save(tensor)`, vLLM's own `tensor2base64` (vllm/utils/serial_utils.py, 0.32.0). The
tensor is transformers' `get_image_features` on the image processor's pixels: for Llava, the projector's
output over the selected vision features, one row per image token. Errors go to stderr, exit 1.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    args = parser.parse_args()

    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    config = AutoConfig.from_pretrained(args.model)
    text = getattr(config, "text_config", None) or config
    hidden = getattr(text, "hidden_size", None)
    # the checkpoint's own dtype: the whole model is loaded here, on the CPU (a tiny model: float32)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype="auto").eval()
    processor = AutoProcessor.from_pretrained(args.model)
    image = Image.open(args.image).convert("RGB")
    pixels = processor.image_processor(images=[image], return_tensors="pt")
    with torch.no_grad():
        features = model.get_image_features(**pixels)
    # transformers 5: an output whose pooler_output is the projected features (a list, one per image);
    # older releases return the tensor or the list itself
    features = getattr(features, "pooler_output", features)
    tensor = features[0] if isinstance(features, (list, tuple)) else features
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    buffer = io.BytesIO()
    torch.save(tensor.contiguous().float(), buffer)
    answer = {
        "embeds": base64.b64encode(buffer.getvalue()).decode("ascii"),
        "shape": list(tensor.shape),
        "hidden_size": hidden,
    }
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
