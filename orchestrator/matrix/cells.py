"""Profile x GPU class -> cells; a class that cannot run a profile gives a skipped cell with the reason."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from orchestrator.core.errors import MMDemoError, UsageError
from orchestrator.gpus.detect import CPU, GPU_CLASSES, Gpu, canonical_class, platform_of
from orchestrator.profile import fit as gpufit
from orchestrator.profile.schema import Profile, iter_profile_files, load_profile, parse_profile_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capacity:
    """What an engine has of one GPU class: how many GPUs (on the largest node) and their memory."""

    count: int
    memory_mib: int


@dataclass(frozen=True)
class Cell:
    """One profile on one GPU class: the variant it runs, its GPUs, or why it does not run."""

    profile: str
    profile_path: str
    gpu_class: str
    variant: str | None = None
    gpu_count: int = 0
    skip: str | None = None  # the class cannot run it: recorded as skipped, exit code unaffected
    refuse: str | None = None  # the engine lacks the class: the cell fails at once (exit 3)
    image: str | None = None  # the container image vLLM runs in (`--image`, one cell per image)

    @property
    def key(self) -> str:
        return cell_key(self.profile, self.gpu_class, self.image)

    @property
    def dirname(self) -> str:
        base = f"{self.profile}-{self.gpu_class}"
        return f"{base}-{_IMAGE_SLUG.sub('-', self.image).strip('-')}" if self.image else base

    @property
    def runnable(self) -> bool:
        return self.skip is None and self.refuse is None


_IMAGE_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def cell_key(profile: str, gpu_class: str, image: str | None = None) -> str:
    """`profile@GPU`, and `@image` when the matrix runs in more than the host's vLLM."""
    return f"{profile}@{gpu_class}" + (f"@{image}" if image else "")


def with_images(cells: Sequence[Cell], images: Sequence[str]) -> list[Cell]:
    """Each cell once per image, the images side by side (no images: the cells as they are)."""
    if not images:
        return list(cells)
    return [replace(cell, image=image) for cell in cells for image in images]


def parse_classes(text: str) -> tuple[str, ...]:
    """'h100,L4' -> ('H100', 'L4'): any case, GPU_CLASSES' spelling; an unknown class is a usage error."""
    classes = []
    for name in (c.strip() for c in text.split(",") if c.strip()):
        known = canonical_class(name)
        if known is None:
            raise UsageError(
                f"--gpu: unknown GPU class {name!r}", hint=f"known: {', '.join((*GPU_CLASSES, CPU))}"
            )
        classes.append(known)
    if not classes:
        raise UsageError("--gpu: no GPU class given")
    return tuple(dict.fromkeys(classes))


def inventory(gpus: Sequence[Gpu]) -> dict[str, Capacity]:
    """Detected GPUs grouped by class; a card no class names counts as the class its memory sizes it as."""
    out: dict[str, Capacity] = {}
    for g in gpus:
        gpu_class = class_of(g)
        if gpu_class is None:
            log.warning("GPU %d (%s) is of no known class and too small for any: left out", g.index, g.name)
            continue
        if g.gpu_class is None:
            log.warning(
                "GPU %d (%s, %.0f GiB) has no class of its own: the matrix counts it as %s (%d GiB), "
                "the largest class of its platform its memory holds",
                g.index, g.name, g.memory_total_gib, gpu_class, GPU_CLASSES[gpu_class],
            )  # fmt: skip
        have = out.get(gpu_class)
        out[gpu_class] = Capacity(
            (have.count if have else 0) + 1, min(g.memory_total_mib, have.memory_mib if have else 1 << 40)
        )
    return out


def class_of(g: Gpu) -> str | None:
    """The class a GPU counts as in the matrix: its own, else the one its memory sizes it as."""
    return gpufit.sized_class(g)


def plan_cell(profile: Profile, gpu_class: str, capacity: Mapping[str, Capacity], where: str) -> Cell:
    """The cell for one profile on one class, with the reason when it cannot run."""
    base = Cell(profile=profile.name, profile_path=profile.path or profile.name, gpu_class=gpu_class)
    if gpu_class == CPU:
        if CPU not in profile.variants:
            return replace(base, skip="no cpu variant")
        return replace(base, variant=CPU)
    have = capacity.get(gpu_class)
    memory_mib = have.memory_mib if have else GPU_CLASSES[gpu_class] * 1024
    platform = platform_of(gpu_class) or "cuda"
    try:
        variant = gpufit.choose(profile, "auto", [Gpu(0, gpu_class, memory_mib, platform=platform)]).variant
    except MMDemoError as exc:
        return replace(base, skip=str(exc))
    if variant == CPU:
        return replace(base, skip="no GPU variant")
    resolved = profile.resolve(variant)
    if resolved.unsupported:
        return replace(base, variant=variant, skip=f"unsupported: {resolved.unsupported}")
    count = max(resolved.requires.gpu_count or 1, resolved.serve.tensor_parallel_size or 1)
    need = resolved.requires.gpu_memory_gib
    if need is not None and need * 1024 > memory_mib * 1.02:
        return replace(
            base,
            variant=variant,
            gpu_count=count,
            skip=f"needs {need:g} GiB per GPU; {gpu_class} has {memory_mib / 1024:.0f}",
        )
    if have is None:
        return replace(base, variant=variant, gpu_count=count, refuse=f"{where} has no {gpu_class} GPU")
    if have.count < count:
        return replace(
            base,
            variant=variant,
            gpu_count=count,
            skip=f"needs {count} {gpu_class} GPUs; {where} has {have.count}",
        )
    return replace(base, variant=variant, gpu_count=count)


def plan_cells(
    names: Sequence[str],
    classes: Sequence[str],
    capacity: Mapping[str, Capacity],
    *,
    profiles_dir: str | None = None,
    where: str = "this machine",
    load: Callable[[str], Profile] | None = None,
) -> list[Cell]:
    """Cells for the named profiles (all runnable ones when none are named) on the classes.

    No classes: the classes the engine has, else cpu.
    """
    classes = tuple(canonical_class(c) or c for c in classes) or tuple(capacity) or (CPU,)
    if names:
        # A model may stand where a profile does: `load` derives its profile (run_matrix's resolver).
        profiles = [load(name) if load else load_profile(name, profiles_dir) for name in names]
        return [plan_cell(p, c, capacity, where) for p in profiles for c in classes]
    cells = []
    for path in iter_profile_files(profiles_dir):
        try:
            profile = parse_profile_file(path)
        except MMDemoError as exc:
            log.warning("matrix leaves out %s: %s", path, exc)
            continue
        row = [plan_cell(profile, c, capacity, where) for c in classes]
        if any(cell.runnable for cell in row):  # as `doctor` decides: only profiles that can run here
            cells += row
    if not cells:
        raise UsageError(
            f"no profile can run on {', '.join(classes)} here",
            hint="name profiles explicitly to see why each is skipped",
        )
    return cells
