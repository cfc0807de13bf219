"""A fake of AMD's `amdsmi` Python library (ROCm/amdsmi py-interface), for tests on machines without AMD GPUs.

The state comes from the JSON file named by FAKE_AMDSMI (so a CLI subprocess sees it too):
  {"gpus": [{"market_name", "device_id", "vram_total" (MB), "vram_used" (MB), "driver_version"}],
   "no_driver": false,                    # amdsmi_init raises, as it does where amdgpu is not loaded
   "holders": {"0": [pid, ...]},          # processes listed per GPU while they are alive
   "holders_file": "PATH",                # more pids (one per line, any GPU), read on each call
   "sticky": false}                       # list holders even after they died (memory never freed)
Only the calls mmdemo makes exist here, with the shapes the py-interface README documents.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class AmdSmiException(Exception):
    """Base of the library's errors."""


class AmdSmiLibraryException(AmdSmiException):
    """An error code from the C library."""


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


def _state() -> dict[str, Any]:
    path = os.environ.get("FAKE_AMDSMI")
    return json.loads(Path(path).read_text()) if path else {"gpus": []}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def amdsmi_init(flags: int = 0) -> None:
    if _state().get("no_driver"):
        raise AmdSmiLibraryException("AMDSMI_STATUS_DRIVER_NOT_LOADED")


def amdsmi_shut_down() -> None:
    return None


def amdsmi_get_processor_handles() -> list[_Handle]:
    return [_Handle(i) for i in range(len(_state()["gpus"]))]


def amdsmi_get_gpu_asic_info(handle: _Handle) -> dict[str, Any]:
    gpu = _state()["gpus"][handle.index]
    return {
        "market_name": gpu.get("market_name", "N/A"),
        "vendor_id": "0x1002",
        "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
        "device_id": gpu.get("device_id", "0x74a1"),
        "rev_id": "0x00",
        "asic_serial": "N/A",
        "oam_id": handle.index,
        "num_of_compute_units": 304,
        "target_graphics_version": "gfx942",
    }


def amdsmi_get_gpu_vram_usage(handle: _Handle) -> dict[str, int]:
    gpu = _state()["gpus"][handle.index]
    return {"vram_total": int(gpu["vram_total"]), "vram_used": int(gpu.get("vram_used", 0))}


def amdsmi_get_gpu_driver_info(handle: _Handle) -> dict[str, str]:
    gpu = _state()["gpus"][handle.index]
    return {"driver_name": "amdgpu", "driver_version": gpu.get("driver_version", "6.8.5"), "driver_date": ""}


def amdsmi_get_gpu_process_list(handle: _Handle) -> list[dict[str, Any]]:
    state = _state()
    pids = list(state.get("holders", {}).get(str(handle.index), []))
    if handle.index == 0 and (file := state.get("holders_file")) and Path(file).exists():
        pids += [int(line) for line in Path(file).read_text().split() if line.strip()]
    if not state.get("sticky"):
        pids = [p for p in pids if _alive(p)]
    return [
        {"name": "N/A", "pid": p, "mem": 1 << 30, "engine_usage": {"gfx": 0, "enc": 0},
         "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": 1 << 30}}
        for p in pids
    ]  # fmt: skip
