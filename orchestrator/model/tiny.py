"""Locally built tiny models (`model: mmdemo:NAME` in a profile): where they live and how to build them.

The builders need torch and transformers, which live in the vLLM environment, not mmdemo's; so a
builder is a standalone script run in vLLM's Python by vllm/runner.py (the interpreter the `vllm`
command itself names, in the environment it sets up: a wrapper script works too).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.core.paths import models_dir
from orchestrator.vllm import runner

log = logging.getLogger(__name__)

BUILDERS = {
    "tiny-omni": "omni.py",
    "tiny-llava": "llava.py",
    "tiny-phi3v": "phi3v.py",
    "tiny-ultravox": "ultravox.py",
    "tiny-qwen2vl": "qwen2vl.py",
    "tiny-text": "text.py",  # text only: what a derived profile of a text model runs
    "tiny-whisper": "whisper.py",  # transcription and translation, no chat
    "tiny-clip": "clip.py",  # embeddings, score and rerank with --runner pooling, no chat
}
MARKER = "mmdemo-model.json"
BUILD_TIMEOUT_S = 1800.0


def model_dir(name: str) -> Path:
    """Where the tiny model NAME is (or will be) built."""
    return models_dir() / name


def random_weights(directory: Path) -> bool:
    """Whether a model directory holds a tiny model mmdemo built with random weights: its marker says so
    (`"weights": "trained"` marks a model trained to read the known-answer media). Any other directory:
    False (mmdemo cannot tell, and grades the answers)."""
    import json

    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return not (isinstance(marker, dict) and marker.get("weights") == "trained")


def is_built(name: str) -> bool:
    """True once a build of the builder's current VERSION finished (the builder writes its marker last):
    a model an older builder made (tiny-omni's random weights before it was trained) is built again."""
    import json
    import re

    try:
        marker = json.loads((model_dir(name) / MARKER).read_text(encoding="utf-8"))
        script = (Path(__file__).resolve().parents[1] / "tinymodels" / BUILDERS[name]).read_text(
            encoding="utf-8"
        )
    except (OSError, ValueError, KeyError):
        return False
    found = re.search(r"^VERSION = (\d+)$", script, re.MULTILINE)
    return not found or (isinstance(marker, dict) and marker.get("version") == int(found.group(1)))


def build(name: str, vllm_bin: str | None, *, force: bool = False, seed: int = 0) -> Path:
    """Build the tiny model NAME unless it is already there; returns its directory."""
    if name not in BUILDERS:
        raise UsageError(f"no tiny-model builder named {name!r}", hint=f"known: {', '.join(BUILDERS)}")
    out = model_dir(name)
    if is_built(name) and not force:
        log.info("tiny model %s already built at %s", name, out)
        return out
    script = Path(__file__).resolve().parents[1] / "tinymodels" / BUILDERS[name]
    vllm = runner.host(vllm_bin)
    if out.exists():  # forced, or an older builder's model (its marker's version is not this builder's)
        shutil.rmtree(out)
    log.info("building tiny model %s into %s", name, out)
    job = runner.Script(script, f"building tiny model {name}", args=("--out", str(out), "--seed", str(seed)))
    with runner.Process(vllm, job) as process:
        done = process.finish(timeout_s=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        raise done.error()
    if not is_built(name):
        raise PreflightError(
            f"building tiny model {name} ended without its marker {out / MARKER}: {done.tail()}"
        )
    return out
