"""How much GPU memory a model needs under vLLM, and the GPU count that holds it (pure arithmetic).

vLLM has no estimate before it loads (VLLM_NOTES, "The model probe"), so this is ours, written
down once: weights (split over the tensor-parallel GPUs) + one full context of KV cache + the
activations of vLLM's profiling pass + what CUDA itself holds, all at most
`gpu_memory_utilization` of a card. Each constant says where it comes from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.gpus.detect import GPU_CLASSES, Gpu

GIB = 1024**3
UTILIZATION = 0.9  # vLLM's default gpu_memory_utilization
MAX_UTILIZATION = 0.95  # higher leaves CUDA too little room for the sampler and allocator slack
CUDA_OVERHEAD = 1.5 * GIB  # CUDA context, NCCL buffers and CUDA graphs, outside vLLM's own budget
ENCODER_ALLOWANCE = 1.0 * GIB  # a multimodal encoder's activations on its largest dummy item
PROFILE_TOKENS = 8192  # tokens in vLLM's profiling forward pass (max_num_batched_tokens on a GPU)
ACTIVATION_BUFFERS = 24  # live [tokens, hidden] 2-byte buffers of one forward pass, the MLP included
TP_SIZES = (1, 2, 4, 8)  # vision and audio towers' head counts are powers of two as well
NO_BF16 = frozenset({"T4"})  # compute capability below 8.0: float16 instead of bfloat16

# What NVML reports as the total of one card of each class (MiB), for sizing a class not present.
TYPICAL_MIB: dict[str, int] = {
    "B200": 183_359,
    "H200": 143_771,
    "H100": 81_559,
    "GH200": 97_871,
    "A100-80GB": 81_920,
    "A100-40GB": 40_960,
    "L40S": 46_068,
    "A6000": 49_140,
    "L4": 23_034,
    "A10G": 23_028,
    "RTX4090": 24_564,
    "T4": 15_360,
}
_MARKETING = {
    "A100-80GB": "NVIDIA A100-SXM4-80GB",
    "A100-40GB": "NVIDIA A100-SXM4-40GB",
    "RTX4090": "NVIDIA GeForce RTX 4090",
}


@dataclass(frozen=True)
class Need:
    """The memory one GPU needs at a tensor-parallel size, by part (bytes)."""

    tensor_parallel_size: int
    weights: float
    kv_cache: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.kv_cache + self.activations + CUDA_OVERHEAD

    def describe(self, context: int) -> str:
        """'13.1 GiB weights + 1.0 GiB KV cache (2048 tokens) + 3.5 GiB activations and CUDA'."""
        extra = self.activations + CUDA_OVERHEAD
        return (
            f"{self.weights / GIB:.1f} GiB weights + {self.kv_cache / GIB:.1f} GiB KV cache "
            f"({context} tokens) + {extra / GIB:.1f} GiB activations and CUDA"
        )


@dataclass(frozen=True)
class Fit:
    """A way the model fits one GPU class: how many GPUs, at what utilization, needing what per GPU."""

    gpu_class: str
    need: Need
    utilization: float
    card_gib: float

    @property
    def tensor_parallel_size(self) -> int:
        return self.need.tensor_parallel_size

    @property
    def gpu_memory_gib(self) -> float:
        """What `requires.gpu_memory_gib` says: the need over the utilization, never above the card."""
        wanted = math.ceil(self.need.total / self.utilization / GIB * 2) / 2
        return min(wanted, math.floor(self.card_gib * 10) / 10)


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for one token."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def need_at(
    tp: int, *, weights: float, kv_per_token: int, kv_heads: int, context: int, hidden: int, multimodal: bool
) -> Need:
    """The per-GPU need at tensor-parallel size `tp` (KV heads fewer than `tp` are replicated)."""
    kv_share = max(kv_heads // tp, 1) / kv_heads
    activations = PROFILE_TOKENS * hidden * 2 * ACTIVATION_BUFFERS / tp
    if multimodal:
        activations += ENCODER_ALLOWANCE
    return Need(tp, weights / tp, kv_per_token * context * kv_share, activations)


def tp_sizes(heads: int, kv_heads: int, available: int) -> list[int]:
    """Tensor-parallel sizes vLLM accepts for these head counts, up to the GPUs available."""
    return [
        tp
        for tp in TP_SIZES
        if tp <= available and heads % tp == 0 and (kv_heads % tp == 0 or tp % kv_heads == 0)
    ]


def fit(gpu_class: str, card_mib: int, needs: Sequence[Need]) -> Fit | None:
    """The smallest tensor-parallel size whose need fits the card, at the lowest utilization that holds it."""
    card = card_mib * 2**20
    for need in sorted(needs, key=lambda n: n.tensor_parallel_size):
        if need.total <= UTILIZATION * card:
            return Fit(gpu_class, need, UTILIZATION, card / GIB)
        if need.total <= MAX_UTILIZATION * card:
            return Fit(gpu_class, need, math.ceil(need.total / card * 100) / 100, card / GIB)
    return None


def gpus_of_class(gpu_class: str, count: int = 1) -> list[Gpu]:
    """Stand-in GPUs of a class, as NVML would report them (for sizing a class that is not here)."""
    name = _MARKETING.get(gpu_class, f"NVIDIA {gpu_class}")
    mib = TYPICAL_MIB.get(gpu_class, GPU_CLASSES[gpu_class] * 1024)
    return [Gpu(index, name, mib, mib) for index in range(count)]
