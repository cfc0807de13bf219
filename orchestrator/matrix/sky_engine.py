"""Engine `skypilot` (`mmdemo matrix --launch`): one managed job per GPU class, launched together.

Each class's task (skypilot.py) is written to `<matrix>/sky/<class>.sky.yaml` and handed to its own
`sky jobs launch` at the same moment, so the classes' clusters run side by side and the matrix takes
as long as its slowest class. Each launcher follows its job's log into `<matrix>/sky/<class>.log`;
the job prints its matrix directory there (gather.py), which is unpacked here: the cells' own
directories land in this matrix directory, as with the other engines, and their records make the
one matrix.json. A class whose job brought nothing back is an error cell naming its log. One job
per class (not one job group) so a class's failure or recovery never holds the others, and each
can be cancelled alone. With `--pipeline` one job runs the classes one after another instead.

Ctrl-C stops the launchers, not the managed jobs, which go on in SkyPilot's controller: the cells
say so, with the `sky jobs cancel` to run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orchestrator.core.errors import PreflightError, UsageError
from orchestrator.core.options import Options
from orchestrator.gpus.detect import GPU_CLASSES, canonical_class
from orchestrator.matrix import gather, skypilot
from orchestrator.matrix.cell import not_run
from orchestrator.matrix.cells import Capacity, Cell
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.record import CellRecord, load

log = logging.getLogger(__name__)
POLL_S = 0.2
STOP_WAIT_S = 10.0  # after the SIGINT, for a launcher to detach from its job's log


@dataclass
class Launch:
    """One `sky jobs launch`: its job's name, its task file, the classes it runs, its log."""

    name: str
    path: Path
    classes: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    handle: IO[bytes] | None = field(default=None, repr=False)


