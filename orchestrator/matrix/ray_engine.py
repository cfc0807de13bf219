"""Engine `ray`: each cell a Ray task on a node of its GPU class (extra `mmdemo[ray]`).

Placement: `num_gpus` from the variant plus the custom resource `mmdemo-gpu:<class>` (one unit per
GPU), which tells A100-80GB from A100-40GB where Ray's own accelerator detection cannot. A node
declares it when Ray starts there: `ray start ... --resources '{"mmdemo-gpu:A100-80GB": 8}'`.
Without it, a node's `accelerator_type:<T>` resource stands for the one class T names (never for
A100, which is two classes; AMD's names are Ray's own, e.g. AMD-Instinct-MI300X-OAM). Ray gives each
task its GPU ids (CUDA_VISIBLE_DEVICES on NVIDIA nodes, HIP_VISIBLE_DEVICES on AMD ones); the cell's
server gets the platform's variables for exactly those ids, as on one box. The task runs the same
cell function on its node and returns the cell's files as a tar archive, unpacked into the
driver's matrix directory. A class the cluster lacks is refused before any task is submitted (Ray
would wait forever). Ports: each cell takes a free port on its node and claims it in one PortBook
actor of the driver's, so no two cells of the matrix get the same port, on one node or several.

Interrupts: Ray's own cancel raises KeyboardInterrupt in a task only when its main thread next runs
Python code, which a cell blocked on a demo request may not do for minutes, and the driver then
loses the cell's files. So the driver sets a flag in a small actor instead; each task polls it
and tears its cell down through the same Interrupt a local matrix uses, and returns its files.
A task that has not started yet returns at once. ray.cancel stays the last resort.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.core.errors import UsageError
from orchestrator.core.options import Options
from orchestrator.gpus.classes import ROCM_CLASSES
from orchestrator.gpus.detect import CPU, CUDA, GPU_CLASSES, Gpu, detect, platform_of, visible_env
from orchestrator.matrix.cell import not_run, run_cell
from orchestrator.matrix.cells import Capacity, Cell
from orchestrator.matrix.interrupt import Interrupt
from orchestrator.matrix.ports import PortBook, cell_port
from orchestrator.matrix.record import CellRecord

log = logging.getLogger(__name__)
RESOURCE_PREFIX = "mmdemo-gpu:"
ACCELERATOR_PREFIX = "accelerator_type:"
POLL_S = 0.1
CANCEL_AFTER_S = 60.0  # after the interrupt, beyond each cell's grace: then ray.cancel


class StopFlag:
    """A Ray actor holding the matrix's interrupt: the signal name once it happened."""

    def __init__(self) -> None:
        self.name: str | None = None

    def set(self, name: str) -> None:
        self.name = name

    def get(self) -> str | None:
        return self.name


# Ray's accelerator type names that mean exactly one mmdemo class: NVIDIA's are the class names;
# AMD's come from Ray's amd_gpu.py (amd_product_dict, by PCI device id).
_RAY_TYPES = {c: c for c in GPU_CLASSES if not c.startswith("A100") and c not in ROCM_CLASSES} | {
    "AMD-Instinct-MI300X-OAM": "MI300X",
    "AMD-Instinct-MI300X-HF": "MI300X",
    "AMD-Instinct-MI325X-OAM": "MI325X",
    "AMD-Instinct-MI250X": "MI250X",
    "AMD-Instinct-MI250X-MI250": "MI250X",
    "AMD-Instinct-MI210": "MI210",
}
_TYPE_OF = {cls: ray_type for ray_type, cls in reversed(list(_RAY_TYPES.items()))}  # first name per class


