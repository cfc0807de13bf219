"""The recipe commands: `mmdemo recipes DIR` (which recipes this machine can run) and
`mmdemo report --recipe-patch RUN_DIR|MATRIX_DIR` (the recipe's `meta.hardware` as the runs found it).

A class is marked `verified` only by a run that passed with every expected word understood, on real
weights: never `--dummy-weights`, a tiny model with random weights, or a cpu run (it names no GPU class).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli.terminal import esc
from orchestrator.core.errors import MMDemoError, UsageError
from orchestrator.core.tasks import version_tuple
from orchestrator.gpus.classes import CPU, Gpu
from orchestrator.model import recipe as recipes
from orchestrator.model.recipepatch import hardware_patch
from orchestrator.model.tiny import MARKER as TINY_MARKER
from orchestrator.profile.schema import LOCAL_MODEL_PREFIX
from orchestrator.record.report import RunRecord

if TYPE_CHECKING:
    from rich.console import Console


def recipe_files(paths: Sequence[str]) -> list[str]:
    """The paths with each directory of vLLM recipes replaced by its recipe files (validate)."""
    out: list[str] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir() and not (path / "config.json").is_file() and (found := recipes.find_recipes(path)):
            out += [str(p) for p in found]
        else:
            out.append(text)
    return out


def init_recipe(args: argparse.Namespace, err: Console, gpus: Sequence[Gpu], cpu: bool | None) -> int:
    """`mmdemo init --recipe RECIPE`: the recipe's profile for these GPUs, the rest derived, as commented YAML."""
    from orchestrator.core.atomic import write_atomic
    from orchestrator.model.autoprofile import DeriveRequest, resolve_recipe
    from orchestrator.model.profilegen import to_yaml
    from orchestrator.model.ref import RecipeRef

    if args.output and args.output.exists() and not args.force:
        raise UsageError(f"{args.output} exists", hint="pass --force to overwrite it")
    request = DeriveRequest(
        trust_remote_code=args.trust_remote_code,
        vllm_bin=args.vllm_bin,
        cpu=cpu,
        variant=args.recipe_variant,
        features=args.recipe_features,
        without=args.recipe_without,
    )
    found = resolve_recipe(RecipeRef(args.recipe or args.model), gpus, request)
    assert found.derivation is not None
    text = to_yaml(found.derivation)
    for note in found.derivation.notes:
        err.print(f"note: {esc(note)}", markup=False, highlight=False)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    write_atomic(args.output, text)
    err.print(f"wrote {esc(args.output)}: {esc(found.line)}", markup=False, highlight=False)
    return 0


# -- plan: each value and where it came from --------------------------------------------------------


def provenance_lines(profile_data: Mapping[str, Any], values: Mapping[str, str]) -> list[str]:
    """`serve.max_model_len = 4096  # derived: ...` for every value a recipe profile holds, in order."""
    lines = []
    order = ("model", "serve.", "env.", "requires.", "variants.", "demos")
    rank = {key: next((i for i, p in enumerate(order) if key.startswith(p)), len(order)) for key in values}
    for key, source in sorted(values.items(), key=lambda kv: rank[kv[0]]):
        value: Any = profile_data
        for part in key.split("."):
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif (
                isinstance(value, Sequence)
                and not isinstance(value, str)
                and part.isdigit()
                and int(part) < len(value)
            ):
                value = value[int(part)]
            else:
                value = None
                break
        if key == "demos" and isinstance(value, list):
            shown = " = " + ", ".join(str(d.get("chat_type")) for d in value if isinstance(d, Mapping))
        elif value is None or (
            isinstance(value, Mapping) and key.startswith(("variants.", "demos")) and key.count(".") <= 1
        ):
            shown = ""  # a whole variant or the demo list: its source alone
        else:
            shown = f" = {json.dumps(value, default=str)}"
        lines.append(f"{key}{shown}  # {source}")
    return lines


