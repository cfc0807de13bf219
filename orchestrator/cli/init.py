"""`mmdemo init MODEL [-o FILE] [--trust-remote-code] [--gpu ...]`: write a model's derived profile as YAML.

The file carries a comment on every derived value saying where it came from; it validates, passes
`validate --against-vllm`, and runs as the derivation would. Its options are rows of cli/options.py;
cli.main hands it the console (like doctor: nothing below the CLI imports the terminal).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING

from orchestrator.core.atomic import write_atomic
from orchestrator.core.errors import UsageError
from orchestrator.gpus.detect import Gpu

if TYPE_CHECKING:
    from rich.console import Console

_CLASS_COUNT = re.compile(r"^(?P<cls>[A-Za-z0-9-]+?)(?:x(?P<n>\d+))?$")


def gpus_for(spec: str) -> tuple[list[Gpu], bool | None]:
    """(the GPUs to size for, whether a cpu variant is wanted: None lets the derivation decide)."""
    from orchestrator.gpus.detect import CPU, GPU_CLASSES, canonical_class, detect
    from orchestrator.gpus.sizing import gpus_of_class

    if spec == "auto":
        return list(detect()), None
    if spec == CPU:
        return [], True
    gpus: list[Gpu] = []
    for item in spec.split(","):
        match = _CLASS_COUNT.match(item.strip())
        gpu_class = canonical_class(match["cls"]) if match is not None else None
        if match is None or gpu_class not in GPU_CLASSES:
            raise UsageError(f"--gpu {item!r}: not a GPU class", hint=f"known: {', '.join(GPU_CLASSES)}, cpu")
        gpus += gpus_of_class(gpu_class, int(match["n"] or 1))
    return gpus, None


def cmd_init(args: argparse.Namespace, err: Console) -> int:
    """Derive the model's profile and write it (YAML to stdout without -o; notes to `err`); 0 on success."""
    from orchestrator.model.autoprofile import DeriveRequest, derive_for
    from orchestrator.model.profilegen import to_yaml
    from orchestrator.model.recipe import is_recipe_ref
    from orchestrator.model.ref import ProfileRef, RecipeRef, matching_profile, parse_ref

    if getattr(args, "recipe", None) or (args.model and is_recipe_ref(args.model)):  # a vLLM recipe's profile
        from orchestrator.cli.recipes import init_recipe

        return init_recipe(args, err, *gpus_for(args.gpu))
    if args.model is None:
        raise UsageError("init: name a model (a hub id or a model directory), or a recipe with --recipe FILE")
    ref = parse_ref(args.model)
    if isinstance(ref, (ProfileRef, RecipeRef)):
        raise UsageError(
            f"{args.model}: a profile, not a model: init derives a profile from a hub id or a model directory"
        )
    if args.output and args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists", hint="pass --force to overwrite it")
    if (match := matching_profile(ref, args.profiles_dir)) is not None:
        err.print(f"note: the {'shipped' if match.shipped else 'user'} profile {match.name!r} ({match.path}) "
                  "covers this model; deriving one all the same", markup=False, highlight=False)  # fmt: skip
    gpus, cpu = gpus_for(args.gpu)
    request = DeriveRequest(trust_remote_code=args.trust_remote_code, vllm_bin=args.vllm_bin, cpu=cpu)
    derivation = derive_for(ref, gpus, request)
    text = to_yaml(derivation)
    for note in derivation.notes:
        err.print(f"note: {note}", markup=False, highlight=False)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_atomic(args.output, text)
    err.print(f"wrote {args.output}: {derivation.line}", markup=False, highlight=False)
    return 0
