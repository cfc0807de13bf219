"""GPU detection: NVIDIA's (NVML, then nvidia-smi) and AMD's (rocm.py), and who holds GPU memory.

Detection is injected: callers take a probe function so tests pass a fake and nothing here needs a GPU.
The classes and the Gpu record live in gpus/classes.py (re-exported here for the callers that import them).
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from orchestrator.gpus import rocm
from orchestrator.gpus.classes import (
    CPU,
    CUDA,
    GPU_CLASSES,
    PLATFORM_NAMES,
    ROCM,
    VARIANT_NAMES,
    Gpu,
    canonical_class,
    describe,
    platform_of,
    variant_for_name,
    visible_env,
)

__all__ = [
    "CPU",
    "CUDA",
    "GPU_CLASSES",
    "PLATFORM_NAMES",
    "ROCM",
    "VARIANT_NAMES",
    "Gpu",
    "canonical_class",
    "describe",
    "detect",
    "detect_nvidia",
    "parse_nvidia_smi",
    "pids_using_gpus",
    "platform_of",
    "variant_for_name",
    "visible_env",
]

log = logging.getLogger(__name__)


def detect() -> list[Gpu]:
    """The GPUs on this machine: NVIDIA's (NVML, else nvidia-smi) then AMD's (rocm.py); [] when none."""
    return detect_nvidia() + (rocm.detect() or [])


def detect_nvidia() -> list[Gpu]:
    """NVIDIA GPUs: NVML first, nvidia-smi as the fallback, [] when there are none."""
    gpus = _detect_nvml()
    if gpus is None:
        gpus = _detect_nvidia_smi()
    return gpus or []


def _detect_nvml() -> list[Gpu] | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound and friends: no driver here
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(
                    index=index,
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_total_mib=int(memory.total) // 2**20,
                    memory_free_mib=int(memory.free) // 2**20,
                    driver=driver,
                    detected_by="nvml",
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _detect_nvidia_smi() -> list[Gpu] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [
                exe,
                "--query-gpu=name,memory.total,memory.free,driver_version",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("nvidia-smi failed: %s", exc)
        return None
    return parse_nvidia_smi(out)


def parse_nvidia_smi(out: str) -> list[Gpu]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,memory.free,driver_version` CSV (no units)."""
    gpus = []
    for index, line in enumerate(row for row in out.splitlines() if row.strip()):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2:
            continue
        free = int(float(fields[2])) if len(fields) > 2 and fields[2] else None
        driver = fields[3] if len(fields) > 3 else None
        gpus.append(Gpu(index, fields[0], int(float(fields[1])), free, driver, detected_by="nvidia-smi"))
    return gpus


def pids_using_gpus() -> set[int] | None:
    """PIDs that hold GPU memory on any GPU (NVML, and AMD's tools); None where no tool can tell."""
    nvidia, amd = _nvml_pids(), rocm.holders()
    if nvidia is None and amd is None:
        return None
    return (nvidia or set()) | (amd or set())


def _nvml_pids() -> set[int] | None:
    """PIDs that hold GPU memory per NVML, or None where NVML is unavailable."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        pids: set[int] = set()
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for getter in (
                pynvml.nvmlDeviceGetComputeRunningProcesses,
                pynvml.nvmlDeviceGetGraphicsRunningProcesses,
            ):
                try:
                    pids.update(int(p.pid) for p in getter(handle))
                except Exception:
                    continue
        return pids
    finally:
        pynvml.nvmlShutdown()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
