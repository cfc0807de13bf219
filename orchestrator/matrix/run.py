"""A matrix run, in order: plan the cells -> run them on the engine -> write the matrix record."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.gpu import CPU
from orchestrator.matrix import record as record_mod
from orchestrator.matrix.cell import not_run
from orchestrator.matrix.cells import Capacity, Cell, plan_cells, with_images
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.record import CellRecord, MatrixRecord
from orchestrator.options import Options
from orchestrator.runs import make_run_dir, mmdemo_version, now_iso

OnCell = Callable[[CellRecord], None]


class Engine(Protocol):
    """Where cells run: this box (local) or a Ray cluster."""

    name: str
    where: str

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
    cells = plan_cells(names, classes, engine.capacity(), profiles_dir=opts.profiles_dir, where=engine.where)
    cells = with_images(cells, images)
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
    gc.enable()  # start-up is over (cli.main turned the collector off for its imports)
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
