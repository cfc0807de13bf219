"""A stand-in for orchestrator/probes/image_embeds.py without torch: the same arguments and answer.

Its "embeddings" are a zip in torch.save's layout whose tensor storage (archive/data/0) is the image's
own bytes: the fake vLLM (tests/fake_vllm.py, `embedded_image`) reads them back, as a perfect model
would understand the real ones. FAKE_EMBEDS_SHAPE=TOKENS,HIDDEN sets the shape it reports (16,64).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import pickle
import sys
import zipfile


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    args = parser.parse_args()
    with open(args.image, "rb") as f:
        image = f.read()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"fake": "tensor"}))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/data/0", image)
        archive.writestr("archive/version", "3\n")
    shape = [int(n) for n in os.environ.get("FAKE_EMBEDS_SHAPE", "16,64").split(",")]
    answer = {"embeds": base64.b64encode(buffer.getvalue()).decode(), "shape": shape, "hidden_size": 64}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
