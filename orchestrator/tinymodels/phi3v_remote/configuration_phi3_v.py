"""Phi3VConfig for mmdemo's tiny Phi-3.5-vision: Phi-3's config plus the vision settings.

Shipped into the model directory and loaded through `auto_map` with `--trust-remote-code`, as the
hub's configuration_phi3_v.py is: `phi3_v` is in neither transformers' nor vLLM's config registry.
vLLM reads `img_processor` (layer_idx, image_dim_out, num_img_tokens, type_feature) and
`embd_layer` (use_hd_transform, with_learnable_separator, hd_transform_order).
"""

from __future__ import annotations

from transformers.models.phi3.configuration_phi3 import Phi3Config


class Phi3VConfig(Phi3Config):
    """Phi-3 text settings, plus the CLIP image encoder and HD-transform embedding settings."""

    model_type = "phi3_v"
    img_processor: dict | None = None
    embd_layer: dict | None = None
