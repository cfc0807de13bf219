"""GPU classes (the names variants use, with their memory and platform) and the Gpu record; a leaf module.

Every GPU carries its platform ("cuda" or "rocm"): one vLLM build drives one platform, and the
variables that pick a cell's GPUs follow it. Class names match in any case ("h100" is H100);
records keep the spelling of GPU_CLASSES.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CUDA = "cuda"
ROCM = "rocm"
PLATFORM_NAMES = {CUDA: "CUDA", ROCM: "ROCm"}

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
    # AMD Instinct (ROCm). An MI250X is two GCDs, and ROCm shows each as a GPU of 64 GB: that is the class.
    "MI325X": 256,
    "MI300X": 192,
    "MI250X": 64,
    "MI210": 64,
}
ROCM_CLASSES = frozenset({"MI325X", "MI300X", "MI250X", "MI210"})
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
    # AMD's market names ("AMD Instinct MI300X", "... MI300X VF", "AMD Instinct MI250X/MI250").
    (r"\bMI325X\b", "MI325X"),
    (r"\bMI300X\b", "MI300X"),
    (r"\bMI250X?\b", "MI250X"),
    (r"\bMI210\b", "MI210"),
)
_BY_LOWER = {name.lower(): name for name in VARIANT_NAMES}


@dataclass(frozen=True)
class Gpu:
    """One GPU as the driver reports it."""

    index: int
    name: str
    memory_total_mib: int
    memory_free_mib: int | None = None
    driver: str | None = None
    platform: str = CUDA  # "cuda" or "rocm": which vLLM build, which visible-devices variables
    detected_by: str | None = None  # nvml, nvidia-smi, amdsmi, amd-smi, rocm-smi

    @property
    def memory_total_gib(self) -> float:
        return self.memory_total_mib / 1024

    @property
    def memory_free_gib(self) -> float | None:
        return None if self.memory_free_mib is None else self.memory_free_mib / 1024

    @property
    def gpu_class(self) -> str | None:
        """The card's own class (from its name), or None for a card no class names."""
        return variant_for_name(self.name, self.memory_total_mib)

    @property
    def variant(self) -> str | None:
        return self.gpu_class


def canonical_class(name: str) -> str | None:
    """A GPU class or cpu in any case ("h100", "Mi300x") as GPU_CLASSES spells it; None if unknown."""
    return _BY_LOWER.get(name.strip().lower())


def platform_of(gpu_class: str) -> str | None:
    """The platform of a GPU class: rocm for the Instinct classes, cuda for the others, None for cpu."""
    if gpu_class == CPU:
        return None
    return ROCM if gpu_class in ROCM_CLASSES else CUDA


def visible_env(platform: str, indices: Sequence[int]) -> dict[str, str]:
    """The variables that give a server exactly these GPUs (their indices as the driver numbers them).

    ROCm: ROCR_VISIBLE_DEVICES picks the devices (AMD's advice on Linux) and renumbers them from 0;
    HIP_VISIBLE_DEVICES indexes within what ROCR exposes, so it is 0..n-1; and CUDA_VISIBLE_DEVICES
    equals it, because vLLM's ROCm platform asserts the two agree when both are set.
    """
    ids = ",".join(str(i) for i in indices)
    if platform != ROCM:
        return {"CUDA_VISIBLE_DEVICES": ids}
    local = ",".join(str(i) for i in range(len(indices)))
    return {"ROCR_VISIBLE_DEVICES": ids, "HIP_VISIBLE_DEVICES": local, "CUDA_VISIBLE_DEVICES": local}


def describe(gpus: Sequence[Gpu]) -> str:
    """The accelerators for a report: each card with its memory, then the platform; or CPU only."""
    if not gpus:
        return "CPU only"
    cards = ", ".join(f"{g.name} ({g.memory_total_gib:.0f} GiB)" for g in gpus)
    platforms = ", ".join(dict.fromkeys(PLATFORM_NAMES.get(g.platform, g.platform) for g in gpus))
    return f"{cards}; platform {platforms}"


def variant_for_name(name: str, memory_total_mib: int | None = None) -> str | None:
    """Map a marketing name ("NVIDIA H100 80GB HBM3", "AMD Instinct MI300X") to a GPU class, or None."""
    if (exact := canonical_class(name)) is not None and exact != CPU:
        return exact  # a class name itself ("RTX4090", "A100-80GB"), as the matrix plans with
    text = name.upper().replace("NVIDIA", " ")
    if memory_total_mib is not None and re.search(r"\bA100\b", text) and memory_total_mib > 60_000:
        return "A100-80GB"
    for pattern, variant in _NAME_PATTERNS:
        if re.search(pattern, text):
            return variant
    return None