# -- mmdemo recipes DIR ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Here:
    """What this machine offers a recipe: GPU memory (or the host's), platform keys, vLLM's version."""

    memory_gb: float | None
    where: str
    platforms: tuple[str, ...]
    hardware: str | None  # meta.hardware's name for the GPUs found
    vllm: str | None

    @classmethod
    def detect(cls, vllm_bin: str | None) -> Here:
        from orchestrator.gpus.detect import detect
        from orchestrator.launch.checks import vllm_version
        from orchestrator.model.autoprofile import _host_memory

        gpus = detect()
        memory, where = recipes.memory_of(gpus, _host_memory())
        gpu_class = next((g.gpu_class for g in gpus if g.gpu_class), None)
        try:
            version: str | None = vllm_version(vllm_bin).version
        except MMDemoError:
            version = None
        platforms = recipes.platforms(gpu_class) if gpu_class else (CPU,) if not gpus else ()
        return cls(memory, where, platforms, recipes.hardware_key(gpu_class) if gpu_class else None, version)


def can_run(recipe: recipes.Recipe, here: Here) -> str:
    """`yes: variant V` or `no: why` (memory, platform, version, a serving key mmdemo does not apply)."""
    why: list[str] = []
    if recipe.refusals:
        why.append(recipe.refusals[0].split(": ", 1)[1])
    need = recipe.min_vllm_version
    if here.vllm is None:
        why.append("no vLLM found")
    elif need == "nightly" and "dev" not in here.vllm:
        why.append(f"needs a nightly vLLM, this is {here.vllm}")
    elif need not in (None, "nightly") and version_tuple(here.vllm) < version_tuple(need):
        why.append(f"needs vLLM >= {need}, this is {here.vllm}")
    if here.hardware and recipe.verified.get(here.hardware) == "unsupported":
        why.append(f"meta.hardware says {here.hardware}: unsupported")
    if not here.hardware and not ({"cpu", "xeon6"} & {*recipe.verified, *recipe.hardware}):
        why.append("no GPU here, and the recipe names no CPU platform")
    try:
        choice = recipes.choose(recipe, memory_gb=here.memory_gb, where=here.where)
    except MMDemoError as exc:
        why.append(str(exc).split(": ", 1)[-1])
        choice = None
    if why:
        return "no: " + "; ".join(why)
    assert choice is not None
    return f"yes: {choice.reason}"


def cmd_recipes(args: argparse.Namespace, out: Console) -> int:
    """List the recipes under a directory, their tasks and whether this machine can run each; 2 on a bad one."""
    from rich.table import Table

    directory = Path(args.directory).expanduser()
    if not directory.is_dir():
        raise UsageError(f"{directory}: not a directory of recipes")
    found = recipes.find_recipes(directory)
    if not found:
        raise UsageError(f"{directory}: no recipe found (models/<org>/<model>.yaml, with a `model:` mapping)")
    here = Here.detect(args.vllm_bin)
    table = Table(
        "recipe", "tasks", "variants", "verified on", f"here ({esc(here.where)}, vLLM {here.vllm or '-'})"
    )
    bad = 0
    for path in found:
        try:
            recipe = recipes.load(path)
        except MMDemoError as exc:
            table.add_row(esc(path.relative_to(directory)), "", "", "", f"[red]{esc(exc)}[/]")
            bad += 1
            continue
        variants = ", ".join(
            f"{v.name} {v.vram_minimum_gb:g} GB" if v.vram_minimum_gb is not None else v.name
            for v in recipe.variants.values()
        )
        verified = ", ".join(k for k, v in recipe.verified.items() if v == "verified")
        verdict = can_run(recipe, here)
        colour = "green" if verdict.startswith("yes") else "yellow"
        table.add_row(
            esc(recipe.slug),
            esc(", ".join(recipe.tasks)),
            esc(variants),
            esc(verified),
            f"[{colour}]{esc(verdict)}[/]",
        )
    out.print(table)
    return 2 if bad else 0


# -- mmdemo report --recipe-patch RUN_DIR|MATRIX_DIR ---------------------------------------------------


