"""Answers of vLLM's probes kept as JSON files: one read, one atomic write, a model directory's digest.

The model probe (vllm/probe.py) and the budget (budget/count.py) key their caches on a local model's small
files: `model_digest` hashes those (config, tokenizer, processor, chat template, remote code), never
the weights.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from orchestrator.core.atomic import write_atomic

M = TypeVar("M", bound=BaseModel)

# A local model's files that decide what vLLM says about it (weights do not).
MODEL_FILES = (".json", ".jinja", ".py", ".txt", ".model")


def model_digest(directory: Path | None) -> str | None:
    """A hash of a local model's config, tokenizer, processor and code files (None: not a directory)."""
    if directory is None or not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.suffix in MODEL_FILES:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def read(path: Path, model: type[M]) -> M | None:
    """The cached answer, or None when it is absent or unreadable (a miss)."""
    try:
        return model.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write(path: Path, answer: BaseModel) -> None:
    """Write the answer atomically: a reader sees the old file or the new one, never half of one."""
    write_atomic(path, answer.model_dump_json(indent=1))
