"""What a retrain on this machine can prove about the shipped weights of a trained tiny model.

Bit for bit, a retrain reproduces the shipped weights only on the CPU that trained them, with the same
torch and transformers: float kernels differ by instruction set (tiny-omni retrained on an Intel Xeon
with AVX-512 and AMX gave other bits than the shipped weights, trained on the previous session's
machine, an AMD EPYC by its benchmark record). Anywhere, the retrain
must succeed, and a build fails when the trained model answers any fact wrong.
"""

from __future__ import annotations

from typing import Any


def compare_bits(shipped: dict[str, Any], retrained: dict[str, Any]) -> str | None:
    """None where the retrain must equal the shipped weights bit for bit; else why it cannot."""
    if shipped.get("machine") != retrained.get("machine"):
        return f"shipped from {shipped.get('machine')!r}, retrained on {retrained.get('machine')!r}"
    versions = {k: v for k, v in retrained.get("versions", {}).items() if k in ("torch", "transformers")}
    if {k: shipped.get("versions", {}).get(k) for k in versions} != versions:
        return f"shipped with {shipped.get('versions')}, retrained with {retrained.get('versions')}"
    return None
