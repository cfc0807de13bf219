"""What every tiny-model builder shares: a word list, a byte-level BPE tokenizer, the atomic build, main().

Standalone like the builders: imports only torch, transformers, tokenizers, safetensors and the
stdlib (nothing from mmdemo). A builder imports it as a sibling module, which works both when the
builder runs as a script (`python tinymodels/X.py`, the script's directory is on sys.path) and when
it is imported as part of the package:

    try:
        from . import common
    except ImportError:  # run as a script
        import common

API (kept stable; other builders depend on it):
    sentences(rng, n) -> the example client's prompts, then n random sentences from WORDS
    build_tokenizer(seed, special, eos=..., pad=..., corpus=(), ...) -> PreTrainedTokenizerFast
    build_into_place(out, fill, builder=..., version=..., seed=...) -> Path
    main(build, doc=..., argv=None) -> exit code (build(out, seed) -> Path)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

MARKER = "mmdemo-model.json"

WORDS = (  # noqa: SIM905 - a word list reads best as one string
    "the a this that what where which who is are was were in on of to and with "
    "image picture photo video clip audio sound voice music speech animal duck "
    "lion cat dog bird boardwalk nature park river sky tree grass water city "
    "capital France Paris country these two same different color red green "
    "blue yellow small large there here show tell describe listen look see "
    "hear say yes no one three many some assistant user question answer"
).split()
PROMPTS = [
    "What's the capital of France?",
    "What's in this image?",
    "What are the animals in these images?",
    "What's in this video?",
    "What's in this audio?",
    "Are these two audios the same?",
]


def sentences(rng: random.Random, n: int = 400) -> Iterator[str]:
    """The example client's prompts, then n random sentences (the tokenizer's training text)."""
    yield from PROMPTS
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        yield " ".join(words).capitalize() + rng.choice([".", "?", "!"])


def build_tokenizer(
    seed: int,
    special: Sequence[str],
    *,
    eos: str,
    pad: str,
    bos: str | None = None,
    unk: str | None = None,
    extra_special_tokens: dict[str, str] | None = None,
    vocab_size: int = 600,
    model_max_length: int = 32768,
    corpus: Sequence[str] = (),
) -> Any:
    """A byte-level BPE trained on `sentences` (then `corpus`: a trained model's prompts and answers, so
    their words become whole tokens); `special` get ids 0, 1, 2, ... in that order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special),
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([*sentences(random.Random(seed)), *corpus], trainer)
    for i, t in enumerate(special):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"special token {t!r} got id {tok.token_to_id(t)}, expected {i}")
    named: dict[str, Any] = {"eos_token": eos, "pad_token": pad}
    if bos is not None:
        named["bos_token"] = bos
    if unk is not None:
        named["unk_token"] = unk
    if extra_special_tokens:
        named["extra_special_tokens"] = dict(extra_special_tokens)
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, **named)


def build_into_place(
    out: Path,
    fill: Callable[[Path], None],
    *,
    builder: str,
    version: int,
    seed: int,
    marker_extra: Callable[[], Mapping[str, Any]] | None = None,
) -> Path:
    """Run `fill(tmp)` in a sibling temp dir, write the marker last, and rename it to `out`.

    `marker_extra()`, called after `fill`, adds to the marker (a trained model: `"weights": "trained"`)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        marker: dict[str, Any] = {"builder": builder, "version": version, "seed": seed}
        if marker_extra is not None:
            marker.update(marker_extra())
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{out.name}.old-", dir=out.parent))
            os.rename(out, old / "model")
        os.rename(tmp, out)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_PART_TYPES = {
    "image": "('image', 'image_url')",
    "video": "('video', 'video_url')",
    "audio": "('audio', 'audio_url', 'input_audio')",
}


def chatml_template(placeholders: Mapping[str, str]) -> str:
    """A Qwen-style ChatML chat template with one placeholder per media part, in order.

    `placeholders` maps "image"/"video"/"audio" to what stands for one such part. Looping over the
    content parts makes vLLM pick its "openai" content format and pass media as {"type": ...}.
    """
    branches = [f"part['type'] in {_PART_TYPES[kind]} %}}{text}" for kind, text in placeholders.items()]
    branches.append("part['type'] == 'text' %}{{ part['text'] }}")
    parts = "{% if " + "{% elif ".join(branches)
    return (
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}" + parts + "{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_standard(
    out: Path,
    seed: int,
    *,
    tokenizer: Callable[[int], Any],
    config: Callable[[int], Any],
    processor: Callable[[Any], Any],
    weights: Callable[[Any, Path, int], None],
    builder: str,
    version: int,
    marker_extra: Callable[[], Mapping[str, Any]] | None = None,
) -> Path:
    """The usual build: tokenizer, config (saved), processor (saved), seeded weights; then in place."""

    def fill(tmp: Path) -> None:
        tok = tokenizer(seed)
        cfg = config(len(tok))
        cfg.save_pretrained(tmp)
        processor(tok).save_pretrained(tmp)  # tokenizer, processor, chat template
        weights(cfg, tmp / "model.safetensors", seed)

    return build_into_place(out, fill, builder=builder, version=version, seed=seed, marker_extra=marker_extra)


def main(build: Callable[[Path, int], Path], *, doc: str | None, argv: Sequence[str] | None = None) -> int:
    """The builders' command line: `--out DIR [--seed N]`, offline, then `build(out, seed)`."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="model directory to create/replace")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    print(f"built {build(args.out, args.seed)}")
    return 0
