"""Real seed models as the loopback hub serves them: config, tokenizer and processor files, weight sizes.

The files under tests/hub/<name>/ carry the public numbers of the hub repo (config.json,
preprocessor_config.json, processor_config.json, chat_template.json); the tokenizer is generated
with the repo's vocabulary size and special-token ids (a word-level stand-in: the probe counts
placeholders, it never needs the real merges). The weights are only listed, with the sizes of the
repo's safetensors shards (approximate public figures), so nothing can download them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tests.fake_hub import FakeRepo

HERE = Path(__file__).parent / "hub"

LLAVA_ID = "llava-hf/llava-1.5-7b-hf"
# The repo's three shards (~14.1 GB of float16 for 7.06 B parameters).
LLAVA_SHARDS = {
    "model-00001-of-00003.safetensors": 4_990_000_000,
    "model-00002-of-00003.safetensors": 4_960_000_000,
    "model-00003-of-00003.safetensors": 4_180_000_000,
}
LLAVA_PARAMETERS = {"F16": 7_063_427_072}
LLAVA_SPECIAL = {0: "<unk>", 1: "<s>", 2: "</s>", 32000: "<image>", 32001: "<pad>"}


def word_level_tokenizer(vocab_size: int, special: dict[int, str]) -> bytes:
    """A tokenizer.json with `vocab_size` ids, the special tokens at their ids, split on whitespace."""
    vocab = {special.get(i, f"w{i}"): i for i in range(vocab_size)}
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False}
        | {"normalized": False, "special": True}
        for i, t in sorted(special.items())
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
    }
    return json.dumps(tokenizer).encode()


def llava_repo(
    repo_id: str = LLAVA_ID, *, gated: bool = False, tokens: frozenset[str] = frozenset()
) -> FakeRepo:
    """llava-hf/llava-1.5-7b-hf (or the same files under another id), weights listed but not served."""
    files = {p.name: p.read_bytes() for p in sorted((HERE / "llava-1.5-7b-hf").iterdir())}
    files["tokenizer.json"] = word_level_tokenizer(32064, LLAVA_SPECIAL)
    index = {"metadata": {"total_size": sum(LLAVA_SHARDS.values())}, "weight_map": {}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    return FakeRepo(
        repo_id, files, gated=gated, tokens=tokens, sizes=dict(LLAVA_SHARDS), parameters=LLAVA_PARAMETERS
    )


def tiny_safetensors(values: int = 16) -> bytes:
    """A real (small) safetensors file: one float16 tensor of zeros."""
    header = json.dumps({"w": {"dtype": "F16", "shape": [values], "data_offsets": [0, 2 * values]}}).encode()
    return len(header).to_bytes(8, "little") + header + bytes(2 * values)


def llava_snapshot_files() -> dict[str, bytes]:
    """A complete llava-style snapshot: config, tokenizer, processor and chat template, small weights."""
    files = {p.name: p.read_bytes() for p in sorted((HERE / "llava-1.5-7b-hf").iterdir())}
    files["tokenizer.json"] = word_level_tokenizer(32064, LLAVA_SPECIAL)
    files["model.safetensors"] = tiny_safetensors()
    return files


def cache_snapshot(hub_cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> Path:
    """Write `files` into an HF hub cache as huggingface_hub lays a download out (blobs by hash, the
    snapshot's files linked to them, refs/<revision> naming the commit) and return the snapshot."""
    storage = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return snapshot