@dataclass(frozen=True)
class Found:
    """One run of a recipe and whether it verifies its GPU class (None) or why not."""

    record: RunRecord
    report: Path
    why_not: str | None


def why_not(record: RunRecord) -> str | None:
    """None when the run verifies its GPU class; else the reason it does not."""
    if record.status != "passed":
        return f"the run {record.status}" + (f": {record.error.message}" if record.error else "")
    if "dummy-weights" in record.flags:
        return "--dummy-weights: random weights"
    local = record.model_path and Path(record.model_path, TINY_MARKER).is_file()
    if local or record.model.startswith(LOCAL_MODEL_PREFIX):
        return "a tiny model with random weights"
    if record.variant == CPU:
        return "a cpu run names no GPU class"
    if not any(d.verdict == "understood" for d in record.demos):
        return "no answer was checked against expected words"
    if any(d.expected and d.verdict != "understood" for d in record.demos):
        return "an answer lacked its expected words"
    if record.vllm is None:
        return "the vLLM that served is unknown"
    return None


def runs_in(path: Path) -> list[Found]:
    """The runs of a run directory (report.json) or a matrix directory (matrix.json and its cells)."""
    if (path / "matrix.json").is_file():
        from orchestrator.matrix.record import load

        matrix = load(path / "matrix.json")
        reports = [
            path / c.directory / "report.json" for c in matrix.cells if c.directory and c.status != "skipped"
        ]
    elif (path / "report.json").is_file() or path.name == "report.json":
        reports = [path if path.name == "report.json" else path / "report.json"]
    else:
        raise UsageError(
            f"{path}: neither a run directory (report.json) nor a matrix directory (matrix.json)"
        )
    found = []
    for report in reports:
        try:
            record = RunRecord.model_validate_json(report.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{report}: not a readable mmdemo report ({str(exc).splitlines()[0]})") from None
        found.append(Found(record, report, why_not(record)))
    return found


def recipe_patch(path: Path, err: Console) -> int:
    """Print the patch of the recipe the runs ran: 0 when it marks a class verified, 1 when none is."""
    runs = runs_in(path)
    recipe_runs = [r for r in runs if r.record.recipe is not None]
    if not recipe_runs:
        raise UsageError(f"{path}: no run of a vLLM recipe here (run `mmdemo run RECIPE.yaml` first)")
    paths = {r.record.recipe.path for r in recipe_runs if r.record.recipe}
    if len(paths) > 1:
        raise UsageError(f"{path}: runs of {len(paths)} recipes; give one run or matrix of one recipe")
    origin = recipe_runs[0].record.recipe
    assert origin is not None
    recipe = recipes.load(Path(origin.path))
    if recipe.sha256 != origin.sha256:
        err.print(
            f"note: {esc(origin.path)} changed since the run; the patch is against the file as it is now",
            markup=False,
        )
    marks: dict[str, str] = {}
    failed: set[str] = set()
    for run in recipe_runs:
        gpu = run.record.variant
        key = recipes.hardware_key(gpu)
        if run.why_not is not None:
            failed.add(key)
            err.print(
                f"{esc(gpu)}: not verified: {esc(run.why_not)} ({esc(run.report)})",
                markup=False,
                highlight=False,
            )
            continue
        # the version is the server's own text, and the report's path is the user's: one line, no controls
        version = esc(run.record.vllm.version) if run.record.vllm else "?"
        marks[key] = f"mmdemo {esc(run.record.started_at[:10])}: vLLM {version}, {esc(run.report)}"
        err.print(
            f"{esc(gpu)}: verified ({key}; vLLM {version}; {esc(run.report)})", markup=False, highlight=False
        )
    marks = {k: c for k, c in marks.items() if k not in failed}  # one failing run of a class is enough
    patch = hardware_patch(recipe, marks)
    if not patch:
        err.print(f"nothing to mark verified in {esc(origin.path)}", markup=False)
        return 1
    sys.stdout.write(patch)
    return 0