class SkyEngine:
    """Run the matrix as SkyPilot managed jobs, one per GPU class, all at once (or one pipeline)."""

    name = "skypilot"
    where = "the task"
    one_platform = False  # each class is its own cluster with its own vLLM build

    def __init__(
        self,
        names: Sequence[str],
        classes: Sequence[str],
        *,
        bucket: str | None = None,
        pipeline: bool = False,
        nodes: int = 1,
        environ: dict[str, str] | None = None,
    ) -> None:
        self.names = list(names)
        self.classes = [canonical_class(c) or c for c in classes]
        self.bucket = bucket
        self.pipeline = pipeline
        self.nodes = nodes
        self._environ = dict(os.environ if environ is None else environ)
        self.launches: list[Launch] = []
        self._sky = "sky"

    def capacity(self) -> dict[str, Capacity]:
        """The cloud has what is asked for: eight of each class (SkyPilot rents the count each task needs)."""
        sky = shutil.which("sky", path=self._environ.get("PATH"))
        if sky is None:
            raise PreflightError(
                "the `sky` command was not found", hint="pip install 'mmdemo[sky]' (SkyPilot)"
            )
        self._sky = sky
        if not self.classes:
            raise UsageError("--launch needs the GPU classes to ask the cloud for: --gpu H100,L4,...")
        for gpu_class in self.classes:
            skypilot.accelerator(gpu_class)
        return {c: Capacity(8, GPU_CLASSES[c] * 1024) for c in self.classes}

    def run(
        self,
        cells: Sequence[Cell],
        opts: Options,
        matrix_dir: Path,
        stop: Interrupt,
        on_done: Callable[[CellRecord], None],
    ) -> list[CellRecord]:
        """Write the tasks, launch them together, wait, and gather every class's cells."""
        classes = [c for c in self.classes if any(cell.gpu_class == c for cell in cells)]
        if not classes:
            return []
        sky_dir = matrix_dir / "sky"
        sky_dir.mkdir(parents=True, exist_ok=True)
        configs = skypilot.tasks(self.names, classes, opts, bucket=self.bucket, nodes=self.nodes)
        self.launches = self._write(configs, sky_dir)
        records: list[CellRecord] = []
        try:
            for launch in self.launches:
                self._start(launch)
            for launch in self._finished(stop):  # each class reported as soon as its job is done
                mine = [c for c in cells if c.gpu_class in launch.classes]
                for record in self._gather(launch, mine, matrix_dir, stop):
                    records.append(record)
                    on_done(record)
        finally:
            for launch in self.launches:
                self._end(launch)
        return records

    def _write(self, configs: dict[str, dict[str, Any]], sky_dir: Path) -> list[Launch]:
        if self.pipeline and len(configs) > 1:
            path = sky_dir / "pipeline.sky.yaml"
            path.write_text(skypilot.dump([{"name": "mmdemo-matrix"}, *configs.values()]), encoding="utf-8")
            return [Launch("mmdemo-matrix", path, list(configs), sky_dir / "pipeline.log")]
        launches = []
        for gpu_class, config in configs.items():
            path = sky_dir / f"{gpu_class}.sky.yaml"
            path.write_text(skypilot.dump([config]), encoding="utf-8")
            launches.append(Launch(config["name"], path, [gpu_class], sky_dir / f"{gpu_class}.log"))
        return launches

    def _start(self, launch: Launch) -> None:
        argv = [self._sky, "jobs", "launch", "--yes", "--name", launch.name, str(launch.path)]
        if self._environ.get("HF_TOKEN"):  # SkyPilot reads the value from our environment; never the file
            argv += ["--secret", "HF_TOKEN"]
        launch.handle = launch.log.open("wb")
        log.info("launching %s", " ".join(argv))
        launch.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=launch.handle,
            stderr=subprocess.STDOUT,
            env=self._environ,
            start_new_session=True,  # its own group: Ctrl-C here reaches it through us, once
        )

    def _finished(self, stop: Interrupt) -> Iterator[Launch]:
        """The launches as their launchers end; after Ctrl-C the rest within STOP_WAIT_S, then killed."""
        pending = list(self.launches)
        stopped_at: float | None = None
        while pending:
            for launch in [x for x in pending if x.proc is None or x.proc.poll() is not None]:
                pending.remove(launch)
                self._end(launch)
                yield launch
            if stop.is_set() and stopped_at is None:
                stopped_at = time.monotonic()
                for launch in pending:
                    self._signal(launch, signal.SIGINT)  # the launcher detaches; the job goes on
            if stopped_at is not None and time.monotonic() > stopped_at + STOP_WAIT_S:
                for launch in pending:
                    self._end(launch)
                    yield launch
                return
            if pending:
                time.sleep(POLL_S)

    @staticmethod
    def _signal(launch: Launch, sig: signal.Signals) -> None:
        if launch.proc is not None and launch.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(launch.proc.pid, sig)

    def _end(self, launch: Launch) -> None:
        """The launcher is gone and its log closed: killed if it outlived the wait (idempotent)."""
        if launch.proc is not None and launch.proc.poll() is None:
            self._signal(launch, signal.SIGKILL)
            launch.proc.wait()
        if launch.handle is not None and not launch.handle.closed:
            launch.handle.close()

    def _gather(
        self, launch: Launch, cells: Sequence[Cell], matrix_dir: Path, stop: Interrupt
    ) -> list[CellRecord]:
        text = launch.log.read_text(encoding="utf-8", errors="replace")
        code = launch.proc.returncode if launch.proc is not None else None
        records = []
        for gpu_class in launch.classes:
            mine = [c for c in cells if c.gpu_class == gpu_class]
            data = gather.read(text, gpu_class)
            if data is None:
                records += [self._missing(cell, launch, code, stop) for cell in mine]
                continue
            shipped = matrix_dir / "sky" / gpu_class
            gather.unpack(data, shipped)
            remote = {r.key: r for r in load(shipped / "matrix.json").cells}
            for cell in mine:
                record = remote.pop(cell.key, None)
                if record is None:
                    records.append(
                        not_run(cell, "error", 3, f"not in the results of SkyPilot job {launch.name}")
                    )
                    continue
                if record.directory and (shipped / record.directory).is_dir():
                    target = matrix_dir / record.directory
                    shutil.rmtree(target, ignore_errors=True)
                    (shipped / record.directory).rename(target)
                records.append(record)
            for key in remote:
                log.warning(
                    "SkyPilot job %s ran %s, which this matrix did not plan: see %s",
                    launch.name,
                    key,
                    shipped,
                )
        return records

    @staticmethod
    def _missing(cell: Cell, launch: Launch, code: int | None, stop: Interrupt) -> CellRecord:
        where = f"see sky/{launch.log.name}"
        if stop.is_set():
            reason = (
                f"launcher stopped by {stop.signal_name() or 'SIGINT'}; the managed job goes on: "
                f"`sky jobs cancel -n {launch.name}` ({where})"
            )
            return not_run(cell, "interrupted", 130, reason)
        how = f"exit {code}" if code is not None else "no exit code"
        return not_run(
            cell, "error", 3, f"SkyPilot job {launch.name} brought back no results ({how}; {where})"
        )
