"""Engine `local`: this box. Whole GPUs per cell through the platform's visible-devices variables.

NVIDIA cells get CUDA_VISIBLE_DEVICES; AMD cells ROCR_VISIBLE_DEVICES with HIP_VISIBLE_DEVICES (and
CUDA_VISIBLE_DEVICES, which vLLM's ROCm platform checks against HIP) numbered within it. Cells on
disjoint GPUs run at once. A GPU goes back to the pool only once the cell that had it has torn down
and its memory is seen released (the teardown's NVML or AMD check, or an injected check); a GPU that
never frees is held back and cells that can no longer be placed fail with that reason. One box runs
one vLLM build, so one platform: run.py refuses a matrix whose cells need two. CPU cells take the
one CPU slot: vLLM on CPU takes every core, so they run one at a time. Ports are handed out distinct.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from orchestrator.core.options import Options
from orchestrator.gpus import detect as gpu_mod
from orchestrator.gpus.detect import CPU, CUDA, Gpu, platform_of, visible_env
from orchestrator.matrix.cell import not_run, run_cell
from orchestrator.matrix.cells import Capacity, Cell, class_of, inventory
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.ports import PortBook, cell_port
from orchestrator.matrix.record import CellRecord

log = logging.getLogger(__name__)

ReleaseCheck = Callable[[Sequence[Gpu], CellRecord], bool]
OnCell = Callable[[CellRecord], None]
POLL_S = 0.05


def teardown_released(gpus: Sequence[Gpu], record: CellRecord) -> bool:
    """Released unless the teardown saw NVML still list the server's processes."""
    return record.gpu_released is not False


class LocalEngine:
    """Run cells on this machine's GPUs (or its CPU), as many at once as the GPUs allow."""

    name = "local"
    where = "this machine"
    one_platform = True  # one box, one vLLM build

    def __init__(
        self,
        probe_gpus: Callable[[], Sequence[gpu_mod.Gpu]] = gpu_mod.detect,
        *,
        release_check: ReleaseCheck = teardown_released,
        release_wait_s: float = 30.0,
    ) -> None:
        self._probe = probe_gpus
        self._release_check = release_check
        self._release_wait_s = release_wait_s
        self._gpus: list[Gpu] = []
        self._platform = CUDA
        self.ports = PortBook()

    def capacity(self) -> dict[str, Capacity]:
        self._gpus = list(self._probe())
        return inventory(self._gpus)

    def run(
        self, cells: Sequence[Cell], opts: Options, matrix_dir: Path, stop: Interrupt, on_done: OnCell
    ) -> list[CellRecord]:
        """Every cell, scheduled greedily in order onto free GPUs; returns their records."""
        if not self._gpus:
            self.capacity()
        platforms = {p for c in cells if c.variant != CPU and (p := platform_of(c.gpu_class))}
        self._platform = next(iter(platforms), CUDA)  # run.py saw to it that there is one
        gpus = [g for g in self._gpus if g.platform == self._platform]
        by_class: dict[str, list[int]] = {}
        for g in gpus:
            if (gpu_class := class_of(g)) is not None:
                by_class.setdefault(gpu_class, []).append(g.index)
        free = {i for indices in by_class.values() for i in indices}
        held: set[int] = set()
        cpu_free = True
        pending = list(cells)
        records: list[CellRecord] = []
        running: dict[Future[tuple[CellRecord, bool]], tuple[Cell, list[int]]] = {}
        t0 = time.monotonic()

        def finish(record: CellRecord) -> None:
            records.append(record)
            on_done(record)

        with ThreadPoolExecutor(max_workers=max(1, len(free)), thread_name_prefix="cell") as pool:
            while pending or running:
                for cell in list(pending):
                    if stop.is_set():
                        pending.remove(cell)
                        finish(not_run(cell, "interrupted", 130, f"not started: {stop.signal_name()}"))
                        continue
                    if cell.variant == CPU:
                        if not cpu_free:
                            continue
                        cpu_free, take = False, []
                    else:
                        usable = [i for i in by_class.get(cell.gpu_class, []) if i not in held]
                        if len(usable) < cell.gpu_count:
                            pending.remove(cell)
                            finish(
                                not_run(
                                    cell,
                                    "error",
                                    3,
                                    f"not enough {cell.gpu_class} GPUs left: GPU(s) {sorted(held)} "
                                    "still hold memory after an earlier cell",
                                )
                            )
                            continue
                        idle = [i for i in usable if i in free]
                        if len(idle) < cell.gpu_count:
                            continue
                        take = idle[: cell.gpu_count]
                        free.difference_update(take)
                    pending.remove(cell)
                    future = pool.submit(self._job, cell, take, opts, matrix_dir=matrix_dir, stop=stop, t0=t0)
                    running[future] = (cell, take)
                if not running:
                    continue
                done, _ = wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
                for future in done:
                    cell, take = running.pop(future)
                    record, released = future.result()
                    if cell.variant == CPU:
                        cpu_free = True
                    elif released:
                        free.update(take)
                    else:
                        log.warning("GPU(s) %s kept memory after %s: held back", take, cell.key)
                        held.update(take)
                    finish(record)
        return records

    def _job(
        self, cell: Cell, take: list[int], opts: Options, *, matrix_dir: Path, stop: Interrupt, t0: float
    ) -> tuple[CellRecord, bool]:
        started = time.monotonic()
        platform = self._platform  # indices are per platform: a mixed box numbers each vendor from 0
        current = {g.index: g for g in self._probe() if g.platform == platform} if take else {}
        known = {g.index: g for g in self._gpus if g.platform == platform}
        gpus = [current.get(i) or known[i] for i in take]
        env = visible_env(self._platform, take) if take else None
        record = run_cell(
            cell,
            opts,
            matrix_dir / cell.dirname,
            gpus=gpus,
            port=cell_port(opts.host, self.ports.claim),
            server_env=env,
            stop=stop,
            relative_to=matrix_dir,
        )
        ended = time.monotonic()  # the cell's own end; waiting for its GPUs' release comes after
        released = True
        if gpus:
            deadline = time.monotonic() + self._release_wait_s
            while not (released := self._release_check(gpus, record)) and time.monotonic() < deadline:
                time.sleep(POLL_S)
            record = record.model_copy(update={"gpu_released": released})
        return record.model_copy(
            update={"started_s": round(started - t0, 3), "ended_s": round(ended - t0, 3)}
        ), released