class RayEngine:
    """Run cells as Ray tasks on RAY_ADDRESS (or a local Ray started for the run)."""

    name = "ray"
    where = "the Ray cluster"
    one_platform = False  # each node runs its own vLLM build: NVIDIA and AMD nodes may share a cluster

    def __init__(self, address: str | None = None, **init_kwargs: Any) -> None:
        self._address = address
        self._init_kwargs = init_kwargs
        self._started = False

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise UsageError("--engine ray needs Ray", hint="pip install 'mmdemo[ray]'") from None
        if not ray.is_initialized():
            address = self._address or os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, log_to_driver=False, **self._init_kwargs)
            self._started = True
        return ray

    def capacity(self) -> dict[str, Capacity]:
        """GPU classes per node, from each alive node's resources; a class counts its largest node."""
        ray = self._ray()
        out: dict[str, Capacity] = {}
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            resources: dict[str, float] = node.get("Resources") or {}
            gpus = int(resources.get("GPU", 0))
            for name, amount in resources.items():
                if name.startswith(RESOURCE_PREFIX):
                    gpu_class, count = name[len(RESOURCE_PREFIX) :], int(amount)
                elif name.startswith(ACCELERATOR_PREFIX) and name[len(ACCELERATOR_PREFIX) :] in _RAY_TYPES:
                    gpu_class, count = _RAY_TYPES[name[len(ACCELERATOR_PREFIX) :]], gpus
                else:
                    continue
                if gpu_class not in GPU_CLASSES or count < 1:
                    continue
                have = out.get(gpu_class)
                if have is None or have.count < count:
                    out[gpu_class] = Capacity(count, GPU_CLASSES[gpu_class] * 1024)
        return out

    def options(self, cell: Cell) -> dict[str, Any]:
        """The Ray task options that place a cell on its class with its GPUs."""
        if cell.variant == CPU:
            return {"num_cpus": 1, "num_gpus": 0, "max_retries": 0}
        resources: dict[str, float] = {}
        if f"{RESOURCE_PREFIX}{cell.gpu_class}" in self._ray().cluster_resources():
            resources[f"{RESOURCE_PREFIX}{cell.gpu_class}"] = cell.gpu_count
        else:
            resources[f"{ACCELERATOR_PREFIX}{_TYPE_OF[cell.gpu_class]}"] = 0.001
        return {"num_cpus": 1, "num_gpus": cell.gpu_count, "resources": resources, "max_retries": 0}

    def run(
        self,
        cells: Sequence[Cell],
        opts: Options,
        matrix_dir: Path,
        stop: Interrupt,
        on_done: Callable[[CellRecord], None],
    ) -> list[CellRecord]:
        """Submit every cell at once; Ray queues them on free GPUs; collect as they finish."""
        ray = self._ray()
        remote = ray.remote(remote_cell)
        flag = ray.remote(num_cpus=0)(StopFlag).remote()
        self.ports = ray.remote(num_cpus=0)(PortBook).remote()
        t0_wall = time.time()
        refs = {
            remote.options(**self.options(c)).remote(c, opts, t0_wall, flag, self.ports): c for c in cells
        }
        records: list[CellRecord] = []
        told: float | None = None
        cancelled = False
        try:
            while refs:
                if stop.is_set() and told is None:
                    told = time.monotonic()
                    flag.set.remote(stop.signal_name() or "SIGINT")
                if (
                    told is not None
                    and not cancelled
                    and time.monotonic() > told + opts.grace_s + CANCEL_AFTER_S
                ):
                    cancelled = True
                    for ref in refs:
                        ray.cancel(ref)  # last resort: KeyboardInterrupt in the task
                done, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
                for ref in done:
                    cell = refs.pop(ref)
                    record = self._collect(ray, ref, cell, matrix_dir, stop)
                    records.append(record)
                    on_done(record)
        finally:
            if self._started:
                ray.shutdown()
                self._started = False
        return records

    def _collect(self, ray: Any, ref: Any, cell: Cell, matrix_dir: Path, stop: Interrupt) -> CellRecord:
        try:
            data, archive = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return not_run(cell, "interrupted", 130, f"cancelled: {stop.signal_name() or 'interrupted'}")
        except ray.exceptions.RayError as exc:
            status = "interrupted" if stop.is_set() else "error"
            code = 130 if stop.is_set() else 4
            return not_run(cell, status, code, f"Ray task failed: {str(exc).splitlines()[0]}")
        record = CellRecord.model_validate(data)
        if not archive:  # it never started
            return record
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            tar.extractall(matrix_dir, filter="data")
        return record.model_copy(update={"directory": cell.dirname})


def remote_cell(
    cell: Cell, opts: Options, t0_wall: float, flag: Any, ports: Any
) -> tuple[dict[str, Any], bytes]:
    """On a Ray node: run the cell on the GPUs Ray gave this task; its record and its files (tar.gz)."""
    import ray

    if name := ray.get(flag.get.remote()):
        return not_run(cell, "interrupted", 130, f"not started: {name}").model_dump(mode="json"), b""
    stop = Interrupt()
    done = threading.Event()

    def poll() -> None:  # the driver's interrupt, seen here within POLL_S
        while not done.wait(POLL_S):
            if name := ray.get(flag.get.remote()):
                stop.set(name)
                return

    ids = [int(str(i)) for i in ray.get_gpu_ids()]
    platform = platform_of(cell.gpu_class) or CUDA
    found = {g.index: g for g in detect() if g.platform == platform} if ids else {}
    memory = GPU_CLASSES.get(cell.gpu_class, 0) * 1024
    gpus = [found.get(i) or Gpu(i, cell.gpu_class, memory, platform=platform) for i in ids]
    port = cell_port(opts.host, lambda p: bool(ray.get(ports.claim.remote(p))))
    node = f"{socket.gethostname()} {ray.get_runtime_context().get_node_id()}"
    started = time.time() - t0_wall  # the driver's clock and this node's: close enough for a timeline
    poller = threading.Thread(target=poll, name="matrix-stop-flag", daemon=True)
    poller.start()
    with tempfile.TemporaryDirectory(prefix="mmdemo-cell-") as tmp, stop.installed(signals=False):
        root = Path(tmp)
        try:
            record = run_cell(
                cell,
                replace(opts, runs_dir=root),
                root / cell.dirname,
                gpus=gpus,
                port=port,
                server_env=visible_env(platform, ids) if ids else None,
                stop=stop,
                node=node,
                relative_to=root,
            )
        finally:
            done.set()
            poller.join()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            if (root / cell.dirname).exists():
                tar.add(root / cell.dirname, arcname=cell.dirname)
    ended = time.time() - t0_wall
    record = record.model_copy(update={"started_s": round(started, 3), "ended_s": round(ended, 3)})
    return record.model_dump(mode="json"), buffer.getvalue()
