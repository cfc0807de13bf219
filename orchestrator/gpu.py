"""GPU detection (NVML, then nvidia-smi) and the mapping from marketing names to variant names.

Detection is injected: callers take a probe function so tests pass a fake and nothing here needs a GPU.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Variant names a profile may use, with the memory of the card (GiB) used to size and explain them.
GPU_CLASSES: dict[str, int] = {
    "B200": 180,
    "H200": 141,
    "H100": 80,
    "GH200": 96,
    "A100-80GB": 80,
    "A100-40GB": 40,
    "L40S": 48,
    "A6000": 48,
    "L4": 24,
    "A10G": 24,
    "RTX4090": 24,
    "T4": 16,
}
CPU = "cpu"
VARIANT_NAMES: tuple[str, ...] = (*GPU_CLASSES, CPU)

# Ordered: the first pattern that matches the marketing name wins (H200 before H100, GH200 before both).
_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\bB200\b", "B200"),
    (r"\bGH200\b", "GH200"),
    (r"\bH200\b", "H200"),
    (r"\bH100\b", "H100"),
    (r"\bH800\b", "H100"),
    (r"\bA100\b.*\b80\s*GB\b", "A100-80GB"),
    (r"\bA100\b", "A100-40GB"),
    (r"\bL40S\b", "L40S"),
    (r"\bRTX A6000\b|\bA6000\b", "A6000"),
    (r"\bL4\b", "L4"),
    (r"\bA10G\b", "A10G"),
    (r"\bA10\b", "A10G"),
    (r"\bRTX 4090\b", "RTX4090"),
    (r"\bT4\b", "T4"),
)


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver reports it."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int | None = None
    driver: str | None = None

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_mib / 1024

    @property
    def memory_free_gib(self) -> float | None:
        return None if self.memory_free_mib is None else self.memory_free_mib / 1024

    @property
    def variant(self) -> str | None:
        return variant_for_name(self.name, self.memory_total_mib)


def variant_for_name(name: str, memory_total_mib: int | None = None) -> str | None:
    """Map a marketing name ("NVIDIA H100 80GB HBM3") to a variant name, or None if unknown."""
    text = name.upper().replace("NVIDIA", " ")
    if memory_total_mib is not None and re.search(r"\bA100\b", text) and memory_total_mib > 60_000:
        return "A100-80GB"
    for pattern, variant in _NAME_PATTERNS:
        if re.search(pattern, text):
            return variant
    return None


def detect() -> list[Gpu]:
    """The GPUs on this machine: NVML first, nvidia-smi as the fallback, [] when there are none."""
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
        gpus.append(Gpu(index, fields[0], int(float(fields[1])), free, driver))
    return gpus


def pids_using_gpus() -> set[int] | None:
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
