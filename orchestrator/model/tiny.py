"""Locally built tiny models (`model: mmdemo:NAME` in a profile): where they live and how to build them.

The builders need torch and transformers, which live in the vLLM environment, not mmdemo's; so a
builder is a standalone script run with the Python that sits next to the `vllm` command.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.core.paths import models_dir
from orchestrator.vllm.backend import locate_vllm

log = logging.getLogger(__name__)

BUILDERS = {
    "tiny-omni": "omni.py",
    "tiny-llava": "llava.py",
    "tiny-phi3v": "phi3v.py",
    "tiny-ultravox": "ultravox.py",
    "tiny-qwen2vl": "qwen2vl.py",
    "tiny-text": "text.py",  # text only: what a derived profile of a text model runs
}
MARKER = "mmdemo-model.json"


def model_dir(name: str) -> Path:
    """Where the tiny model NAME is (or will be) built."""
    return models_dir() / name


def is_built(name: str) -> bool:
    """True once a build finished (the builder writes its marker last)."""
    return (model_dir(name) / MARKER).is_file()


def builder_python(vllm_bin: str | None) -> Path:
    """The Python of the environment that holds the `vllm` command."""
    found = locate_vllm(vllm_bin)[0]
    python = Path(found).parent / "python"
    if not python.exists():
        raise PreflightError(f"no python next to {found}: cannot build tiny models with that vLLM")
    return python


def build(name: str, vllm_bin: str | None, *, force: bool = False, seed: int = 0) -> Path:
    """Build the tiny model NAME unless it is already there; returns its directory."""
    if name not in BUILDERS:
        raise UsageError(f"no tiny-model builder named {name!r}", hint=f"known: {', '.join(BUILDERS)}")
    out = model_dir(name)
    if is_built(name) and not force:
        log.info("tiny model %s already built at %s", name, out)
        return out
    script = Path(__file__).resolve().parents[1] / "tinymodels" / BUILDERS[name]
    python = builder_python(vllm_bin)
    if force and out.exists():
        shutil.rmtree(out)
    log.info("building tiny model %s into %s", name, out)
    done = subprocess.run(
        [str(python), str(script), "--out", str(out), "--seed", str(seed)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not is_built(name):
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise PreflightError(f"building tiny model {name} failed (exit {done.returncode}): {last[0]}")
    return out
