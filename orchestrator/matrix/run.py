"""A matrix run, in order: plan the cells -> run them on the engine -> write the matrix record."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.core.errors import PreflightError
from orchestrator.core.options import Options
from orchestrator.gpus.detect import CPU, GPU_CLASSES, PLATFORM_NAMES, canonical_class, platform_of
from orchestrator.gpus.sizing import gpus_of_class
from orchestrator.matrix import record as record_mod
from orchestrator.matrix.cell import not_run
from orchestrator.matrix.cells import Capacity, Cell, plan_cells, with_images
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.record import CellRecord, MatrixRecord
from orchestrator.model import autoprofile
from orchestrator.profile.schema import Profile
from orchestrator.record.rundir import make_run_dir, mmdemo_version, now_iso
from orchestrator.session.run import start_up_over

OnCell = Callable[[CellRecord], None]


class Engine(Protocol):
    """Where cells run: this box (local), a Ray cluster, or SkyPilot jobs."""

    name: str
    where: str
    one_platform: bool  # one vLLM build runs every cell: NVIDIA and AMD classes cannot mix

    def capacity(self) -> dict[str, Capacity]: ...
    def run(
        self, cells: Sequence[Cell], opts: Options, matrix_dir: Path, stop: Interrupt, on_done: OnCell
    ) -> list[CellRecord]: ...


@dataclass
class MatrixOutcome:
    """What a matrix run produced: its record, where it was written, and the exit code."""

    record: MatrixRecord
    matrix_dir: Path

    @property
    def exit_code(self) -> int:
        return self.record.exit_code


def profile_resolver(
    opts: Options, classes: Sequence[str], capacity: Mapping[str, Capacity]
) -> Callable[[str], Profile]:
    """A profile for each name: the profile named, the model's own, or one derived for these classes."""
    wanted = [c for c in (canonical_class(c) or c for c in classes or capacity) if c != CPU]
    request = autoprofile.DeriveRequest(
        trust_remote_code=opts.trust_remote_code,
        vllm_bin=opts.vllm_bin,
        cpu=True if CPU in classes or not wanted else None,
        variant=opts.recipe_variant,  # a vLLM recipe's choices: one variant on every class
        features=opts.recipe_features,
        without=opts.recipe_without,
        offline=opts.offline,
    )

    def resolve(name: str) -> Profile:
        # Stand-ins of the classes (the engine's count of each): what a model's profile is derived for.
        counts = {c: capacity[c].count if c in capacity else 1 for c in wanted if c in GPU_CLASSES}
        gpus = [g for c, n in counts.items() for g in gpus_of_class(c, n)]
        return autoprofile.resolve(name, gpus, request, opts.profiles_dir).profile

    return resolve


def run_matrix(
    names: Sequence[str],
    classes: Sequence[str],
    opts: Options,
    engine: Engine,
    *,
    on_cell: OnCell | None = None,
    on_plan: Callable[[Sequence[Cell], Path], None] | None = None,
    interrupt: Interrupt | None = None,
    images: Sequence[str] = (),
) -> MatrixOutcome:
    """Plan the cells (each once per image), run the runnable ones on the engine, record every cell;
    never raises for a cell."""
    started_at, t0 = now_iso(), time.monotonic()
    capacity = engine.capacity()
    load = profile_resolver(opts, classes, capacity)
    cells = plan_cells(
        names, classes, capacity, profiles_dir=opts.profiles_dir, where=engine.where, load=load
    )
    cells = with_images(cells, images)
    if engine.one_platform:
        refuse_two_platforms(cells, engine.where)
    matrix_dir = make_run_dir(opts.runs_dir, "matrix")
    if on_plan:
        on_plan(cells, matrix_dir)
    shown = on_cell or (lambda record: None)
    records: dict[str, CellRecord] = {}
    for cell in cells:
        if cell.skip is not None:
            records[cell.key] = not_run(cell, "skipped", 0, cell.skip)
        elif cell.refuse is not None:
            records[cell.key] = not_run(cell, "error", 3, cell.refuse)
        if cell.key in records:
            shown(records[cell.key])
    stop = interrupt or Interrupt()
    start_up_over()
    with stop.installed():
        done = engine.run([c for c in cells if c.runnable], opts, matrix_dir, stop, shown)
    records.update((r.key, r) for r in done)
    ordered = [records[c.key] for c in cells]
    code = record_mod.worst_exit_code(ordered)
    profiles = list(dict.fromkeys(c.profile for c in cells))
    gpu_classes = list(dict.fromkeys(c.gpu_class for c in cells))
    gpu_classes.sort(key=lambda g: g == CPU)  # GPU classes first, as given
    record = MatrixRecord(
        mmdemo_version=mmdemo_version(),
        engine=engine.name,
        status=record_mod.verdict(code),
        exit_code=code,
        profiles=profiles,
        gpu_classes=gpu_classes,
        images=list(images),
        started_at=started_at,
        finished_at=now_iso(),
        wall_s=round(time.monotonic() - t0, 3),
        cells=ordered,
    )
    record_mod.write_all(matrix_dir, record)
    return MatrixOutcome(record, matrix_dir)


def refuse_two_platforms(cells: Sequence[Cell], where: str) -> None:
    """One line when the runnable cells need NVIDIA and AMD GPUs of one vLLM build."""
    by_platform: dict[str, list[str]] = {}
    for cell in cells:
        if cell.runnable and (platform := platform_of(cell.gpu_class)) is not None:
            by_platform.setdefault(platform, [])
            if cell.gpu_class not in by_platform[platform]:
                by_platform[platform].append(cell.gpu_class)
    if len(by_platform) < 2:
        return
    parts = " and ".join(f"{PLATFORM_NAMES[p]} ({', '.join(c)})" for p, c in by_platform.items())
    raise PreflightError(
        f"{where} has GPUs of two platforms, {parts}, and one vLLM build drives one",
        hint="run one platform's classes at a time: "
        + " or ".join(f"--gpu {','.join(c)}" for c in by_platform.values()),
    )
